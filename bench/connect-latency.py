#!/usr/bin/env python3
"""Time COUNT TCP connects to ADDRESS PORT, one after another; print JSON (milliseconds).

Each sample is connect() until the handshake completes, then close. A few warm-up
connects are not counted.
"""

import json
import socket
import statistics
import sys
import time

addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
WARMUP = 5
samples = []
for i in range(count + WARMUP):
    start = time.perf_counter()
    s = socket.create_connection((addr, port), timeout=3)
    elapsed = time.perf_counter() - start
    s.close()
    if i >= WARMUP:
        samples.append(elapsed * 1000.0)
samples.sort()
print(
    json.dumps(
        {
            "count": len(samples),
            "median_ms": statistics.median(samples),
            "mean_ms": statistics.fmean(samples),
            "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "min_ms": samples[0],
            "max_ms": samples[-1],
        }
    )
)
