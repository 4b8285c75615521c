"""Fuzzing the SMTP session (command layer, AUTH, DATA and headers): property-based inputs
from Hypothesis and byte mutations of a real transcript.  For every input: no exception,
no failure logged, every reply line well formed, and a clean transaction is still queued
afterwards (on the same connection, or a new one if the server hung up as it should)."""

from __future__ import annotations

import base64
import random
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from tests.test_smtp_protocol import SessionTestCase, b64

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -]")
CLEAN = (b"EHLO clean.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
         b"DATA\r\nSubject: clean\r\n\r\nbody\r\n.\r\n")
TRANSCRIPT = (b"EHLO client.example\r\nAUTH PLAIN " + b64("\0user\0secret") + b"\r\n"
              b"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<x@y.example>\r\n"
              b"RCPT TO:<z@y.example>\r\nDATA\r\nFrom: a@b.example\r\nSubject: s\r\n"
              b"Received: x\r\n\r\n..dot\r\nline\r\n.\r\nRSET\r\nVRFY a\r\nNOOP\r\nQUIT\r\n")

VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT",
         b"VRFY", b"EXPN", b"HELP", b"STARTTLS", b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM",
         b"BDAT", b"\x00", b"."]
PIECES = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.sampled_from(VERBS), st.binary(max_size=80)).map(lambda t: t[0] + b" " + t[1]),
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b".", b"\r\n.\r\n", b"=", b"*",
                     b"A" * 17000, b"MAIL FROM:<" + b"x" * 300 + b"@y>",
                     b"RCPT TO:<\xff\xfe@x>", b"AUTH PLAIN ====", b"Received: a\r\n" * 60]),
)


B64ISH = st.one_of(st.binary(max_size=120).map(lambda b: base64.b64encode(b)),
                   st.binary(max_size=60), st.sampled_from([b"*", b"=", b"", b"====",
                                                            b"AAAA" * 5000]))
AUTH_STEPS = st.one_of(
    st.tuples(st.sampled_from([b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH plain", b"AUTH X",
                               b"AUTH PLAIN =", b"AUTH LOGIN dXNlcg=="]), B64ISH)
    .map(lambda t: t[0] + b" " + t[1]),
    st.sampled_from([b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH"]),
    B64ISH,
    st.builds(lambda u, p: b"AUTH PLAIN " + base64.b64encode(b"\0" + u + b"\0" + p),
              st.binary(max_size=40), st.binary(max_size=40)),
)


INSERTS = [b"\r", b"\n", b"\x00", b"\r\n.\r\n", b"\r\nDATA\r\n", b"\xff" * 5]


def mutation(rng: random.Random, inserts: list[bytes] = INSERTS) -> bytes:
    """The real transcript with 1 to 8 random byte changes, cuts and insertions."""
    data = bytearray(TRANSCRIPT)
    for _ in range(rng.randint(1, 8)):
        where = rng.randrange(len(data))
        action = rng.random()
        if action < 0.4:
            data[where] = rng.randrange(256)
        elif action < 0.7:
            del data[where:where + rng.randint(1, 20)]
        else:
            data[where:where] = rng.choice(inserts)
    return bytes(data)


class FuzzTests(SessionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.failures: list[dict[str, Any]] = []
        observer = self.failures_only
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.inputs = 0

    def failures_only(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.failures.append(event)

    def check_replies(self, output: bytes) -> None:
        for line in output.split(b"\r\n"):
            if line:
                self.assertRegex(line, REPLY_LINE)

    def run_input(self, chunks: list[bytes]) -> None:
        """Feed ``chunks`` (each its own dataReceived, as TCP may split), then prove the
        server still takes a clean message."""
        self.inputs += 1
        self.clock.advance(0.001)  # time moves on, as queue IDs expect (they start with it)
        proto, transport = self.connect()
        for chunk in chunks:
            proto.dataReceived(chunk)
            self.commit_all()
        self.check_replies(transport.value())
        if transport.disconnecting:
            proto.connectionLost()
            proto, transport = self.connect()
        transport.clear()
        proto.dataReceived(b"\r\n.\r\n*\r\nRSET\r\n" + CLEAN)
        self.commit_all()
        output = transport.value()
        self.check_replies(output)
        if b"Ok: queued as" not in output:  # closed for too many errors, say: a new session
            proto.connectionLost()
            proto, transport = self.connect()
            proto.dataReceived(CLEAN)
            self.commit_all()
            output = transport.value()
        self.assertIn(b"250 2.0.0 Ok: queued as", output)
        proto.connectionLost()
        self.assertEqual(self.failures, [])

    @settings(max_examples=1500, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(PIECES, max_size=12), st.integers(0, 2**32 - 1))
    def test_property_based_inputs(self, pieces: list[bytes], seed: int) -> None:
        data = b"\r\n".join(pieces) + b"\r\n"
        cuts = sorted(random.Random(seed).sample(range(len(data) + 1), min(3, len(data))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        self.run_input([c for c in chunks if c])

    @settings(max_examples=1000, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(AUTH_STEPS, min_size=1, max_size=8))
    def test_auth_exchanges(self, steps: list[bytes]) -> None:
        """AUTH PLAIN/LOGIN with initial responses, challenge answers, cancellations and
        garbage, after STARTTLS (where AUTH is offered)."""
        self.run_input([b"EHLO c\r\nSTARTTLS\r\n", b"EHLO c\r\n" + b"\r\n".join(steps)
                        + b"\r\n"])

    def test_mutations_of_a_real_transcript(self) -> None:
        rng = random.Random(20261122)
        for _ in range(3000):
            self.run_input([mutation(rng)])
        self.assertEqual(self.inputs, 3000)
