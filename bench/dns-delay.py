#!/usr/bin/env python3
"""Relay DNS over UDP from LISTEN_ADDR:53 to 127.0.0.1:UPSTREAM_PORT, holding every
answer back for DELAY_MS milliseconds.

bench/run uses this only when the kernel has no netem qdisc (`tc ... netem` fails):
it adds the same delay to each answer that netem on the upstream veth would, and each
query is relayed on its own thread, so concurrent queries overlap as they would on a
slow link. Prints `ready` once bound; runs until killed.
"""

import socket
import sys
import threading
import time

listen_addr, upstream_port, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000.0
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((listen_addr, 53))


def relay(query, client):
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.settimeout(5)
    try:
        upstream.sendto(query, ("127.0.0.1", upstream_port))
        answer, _ = upstream.recvfrom(65535)
    except OSError:
        return
    finally:
        upstream.close()
    time.sleep(delay)
    server.sendto(answer, client)


print("ready", flush=True)
while True:
    query, client = server.recvfrom(65535)
    threading.Thread(target=relay, args=(query, client), daemon=True).start()
