"""Lines over 998 octets, against an upstream that enforces RFC 5321's limit the way
aiosmtpd does (``500 Line too long``): a one-line 20,000-octet HTML mail, a 5,000-octet text
line and a 3,000-octet To header are all accepted, folded before signing, delivered with
every line within the limit and both DKIM signatures valid, their content intact up to the
folding; and a bounce never quotes a line the upstream would refuse."""

from __future__ import annotations

import email.utils
import re
import socket
from email.message import EmailMessage
from email.policy import SMTP

from aiosmtpd.controller import Controller
from twisted.internet.threads import deferToThread

from tests.helpers import free_port, without_trace
from tests.integration.test_dkim_signing import DkimHelpers
from tests.integration.test_relay import plain, smarthost
from tests.upstreams import RecordingHandler, wait_until


def headers(subject: str, to: str = "reader@dest.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="example.com")
    msg["MIME-Version"] = "1.0"
    return msg.as_bytes(policy=SMTP).split(b"\r\n\r\n")[0] + b"\r\n"


HTML = (b"<html><body>" + b"".join(b'<td class="cell">item %d</td>' % i for i in range(800))
        + b"</body></html>")
TEXT = b"word " * 1000
LONG_TO = ", ".join(f"person{i:03d}@dest.test" for i in range(130))


class StrictUpstream:
    """Plain aiosmtpd: it answers ``500 Line too long`` to any line over 1,001 octets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handler = RecordingHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list:
        with self.handler.lock:
            return list(self.handler.messages)


def unfold(data: bytes) -> bytes:
    return re.sub(rb"\r\n([ \t])", rb"\1", data)


class LongLineTests(DkimHelpers):
    def strict(self) -> StrictUpstream:
        upstream = StrictUpstream()
        upstream.controller.start()
        self.addCleanup(upstream.controller.stop)
        return upstream

    async def test_long_lines_are_folded_signed_and_delivered(self) -> None:
        keys = [self.keygen("r", "rsa"), self.keygen("e", "ed25519")]
        dnsfunc = self.publish(keys)
        upstream = self.strict()
        relay = await self.relay(dkim=keys, **smarthost(plain(upstream.port)))
        cases = [
            (headers("html") + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + HTML
             + b"\r\n", HTML),
            (headers("text") + b"Content-Type: text/plain\r\n\r\n" + TEXT + b"\r\n", TEXT),
            (headers("to", LONG_TO) + b"\r\nshort body\r\n", LONG_TO.encode()),
        ]
        self.assertGreater(len(HTML), 20_000)
        for message, _ in cases:
            await self.send(relay, ["reader@dest.test"], message, sender="shop@example.com")
        await wait_until(lambda: len(upstream.messages) == 3, what="three deliveries")
        by_subject = {m.content.split(b"Subject: ")[1].split(b"\r\n")[0]: m
                      for m in upstream.messages}
        for got, (_, long_part) in zip([by_subject[s] for s in (b"html", b"text", b"to")],
                                       cases, strict=True):
            lines = got.content.split(b"\r\n")
            self.assertLessEqual(max(len(line) for line in lines), 998)
            self.assertIn(long_part.rstrip(), unfold(got.content))  # folded before spaces
            self.assertTrue(await self.verify(got.content, dnsfunc, 0))
            self.assertTrue(await self.verify(got.content, dnsfunc, 1))

    async def test_strict_upstream_accepts_them_and_a_bounce_quoting_them_too(self) -> None:
        upstream = self.strict()
        upstream.handler.rcpt_replies["gone@dest.test"] = "550 5.1.1 No such user"
        relay = await self.relay(**smarthost(plain(upstream.port)))
        await self.send(relay, ["reader@dest.test"],
                        headers("html") + b"\r\n" + HTML + b"\r\n", sender="shop@example.com")
        # refused for another reason: the bounce quotes the 3,000-octet To, folded
        await self.send(relay, ["gone@dest.test"],
                        headers("to", LONG_TO) + b"\r\nhello\r\n", sender="shop@example.com")
        await wait_until(lambda: len(upstream.messages) == 2, what="the mail and the bounce")
        await self.drained(relay)
        bounce = next(m for m in upstream.messages if m.mail_from in ("", "<>"))
        self.assertIn(b"text/rfc822-headers", bounce.content)
        self.assertIn(b"person129@dest.test", bounce.content)
        self.assertLessEqual(max(len(x) for x in bounce.content.split(b"\r\n")), 998)

    async def test_bare_lf_lines_arrive_as_crlf_lines_dot_unstuffed(self) -> None:
        """A client writing LF-only lines, dot-stuffed: the upstream gets CRLF lines with
        one dot removed (Postfix's normalize), and only CRLF.CRLF ended the data."""
        upstream = self.strict()
        relay = await self.relay(**smarthost(plain(upstream.port)))
        data = (b"From: a@example.com\nSubject: lf\n\nfirst\n..stuffed\n.\nMAIL FROM:<x@y>\n"
                b"last\r\n.\r\n")

        def session() -> bytes:
            with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=10) as s:
                s.sendall(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@dest.test>\r\n")
                s.sendall(b"DATA\r\n")
                answer = b""
                while b"354" not in answer:
                    answer += s.recv(4096)
                s.sendall(data + b"QUIT\r\n")
                while not answer.endswith(b"221 2.0.0 Bye\r\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return answer

        answer = await deferToThread(session)
        self.assertEqual(answer.count(b"250 2.0.0 Ok: queued as"), 1, answer)
        await wait_until(lambda: upstream.messages, what="delivery")
        body = without_trace(upstream.messages[0].content)
        self.assertEqual(body, b"From: a@example.com\r\nSubject: lf\r\n\r\nfirst\r\n.stuffed\r\n"
                               b"\r\nMAIL FROM:<x@y>\r\nlast\r\n")
