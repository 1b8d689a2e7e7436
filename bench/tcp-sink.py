#!/usr/bin/env python3
"""Accept TCP connections on ADDRESS PORT and close each at once (connect-latency target).

Prints `ready` once listening; runs until killed.
"""

import socket
import sys

addr, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
server = socket.socket(family, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((addr, port))
server.listen(512)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
