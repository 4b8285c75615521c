"""Scale benchmarks that need no Postfix: memory per idle connection with idle
sessions (50,000 by default, held over the acceptor processes, with one ordinary client
served meanwhile), one 100 MB message (RSS growth and MB/s), and restart time with 100,000 queued
messages.  Printed as a table with the issue's targets; run by ``make bench``."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BIN, free_port, hold_idle, relaymail, rss_kib

from relaymail.spool import new_queue_id
from relaymail.spool.envelope import Envelope, Recipient
from relaymail.spool.record import envelope_record


def peak_rss_during(pid: int, action: object) -> tuple[int, float]:
    """(peak RSS KiB while ``action()`` runs, what it returned)."""
    peak, done = [rss_kib(pid)], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()  # type: ignore[operator]
    finally:
        done.set()
        sampler.join()
    return peak[0], result


def big_message(port: int, megabytes: int, outbox: str) -> float:
    """Send it, and wait until it is delivered to the outbox (memory is sampled over both);
    returns the seconds from DATA's 354 to the 250.  The session is written by hand and
    the body made before the clock starts (no line starts with a dot): smtplib's own
    dot-stuffing and copies of 100 MB took half a second, which is the client's time."""
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (megabytes * 1024 * 1024 // len(line)) + b".\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        replies = s.makefile("rb")

        def command(line: bytes, expect: bytes) -> None:
            if line:
                s.sendall(line + b"\r\n")
            while True:
                reply = replies.readline()
                if reply[3:4] != b"-":
                    break
            if not reply.startswith(expect):
                raise RuntimeError(f"{line!r}: {reply!r}")

        command(b"", b"220")
        command(b"EHLO bench.example", b"250")
        command(b"MAIL FROM:<a@client.example> SIZE=%d" % len(body), b"250")
        command(b"RCPT TO:<b@dest.example>", b"250")
        command(b"DATA", b"354")
        started = time.perf_counter()
        s.sendall(body)
        command(b"", b"250")
        accepted = time.perf_counter() - started
        command(b"QUIT", b"221")
    while not (os.path.isdir(outbox) and os.listdir(outbox)):
        time.sleep(0.05)
    return accepted


def fill_spool(spool: str, count: int) -> None:
    """``count`` queued messages written straight into a spool as relaymail stores them:
    the body with its envelope record in ``data/``; in ``queue/``, for half of them a
    second name of that file (as the commit leaves it), for the other half an envelope
    file of its own (as after a delivery attempt that deferred it)."""
    for sub in ("incoming", "data", "queue", "hold", "failed"):
        os.makedirs(os.path.join(spool, sub), exist_ok=True)
    now = time.time()
    body = b"Subject: queued\r\n\r\n" + b"a line of a queued message\r\n" * 100
    for i in range(count):
        qid = new_queue_id(now + i * 1e-6)
        envelope = Envelope(queue_id=qid, sender="a@client.example",
                            recipients=[Recipient(f"r{i}@dest.example")], received_at=now,
                            next_attempt=now + 3600, size=len(body))
        stored, queued = (os.path.join(spool, "data", qid + ".eml"),
                          os.path.join(spool, "queue", qid + ".json"))
        with open(stored, "wb") as f:
            f.write(body + envelope_record(envelope.to_json()))
        if i % 2:
            os.link(stored, queued)
            continue
        envelope.attempts = 1
        with open(queued, "wb") as f:
            f.write(envelope.to_json())


def restart_time(workdir: str, count: int, workers: int | None = None
                 ) -> tuple[float, float]:
    """A restart with ``count`` queued: the relay runs once on the spool (making its
    databases, as any relay that is restarted has), ``count`` messages are added as
    committed messages are stored, and the relay starts again.  Returns the seconds from
    that start to the first SMTP banner, and to the log line saying every queued message
    is read back (the full schedule)."""
    port = free_port()
    os.makedirs(workdir, exist_ok=True)
    config = os.path.join(workdir, "relay.json")
    logfile = os.path.join(workdir, "relay.log")
    with open(config, "w") as f:
        json.dump({"hostname": "bench.localdomain", "spool_dir": "spool",
                   "web": {"enabled": False}, "log": {"level": "info"},
                   "smtp": {"workers": workers,
                            "listeners": [{"name": "smtp", "tls": "none",
                                           "endpoint": f"tcp:{port}:interface=127.0.0.1"}]},
                   "routes": [{"domains": ["*"], "transport": "nowhere"}],
                   "transports": {"nowhere": {"type": "smtp", "upstreams": [
                       {"host": "127.0.0.1", "port": free_port(), "tls": "none"}]}}}, f)
    command = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", f"--logfile={logfile}",
               "relaymail", "--config", config]
    for run in ("first", "restart"):
        if run == "restart":
            fill_spool(os.path.join(workdir, "spool"), count)
            os.sync()  # on disk, as a spool is when its relay restarts (else the start's
            # first fsync would wait for the writeback of the whole fill)
            os.unlink(logfile)
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            banner = first_banner(port, proc) - started
            while not recovered(logfile):
                if proc.poll() is not None:
                    raise RuntimeError("relaymail exited")
                time.sleep(0.02)
            schedule = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    return banner, schedule


def first_banner(port: int, proc: subprocess.Popen) -> float:
    """When a connection to ``port`` first got a 220 (perf_counter)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                if s.recv(100).startswith(b"220"):
                    return time.perf_counter()
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("relaymail exited") from None
            time.sleep(0.01)


def recovered(logfile: str) -> bool:
    """Whether the log says the queue found at startup is read back."""
    try:
        with open(logfile, "rb") as f:
            return b"queued message(s) recovered in" in f.read()
    except FileNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=50_000)
    parser.add_argument("--idle-workers", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--queued", type=int, default=100_000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # relaymail inherits it
    work = tempfile.mkdtemp(prefix="relaymail-scale-")
    try:
        # Each acceptor holds its share; four of them keep each under a 20,000-descriptor
        # limit however unevenly the kernel spreads the connections.
        with relaymail(os.path.join(work, "idle"), 19_000, workers=args.idle_workers) as r:
            idle, meanwhile = hold_idle(r.port, r.pid, args.idle)
        with relaymail(os.path.join(work, "big"), 100,
                       max_message_size=(args.megabytes + 10) * 1024 * 1024) as r:
            before = rss_kib(r.pid)
            outbox = os.path.join(r.workdir, "var", "outbox", "new")
            peak, seconds = peak_rss_during(
                r.pid, lambda: big_message(r.port, args.megabytes, outbox))
        banner, schedule = restart_time(os.path.join(work, "restart"), args.queued)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (f"RSS per idle connection ({args.idle} idle, main + {args.idle_workers} acceptors), "
         "KiB",
         f"{idle:.2f}", "<= 3"),
        ("a normal client's message meanwhile, s", f"{meanwhile:.2f}", ""),
        (f"RSS growth, one {args.megabytes} MB message accepted and delivered, MB",
         f"{(peak - before) / 1024:.1f}", "< 10"),
        (f"{args.megabytes} MB message accepted, MB/s", f"{args.megabytes / seconds:.1f}", ""),
        (f"restart to first banner with {args.queued} queued, s", f"{banner:.2f}", "<= 1"),
        ("restart to the full schedule, s", f"{schedule:.2f}", "<= 5"),
    ]
    print(f"\n{'measure':<58}{'relaymail':>12}{'target':>10}")
    for name, value, target in rows:
        print(f"{name:<58}{value:>12}{target:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
