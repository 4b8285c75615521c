"""CPU per accepted message on the SMTP side, in one process, without the network.

Runs smtp-source's session (connect, EHLO, MAIL, RCPT, DATA with its 58-line 4 KiB body,
QUIT) through the production session code (relaymail.smtp) over an in-memory transport,
committing into a real spool whose fsyncs are skipped; the reactor's thread pool is
replaced by running the commit at once.  What it prints is the Python work of accepting
one message (parsing, policy, Received header, spool files, logging), measured with
``time.process_time``, best and median of several rounds (the best is what the code
costs; other load on the machine only adds), so it shows what a change to the hot path
buys where wall-clock throughput on a shared 2-core machine is too noisy to.
Run: ``python bench/hotpath.py`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import address, task  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import globalLogBeginner, jsonFileLogObserver  # noqa: E402

from relaymail import logs  # noqa: E402
from relaymail.config import load_config  # noqa: E402
from relaymail.smtp.build import build_context, listener_factory  # noqa: E402
from relaymail.spool.safeio import FileOps  # noqa: E402
from relaymail.spool.writer import run_synchronously  # noqa: E402

BODY = b"".join(b"%dX%s\r\n" % (i, b"X" * (77 - len(str(i)))) for i in range(1, 54))
MESSAGE = (b"From: <bench@client.example>\r\nTo: <sink@dest.example>\r\n"
           b"Date: Tue,  1 Dec 2026 21:29:54 +0000 (UTC)\r\n"
           b"Message-Id: <58f9.0003.0000@vm>\r\n\r\n" + BODY + b".\r\n")


class NoSync(FileOps):
    """The spool's file operations without fsync: this measures CPU, not the disk."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


def context(directory: str, log_level: str) -> Any:
    config = {"hostname": "bench.localdomain", "spool_dir": os.path.join(directory, "spool"),
              "web": {"enabled": False}, "log": {"level": log_level},
              "smtp": {"workers": 0, "listeners": [{"name": "smtp", "tls": "none",
                                                    "endpoint": "tcp:0"}]}}
    path = os.path.join(directory, "relay.json")
    with open(path, "w") as f:
        json.dump(config, f)
    clock = task.Clock()
    clock.advance(time.time())
    reactor: Any = clock
    reactor.getThreadPool = lambda: None
    reactor.addSystemEventTrigger = lambda *args: None
    loaded = load_config(path, environ={})
    logs.set_level(loaded.log.level)
    ctx = build_context(loaded, reactor)
    ctx.spool.ops = NoSync()
    ctx.spool.run_in_thread = run_synchronously
    ctx.spool.run_serially = run_synchronously
    if ctx.checker is not None:
        ctx.checker.run_in_thread = run_synchronously
    ctx.spool.prepare()
    return ctx, listener_factory(ctx, loaded.smtp.listeners[0])


def one_session(factory: Any, ctx: Any) -> bytes:
    proto = factory.buildProtocol(address.IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    for chunk in (b"EHLO client.example\r\n", b"MAIL FROM:<bench@client.example>\r\n",
                  b"RCPT TO:<sink@dest.example>\r\n", b"DATA\r\n", MESSAGE, b"QUIT\r\n"):
        proto.dataReceived(chunk)
    proto.connectionLost(None)
    return transport.value()


def measure(messages: int, log_level: str) -> float:
    """Microseconds of CPU per accepted message."""
    directory = tempfile.mkdtemp(prefix="relaymail-hotpath-")
    ctx, factory = context(directory, log_level)
    reply = one_session(factory, ctx)
    assert b"250 2.0.0 Ok: queued as" in reply, reply
    start = time.process_time()
    for _ in range(messages):
        one_session(factory, ctx)
    spent = time.process_time() - start
    shutil.rmtree(directory, ignore_errors=True)
    return spent / messages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    sink = io.StringIO()
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sink)], redirectStandardIO=False)
    print("SMTP-side CPU per accepted message (smtp-source's session, no network, no "
          "fsync), microseconds")
    for level in ("info", "warn"):
        runs = sorted(measure(args.messages, level) for _ in range(args.rounds))
        sink.seek(0)
        sink.truncate()
        print(f"  log.level {level:5}: best {runs[0]:5.0f}  median "
              f"{runs[len(runs) // 2]:5.0f}  ({args.rounds} rounds of {args.messages})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
