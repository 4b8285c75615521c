"""Benchmarks: relaymail against a private Postfix instance, measured in one run.

Load comes from Postfix's smtp-source.  Acceptance: accepted messages/s, 1-session latency,
memory per idle connection.  End to end: smtp-source -> server -> smtp-sink, messages/s
until the queue is empty, accept-to-delivered delay (p50, p99, from each server's own
delivery log lines) and upstream connections per 1,000 messages (connection reuse).
Run with ``make bench`` (needs Debian's postfix package: apt-get install postfix).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository: its test helpers run Postfix
from tests.interop.postfix_client import (  # noqa: E402
    private_main_cf,
    private_postfix,
    wait_for_port,
)

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def smtp_source(port: int, sessions: int, messages: int, size: int) -> float:
    """Run smtp-source; return elapsed seconds for ``messages`` messages."""
    progress(f"smtp-source -s {sessions} -m {messages} -l {size} -> port {port}")
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-f", "bench@client.example", "-t", "sink@dest.example", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - start


@dataclass
class Relaymail:
    port: int
    pid: int
    workdir: str
    web_port: int

    def status(self) -> dict:
        with open(os.path.join(self.workdir, "spool", "control.token")) as f:
            token = f.read().strip()
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}/api/relay/status",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@contextmanager
def relaymail(workdir: str, max_connections: int, sink_port: int | None = None,
              pin: str | None = None, delivery: dict | None = None,
              **smtp: object) -> Iterator[Relaymail]:
    """relaymail under twistd; with ``sink_port`` it relays there (else the maildir outbox);
    ``delivery`` is its config section (``{"paused": True}``: accept only)."""
    port, web_port = free_port(), free_port()
    level = str(smtp.pop("__log", "info" if sink_port else "warn"))
    os.makedirs(workdir, exist_ok=True)
    config = os.path.join(workdir, "relay.json")
    data: dict = {
        "hostname": "bench.localdomain", "spool_dir": "spool",
        "web": {"endpoint": f"tcp:{web_port}:interface=127.0.0.1"},
        "smtp": {"listeners": [{"name": "smtp", "tls": "none",
                                "endpoint": f"tcp:{port}:interface=127.0.0.1"}],
                 "max_connections": max_connections,
                 "max_connections_per_ip": max_connections, **smtp},
        "log": {"level": level},
        "delivery": delivery or {},
    }
    if sink_port:
        data["routes"] = [{"domains": ["*"], "transport": "sink"}]
        data["transports"] = {"sink": {"type": "smarthost", "upstreams": [
            {"host": "127.0.0.1", "port": sink_port, "tls": "none"}]}}
    with open(config, "w") as f:
        json.dump(data, f)
    log = open(os.path.join(workdir, "relaymail.log"), "wb")  # noqa: SIM115 (closed below)
    prefix = ["taskset", "-c", pin] if pin else []  # pinned: smtp.workers follows
    proc = subprocess.Popen([*prefix, os.path.join(BIN, "twistd"), "-n", "--pidfile=",
                             "--logfile=-", "relaymail", "--config", config],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        wait_for_acceptors(web_port)
        yield Relaymail(port, proc.pid, workdir, web_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def wait_for_acceptors(web_port: int, seconds: float = 60) -> None:
    """Until every acceptor process serves (``/health``): the main process answers SMTP
    from the start, and memory or speed measured while acceptors still start is not
    theirs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health",
                                        timeout=5) as response:
                workers = json.loads(response.read())["details"].get("workers", [])
            if all(w["serving"] for w in workers):
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError("the acceptors did not start serving")


@contextmanager
def sink() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


# Accept-only: no queue manager, and so no in_flow_delay stalls waiting for one.
BENCH_CF = """\
smtp_tls_security_level = none
master_service_disable = {disable}
in_flow_delay = {flow_delay}
"""


@contextmanager
def postfix(workdir: str, sink_port: int, accept_only: bool) -> Iterator[int]:
    """A private Postfix instance in ``workdir`` relaying to the sink."""
    conf = os.path.join(workdir, "postfix")
    os.makedirs(conf, exist_ok=True)
    extra = BENCH_CF.format(disable="qmgr.unix" if accept_only else "",
                            flow_delay="0s" if accept_only else "1s")
    text = private_main_cf(conf, "bench.localdomain", sink_port, extra)
    with private_postfix(conf, text) as port:
        yield port


def queue_files(root: str, subdirs: tuple[str, ...]) -> int:
    total = 0
    for sub in subdirs:
        for _, _, files in os.walk(os.path.join(root, sub)):
            total += len(files)
    return total


def wait_until_empty(root: str, subdirs: tuple[str, ...], seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while queue_files(root, subdirs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue under {root} did not drain")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


RELAYMAIL_SENT = re.compile(r" delay=([\d.]+) status=sent ")
POSTFIX_SENT = re.compile(r"postfix/smtp\[\d+\]: \w+: to=<[^>]*>, relay=[^,]+, "
                          r"(conn_use=\d+, )?delay=([\d.]+),.* status=sent ")


def end_to_end_relaymail(work: str, sink_port: int, sessions: int, messages: int,
                         size: int) -> dict[str, float]:
    warm = min(messages, 500)
    with relaymail(work, 1000, sink_port) as r:
        smtp_source(r.port, sessions, warm, size)  # warm-up
        wait_until_empty(os.path.join(work, "spool"), ("queue",))
        with open(os.path.join(work, "relaymail.log")) as f:
            f.seek(0, 2)
            start_offset = f.tell()
        start = time.perf_counter()
        smtp_source(r.port, sessions, messages, size)
        wait_until_empty(os.path.join(work, "spool"), ("queue",))
        elapsed = time.perf_counter() - start
        connections = r.status()["connections_opened"]  # warm-up included
        with open(os.path.join(work, "relaymail.log")) as f:
            f.seek(start_offset)
            delays = [float(m.group(1)) for m in RELAYMAIL_SENT.finditer(f.read())]
    return {"rate": messages / elapsed, "p50": percentile(delays, 0.5),
            "p99": percentile(delays, 0.99),
            "conns_per_1000": 1000 * connections / (messages + warm), "logged": len(delays)}


def end_to_end_postfix(work: str, sink_port: int, sessions: int, messages: int,
                       size: int) -> dict[str, float]:
    queue = os.path.join(work, "postfix", "queue")
    busy = ("incoming", "active", "deferred", "maildrop")
    warm = min(messages, 500)
    with postfix(work, sink_port, accept_only=False) as port:
        smtp_source(port, sessions, warm, size)
        wait_until_empty(queue, busy)
        log = os.path.join(work, "postfix", "maillog")
        time.sleep(1)
        with open(log) as f:
            warm_connections = sum(1 for reuse, _ in POSTFIX_SENT.findall(f.read()) if not reuse)
        offset = os.path.getsize(log)
        start = time.perf_counter()
        smtp_source(port, sessions, messages, size)
        wait_until_empty(queue, busy)
        elapsed = time.perf_counter() - start
        time.sleep(1)  # postlogd writes asynchronously
        with open(log) as f:
            f.seek(offset)
            sent = POSTFIX_SENT.findall(f.read())
    delays = [float(d) for _, d in sent]
    connections = warm_connections + sum(1 for reuse, _ in sent if not reuse)
    return {"rate": messages / elapsed, "p50": percentile(delays, 0.5),
            "p99": percentile(delays, 0.99),
            "conns_per_1000": 1000 * connections / (messages + warm), "logged": len(sent)}


def own_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def rss_kib(pid: int) -> int:
    """RSS of relaymail's main process and its acceptor processes together."""
    total = own_rss_kib(pid)
    for child in children(pid):
        with suppress(OSError, RuntimeError):
            total += own_rss_kib(child)
    return total


def idle_connection_cost(port: int, pid: int, count: int) -> float:
    """KiB of relaymail RSS (main and acceptors) per idle connection (banner read, then
    nothing).  Connections come from several loopback addresses, 20,000 each, so that
    more of them than one address's ephemeral ports can be held."""
    return hold_idle(port, pid, count)[0]


HOLDER = """
import socket, sys
port, count, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
IP_BIND_ADDRESS_NO_PORT = 24  # the port is chosen at connect: no clash across addresses


def connect():
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


held = [connect() for _ in range(count)]
for s in held:
    s.settimeout(60)
    assert s.recv(200).startswith(b"220")
print("ready", flush=True)
sys.stdin.read()
"""
def warm_up(port: int, sessions: int = 200) -> None:
    """Sessions on every acceptor before the baseline is read, so that what a process
    loads or allocates once (on its first session) is not counted per connection."""
    for _ in range(sessions):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.recv(200)
            s.sendall(b"EHLO warm.example\r\nQUIT\r\n")
            while s.recv(4096):
                pass


PER_HOLDER = 15_000  # connections per holding process (under the usual 20,000 fd limit)


def hold_idle(port: int, pid: int, count: int) -> tuple[float, float]:
    """(KiB of relaymail RSS, main and acceptors, per idle connection; seconds a normal
    client took to send one message while they were held).  The connections are held by
    helper processes, 15,000 each from its own loopback address, so that more can be held
    than one process's descriptors or one address's ephemeral ports allow."""
    import smtplib

    progress(f"{count} idle connections")
    warm_up(port)
    before = rss_kib(pid)
    holders = []
    try:
        for i, start in enumerate(range(0, count, PER_HOLDER)):
            n = min(PER_HOLDER, count - start)
            holders.append(subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(port), str(n), f"127.0.0.{2 + i}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        for holder in holders:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != b"ready":
                raise RuntimeError("an idle-connection holder failed")
        time.sleep(0.5)
        cost = (rss_kib(pid) - before) / count
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("a@client.example", ["b@dest.example"], b"Subject: meanwhile\r\n"
                            b"\r\nserved while the idle ones wait\r\n")
        return cost, time.perf_counter() - started
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--latency-messages", type=int, default=500)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    if not shutil.which("smtp-source") or not shutil.which("postfix"):
        print("bench: needs Debian's postfix package (smtp-source, smtp-sink, postfix)")
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle * 2 + 100)), hard))
    work = tempfile.mkdtemp(prefix="relaymail-bench-")
    os.chmod(work, 0o755)  # Postfix's unprivileged daemons must reach their queue below it
    n, s, size = args.messages, args.sessions, args.size
    results: dict[str, float] = {}
    try:
        with sink() as sink_port:
            # relaymail relays to the sink while accepting, like "postfix while relaying".
            with relaymail(os.path.join(work, "r"), args.idle + 100, sink_port) as r:
                smtp_source(r.port, s, min(n, 500), size)  # warm-up
                results["relaymail_accept"] = n / smtp_source(r.port, s, n, size)
                # Latency with nothing else to do but relay each message as it comes (the
                # queue of the run above drained), as for Postfix below.
                wait_until_empty(os.path.join(r.workdir, "spool"), ("queue",))
                m = args.latency_messages
                results["relaymail_latency_ms"] = 1000 * smtp_source(r.port, 1, m, size) / m
                results["relaymail_idle_kib"] = idle_connection_cost(r.port, r.pid, args.idle)
            for name, options in (("relaymail_accept_1core", {"pin": "0"}),
                                  ("relaymail_accept_workers0", {"workers": 0}),
                                  ("relaymail_accept_only", {"delivery": {"paused": True}})):
                with relaymail(os.path.join(work, name), args.idle + 100, sink_port,
                               **options) as r:  # type: ignore[arg-type]
                    smtp_source(r.port, s, min(n, 500), size)
                    results[name] = n / smtp_source(r.port, s, n, size)
            for mode, accept_only in (("postfix_accept", True), ("postfix_relaying", False)):
                with postfix(os.path.join(work, mode), sink_port, accept_only) as port:
                    smtp_source(port, s, min(n, 500), size)
                    results[mode] = n / smtp_source(port, s, n, size)
                    if not accept_only:  # relaying: latency once its queue drained
                        wait_until_empty(os.path.join(work, mode, "postfix", "queue"),
                                         ("incoming", "active", "deferred", "maildrop"))
                    m = args.latency_messages
                    key = "postfix_latency_ms" if accept_only else "postfix_relaying_latency_ms"
                    results[key] = 1000 * smtp_source(port, 1, m, size) / m
            e2e = {"relaymail": end_to_end_relaymail(os.path.join(work, "e2e-r"), sink_port,
                                                     s, n, size),
                   "postfix": end_to_end_postfix(os.path.join(work, "e2e-p"), sink_port,
                                                 s, n, size)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, s, n, size, args.idle)
    report_end_to_end(e2e, s, n, size)
    return 0


def report(r: dict[str, float], sessions: int, messages: int, size: int, idle: int) -> None:
    print(f"\nacceptance: smtp-source -s {sessions} -m {messages} -l {size} (same run)")
    print(f"{'measure':<42}{'relaymail':>12}{'postfix':>12}{'ratio':>8}")
    rows = [
        ("accepted msg/s, both accept-only", r["relaymail_accept_only"], r["postfix_accept"]),
        ("accepted msg/s, both relaying", r["relaymail_accept"], r["postfix_relaying"]),
        ("accepted msg/s, relaying vs accept-only", r["relaymail_accept"],
         r["postfix_accept"]),
        ("1-session latency ms (postfix accept-only)", r["relaymail_latency_ms"],
         r["postfix_latency_ms"]),
        ("1-session latency ms (postfix relaying)", r["relaymail_latency_ms"],
         r["postfix_relaying_latency_ms"]),
    ]
    for name, ours, theirs in rows:
        print(f"{name:<42}{ours:>12.1f}{theirs:>12.1f}{ours / theirs:>8.2f}")
    print(f"{'accepted msg/s, one process (workers 0)':<42}"
          f"{r['relaymail_accept_workers0']:>12.1f}{r['postfix_relaying']:>12.1f}"
          f"{r['relaymail_accept_workers0'] / r['postfix_relaying']:>8.2f}")
    print(f"{'scaling: 2 cores / pinned to 1 core':<42}"
          f"{r['relaymail_accept'] / r['relaymail_accept_1core']:>12.2f}{'-':>12}{'-':>8}")
    print(f"{'RSS per idle connection, KiB (' + str(idle) + ' idle)':<42}"
          f"{r['relaymail_idle_kib']:>12.2f}{'-':>12}{'-':>8}")
    print("accept-only: relaymail with delivery.paused, Postfix without its queue manager")
    print("targets: acceptance ratio >= 1.5 (while relaying), >= 1.0 (accept-only); latency "
          "ratio <= 1.0 (lower is better; relaymail relays each message meanwhile, so the "
          "relaying row compares like with like); scaling >= 1.7; <= 3 KiB per idle "
          "connection")


def report_end_to_end(e: dict[str, dict[str, float]], sessions: int, messages: int,
                      size: int) -> None:
    print(f"\nend to end: smtp-source -s {sessions} -m {messages} -l {size} -> server -> "
          "smtp-sink (same run)")
    print(f"{'measure':<42}{'relaymail':>12}{'postfix':>12}{'ratio':>8}")
    ours, theirs = e["relaymail"], e["postfix"]
    for name, key in (("delivered msg/s (until queue empty)", "rate"),
                      ("accept-to-delivered p50 s", "p50"),
                      ("accept-to-delivered p99 s", "p99"),
                      ("upstream connections per 1000 msgs", "conns_per_1000")):
        ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
        print(f"{name:<42}{ours[key]:>12.3f}{theirs[key]:>12.3f}{ratio:>8.2f}")
    print(f"(delivery log lines parsed: relaymail {ours['logged']:.0f}, "
          f"postfix {theirs['logged']:.0f})")
    print("target: delivered msg/s ratio >= 1.2")


if __name__ == "__main__":
    sys.exit(main())
