"""The ESMTP listener protocol: twisted.mail's ESMTP with its known traps closed.

What differs from stock ``twisted.mail.smtp.ESMTP`` (see shared/TWISTED-NOTES.md):

* Pipelining: while a reply waits on a Deferred (AUTH, end of DATA, policy checks) the
  transport is paused and further lines are queued, then processed in order.
* One transaction is one spool writer, whatever the number of recipients; DATA is handled
  here rather than by the stock N-messages machinery, so there is one Received header.
* Every reply carries an enhanced status code; NOOP, VRFY, HELP and RSET answer properly.
* MAIL/RCPT parameters are parsed (SIZE, BODY) and unknown ones refused with 555 5.5.4.
* STARTTLS discards anything pipelined behind it and resets the session; it is not offered
  on implicit TLS; AUTH is offered and accepted only over TLS (or loopback if configured).
* An over-long line is answered and the connection closed.
"""

from __future__ import annotations

import email.utils
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.mail.smtp import ESMTP, SMTP
from twisted.python.failure import Failure

from relaymail.config import ListenerConfig, SMTPConfig
from relaymail.credentials import CredentialStore
from relaymail.envelope import Envelope, Recipient
from relaymail.logs import Logger, printable
from relaymail.netutil import disable_nagle
from relaymail.policy.dkim import (
    RelaxedBodyHash,
    Signer,
    SigningError,
    from_domain,
    parse_headers,
)
from relaymail.policy.limits import RateLimiter, Reservation, Who
from relaymail.policy.lockout import Attempt, AuthLockout
from relaymail.smtp import replies
from relaymail.smtp.access import (
    HEADER_FROM_MISMATCH,
    SENDER_NOT_ALLOWED,
    ConnectionTracker,
    header_sender_problem,
    in_networks,
    is_loopback,
    sender_allowed,
)
from relaymail.smtp.address import (
    AddressError,
    PathArgument,
    mail_options,
    parse_argument,
    rcpt_options,
)
from relaymail.smtp.body import BodyReader
from relaymail.smtp.replies import Reply
from relaymail.smtp.sasl import MECHANISMS, Exchange, SASLError, challenge_line
from relaymail.spool import MessageWriter, Spool, SpoolError
from relaymail.stats import RelayStats

log = Logger(namespace="relaymail.smtp")

COMMAND, DATA, AUTH = "command", "data", "auth"


@dataclass
class ServerContext:
    """What every session needs, shared by all listeners of one relaymail process."""

    hostname: str
    smtp: SMTPConfig
    spool: Spool
    clock: Callable[[], float]
    checker: Any = None  # ICredentialsChecker, or None when AUTH is not configured
    credentials: CredentialStore | None = None
    tls_options: Any = None  # IOpenSSLServerConnectionCreator for STARTTLS
    connections: ConnectionTracker = field(default_factory=ConnectionTracker)
    stats: RelayStats = field(default_factory=RelayStats)
    signer: Signer | None = None  # DKIM, when keys are configured
    limits: RateLimiter | None = None  # rate limits and quotas, when configured
    lockout: AuthLockout | None = None  # AUTH brute-force protection
    policy: Any = None  # relaymail.policy.build.Policy: the above and their counters


@dataclass
class Transaction:
    """One MAIL ... DATA transaction."""

    sender: PathArgument
    writer: MessageWriter
    declared_size: int | None
    eight_bit: bool
    recipients: list[str] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)  # rate-limit units taken

    @property
    def queue_id(self) -> str:
        return self.writer.queue_id


class RelayESMTP(ESMTP):
    """One inbound SMTP session."""

    def __init__(self, context: ServerContext, listener: ListenerConfig) -> None:
        tls = context.tls_options if listener.tls == "starttls" else None
        super().__init__(chal={}, contextFactory=tls)
        self.context = context
        self.listener = listener
        self.host = context.hostname.encode()
        self.timeout = context.smtp.idle_timeout
        self.MAX_LENGTH = context.smtp.max_line_length
        self.mode = COMMAND
        self.helo: str | None = None
        self.esmtp = False
        self.txn: Transaction | None = None
        self.body: BodyReader | None = None
        self.credential: str | None = None
        self.auth_exchange: Exchange | None = None
        self.errors = 0
        self.client_ip = "?"
        self.admitted = False
        self._backlog: deque[bytes] | None = None
        self._blocked = False
        self._in_data_received = False
        self._discard_rest = False
        self._pending = b""  # received bytes after the last CRLF
        self._midline = False  # part of the current DATA line was already handed on
        self.gone = False  # the connection is closed; a peer close leaves disconnecting False

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        disable_nagle(self.transport)
        self.startedTLS = self.listener.tls == "implicit"
        self.canStartTLS = ITLSTransport.providedBy(self.transport) and self.starttls_configured()
        self.client_ip = self.peer_ip()
        if not self.admit():  # behind PROXY too: the header was read before this
            return
        log.info("connect client={client_ip} listener={listener}", client_ip=self.client_ip,
                 listener=self.listener.name)
        self.sendCode(220, self.host + b" ESMTP relaymail")
        self.setTimeout(self.timeout)

    def starttls_configured(self) -> bool:
        return self.listener.tls == "starttls" and self.context.tls_options is not None

    def peer_ip(self) -> str:
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", peer))

    def admit(self) -> bool:
        """Apply blocked networks and connection limits; refuse and close if needed."""
        self.client_ip = self.peer_ip()
        refusal = self.context.connections.admit(self.client_ip, self.context.smtp)
        if refusal is not None:
            log.info("refused client={client_ip} listener={listener} reason={reason}",
                     client_ip=self.client_ip, listener=self.listener.name, reason=refusal.text)
            self.reply(refusal)
            self.transport.loseConnection()
            return False
        self.admitted = True
        self.context.connections.per_listener[self.listener.name] += 1
        return True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.gone = True
        self.setTimeout(None)
        self.discard_transaction()
        if self.admitted:
            self.admitted = False
            self.context.connections.release(self.client_ip)
            self.context.connections.per_listener[self.listener.name] -= 1
            log.info("disconnect client={client_ip} listener={listener} credential={credential}",
                     client_ip=self.client_ip, listener=self.listener.name,
                     credential=self.credential)

    def timeoutConnection(self) -> None:
        log.info("timeout client={client_ip} listener={listener}", client_ip=self.client_ip,
                 listener=self.listener.name)
        self.reply(replies.TIMEOUT)
        self.transport.loseConnection()

    # ------------------------------------------------------------------ input and pipelining

    def dataReceived(self, data: bytes) -> None:
        """Split on CRLF ourselves (not LineOnlyReceiver's loop): a DATA line may be longer
        than ``max_line_length`` and is then handed on in pieces, in bounded memory, while a
        command line that long is refused."""
        self._in_data_received = True
        try:
            lines = (self._pending + data).split(b"\r\n")
            self._pending = lines.pop()
            for line in lines:
                if self._discard_rest or self.transport.disconnecting:
                    return
                self.lineReceived(line)
            if len(self._pending) > self.MAX_LENGTH and not self._discard_rest:
                self.long_line_piece()
        finally:
            self._in_data_received = False
            if self._discard_rest:
                self._pending = b""
            self._discard_rest = False

    def long_line_piece(self) -> None:
        """No CRLF within ``MAX_LENGTH``: in DATA, pass the piece on (keeping a final CR,
        which may be half of a CRLF); anywhere else it is an over-long command line."""
        if self.mode != DATA or self._blocked or self.transport.disconnecting:
            if not self._blocked:
                self.lineLengthExceeded(self._pending)
            return
        keep = 1 if self._pending.endswith(b"\r") else 0
        piece, self._pending = self._pending[:len(self._pending) - keep], \
            self._pending[len(self._pending) - keep:]
        self.resetTimeout()
        assert self.body is not None
        self.body.partial(piece)
        self._midline = True

    def lineReceived(self, line: bytes) -> None:
        if self._discard_rest:
            return
        if self._blocked:
            assert self._backlog is not None
            self._backlog.append(line)
            return
        self.dispatch(line)

    def dispatch(self, line: bytes) -> None:
        self.resetTimeout()
        if self.mode == DATA:
            self.data_line(line)
        elif len(line) > self.MAX_LENGTH:
            self.lineLengthExceeded(line)
        elif self.mode == AUTH:
            self.auth_line(line)
        else:
            self.command_line(line)

    def command_line(self, line: bytes) -> None:
        parts = line.strip().split(None, 1)
        if not parts:
            self.reply(Reply(500, "5.5.2", "Error: bad syntax"))
            return
        method = self.lookupMethod(parts[0]) if parts[0].isalpha() else None
        if method is None:
            self.reply(Reply(500, "5.5.2", "Error: command not recognized"))
            return
        method(parts[1] if len(parts) == 2 else b"")

    def await_reply(self, d: Deferred, handler: Callable[[Any], None]) -> None:
        """Run ``handler`` with the result of ``d``; hold further input until it has run.

        This is the pipelining fix: stock Twisted keeps executing queued lines while a
        reply is outstanding, so replies come out of order or body lines run as commands.
        """
        state = {"sync": True, "fired": False}

        def finish(result: Any) -> None:
            state["fired"] = True
            if not state["sync"]:
                self._blocked = False  # this wait is over; the handler may start another
            try:
                handler(result)
            except Exception:
                log.failure("smtp: reply handler failed")
                self.reply(replies.LOCAL_ERROR)
            if not state["sync"] and not self._blocked:
                self.unblock()

        d.addBoth(finish)
        state["sync"] = False
        if not state["fired"]:
            self.block()

    def block(self) -> None:
        self._blocked = True
        if self._backlog is None:
            self._backlog = deque()
        self.setTimeout(None)
        self.transport.pauseProducing()

    def unblock(self) -> None:
        self._blocked = False
        if self.gone or self.transport.disconnecting:
            return
        self.setTimeout(self.timeout)
        while self._backlog and not self._blocked and not self.transport.disconnecting:
            self.dispatch(self._backlog.popleft())
        if not self._blocked and not self.transport.disconnecting:
            self.transport.resumeProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        log.info("line too long client={client_ip} listener={listener}",
                 client_ip=self.client_ip, listener=self.listener.name)
        self.discard_transaction()
        self.reply(replies.LINE_TOO_LONG)
        self.transport.loseConnection()

    # ------------------------------------------------------------------ replies

    def reply(self, r: Reply) -> None:
        self.sendCode(r.code, r.encode())

    def sendCode(self, code: int, message: bytes = b"") -> None:
        if self.gone or self.transport is None or self.transport.disconnecting:
            return
        text = replies.with_enhanced(code, message)
        SMTP.sendCode(self, code, text)
        if code >= 400:
            enhanced = text.split(b" ", 1)[0] if replies.ENHANCED_RE.match(text) else b""
            self.context.stats.refused(code, enhanced.decode())
        if code >= 500:
            self.errors += 1
            if self.errors >= self.context.smtp.max_errors:
                log.info("too many errors client={client_ip}", client_ip=self.client_ip)
                SMTP.sendCode(self, 421, replies.TOO_MANY_ERRORS.encode())
                self.transport.loseConnection()

    # ------------------------------------------------------------------ simple commands

    def greeting_name(self, rest: bytes) -> str | None:
        name = rest.strip()
        if not name or len(name) > 255:
            return None
        return name.decode("ascii", "replace")

    def do_HELO(self, rest: bytes) -> None:
        self._hello(rest, esmtp=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._hello(rest, esmtp=True)

    def _hello(self, rest: bytes, esmtp: bool) -> None:
        name = self.greeting_name(rest)
        if name is None:
            self.reply(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname"))
            return
        self.discard_transaction()
        self.helo, self.esmtp = name, esmtp
        if not esmtp:
            self.reply(Reply(250, "2.0.0", self.context.hostname))
            return
        lines = [self.context.hostname.encode()] + [b" ".join(x) for x in self.ehlo_keywords()]
        SMTP.sendCode(self, 250, b"\n".join(lines))

    def ehlo_keywords(self) -> list[list[bytes]]:
        keywords = [[b"PIPELINING"], [b"SIZE", b"%d" % self.context.smtp.max_message_size],
                    [b"8BITMIME"], [b"ENHANCEDSTATUSCODES"]]
        if self.canStartTLS and not self.startedTLS:
            keywords.append([b"STARTTLS"])
        if self.auth_offered():
            keywords.append([b"AUTH", *(m.encode() for m in MECHANISMS)])
        return keywords

    def do_NOOP(self, rest: bytes) -> None:
        self.reply(replies.OK)

    def do_RSET(self, rest: bytes) -> None:
        self.discard_transaction()
        self.reply(replies.OK)

    def do_VRFY(self, rest: bytes) -> None:
        if not rest.strip():
            self.reply(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        self.reply(Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt "
                                       "delivery"))

    def do_EXPN(self, rest: bytes) -> None:
        self.reply(Reply(502, "5.5.1", "Error: command not implemented"))

    def do_HELP(self, rest: bytes) -> None:
        self.reply(Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY "
                                       "STARTTLS AUTH; see RFC 5321"))

    def do_QUIT(self, rest: bytes) -> None:
        self.reply(Reply(221, "2.0.0", "Bye"))
        self.transport.loseConnection()

    def do_UNKNOWN(self, rest: bytes) -> None:
        self.reply(Reply(500, "5.5.2", "Error: command not recognized"))

    # ------------------------------------------------------------------ STARTTLS

    def ext_STARTTLS(self, rest: bytes) -> None:
        if rest.strip():
            self.reply(Reply(501, "5.5.4", "Syntax: STARTTLS"))
        elif self.startedTLS:
            self.reply(Reply(554, "5.5.1", "Error: TLS already active"))
        elif not self.canStartTLS:
            self.reply(Reply(502, "5.5.1", "Error: command not implemented"))
        elif self.txn is not None:
            self.reply(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
        else:
            self.reply(Reply(220, "2.0.0", "Ready to start TLS"))
            self.forget_plaintext_input()
            self.transport.startTLS(self.context.tls_options)
            self.startedTLS = True
            self.helo, self.esmtp, self.credential = None, False, None
            self.authenticated = False

    def forget_plaintext_input(self) -> None:
        """Anything sent behind STARTTLS in plaintext must not run inside TLS (CVE-2011-0411)."""
        self._pending = b""
        if self._backlog:
            self._backlog.clear()
        if self._in_data_received:
            self._discard_rest = True

    # ------------------------------------------------------------------ AUTH

    def auth_offered(self) -> bool:
        """AUTH only over TLS, or in plaintext from loopback when the listener allows it."""
        if self.context.checker is None or self.credential is not None:
            return False
        if self.startedTLS:
            return True
        return self.listener.auth == "plaintext-loopback" and is_loopback(self.client_ip)

    def ext_AUTH(self, rest: bytes) -> None:
        refusal = self.auth_refusal()
        if refusal is not None:
            self.reply(refusal)
            return
        parts = rest.split()
        if not parts or len(parts) > 2:
            self.reply(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        mechanism = parts[0].upper().decode("ascii", "replace")
        if mechanism not in MECHANISMS:
            self.reply(Reply(504, "5.5.4", "Unsupported authentication mechanism"))
            return
        exchange = Exchange(mechanism)
        initial = parts[1] if len(parts) == 2 else None
        if self.context.lockout is None:
            self.start_auth(exchange, initial, 0.0)
            return
        d = self.context.lockout.locked_for("ip", self.client_ip)
        self.await_reply(d, lambda seconds: self.start_auth(exchange, initial, seconds))

    def start_auth(self, exchange: Exchange, initial: bytes | None, locked: Any) -> None:
        """Begin the exchange unless the client's address is locked out (then hang up)."""
        if isinstance(locked, Failure) or locked > 0:
            wait = 60 if isinstance(locked, Failure) else int(locked) + 1
            log.info("auth refused client={client_ip} listener={listener}: address locked "
                     "for {wait} s", client_ip=self.client_ip, listener=self.listener.name,
                     wait=wait)
            self.reply(Reply(454, "4.7.0", "Too many failed authentication attempts from your "
                                           f"address; try again in {wait} seconds"))
            self.transport.loseConnection()
            return
        self.auth_exchange = exchange
        self.auth_step(lambda: exchange.start(initial))

    def auth_refusal(self) -> Reply | None:
        if self.helo is None or not self.esmtp:
            return Reply(503, "5.5.1", "Error: send EHLO first")
        if self.credential is not None:
            return Reply(503, "5.5.1", "Error: already authenticated")
        if self.txn is not None:
            return Reply(503, "5.5.1", "Error: MAIL transaction in progress")
        if self.context.checker is None:
            return Reply(503, "5.5.1", "Error: authentication not enabled")
        if not self.auth_offered():
            return Reply(538, "5.7.11", "Encryption required for requested authentication "
                                        "mechanism")
        return None

    def auth_line(self, line: bytes) -> None:
        assert self.auth_exchange is not None
        exchange = self.auth_exchange
        self.auth_step(lambda: exchange.step(line))

    def auth_step(self, step: Callable[[], bytes | tuple[str, str]]) -> None:
        try:
            result = step()
        except SASLError as e:
            self.mode, self.auth_exchange = COMMAND, None
            self.reply(e.reply)
            return
        if isinstance(result, bytes):
            self.mode = AUTH
            SMTP.sendCode(self, 334, challenge_line(result))
            return
        self.mode, self.auth_exchange = COMMAND, None
        username, password = result
        d = self.check_login(username, password)
        self.await_reply(d, lambda outcome: self.auth_finished(username, outcome))

    def check_login(self, username: str, password: str) -> Deferred:
        """The credential check, with the lockout's accounting around it: the attempt is
        counted first (so concurrent guesses cannot race past the limit), refused without a
        check while locked (LoginLockedError), delayed when the login is under attack from
        many addresses, and a failure is recorded before the 535 goes out."""
        credentials = UsernamePassword(username.encode(), password.encode())
        checker, lockout = self.context.checker, self.context.lockout
        if lockout is None:
            return maybeDeferred(checker.requestAvatarId, credentials)

        def check(attempt: Attempt) -> Deferred:
            if attempt.locked > 0:
                raise LoginLockedError(attempt.locked)
            d = lockout.wait(attempt)
            d.addCallback(lambda _: checker.requestAvatarId(credentials))
            d.addCallbacks(lambda avatar: (lockout.attempt_succeeded(attempt), avatar)[1],
                           lambda failure: failed(failure, attempt))
            return d

        def failed(failure: Failure, attempt: Attempt) -> Deferred:
            if not failure.check(UnauthorizedLogin):
                return failure
            return lockout.attempt_failed(attempt).addCallback(lambda _: failure)

        return lockout.attempt(self.client_ip, username).addCallback(check)

    def auth_finished(self, username: str, outcome: Any) -> None:
        result = "ok"
        if isinstance(outcome, Failure):
            result = "locked" if outcome.check(LoginLockedError) else "failed"
            if not outcome.check(UnauthorizedLogin, LoginLockedError):
                log.failure("smtp: credential check failed", failure=outcome)
        log.info("auth {result} client={client_ip} listener={listener} credential={credential}",
                 result=result, client_ip=self.client_ip, listener=self.listener.name,
                 credential=printable(username))
        if result == "ok":
            self.credential = str(outcome)
            self.authenticated = True
            self.reply(Reply(235, "2.7.0", "Authentication successful"))
        elif result == "locked":
            wait = int(outcome.value.seconds) + 1
            self.reply(Reply(454, "4.7.0", "Too many failed authentication attempts for this "
                                           f"login; try again in {wait} seconds"))
        elif outcome.check(UnauthorizedLogin):
            self.reply(Reply(535, "5.7.8", "Authentication credentials invalid"))
        else:
            self.reply(Reply(454, "4.7.0", "Temporary authentication failure"))

    # ------------------------------------------------------------------ MAIL and RCPT

    def do_MAIL(self, rest: bytes) -> None:
        refusal = self.credential_gone() or self.mail_refusal()
        if refusal is not None:
            self.reply(refusal)
            return
        try:
            sender = parse_argument(b"FROM", rest, allow_null=True)
            declared, eight_bit = mail_options(sender.params, self.context.smtp.max_message_size)
        except AddressError as e:
            self.reply(e.reply)
            return
        if not sender_allowed(self.login(), sender.address):
            self.log_refused_sender(sender.address, SENDER_NOT_ALLOWED)
            self.reply(SENDER_NOT_ALLOWED)
            return
        limits = self.context.limits
        if limits is None or limits.config.count != "messages":
            self.open_transaction(sender, declared, eight_bit, Reservation())
            return
        d = limits.reserve(Who(self.client_ip, self.login(), sender.address))
        self.await_reply(d, lambda r: self.open_transaction(sender, declared, eight_bit, r))

    def open_transaction(self, sender: PathArgument, declared: int | None, eight_bit: bool,
                         reserved: Any) -> None:
        """MAIL's reply, once the rate limits have had their say."""
        if not isinstance(reserved, Reservation):
            self.refuse_over_limit(sender.address, reserved)
            return
        if self.gone:
            self.release(reserved)
            return
        self.txn = Transaction(sender, self.context.spool.new_message(), declared, eight_bit,
                               reservations=[reserved])
        log.debug("{queue_id}: from=<{sender}> size={size} client={client_ip} "
                 "listener={listener} credential={credential}", queue_id=self.txn.queue_id,
                 sender=sender.address, size=declared, client_ip=self.client_ip,
                 listener=self.listener.name, credential=self.credential)
        self.reply(Reply(250, "2.1.0", "Ok"))

    def credential_gone(self) -> Reply | None:
        """The login was removed or disabled since AUTH: the session's authentication ends
        here, before it can send with none of the login's restrictions."""
        if self.credential is None or self.context.credentials is None:
            return None
        login = self.context.credentials.get(self.credential)
        if login is not None and login.enabled:
            return None
        log.info("auth revoked client={client_ip} listener={listener} credential={credential}"
                 ": removed or disabled", client_ip=self.client_ip,
                 listener=self.listener.name, credential=printable(self.credential))
        self.credential, self.authenticated = None, False
        return CREDENTIAL_REVOKED

    def mail_refusal(self) -> Reply | None:
        if self.helo is None:
            return replies.BAD_SEQUENCE_HELO
        if self.txn is not None:
            return Reply(503, "5.5.1", "Error: nested MAIL command")
        if self.listener.auth == "required" and self.credential is None:
            return self.auth_required()
        return None

    def auth_required(self) -> Reply:
        if self.canStartTLS and not self.startedTLS:
            return Reply(530, "5.7.0", "Must issue a STARTTLS command first")
        return replies.AUTH_REQUIRED

    def login(self) -> Any:
        if self.credential is None or self.context.credentials is None:
            return None
        return self.context.credentials.get(self.credential)

    def refuse_over_limit(self, sender: str, reply: Any) -> None:
        if isinstance(reply, Failure):
            log.failure("smtp: rate limit check failed", failure=reply)
            reply = replies.LOCAL_ERROR
        self.log_refused_sender(sender, reply)
        self.reply(reply)

    def release(self, reservation: Reservation) -> None:
        if self.context.limits is not None:
            self.context.limits.release(reservation)

    def release_all(self, txn: Transaction) -> None:
        """The transaction queued nothing: what it counted against the limits is given back."""
        for reservation in txn.reservations:
            self.release(reservation)
        txn.reservations = []

    def log_refused_sender(self, sender: str, reply: Reply) -> None:
        log.info("refused from=<{sender}> client={client_ip} credential={credential} "
                 "reply={reply}", sender=sender, client_ip=self.client_ip,
                 credential=self.credential, reply=str(reply))

    def do_RCPT(self, rest: bytes) -> None:
        if self.txn is None:
            self.reply(Reply(503, "5.5.1", "Error: need MAIL command"))
            return
        try:
            rcpt = parse_argument(b"TO", rest, allow_null=False)
            rcpt_options(rcpt.params)
        except AddressError as e:
            self.reply(e.reply)
            return
        refusal = self.rcpt_refusal()
        # Accepted recipients are logged at debug: the queued line counts them and the
        # delivery lines name them; a log line each cost a tenth of the throughput.
        emit = log.info if refusal else log.debug
        emit("{queue_id}: to=<{rcpt}> {outcome} client={client_ip} credential={credential}"
             "{why}", queue_id=self.txn.queue_id, rcpt=rcpt.address,
             outcome="refused" if refusal else "accepted", client_ip=self.client_ip,
             credential=self.credential, why=f" reply={refusal}" if refusal else "")
        if refusal is not None:
            self.reply(refusal)
            return
        limits, txn = self.context.limits, self.txn
        if limits is None or limits.config.count != "recipients":
            self.add_recipient(txn, rcpt.address, Reservation())
            return
        d = limits.reserve(Who(self.client_ip, self.login(), txn.sender.address))
        self.await_reply(d, lambda r: self.add_recipient(txn, rcpt.address, r))

    def add_recipient(self, txn: Transaction, address: str, reserved: Any) -> None:
        if not isinstance(reserved, Reservation):
            self.refuse_over_limit(txn.sender.address, reserved)
            return
        if txn is not self.txn:  # the session ended or was reset meanwhile
            self.release(reserved)
            return
        txn.reservations.append(reserved)
        txn.recipients.append(address)
        self.reply(Reply(250, "2.1.5", "Ok"))

    def rcpt_refusal(self) -> Reply | None:
        assert self.txn is not None
        if not self.may_relay():
            return self.auth_required()
        if len(self.txn.recipients) >= self.context.smtp.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        return None

    def may_relay(self) -> bool:
        """Relaymail has no local mailboxes: every recipient is relaying, whatever its form."""
        if self.credential is not None:
            return True
        return self.listener.auth != "required" and in_networks(
            self.client_ip, self.context.smtp.trusted_networks)

    # ------------------------------------------------------------------ DATA

    def do_DATA(self, rest: bytes) -> None:
        if rest.strip():
            self.reply(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self.txn is None:
            self.reply(Reply(503, "5.5.1", "Error: need MAIL command"))
            return
        if not self.txn.recipients:
            self.reply(Reply(554, "5.5.1", "Error: no valid recipients"))
            return
        body_hash = RelaxedBodyHash() if self.context.signer is not None else None
        self.body = BodyReader(self.txn.writer, self.context.smtp.max_message_size,
                               reject_bare=self.context.smtp.bare_line_endings == "reject",
                               body_hash=body_hash,
                               fold_length=self.context.smtp.fold_line_length,
                               max_header_size=self.context.smtp.max_header_size,
                               strip=self.context.smtp.strip_characters,
                               reject=self.context.smtp.reject_characters)
        self.txn.writer.write(self.received_header(self.txn))
        self.txn.writer.on_pressure = self.spill_pressure
        self.mode = DATA
        SMTP.sendCode(self, 354, b"End data with <CR><LF>.<CR><LF>")

    def spill_pressure(self, waiting: bool) -> None:
        """Stop reading while the spool catches up with a fast sender (bounded memory)."""
        if self.gone or self.transport.disconnecting:
            return
        if waiting:
            self.transport.pauseProducing()
        elif not self._blocked:
            self.transport.resumeProducing()

    def data_line(self, line: bytes) -> None:
        assert self.body is not None
        if line == b"." and not self._midline:
            self.end_of_data()
        else:
            self._midline = False
            self.body.line(line)

    def end_of_data(self) -> None:
        txn, body = self.txn, self.body
        assert txn is not None and body is not None
        self.mode, self.txn, self.body = COMMAND, None, None
        problem = body.problem or self.header_from_problem(txn, body)
        if problem is not None:
            log.info("{queue_id}: refused at end of data reply={reply}", queue_id=txn.queue_id,
                     reply=str(problem))
            txn.writer.discard()
            self.release_all(txn)
            self.reply(problem)
            return
        envelope = self.envelope_for(txn)
        envelope.body_8bit = envelope.body_8bit or body.eight_bit_seen
        if body.body_hash is not None:  # for a signature made again at relay time
            envelope.extra["body_hash"] = body.body_hash.digest_b64().decode()
        d = self.dkim_sign(txn.writer, body)
        d.addCallback(lambda signed: self.context.spool.commit(txn.writer, envelope)
                      .addCallback(lambda _: signed))
        self.await_reply(d, lambda outcome: self.committed(txn, envelope, outcome))

    def header_from_problem(self, txn: Transaction, body: BodyReader) -> Reply | None:
        """A login may be required to send only with a header From in its sender's domain."""
        credential = self.login()
        if credential is None or not credential.check_header_from:
            return None
        try:
            fields = parse_headers(body.header_block)
        except SigningError:
            return HEADER_FROM_MISMATCH
        return header_sender_problem(fields, credential, txn.sender.address)

    def dkim_sign(self, writer: MessageWriter, body: BodyReader) -> Deferred:
        """Sign once, here (off the reactor thread); fires with the log note ("" when DKIM is
        not configured).  Mail that cannot be signed is still accepted, unsigned."""
        signer = self.context.signer
        if signer is None or body.body_hash is None:
            return succeed("")
        try:
            fields = parse_headers(body.header_block)
        except SigningError:
            return succeed(" dkim=unparsable-header")
        keys = signer.keys_for(from_domain(fields))
        if not keys:
            return succeed(" dkim=none")
        d = self.context.spool.run_in_thread(signer.sign, fields, body.body_hash.digest_b64(),
                                             keys)

        def signed(header: bytes) -> str:
            writer.prepend(header)
            return " dkim=" + ",".join(k.label for k in keys)

        def failed(failure: Failure) -> str:
            log.failure("{queue_id}: dkim signing failed", failure=failure,
                        queue_id=writer.queue_id)
            return " dkim=failed"

        return d.addCallbacks(signed, failed)

    def committed(self, txn: Transaction, envelope: Envelope, outcome: Any) -> None:
        if isinstance(outcome, Failure):
            self.release_all(txn)
            storage = outcome.check(SpoolError) is not None
            log.error("{queue_id}: not queued: {error}", queue_id=envelope.queue_id,
                      error=outcome.getErrorMessage())
            self.reply(replies.STORAGE_FAILED if storage else replies.LOCAL_ERROR)
            return
        log.info("{queue_id}: queued from=<{sender}> nrcpt={nrcpt} size={size} "
                 "client={client_ip} listener={listener} credential={credential}{dkim}",
                 dkim=outcome,
                 queue_id=envelope.queue_id, sender=envelope.sender,
                 nrcpt=len(envelope.recipients), size=envelope.size, client_ip=self.client_ip,
                 listener=self.listener.name, credential=self.credential)
        self.reply(Reply(250, "2.0.0", f"Ok: queued as {envelope.queue_id}"))

    def envelope_for(self, txn: Transaction) -> Envelope:
        now = self.context.clock()
        return Envelope(
            queue_id=txn.queue_id, sender=txn.sender.address,
            recipients=[Recipient(address=a) for a in txn.recipients], received_at=now,
            client_ip=self.client_ip, helo=self.helo, credential=self.credential,
            listener=self.listener.name, protocol=self.protocol_name(),
            body_8bit=txn.eight_bit, next_attempt=now,
        )

    def discard_transaction(self) -> None:
        """Forget the open transaction (RSET, new EHLO, disconnect); nothing was committed."""
        if self.txn is not None:
            self.txn.writer.discard()
            self.release_all(self.txn)
        self.txn, self.body, self._midline = None, None, False
        if self.mode == DATA:
            self.mode = COMMAND

    # ------------------------------------------------------------------ Received header

    def protocol_name(self) -> str:
        """RFC 3848 protocol type: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.startedTLS else "") + ("A" if self.credential else "")

    def tls_comment(self) -> str:
        try:
            conn = self.transport.getHandle()
            return f" (using {conn.get_protocol_version_name()} with cipher " \
                   f"{conn.get_cipher_name()})"
        except Exception:
            return ""

    def received_header(self, txn: Transaction) -> bytes:
        date = email.utils.formatdate(self.context.clock(), localtime=True)
        tls = self.tls_comment() if self.startedTLS else ""
        lines = [
            f"Received: from {sanitize(self.helo or 'unknown')} ([{self.client_ip}])",
            f"\tby {self.context.hostname} (relaymail) with {self.protocol_name()} "
            f"id {txn.queue_id}{tls}",
        ]
        if len(txn.recipients) == 1:
            lines.append(f"\tfor <{txn.recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return "\r\n".join(lines).encode("ascii", "replace") + b"\r\n"


CREDENTIAL_REVOKED = Reply(530, "5.7.0", "Authentication no longer valid: the login was "
                                         "removed or disabled")


class LoginLockedError(Exception):
    """The login is locked out after repeated failures; no password is checked."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"locked for {seconds:.0f} s")
        self.seconds = seconds




def sanitize(text: str) -> str:
    """A HELO name as it may appear inside a header: printable ASCII, no parentheses."""
    return "".join(c if 33 <= ord(c) < 127 and c not in "()" else "?" for c in text)[:255]


class RelaySMTPFactory(protocol.ServerFactory):
    """Builds sessions for one listener."""

    noisy = False

    def __init__(self, ctx: ServerContext, listener: ListenerConfig) -> None:
        self.context = ctx
        self.listener = listener

    def buildProtocol(self, addr: Any) -> RelayESMTP:
        p = RelayESMTP(self.context, self.listener)
        p.factory = self
        return p
