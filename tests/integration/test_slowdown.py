"""Provider replies that mean "slow down": relaymail backs off that upstream (one session,
a widening interval), fails the waiting mail over to the next upstream meanwhile, and comes
back gradually, instead of collecting a throttle reply for nearly every message."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from relaymail.relay.slowdown import AdaptiveBackoff, asks_to_slow_down
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import wait_until

THROTTLED = b"454 4.7.0 Throttling failure: Maximum sending rate exceeded."


class RateLimitedSession(LineReceiver):
    """Like Amazon SES: MAIL is refused with 454 once the rate is over ``per_second``."""

    def __init__(self, server: RateLimited) -> None:
        self.server = server
        self.rcpts: list[str] = []
        self.lines: list[bytes] | None = None

    def connectionMade(self) -> None:
        self.sendLine(b"220 ses.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.lines is not None:
            if line == b".":
                for rcpt in self.rcpts:
                    self.server.delivered[rcpt] += 1
                self.lines = None
                self.sendLine(b"250 2.0.0 Ok")
            else:
                self.lines.append(line)
            return
        verb = line[:4].upper()
        replies = {b"EHLO": b"250-ses.test\r\n250 PIPELINING", b"RSET": b"250 2.0.0 Ok",
                   b"RCPT": b"250 2.1.5 Ok", b"QUIT": b"221 2.0.0 Bye"}
        if verb == b"MAIL":
            self.rcpts = []
            self.sendLine(self.server.mail_reply())
        elif verb == b"RCPT":
            self.rcpts.append(line[line.index(b"<") + 1:line.index(b">")].decode())
            self.sendLine(replies[verb])
        elif verb == b"DATA":
            if self.server.refused_mail:
                self.sendLine(b"503 5.5.1 need MAIL")
                return
            self.lines = []
            self.sendLine(b"354 go ahead")
        else:
            self.sendLine(replies.get(verb, b"502 5.5.2 unknown"))
            if verb == b"QUIT":
                self.transport.loseConnection()


class RateLimited:
    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.times: deque[float] = deque()
        self.delivered: Counter[str] = Counter()
        self.throttled = 0
        self.refused_mail = False
        self.port: Any = None

    def mail_reply(self) -> bytes:
        now = reactor.seconds()
        while self.times and self.times[0] <= now - 1:
            self.times.popleft()
        self.refused_mail = len(self.times) >= self.per_second
        if self.refused_mail:
            self.throttled += 1
            return THROTTLED
        self.times.append(now)
        return b"250 2.1.0 Ok"

    async def start(self) -> RateLimited:
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: RateLimitedSession(self)))
        return self


class SlowDownTests(RelayTestCase):
    async def test_throttle_replies_back_off_the_upstream_and_mail_fails_over(self) -> None:
        limited = await RateLimited(per_second=10).start()
        self.addCleanup(limited.port.stopListening)
        backup = await self.scripted()
        relay = await self.relay(**smarthost(plain(limited.port.getHost().port),
                                             plain(backup.port)))
        sent = [f"r{i}@dest.test" for i in range(150)]
        for i in range(0, len(sent), 10):
            await self.send(relay, sent[i:i + 10][:1])
            for rcpt in sent[i + 1:i + 10]:
                await self.send(relay, [rcpt])
        await wait_until(lambda: len(limited.delivered) + len(backup.messages) >= len(sent),
                         seconds=60, what="every message delivered")
        await self.drained(relay)
        got = Counter(limited.delivered)
        for m in backup.messages:
            got.update(m.rcpt_tos)
        self.assertEqual(sorted(got), sorted(sent))
        self.assertEqual(max(got.values()), 1)
        # Without the back-off nearly every message past the first 10 in each second met a
        # 454; with it, a handful do, and the limited upstream still carried its share.
        self.assertLess(limited.throttled, 25, limited.throttled)
        self.assertGreaterEqual(len(limited.delivered), 10)
        self.assertIn("asks us to slow down", self.log_text())
        print(f"slow-down: {len(limited.delivered)} via the limited upstream, "
              f"{len(backup.messages)} via the backup, {limited.throttled} throttle replies")


def test_slow_down_replies_are_recognised_and_others_are_not() -> None:
    for code, text in [(454, "4.7.0 Throttling failure: Maximum sending rate exceeded."),
                       (451, "4.7.500 Server busy. Please try again later from [1.2.3.4]"),
                       (421, "HL:IFC 该IP短期内发送了大量信件"),
                       (451, "MI:SFQ 发信人在15分钟内的发信数量超过限制"),
                       (421, "4.7.0 Too many connections from your IP"),
                       (432, "4.3.2 Concurrent connections limit exceeded."),
                       (450, "4.2.1 The user you are trying to contact is receiving mail at "
                             "a rate that prevents additional messages (rate limit)")]:
        assert asks_to_slow_down(code, text), text
    for code, text in [(451, "4.7.1 Greylisted, try again later"), (550, "5.7.1 throttled"),
                       (452, "4.2.2 Mailbox full"), (250, "2.0.0 Ok")]:
        assert not asks_to_slow_down(code, text), text


def test_back_off_widens_on_throttles_and_comes_back_gradually() -> None:
    now = [0.0]
    backoff = AdaptiveBackoff(lambda: now[0], first=0.25, most=4)
    assert backoff.wait() == 0 and not backoff.active
    assert [backoff.slow_down() for _ in range(6)] == [0.25, 0.5, 1, 2, 4, 4]
    assert backoff.wait() == 4
    now[0] = 4
    deliveries = 0
    while backoff.active:
        backoff.delivered()
        deliveries += 1
    assert 15 < deliveries < 30  # gradually: a fifth at a time
