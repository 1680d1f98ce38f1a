#!/usr/bin/env python3
"""Opens N connections to HOST:PORT, holds them idle for SECONDS, closes them.

  hold.py HOST PORT N SECONDS [tcp|http|https]

tcp (the default): plain TCP connections, nothing sent (a proxy's idle relayed
connection). http: each connection sends one keep-alive request and reads its answer,
then stays open (an idle keep-alive connection between requests). https: the same
after a TLS handshake (no certificate check: the bench's own self-signed one).

Prints how many were established (answered, for http and https) once all are, then
holds them. Used by bench/run to measure a proxy's memory per idle connection.
Bounded: at most N connections, at most SECONDS of holding (or until killed).
"""
import resource
import socket
import ssl
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def answered(s):
    """Reads one response with a Content-Length body; true when it came whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


def main():
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "tcp"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = None
    if mode == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
    held = []
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((host, port))
            if context is not None:
                s = context.wrap_socket(s, server_hostname="bench")
            if mode != "tcp":
                s.sendall(REQUEST)
                if not answered(s):
                    raise OSError("no whole 200 answer")
        except OSError as e:
            print(f"{mode} connection failed after {len(held)}: {e}", file=sys.stderr)
            s.close()
            break
        held.append(s)
    print(len(held), flush=True)
    time.sleep(seconds)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
