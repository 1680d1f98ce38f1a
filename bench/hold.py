#!/usr/bin/env python3
"""Opens N TCP connections to HOST:PORT, holds them idle for SECONDS, closes them.

Prints how many were established. Used by bench/run to measure a proxy's memory per
idle relayed connection. Bounded: at most N connections, at most SECONDS of holding.
"""
import resource
import socket
import sys
import time

host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
    except OSError as e:
        print(f"connect failed after {len(held)}: {e}", file=sys.stderr)
        s.close()
        break
    held.append(s)
print(len(held), flush=True)
time.sleep(seconds)
for s in held:
    s.close()
