#!/usr/bin/env python3
"""Failover probe, run inside the client's network namespace.

  failover_probe.py HOST PORT PID...

Checks HOST:PORT answers, sends SIGKILL to every PID (the master's processes), then
starts a GET every 10 ms (each on its own thread, 1 s timeout) and prints the
milliseconds from the kill to the first answer, or "timeout" after 10 s.
"""
import os
import signal
import socket
import sys
import threading
import time


def get(host, port, timeout):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


def main():
    host, port, pids = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    for _ in range(100):
        if get(host, port, 1):
            break
        time.sleep(0.05)
    else:
        print("no-service")
        return
    first = []
    done = threading.Event()

    def attempt():
        if get(host, port, 1) and not done.is_set():
            first.append(time.monotonic())
            done.set()

    killed = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    while not done.is_set() and time.monotonic() - killed < 10:
        threading.Thread(target=attempt, daemon=True).start()
        done.wait(0.01)
    print(f"{(first[0] - killed) * 1000:.0f}" if first else "timeout")


main()
