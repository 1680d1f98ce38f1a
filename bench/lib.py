#!/usr/bin/env python3
"""Parsing and reporting for bench/run.

  lib.py iperf FILE            -> Gbit/s received, from iperf3 -J output
  lib.py wrk FILE              -> "req_per_s p50_ms p99_ms" from wrk --latency output
  lib.py h2load FILE LOG       -> "req_per_s p99_ms requests errors" of an h2load run
                                  (its output FILE; p99 from its --log-file LOG)
  lib.py per_count B A N       -> microseconds of CPU busy time per unit of N units
  lib.py rss PID...            -> summed VmRSS in KiB of the processes
  lib.py busy CPU              -> busy clock ticks of that CPU so far (/proc/stat)
  lib.py per_request B A FILE  -> microseconds of CPU busy time per request of a wrk
                                  run (FILE), from busy ticks B before and A after
  lib.py report RESULTS OUT MACHINE -> markdown table of medians, with ratios
"""
import json
import os
import re
import statistics
import sys


def ms(value):
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    n, unit = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000}[unit]


def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
    p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
    errors = re.search(r"Socket errors: (.*)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    print(f"{rps:.0f} {p50:.3f} {p99:.3f} {1 if (errors or non2xx) else 0}")


def iperf(path):
    data = json.load(open(path))
    print(f"{data['end']['sum_received']['bits_per_second'] / 1e9:.2f}")


def busy(cpu):
    """Ticks the CPU spent on anything but idle, iowait and steal."""
    for line in open("/proc/stat"):
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
            print(user + nice + system + irq + softirq)
            return
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


def per_request(before, after, path):
    requests = int(re.search(r"(\d+) requests in", open(path).read()).group(1))
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    print(f"{(int(after) - int(before)) * tick_us / max(requests, 1):.1f}")


def h2load(path, log):
    """h2load has no percentiles: p99 comes from its per-request log (column 3, us)."""
    text = open(path).read()
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    succeeded, errors = int(m.group(1)), int(m.group(2)) + int(m.group(3))
    times = sorted(int(line.split("\t")[2]) for line in open(log) if line.count("\t") >= 2)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000 if times else 0.0
    print(f"{rps:.0f} {p99:.3f} {succeeded} {errors}")


def per_count(before, after, count):
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    print(f"{(int(after) - int(before)) * tick_us / max(int(count), 1):.1f}")


def rss(pids):
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    print(total)


# The report's tables: each section names its contenders (columns, in order), the
# contender whose ratios it shows (subject) and its rows as (key, label, higher is
# better). A section file of bench/run records "CONTENDER KEY VALUE" lines; a table is
# printed when any of its rows has a value.
SECTIONS = [
    {
        "title": "Plain TCP and HTTP/1.1, one thread per proxy",
        "contenders": ["direct", "tandem", "haproxy", "nginx"],
        "subject": "tandem",
        "rows": [
            ("bulk1", "L4 bulk throughput, 1 stream (Gbit/s)", True),
            ("bulk8", "L4 bulk throughput, 8 streams (Gbit/s)", True),
            ("conn_rps", "L4 connection rate (connections/s)", True),
            ("conn_p99", "L4 connection p99 latency (ms)", False),
            ("conn_cpu", "L4 connection: proxy core busy time per connection (us)", False),
            ("l7_rps", "L7 keep-alive (requests/s)", True),
            ("l7_p50", "L7 keep-alive p50 latency (ms)", False),
            ("l7_p99", "L7 keep-alive p99 latency (ms)", False),
            ("l7_cpu", "L7 keep-alive: proxy core busy time per request (us)", False),
            ("mem_kib", "Memory per idle relayed connection (KiB)", False),
        ],
    },
    {
        "title": "At the defaults: one thread per CPU, nothing pinned",
        "contenders": ["direct", "tandem", "haproxy", "nginx"],
        "subject": "tandem",
        "rows": [
            ("def_conn_rps", "L4 connection rate (connections/s)", True),
            ("def_l4ka_rps", "Keep-alive through L4 (requests/s)", True),
            ("def_l7_rps", "L7 keep-alive (requests/s)", True),
        ],
    },
    {
        "title": "TLS termination (TLS 1.3, X25519), one thread per proxy, plain HTTP/1.1 to the backend",
        "contenders": ["tandem", "haproxy", "nginx"],
        "subject": "tandem",
        "rows": [
            ("tls_ecdsa_rps", "Full handshakes, ECDSA P-256 (connections/s)", True),
            ("tls_ecdsa_cpu", "Full handshake, ECDSA P-256: proxy core busy time (us)", False),
            ("tls_rsa_rps", "Full handshakes, RSA 2048 (connections/s)", True),
            ("tls_rsa_cpu", "Full handshake, RSA 2048: proxy core busy time (us)", False),
            ("tls_resume_rps", "Resumed handshakes, ECDSA (connections/s)", True),
            ("tls_resume_cpu", "Resumed handshake: proxy core busy time (us)", False),
            ("tls_ka_rps", "HTTPS keep-alive (requests/s)", True),
            ("tls_ka_p99", "HTTPS keep-alive p99 latency (ms)", False),
            ("tls_ka_cpu", "HTTPS keep-alive: proxy core busy time per request (us)", False),
        ],
    },
    {
        "title": "HTTP/2 (h2load, 10 connections x 10 streams), one thread per proxy, HTTP/1.1 to the backend",
        "contenders": ["tandem", "haproxy", "nginx"],
        "subject": "tandem",
        "rows": [
            ("h2_rps", "HTTP/2 over TLS (requests/s)", True),
            ("h2_p99", "HTTP/2 over TLS p99 latency (ms)", False),
            ("h2_cpu", "HTTP/2 over TLS: proxy core busy time per request (us)", False),
            ("h2c_rps", "h2c, prior knowledge (requests/s)", True),
            ("h2c_p99", "h2c p99 latency (ms)", False),
            ("h2c_cpu", "h2c: proxy core busy time per request (us)", False),
        ],
    },
    {
        "title": "Memory per idle client connection, one thread per proxy",
        "contenders": ["tandem", "haproxy", "nginx"],
        "subject": "tandem",
        "rows": [
            ("mem_http_kib", "Memory per idle keep-alive HTTP connection (KiB)", False),
            ("mem_tls_kib", "Memory per idle TLS (HTTPS keep-alive) connection (KiB)", False),
        ],
    },
    {
        "title": "Redirect mode: kernel forwarding in a namespace lab (client, balancer, backend)",
        "contenders": ["tandem-redirect", "ipvs", "tandem", "haproxy", "direct"],
        "subject": "tandem-redirect",
        "rows": [
            ("rd_bulk1", "Bulk through the balancer, 1 stream (Gbit/s)", True),
            ("rd_bulk8", "Bulk through the balancer, 8 streams (Gbit/s)", True),
            ("rd_conn_rps", "Connection rate through the balancer (connections/s)", True),
            ("rd_conn_p99", "Connection p99 latency (ms)", False),
        ],
    },
    {
        "title": "Scale: 1,000 services / 10,000 backends, 1,000,000 sticky entries, 10,000 checked backends (--quick: 100 / 1,000, 100,000, 1,000)",
        "contenders": ["tandem", "haproxy"],
        "subject": "tandem",
        "rows": [
            ("sc_start_ms", "Start until the last service listens (ms)", False),
            ("sc_rss_mib", "RSS once started (MiB; HAProxy: master + worker)", False),
            ("sc_reload_ms", "Reload adding a service: until it accepts (ms)", False),
            ("sc_reload_failed", "Connections failed during the reload", False),
            ("sc_sticky_bytes", "RSS per sticky entry (bytes)", False),
            ("sc_sync_ms", "Bulk sync: a joining node holds the whole table (ms)", False),
            ("sc_sync_mib", "Bulk sync: bytes on the sync connection, both ways (MiB)", False),
            ("sc_check_cpu", "TCP checks every 2 s: proxy CPU (ms per second)", False),
        ],
    },
    {
        "title": "Failover (network-namespace lab; HAProxy column = keepalived + HAProxy, advert 100 ms)",
        "contenders": ["tandem", "haproxy"],
        "subject": "tandem",
        "rows": [
            ("failover_ms", "Failover: master SIGKILLed to first served request (ms)", False),
        ],
    },
]


def table(section, med):
    contenders, subject = section["contenders"], section["subject"]
    # Ratios against the other proxies first, against no proxy last.
    others = sorted((c for c in contenders if c != subject), key=lambda c: c == "direct")
    if not any((c, key) in med for key, _, _ in section["rows"] for c in contenders):
        return []
    lines = [
        f"### {section['title']}",
        "",
        "| scenario | better | " + " | ".join(contenders) + " | "
        + " | ".join(f"{subject}/{o}" for o in others) + " |",
        "|---|---|" + "---|" * (len(contenders) + len(others)),
    ]
    for key, label, higher in section["rows"]:
        cells = [f"{med[(c, key)]:.2f}" if (c, key) in med else "-" for c in contenders]
        t = med.get((subject, key))

        def ratio(other):
            o = med.get((other, key))
            if t is None or o is None or o == 0:
                return "-"
            return f"{t / o:.2f}"

        lines.append(
            f"| {label} | {'higher' if higher else 'lower'} | " + " | ".join(cells)
            + " | " + " | ".join(ratio(o) for o in others) + " |"
        )
    return lines + [""]


def report(results, out, machine):
    values = {}
    for line in open(results):
        fields = line.split()
        try:
            contender, row, value = fields
            values.setdefault((contender, row), []).append(float(value))
        except ValueError:
            # A measurement that gave no figure: its cell stays empty, the rest stands.
            print(f"bench/run: no figure in the record {line.strip()!r}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in values.items()}
    lines = [f"Machine: {machine}", ""]
    for section in SECTIONS:
        lines += table(section, med)
    lines.append("Ratios divide the subject's figure by the other's: above 1 is better for a")
    lines.append("'higher' row, below 1 is better for a 'lower' row. Each cell is the median of the runs.")
    text = "\n".join(lines) + "\n"
    open(out, "w").write(text)
    print(text)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "wrk":
        wrk(sys.argv[2])
    elif cmd == "iperf":
        iperf(sys.argv[2])
    elif cmd == "busy":
        busy(sys.argv[2])
    elif cmd == "per_request":
        per_request(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "h2load":
        h2load(sys.argv[2], sys.argv[3])
    elif cmd == "per_count":
        per_count(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "rss":
        rss(sys.argv[2:])
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
