#!/usr/bin/env python3
"""Helpers of bench/scale.sh (large configurations, sticky tables, health checks).

  scale.py tandem-conf OUT SERVICES BACKENDS BASE_PORT BE_PORT SOCKET [check] [extra] [admin=PORT]
        tandem: SERVICES tcp services on 127.0.0.1:BASE_PORT+i, one pool each, BACKENDS
        backends in all at 127.1.X.Y:BE_PORT; `check` adds a tcp check every 2 s;
        `extra` adds one more service on BASE_PORT+SERVICES (the reload's marker);
        `admin=PORT` an admin port (metrics)
  scale.py haproxy-conf OUT SERVICES BACKENDS BASE_PORT BE_PORT [check] [extra] [sock=PATH]
        the same for HAProxy (`sock=PATH`: its runtime API)
  scale.py haproxy-up SOCKET        -> servers HAProxy's checks say are UP
  scale.py state-file OUT ENTRIES POOL BE_PORT
        a tandem sticky.state with ENTRIES pins of pool POOL (clients 10.X.Y.Z)
  scale.py fill-table SOCKET TABLE ENTRIES
        HAProxy: ENTRIES keys of the stick table TABLE through its runtime API
  scale.py table-used SOCKET TABLE  -> entries in an HAProxy stick table
  scale.py metric URL NAME          -> sum of a Prometheus metric's samples
  scale.py stream PORT STOPFILE OUT
        connections (a request each) to 127.0.0.1:PORT until STOPFILE exists; writes
        "ok failed" to OUT
  scale.py wait-port PORT TIMEOUT   -> ms until 127.0.0.1:PORT accepts (exit 1 at timeout)
  scale.py wait-metric URL NAME VALUE TIMEOUT -> ms until the metric reaches VALUE
  scale.py wait-table SOCKET TABLE VALUE TIMEOUT -> ms until the table holds VALUE
  scale.py ticks PID...             -> utime+stime clock ticks of the processes
  scale.py ss-bytes PORT...         -> bytes received by the established TCP sockets
        whose local or remote port is one of PORT (both ends on loopback: both ways)
"""
import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request


def backend_addr(i, port):
    # 127.1.0.1 onward: the whole of 127.0.0.0/8 reaches lo.
    n = i + 1
    return f"127.1.{n // 250}.{n % 250 + 1}:{port}"


def split(backends, services):
    """Backend index ranges of each service's pool, as even as can be."""
    per, extra = divmod(backends, services)
    start = 0
    for s in range(services):
        n = per + (1 if s < extra else 0)
        yield range(start, start + n)
        start += n


def tandem_conf(out, services, backends, base, be_port, sock, flags):
    lines = [
        "[global]",
        'name = "scale"',
        f'control_socket = "{sock}"',
        "threads = 1",
        'log_format = "json"',
    ]
    lines += [f'admin_listen = "127.0.0.1:{f[6:]}"' for f in flags if f.startswith("admin=")]
    lines.append("")
    n = services + (1 if "extra" in flags else 0)
    ranges = list(split(backends, services))
    if "extra" in flags:
        ranges.append(ranges[0])
    for s in range(n):
        lines.append("[[pool]]")
        lines.append(f'name = "p{s}"')
        lines.append("backends = [")
        lines += [f'  {{ address = "{backend_addr(b, be_port)}" }},' for b in ranges[s]]
        lines.append("]")
        if "check" in flags:
            lines.append('check = { type = "tcp", interval = "2s", timeout = "1s" }')
        lines.append("")
    for s in range(n):
        lines += [
            "[[service]]",
            f'name = "s{s}"',
            f'listen = ["127.0.0.1:{base + s}"]',
            f'pool = "p{s}"',
            "",
        ]
    open(out, "w").write("\n".join(lines))


def haproxy_conf(out, services, backends, base, be_port, flags):
    lines = [
        "global",
        "  nbthread 1",
        "  maxconn 1000",  # 10,000 checks and 1,000 listeners must fit in 20,000 fds
    ]
    lines += [f"  stats socket {f[5:]} level admin" for f in flags if f.startswith("sock=")]
    lines += [
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 60s",
        "  timeout server 60s",
        "  timeout check 1s",
        "  default-server inter 2s rise 2 fall 3",
    ]
    n = services + (1 if "extra" in flags else 0)
    ranges = list(split(backends, services))
    if "extra" in flags:
        ranges.append(ranges[0])
    check = " check" if "check" in flags else ""
    for s in range(n):
        lines += [f"listen s{s}", f"  bind 127.0.0.1:{base + s}", "  option splice-auto"]
        lines += [f"  server b{b} {backend_addr(b, be_port)}{check}" for b in ranges[s]]
    open(out, "w").write("\n".join(lines) + "\n")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def postcard_str(s):
    b = s.encode()
    return varint(len(b)) + b


def state_file(out, entries, pool, be_port):
    """tandem's state file (crates/tandem/src/state_file.rs): TNDMSTK1, SHA-256 of the
    body, the body in postcard: Saved { node, written_unix_ms, entries: [SavedEntry {
    pool, client: IpAddr, backend: SocketAddr, expires_unix_ms, pinned_at_ms, origin }] }."""
    now = int(time.time() * 1000)
    expires = varint(now + 3_600_000)
    pinned = varint(now - 1000)
    # A node-name hash, as tandem stamps (xxh3: 64 bits, so as long as a varint gets).
    origin = varint(0x9E3779B97F4A7C15)
    pool_b = postcard_str(pool)
    backends = []
    for b in range(10):
        ip, port = backend_addr(b, be_port).split(":")
        backends.append(b"\x00" + bytes(int(x) for x in ip.split(".")) + varint(int(port)))
    body = bytearray(postcard_str("scale-a") + varint(now) + varint(entries))
    for i in range(entries):
        client = b"\x00" + bytes((10, (i >> 16) & 255, (i >> 8) & 255, i & 255))
        body += pool_b + client + backends[i % 10] + expires + pinned + origin
    body = bytes(body)
    with open(out, "wb") as f:
        f.write(b"TNDMSTK1" + hashlib.sha256(body).digest() + body)


def cli(sock_path, command):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(command.encode() + b"\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode()


def fill_table(sock_path, table, entries):
    """`set table` for each key, through one connection in prompt mode; the answers are
    read as they come (every command answers with an empty line and a prompt)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(b"prompt\n")
    batch = 2000
    for start in range(0, entries, batch):
        cmds = "".join(
            f"set table {table} key 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} data.server_id {i % 10 + 1}\n"
            for i in range(start, min(start + batch, entries))
        )
        s.sendall(cmds.encode())
        # Wait for this batch's prompts, so that the socket never fills both ways.
        need = min(batch, entries - start)
        got = 0
        buf = b""
        while got < need:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise SystemExit("haproxy closed the CLI")
            buf += chunk
            got += chunk.count(b"> ")
            if b"Unknown" in chunk or b"error" in chunk.lower():
                raise SystemExit(f"set table refused: {chunk[:200]!r}")
    s.close()


def haproxy_up(sock_path):
    rows = [r.split(",") for r in cli(sock_path, "show stat").splitlines()]
    return sum(1 for r in rows if len(r) > 17 and r[1] not in ("FRONTEND", "BACKEND") and r[17].startswith("UP"))


def table_used(sock_path, table):
    m = re.search(rf"# table: {re.escape(table)},.*used:(\d+)", cli(sock_path, "show table"))
    return int(m.group(1)) if m else 0


def metric(url, name):
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def wait_for(check, value, timeout):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        v = check()
        if v is not None and v >= value:
            print(f"{(time.monotonic() - start) * 1000:.0f}")
            return
        time.sleep(0.02)
    print(f"timeout after {timeout} s (last: {check()})", file=sys.stderr)
    sys.exit(1)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return 1
    except OSError:
        return 0


def stream(port, stopfile, out):
    ok = failed = 0
    deadline = time.monotonic() + 120
    while not os.path.exists(stopfile) and time.monotonic() < deadline:
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            c.close()
            if data.startswith(b"HTTP/1.1 200"):
                ok += 1
            else:
                failed += 1
        except OSError:
            failed += 1
    open(out, "w").write(f"{ok} {failed}\n")


def ticks(pids):
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    print(total)


def ss_bytes(ports):
    text = subprocess.run(
        ["ss", "-tinH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    total = 0
    # ss prints each socket as an address line and an indented info line.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*\S+\s+\S+\s+\S+:(\d+)\s+\S+:(\d+)", line)
        if not m or not ({int(m.group(1)), int(m.group(2))} & ports):
            continue
        info = " ".join(lines[i + 1 : i + 2])
        r = re.search(r"bytes_received:(\d+)", info)
        total += int(r.group(1)) if r else 0
    print(total)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tandem-conf":
        tandem_conf(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), args[5], args[6:])
    elif cmd == "haproxy-conf":
        haproxy_conf(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), args[5:])
    elif cmd == "state-file":
        state_file(args[0], int(args[1]), args[2], int(args[3]))
    elif cmd == "fill-table":
        fill_table(args[0], args[1], int(args[2]))
    elif cmd == "haproxy-up":
        print(haproxy_up(args[0]))
    elif cmd == "table-used":
        print(table_used(args[0], args[1]))
    elif cmd == "metric":
        print(metric(args[0], args[1]))
    elif cmd == "stream":
        stream(int(args[0]), args[1], args[2])
    elif cmd == "wait-port":
        wait_for(lambda: port_open(int(args[0])), 1, float(args[1]))
    elif cmd == "wait-metric":
        wait_for(lambda: metric(args[0], args[1]), float(args[2]), float(args[3]))
    elif cmd == "wait-table":
        wait_for(lambda: table_used(args[0], args[1]), int(args[2]), float(args[3]))
    elif cmd == "ticks":
        ticks(args)
    elif cmd == "ss-bytes":
        ss_bytes({int(p) for p in args})
    else:
        raise SystemExit(__doc__)
