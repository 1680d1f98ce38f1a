#!/usr/bin/env python3
"""Mail clients of the site lab, with Python's own imaplib, poplib and smtplib.

    client.py ACTION HOST --source IP      one session; prints one JSON object
    client.py loop HOST --sources IP,IP,.. --period S --seconds S
                                           an IMAP login every PERIOD seconds, from
                                           each source in turn, each on its thread;
                                           one JSON line per login as it ends

ACTION is imap, imaps, pop3, pop3s, smtp or submission. Each object says which
server answered ("server": the name in its greeting), or the error; "t0" and "t1"
are time.monotonic() (CLOCK_MONOTONIC) at the start and the end.
"""

import argparse
import imaplib
import json
import poplib
import re
import smtplib
import socket
import ssl
import sys
import threading
import time

USER, PASSWORD, DOMAIN = "alice", "wonderland", "site.example"
SERVER = re.compile(r"\bon (srv\d+)\b")


def insecure():
    """The lab's servers have self-signed certificates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(host, port, source, timeout):
    return socket.create_connection((host, port), timeout, source_address=(source, 0))


def server_of(greeting):
    if isinstance(greeting, bytes):
        greeting = greeting.decode(errors="replace")
    found = SERVER.search(greeting)
    return found.group(1) if found else None


def imap(host, source, timeout, tls):
    class Client(imaplib.IMAP4_SSL if tls else imaplib.IMAP4):
        def _create_socket(self, timeout):
            sock = connect(self.host, self.port, source, timeout)
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host) if tls else sock

    kwargs = {"ssl_context": insecure()} if tls else {}
    stage("greeting")
    client = Client(host, 993 if tls else 143, timeout=timeout, **kwargs)
    server = server_of(client.welcome)
    stage(f"login on {server}")
    client.login(USER, PASSWORD)
    stage(f"select on {server}")
    client.select("INBOX")
    stage(f"logout on {server}")
    client.logout()
    return server


def pop3(host, source, timeout, tls):
    class Client(poplib.POP3_SSL if tls else poplib.POP3):
        def _create_socket(self, timeout):
            sock = connect(self.host, self.port, source, timeout)
            return self.context.wrap_socket(sock, server_hostname=self.host) if tls else sock

    kwargs = {"context": insecure()} if tls else {}
    stage("greeting")
    client = Client(host, 995 if tls else 110, timeout=timeout, **kwargs)
    server = server_of(client.getwelcome())
    stage(f"login on {server}")
    client.user(USER)
    client.pass_(PASSWORD)
    client.stat()
    client.quit()
    return server


def smtp(host, source, timeout, port):
    client = smtplib.SMTP(timeout=timeout, source_address=(source, 0))
    client._host = host  # the name STARTTLS sends (connect() alone does not set it)
    _, banner = client.connect(host, port)
    server = server_of(banner)
    stage(f"ehlo on {server}")
    client.ehlo("client.example")
    stage(f"starttls on {server}")
    client.starttls(context=insecure())
    stage(f"mail on {server}")
    client.ehlo("client.example")
    message = f"From: bob@client.example\r\nTo: {USER}@{DOMAIN}\r\nSubject: site lab\r\n\r\nhello\r\n"
    client.sendmail("bob@client.example", [f"{USER}@{DOMAIN}"], message)
    client.quit()
    return server


ACTIONS = {
    "imap": lambda h, s, t: imap(h, s, t, False),
    "imaps": lambda h, s, t: imap(h, s, t, True),
    "pop3": lambda h, s, t: pop3(h, s, t, False),
    "pop3s": lambda h, s, t: pop3(h, s, t, True),
    "smtp": lambda h, s, t: smtp(h, s, t, 25),
    "submission": lambda h, s, t: smtp(h, s, t, 587),
}


STAGE = threading.local()


def stage(name):
    """Notes how far the session got, for the error message."""
    STAGE.name = name


def attempt(action, host, source, timeout):
    """One session: a dict with the server that answered, or the error."""
    stage("connect")
    t0 = time.monotonic()
    result = {"action": action, "source": source, "t0": t0}
    try:
        result["server"] = ACTIONS[action](host, source, timeout)
    except ConnectionRefusedError:
        result["error"] = f"refused at {STAGE.name}"
    except ConnectionResetError:
        result["error"] = f"reset at {STAGE.name}"
    except (socket.timeout, TimeoutError):
        result["error"] = f"timeout at {STAGE.name}"
    except Exception as e:  # what a user would see
        result["error"] = f"{type(e).__name__} at {STAGE.name}: {e}"
    result["t1"] = time.monotonic()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=[*ACTIONS, "loop"])
    parser.add_argument("host")
    parser.add_argument("--source")
    parser.add_argument("--sources")
    parser.add_argument("--period", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    if args.action != "loop":
        print(json.dumps(attempt(args.action, args.host, args.source, args.timeout)))
        return
    sources = args.sources.split(",")
    lock = threading.Lock()

    def one(source):
        result = attempt("imap", args.host, source, args.timeout)
        with lock:
            print(json.dumps(result), flush=True)

    threads = []
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < args.seconds:
        t = threading.Thread(target=one, args=(sources[n % len(sources)],))
        t.start()
        threads.append(t)
        n += 1
        time.sleep(max(0.0, started + n * args.period - time.monotonic()))
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())
