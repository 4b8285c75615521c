"""What webhooks and the archive cost per message, against the same build with them off.

relaymail runs under twistd (one process, ``smtp.workers: 0``, so one process's CPU is the
whole cost) and relays to Postfix's smtp-sink; smtp-source sends the messages.  For each
variant (off, webhooks, batched — webhooks with ``batch_size`` 50 —, archive, both) it
measures, over the same load, the CPU time (user + system, from /proc) the relaymail
process spent per message, from the first message to the queue drained and every webhook
delivered, and the end-to-end rate.  The webhook receiver is a separate process (Python's
http.server answering 200), so its CPU is not counted.  Several rounds; the median is
printed with the ratio to "off".
Run: ``python bench/events.py`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bench.run import free_port, progress, sink, smtp_source, wait_until_empty  # noqa: E402
from tests.interop.postfix_client import wait_for_port  # noqa: E402

BIN = os.path.dirname(sys.executable)
TICKS = os.sysconf("SC_CLK_TCK")
VARIANTS = ("off", "webhooks", "batched", "archive", "both")  # batched: batch_size 50

RECEIVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        count = 0
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            H.count += int(self.headers.get("X-Relaymail-Events", "1"))
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def do_GET(self):
            body = str(H.count).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


@contextmanager
def receiver() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                received(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def received(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return int(response.read())


@contextmanager
def relaymail(work: str, sink_port: int, hook_port: int | None, archive: bool,
              batch_size: int = 1) -> Iterator[tuple[int, int]]:
    port = free_port()
    os.makedirs(work, exist_ok=True)
    data: dict = {
        "hostname": "bench.localdomain", "spool_dir": "spool", "web": {"enabled": False},
        "smtp": {"workers": 0, "max_connections": 1000, "max_connections_per_ip": 1000,
                 "listeners": [{"name": "smtp", "tls": "none",
                                "endpoint": f"tcp:{port}:interface=127.0.0.1"}]},
        "routes": [{"domains": ["*"], "transport": "sink"}],
        "transports": {"sink": {"type": "smarthost", "upstreams": [
            {"host": "127.0.0.1", "port": sink_port, "tls": "none"}]}},
        "log": {"level": "warn"},
        "archive": {"enabled": archive},
    }
    if hook_port is not None:
        data["webhooks"] = [{"url": f"http://127.0.0.1:{hook_port}/hook", "name": "bench",
                             "secret": "bench-secret-0123456789", "batch_size": batch_size}]
    config = os.path.join(work, "relay.json")
    with open(config, "w") as f:
        json.dump(data, f)
    log = open(os.path.join(work, "relaymail.log"), "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile=-",
                             "relaymail", "--config", config], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def one_round(work: str, variant: str, sink_port: int, hook_port: int, messages: int,
              sessions: int, size: int) -> tuple[float, float]:
    """(CPU µs per message, messages/s end to end) for one variant."""
    hooks = variant in ("webhooks", "batched", "both")
    with relaymail(work, sink_port, hook_port if hooks else None,
                   variant in ("archive", "both"),
                   50 if variant == "batched" else 1) as (port, pid):
        spool = os.path.join(work, "spool")
        smtp_source(port, sessions, min(200, messages), size)  # warm-up
        wait_until_empty(spool, ("queue",))
        before_hooks = received(hook_port) if hooks else 0
        cpu, start = cpu_seconds(pid), time.perf_counter()
        smtp_source(port, sessions, messages, size)
        wait_until_empty(spool, ("queue",))
        # accepted + delivered for each message
        deadline = time.monotonic() + 300
        while hooks and received(hook_port) - before_hooks < 2 * messages:
            if time.monotonic() > deadline:
                raise RuntimeError("webhooks did not all arrive")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        used = cpu_seconds(pid) - cpu
    return 1e6 * used / messages, messages / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="relaymail-events-bench-") as tmp, \
            sink() as sink_port, receiver() as hook_port:
        for n in range(args.rounds):
            for variant in VARIANTS:
                progress(f"events bench round {n + 1}: {variant}")
                results[variant].append(one_round(
                    os.path.join(tmp, f"{variant}-{n}"), variant, sink_port, hook_port,
                    args.messages, args.sessions, args.size))
    base = statistics.median(cpu for cpu, _ in results["off"])
    base_rate = statistics.median(rate for _, rate in results["off"])
    print(f"\nwebhooks and archive: {args.messages} x {args.size} B, {args.sessions} sessions, "
          f"{args.rounds} rounds (median; relaymail CPU per message, user+system)")
    print(f"{'variant':<10} {'CPU us/msg':>11} {'vs off':>7} {'msg/s':>8} {'vs off':>7}  rounds")
    for variant in VARIANTS:
        cpu = statistics.median(c for c, _ in results[variant])
        rate = statistics.median(r for _, r in results[variant])
        rounds = ", ".join(f"{c:.0f}/{r:.0f}" for c, r in results[variant])
        print(f"{variant:<10} {cpu:>11.0f} {cpu / base:>6.2f}x {rate:>8.0f} "
              f"{rate / base_rate:>6.2f}x  {rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
