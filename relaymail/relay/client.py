"""The outbound ESMTP session: many messages over one connection, per-recipient results.

The handshake (banner, EHLO with HELO fallback, STARTTLS, AUTH) is the stock
``twisted.mail.smtp.ESMTPClient``.  The transaction is ours, because the stock one stuffs
dots per 16 KiB chunk, sends neither SIZE nor BODY, does not pipeline, and reports
per-recipient results poorly.  ``debug`` is off so that no error carries the transcript
(which would include the base64 AUTH password).
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail import smtp
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from relaymail.netutil import disable_nagle, write_eagerly
from relaymail.relay.dotstuff import DotStuffer
from relaymail.relay.outcome import DELIVERED, Outcome, SessionError
from relaymail.relay.sasl import OAuth2Authenticator, PlainAuthenticator
from relaymail.spool.record import open_body, read_small_body

MAIL, RCPT, DATA, DATA_END, DISCARD_END, RSET, QUIT = (
    "mail", "rcpt", "data", "data-end", "discard-end", "rset", "quit")

# A body up to this size goes out in one write (most mail); a larger one is streamed from
# the spool by a producer, in bounded memory.
WHOLE_BODY = 64 * 1024

ERROR_KINDS = (
    (smtp.SMTPTimeoutError, "timeout"),
    (smtp.SMTPConnectError, "banner"),
    (smtp.TLSRequiredError, "starttls"),
    (smtp.TLSError, "starttls"),
    (smtp.AUTHRequiredError, "auth"),
    (smtp.AUTHDeclinedError, "auth"),
    (smtp.AuthenticationError, "auth"),
    (smtp.EHLORequiredError, "ehlo"),
)


@dataclass
class Job:
    """One message to some of its recipients, sent in one transaction."""

    queue_id: str
    sender: str
    recipients: list[str]
    body_path: str
    size: int = 0  # bytes of the stored body (the envelope knows it; no stat needed)
    body_8bit: bool = False
    deferred: Deferred = field(default_factory=Deferred)  # fires with dict[str, Outcome]
    health_counted: bool = False  # a connect failure already counted against the upstream
    mail_from: str | None = None  # the envelope sender this upstream gets, when not sender
    head: bytes | None = None  # sent instead of the stored file's first body_offset bytes
    body_offset: int = 0

    @property
    def wire_size(self) -> int:
        """The size of what is sent (the header block may have been changed)."""
        if self.head is None:
            return self.size
        return self.size - self.body_offset + len(self.head)


def reply_text(resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(resp.split())


def error_kind(exc: BaseException) -> str:
    for cls, kind in ERROR_KINDS:
        if isinstance(exc, cls):
            return kind
    return "protocol"


class RelayClient(smtp.ESMTPClient):
    """One connection to one upstream; ``ready`` fires once MAIL may be sent."""

    debug = False
    heloFallback = True

    def __init__(self, label: str, identity: str, username: str | None, password: str | None,
                 tls_context: Any, require_tls: bool, timeout: float,
                 oauth2_mechanism: str | None = None) -> None:
        """With ``oauth2_mechanism`` (XOAUTH2 or OAUTHBEARER), ``password`` is the access
        token and that mechanism is the only one tried."""
        super().__init__(password.encode() if password else None, tls_context,
                         identity.encode("idna"))
        self.label = label
        self.timeout: float = timeout  # type: ignore[assignment]  # the stock None: no timeout
        self.requireTransportSecurity = require_tls
        self.requireAuthentication = username is not None
        self.oauth2: OAuth2Authenticator | None = None
        if username is not None and oauth2_mechanism is not None:
            self.oauth2 = OAuth2Authenticator(oauth2_mechanism, username)
            self.registerAuthenticator(self.oauth2)
        elif username is not None:
            self.registerAuthenticator(PlainAuthenticator(username.encode()))
            self.registerAuthenticator(smtp.LOGINAuthenticator(username.encode()))
        self.ready: Deferred = Deferred(self._cancel_ready)
        self.lost: Deferred = Deferred()
        self.on_idle: Callable[[RelayClient], None] | None = None
        self.extensions: dict[bytes, bytes | None] = {}
        self.job: Job | None = None
        self.error: SessionError | None = None
        self.tls: str | None = None
        self._expecting: deque[tuple[str, str | None]] = deque()
        self._queued: deque[tuple[bytes, str, str | None]] = deque()
        self._results: dict[str, Outcome] = {}
        self._accepted: list[str] = []
        self._mail_failed: Outcome | None = None
        self._streaming = False
        self._data_done = False

    # ------------------------------------------------------------------ handshake

    def connectionMade(self) -> None:
        disable_nagle(self.transport)
        write_eagerly(self.transport)
        super().connectionMade()

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        self.extensions = {}
        for line in resp.splitlines()[1:]:
            name, _, value = line.partition(b" ")
            self.extensions[name.upper()] = value or None
        super().esmtpState_serverConfig(code, resp)

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        """Whatever arrived after the 220 in plaintext must not be read as replies once TLS
        is up (the client side of the STARTTLS injection class): the stock client reads it."""
        self.clearLineBuffer()
        super().esmtpState_starttls(code, resp)

    def _esmtpState_plainAuth(self, code: int, resp: bytes) -> None:
        self.esmtpAUTHDeclined(code, resp)

    def authenticate(self, code: int, resp: bytes, items: dict[bytes, bytes | None]) -> None:
        """OAuth2 mechanisms send their initial response with AUTH (RFC 4954 §4), saving a
        round trip; the rest of the exchange (a 334 error challenge, 235 or 535) is the
        stock client's.  Everything else is the stock authenticate."""
        oauth2 = self.oauth2
        offered = (items.get(b"AUTH") or b"").upper().split()
        if oauth2 is None or not self.secret or oauth2.getName() not in offered:
            super().authenticate(code, resp, items)
            return
        self._authinfo = oauth2
        self._expected = [235, 334]
        self._okresponse = self.smtpState_maybeAuthenticated
        self._failresponse = self.esmtpAUTHDeclined
        initial = base64.b64encode(oauth2.challengeResponse(self.secret, None))
        self.sendLine(b"AUTH " + oauth2.getName() + b" " + initial)

    def esmtpAUTHDeclined(self, code: int = -1, resp: bytes | None = None) -> None:
        """The server refused the login; for OAuth2, with the status of its error
        challenge (``401`` means the token itself was not accepted)."""
        if self.oauth2 is not None and self.oauth2.error_status is not None:
            resp = (resp or b"") + f" (token status {self.oauth2.error_status})".encode()
        super().esmtpAUTHDeclined(code, resp)

    def smtpState_from(self, code: int, resp: bytes) -> None:
        """The stock handshake ends here: from now on every reply is ours to route."""
        self._expected = range(0, 1000)  # type: ignore[assignment]  # every code
        self._okresponse = self._failresponse = self._on_reply
        self.tls = self._describe_tls()
        if not self.ready.called:
            self.ready.callback(self)

    @property
    def wire(self) -> Any:
        """The connection (TCP, TLS or a test's): ``ITransport`` names neither
        ``abortConnection`` nor ``getHandle``, so the calls go through this view."""
        return self.transport

    @property
    def pipelining(self) -> bool:
        return b"PIPELINING" in self.extensions

    @property
    def max_size(self) -> int:
        try:
            return int(self.extensions.get(b"SIZE") or 0)
        except ValueError:
            return 0

    def _describe_tls(self) -> str | None:
        """Protocol version and cipher of the TLS session, for the delivery log."""
        if not self._tlsMode:
            return None
        try:
            handle = self.wire.getHandle()
            return f"{handle.get_protocol_version_name()} {handle.get_cipher_name()}"
        except Exception:
            return "TLS"

    # ------------------------------------------------------------------ errors

    def sendError(self, exc: BaseException) -> None:
        """Every stock handshake failure lands here; keep the server's words, no log."""
        code = getattr(exc, "code", -1)
        resp = getattr(exc, "resp", b"") or b""
        text = reply_text(resp) or type(exc).__name__
        self._fail_session(SessionError(error_kind(exc), f"{code} {text}" if code > 0 else text,
                                        code))

    def _cancel_ready(self, _: Deferred) -> None:
        if self.transport is not None:
            self.wire.abortConnection()

    def _fail_session(self, error: SessionError) -> None:
        if self.error is None:
            self.error = error
        if not self.ready.called:
            self.ready.errback(error)
        if self.job is not None:
            self._fail_job(error)
        if self.transport is not None:
            self.wire.abortConnection()

    def connectionLost(self, reason: Failure = smtp.protocol.connectionDone) -> None:
        super().connectionLost(reason)
        if self.error is None:
            kind = "tls" if self._tlsMode and not self.ready.called else "connection"
            text = f"{type(reason.value).__name__}: {reason.getErrorMessage()}"
            if not self.ready.called or self.job is not None:
                self.error = SessionError(kind, text)
        if self.error is not None:
            if not self.ready.called:
                self.ready.errback(self.error)
            if self.job is not None:
                self._fail_job(self.error)
        self.lost.callback(self)

    def _fail_job(self, error: SessionError) -> None:
        """The session broke mid-transaction: what the server did not finally answer is
        temporary (a RCPT already refused with 5xx stays refused)."""
        job, self.job = self.job, None
        assert job is not None
        self._expecting.clear()
        self._queued.clear()
        for address in job.recipients:
            outcome = self._results.get(address)
            if outcome is None or outcome.kind == DELIVERED:
                self._results[address] = error.outcome(self.label)
        job.deferred.callback(dict(self._results))

    # ------------------------------------------------------------------ transactions

    def send(self, job: Job) -> Deferred:
        """Start one transaction; the Deferred fires with each recipient's Outcome."""
        assert self.job is None and self.ready.called and self.error is None
        self.job = job
        self._results, self._accepted, self._mail_failed = {}, [], None
        self._data_done = False
        size = job.wire_size
        if self.max_size and size > self.max_size:
            refused = self._outcome(552, f"5.3.4 message size {size} exceeds the upstream's limit "
                                         f"{self.max_size}")
            self._results = dict.fromkeys(job.recipients, refused)
            self._finish()
            return job.deferred
        commands: list[tuple[bytes, str, str | None]] = [
            (self._mail_command(job, size), MAIL, None)]
        commands += [(b"RCPT TO:<" + r.encode() + b">", RCPT, r) for r in job.recipients]
        commands.append((b"DATA", DATA, None))
        if self.pipelining:
            self._expecting.extend((kind, addr) for _, kind, addr in commands)
            self.wire.writeSequence([line + b"\r\n" for line, _, _ in commands])
        else:
            self._queued.extend(commands)
            self._send_next()
        return job.deferred

    def _mail_command(self, job: Job, size: int) -> bytes:
        sender = job.sender if job.mail_from is None else job.mail_from
        line = b"MAIL FROM:<" + sender.encode() + b">"
        if b"SIZE" in self.extensions:
            line += b" SIZE=%d" % size
        if job.body_8bit and b"8BITMIME" in self.extensions:
            line += b" BODY=8BITMIME"
        return line

    def _send_next(self) -> None:
        if not self._queued:
            return
        line, kind, addr = self._queued.popleft()
        if kind == DATA and not self._accepted:
            self._queued.clear()
            self._finish()
            return
        self._expecting.append((kind, addr))
        self.sendLine(line)

    def _on_reply(self, code: int, resp: bytes) -> None:
        if not self._expecting:
            # Unsolicited (a 421 while idle, say): the server is going away.
            self.error = self.error or SessionError("connection", f"{code} {reply_text(resp)}")
            self.wire.loseConnection()
            return
        kind, addr = self._expecting.popleft()
        text = reply_text(resp)
        if kind in (RSET, QUIT):
            self._after_reset(kind)
            return
        if self.job is None:
            return
        outcome = self._outcome(code, text)
        if kind == MAIL:
            self._on_mail(outcome)
        elif kind == RCPT:
            self._on_rcpt(addr, outcome)
        elif kind == DATA:
            if code == 354:
                self._start_body()
                return
            self._settle_accepted(outcome if code >= 400 else self._outcome(451, text))
        elif kind == DATA_END:
            self._data_done = True
            self._settle_accepted(outcome)
        if not self.pipelining:
            self._send_next()
        if not self._expecting and not self._queued and not self._streaming:
            self._finish()

    def _outcome(self, code: int, text: str) -> Outcome:
        return Outcome(code, text, self.label, self.tls)

    def _on_mail(self, outcome: Outcome) -> None:
        if outcome.kind != DELIVERED:
            self._mail_failed = outcome
            self._queued.clear()

    def _on_rcpt(self, address: str | None, outcome: Outcome) -> None:
        assert address is not None
        if self._mail_failed is not None:
            self._results[address] = self._mail_failed
        elif outcome.kind == DELIVERED:
            self._accepted.append(address)
        else:
            self._results[address] = outcome

    def _settle_accepted(self, outcome: Outcome) -> None:
        for address in self._accepted:
            self._results[address] = outcome

    def _start_body(self) -> None:
        """354: send the spooled body (dot-stuffed across chunks; up to ``WHOLE_BODY`` in
        one write with the end marker, a larger one streamed), or end an empty DATA at once
        when no recipient was accepted (RFC 2920 §3.1)."""
        assert self.job is not None
        if not self._accepted:
            self._expecting.appendleft((DISCARD_END, None))
            self.wire.write(b".\r\n")
            return
        job = self.job
        offset = job.body_offset if job.head is not None else 0
        try:
            small = read_small_body(job.body_path, WHOLE_BODY, offset)
            body = open_body(job.body_path) if small is None else None  # closed when sent
        except OSError as e:
            self._fail_session(SessionError("spool", f"cannot read the body: {e.strerror}"))
            return
        self._streaming = True
        stuffer = DotStuffer()
        head = b""
        if job.head is not None:  # a changed header block, then the stored rest
            head = stuffer.stuff(job.head)
        if small is not None:  # all of it, and the end, in one write: no producer
            self._body_sent(stuffer, head + stuffer.stuff(small))
            return
        assert body is not None
        body.seek(offset)
        try:
            first = body.read(WHOLE_BODY + 1)
        except OSError as e:
            body.close()
            self._fail_session(SessionError("spool", f"cannot read the body: {e.strerror}"))
            return
        if len(first) <= WHOLE_BODY:  # all of it, and the end, in one write: no producer
            body.close()
            self._body_sent(stuffer, head + stuffer.stuff(first))
            return
        self.wire.write(head + stuffer.stuff(first))

        def transform(chunk: bytes) -> bytes:
            self.resetTimeout()
            return stuffer.stuff(chunk)

        sent = FileSender().beginFileTransfer(body, self.transport, transform)

        def close(result: Any) -> Any:
            body.close()
            return result

        sent.addBoth(close)
        sent.addCallbacks(lambda _: self._body_sent(stuffer), lambda _: None)

    def _body_sent(self, stuffer: DotStuffer, rest: bytes = b"") -> None:
        """The body is out but for ``rest``: send it with the end-of-data marker."""
        if self.job is None:
            return
        self._streaming = False
        self._expecting.appendleft((DATA_END, None))
        self.wire.write(rest + stuffer.end())

    def _finish(self) -> None:
        job, self.job = self.job, None
        assert job is not None
        fallback = self._mail_failed or self._outcome(451, "4.4.2 no reply for this recipient")
        for address in job.recipients:
            self._results.setdefault(address, fallback)
        aborted = not self._data_done
        job.deferred.callback(dict(self._results))
        if aborted and self.error is None:
            self._expecting.append((RSET, None))
            self.sendLine(b"RSET")
        elif self.error is None:
            self._became_idle()

    def _after_reset(self, kind: str) -> None:
        if kind == QUIT:
            self.wire.loseConnection()
        else:
            self._became_idle()

    def _became_idle(self) -> None:
        if self.on_idle is not None and self.error is None:
            self.on_idle(self)

    def quit(self) -> None:
        """Say goodbye politely; the connection closes on the reply (or the timeout)."""
        if self.error is not None or self.transport is None:
            return
        self.error = SessionError("quit", "closed by us")
        self._expecting.append((QUIT, None))
        self.sendLine(b"QUIT")
