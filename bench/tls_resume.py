#!/usr/bin/env python3
"""TLS 1.3 session resumption load for bench/run's tls section.

  tls_resume.py HOST PORT SECONDS CLIENTS

CLIENTS processes each open one connection after another for SECONDS: a TLS 1.3
handshake resuming the session of its previous connection (the ticket the server sent
last: servers may take a ticket once only), `GET /` with `Connection: close`, the
response read to its end. Prints "connections resumed connections_per_second failed":
`resumed` counts the handshakes the client saw resumed (SSLSocket.session_reused), so
a server that never resumes shows it.
"""
import multiprocessing
import socket
import ssl
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"


def client(host, port, seconds, out):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    session = None
    done = resumed = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port)) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname="bench.test", session=session) as s:
                    s.sendall(REQUEST)
                    while s.recv(65536):
                        pass
                    resumed += s.session_reused
                    # The newest ticket (TLS 1.3 tickets come after the handshake).
                    session = s.session
                    done += 1
        except (OSError, ssl.SSLError):
            failed += 1
            session = None
    out.put((done, resumed, failed))


def main():
    host, port, seconds, clients = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(host, port, seconds, out)) for _ in range(clients)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - started
    done = sum(r[0] for r in results)
    print(f"{done} {sum(r[1] for r in results)} {done / elapsed:.0f} {sum(r[2] for r in results)}")


if __name__ == "__main__":
    main()
