"""A throttling provider under sustained load: one upstream that answers 451 to ~15 % of
RCPTs, drops ~4 % of DATA phases and refuses ~4 % at the end of DATA.  With one upstream
and no backup, every message must be delivered once it has had its retries, none lost or
duplicated, the queue drained within a few retry intervals, and the log must not fill with
"marked down" deferrals (recipient replies never open the breaker; Postfix counts only
session trouble against a site)."""

from __future__ import annotations

import random
import smtplib
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent
from twisted.protocols.basic import LineReceiver

from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import wait_until

MESSAGES = 600
RCPT_DEFER, DATA_DROP, END_REFUSE = 0.15, 0.04, 0.04


class FlakySession(LineReceiver):
    """ESMTP with PIPELINING whose faults are drawn from a seeded generator."""

    def __init__(self, server: FlakyUpstream) -> None:
        self.server = server
        self.rcpts: list[str] = []
        self.lines: list[bytes] | None = None

    def connectionMade(self) -> None:
        self.sendLine(b"220 flaky.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.lines is not None:
            self.data_line(line)
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-flaky.test\r\n250-PIPELINING\r\n250 8BITMIME")
        elif verb == b"MAIL":
            self.rcpts = []
            self.sendLine(b"250 2.1.0 Ok")
        elif verb == b"RCPT":
            if self.server.rng.random() < RCPT_DEFER:
                self.server.faults += 1
                self.sendLine(b"451 4.7.1 Temporary local problem, try again later")
            else:
                self.rcpts.append(line[line.index(b"<") + 1:line.index(b">")].decode())
                self.sendLine(b"250 2.1.5 Ok")
        elif verb == b"DATA":
            if not self.rcpts:
                self.sendLine(b"554 5.5.1 no valid recipients")
            else:
                self.lines = []
                self.sendLine(b"354 go ahead")
        elif verb == b"RSET":
            self.sendLine(b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 unknown")

    def data_line(self, line: bytes) -> None:
        assert self.lines is not None
        if not self.lines and self.server.rng.random() < DATA_DROP:
            self.server.faults += 1
            self.lines = None
            self.transport.abortConnection()
            return
        if line != b".":
            self.lines.append(line)
            return
        subject = next((x for x in self.lines if x.startswith(b"Subject: ")), b"?")
        self.lines = None
        if self.server.rng.random() < END_REFUSE:
            self.server.faults += 1
            self.sendLine(b"451 4.3.0 Temporary failure, please retry")
            return
        for rcpt in self.rcpts:
            self.server.delivered[(subject.decode(), rcpt)] += 1
        self.sendLine(b"250 2.0.0 Ok: queued")


class FlakyUpstream:
    def __init__(self) -> None:
        self.rng = random.Random(20261201)
        self.faults = 0
        self.delivered: Counter[tuple[str, str]] = Counter()
        self.port: Any = None

    async def start(self) -> FlakyUpstream:
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FlakySession(self)))
        return self


def send_many(port: int, start: int, count: int) -> list[tuple[str, str]]:
    """``count`` messages over one connection; returns (subject, recipient) sent."""
    sent = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(start, start + count):
            rcpts = [f"r{i}-{j}@dest.test" for j in range(1 + i % 3)]
            subject = f"Subject: load {i}"
            s.sendmail("app@client.test", rcpts, f"{subject}\r\n\r\nmessage {i}\r\n".encode())
            sent += [(subject, r) for r in rcpts]
    return sent


class FlakyUpstreamTests(RelayTestCase):
    async def test_sustained_load_through_a_throttling_provider_delivers_everything(self) -> None:
        upstream = await FlakyUpstream().start()
        self.addCleanup(upstream.port.stopListening)
        relay = await self.relay(**smarthost(plain(upstream.port.getHost().port),
                                             retry_schedule=[1, 2, 3]))
        started = reactor.seconds()
        clients, per_client = 6, MESSAGES // 6
        parts = [deferToThreadPool(reactor, self.clients, send_many, relay.smtp_port,
                                   k * per_client, per_client) for k in range(clients)]
        sent = [pair for part in parts for pair in await part]
        loaded = reactor.seconds()
        await wait_until(lambda: set(upstream.delivered) >= set(sent), seconds=90,
                         what="every recipient delivered")
        await self.drained(relay)
        drained = reactor.seconds()
        self.assertEqual(sorted(upstream.delivered), sorted(sent))  # none lost, none extra
        twice = {k: n for k, n in upstream.delivered.items() if n > 1}
        self.assertEqual(twice, {})  # faults come before the final ".": nothing is sent twice
        self.assertEqual(self.envelopes(relay, "failed"), [])
        text = [formatEvent(e) for e in self.events]
        marked_down = [t for t in text if "marked down" in t]
        deferrals = [t for t in text if "status=deferred" in t]
        self.assertEqual(marked_down, [])
        # One log line per deferral that really happened: bounded by the faults injected.
        self.assertLessEqual(len(deferrals), upstream.faults)
        self.assertGreater(upstream.faults, MESSAGES * 0.15)  # the faults were really met
        # A few retry intervals (1, 2, 3 s), not the minutes of a default schedule; the
        # drain itself took 9-21 s on the 2-core VM, 33 s once in CI beside a slow disk.
        self.assertLess(drained - loaded, 60)
        print(f"flaky upstream: {len(sent)} recipients in {MESSAGES} messages, "
              f"{upstream.faults} faults, {len(deferrals)} deferral lines, load "
              f"{loaded - started:.1f} s, drained {drained - loaded:.1f} s after")
