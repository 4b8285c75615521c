"""One inbound SMTP session: connection admission, the simple commands and STARTTLS, and
the dispatch of each command to its layer.

The session is made of three parts, each with one job:

* ``wire.WireProtocol`` (its base): lines, pipelining, replies, error count, timeouts;
* ``auth.AuthLayer``: the SASL exchange and the lockout around it;
* ``transaction.TransactionLayer``: MAIL, RCPT, DATA, the commit and the Received header.

What differs from stock ``twisted.mail.smtp.ESMTP``: replies carry enhanced status codes;
NOOP, VRFY, HELP and RSET answer properly; MAIL/RCPT parameters are parsed (SIZE, BODY) and
unknown ones refused with 555 5.5.4; STARTTLS discards anything pipelined behind it and
resets the session, and is not offered on implicit TLS; AUTH is offered only over TLS (or
loopback if configured); an over-long command line is answered and the connection closed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import ITLSTransport
from twisted.python.failure import Failure

from relaymail.common import replies
from relaymail.common.replies import Reply
from relaymail.config import ListenerConfig
from relaymail.logs import Logger
from relaymail.netutil import disable_nagle, write_eagerly
from relaymail.smtp.auth import AuthLayer
from relaymail.smtp.body import BodyReader
from relaymail.smtp.idle import IdleSweeper
from relaymail.smtp.sasl import MECHANISMS
from relaymail.smtp.state import ServerContext, SessionState
from relaymail.smtp.transaction import Transaction, TransactionLayer
from relaymail.smtp.wire import COMMAND, DATA, HELD_FOR_DISK, Result, WireProtocol

__all__ = ["RelayESMTP", "RelaySMTPFactory", "ServerContext"]

log = Logger(namespace="relaymail.smtp")


class RelayESMTP(WireProtocol):
    """One inbound SMTP session."""

    def __init__(self, context: ServerContext, listener: ListenerConfig) -> None:
        tls = context.tls_options if listener.tls == "starttls" else None
        super().__init__(chal={}, contextFactory=tls)
        self.context = context
        self.state = SessionState(context, listener)
        self.auth = AuthLayer(self.state)
        self.mail = TransactionLayer(self.state, self.spill_pressure, self.tls_comment)
        self.admitted = False

    # Settings are read from the context, not copied into each session: an idle session
    # is mostly its instance dict, which CPython shares the keys of only up to 30
    # attributes (beyond, each session's dict was 1.6 KB instead of about 0.3).
    @property
    def host(self) -> bytes:  # type: ignore[override]
        return self.context.hostname.encode()

    @host.setter
    def host(self, value: bytes) -> None:
        """twisted.mail's __init__ sets its default name; the context's is ours."""

    @property
    def timeout(self) -> float:  # type: ignore[override]
        return self.context.smtp.idle_timeout

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]
        return self.context.smtp.max_line_length

    @property
    def max_errors(self) -> int:  # type: ignore[override]
        return self.context.smtp.max_errors

    def count_refusal(self, code: int, enhanced: str) -> None:
        self.context.stats.refused(code, enhanced)

    # what tests and logs read of the layers
    @property
    def listener(self) -> ListenerConfig:
        return self.state.listener

    @listener.setter
    def listener(self, value: ListenerConfig) -> None:
        self.state.listener = value

    @property
    def client_ip(self) -> str:
        return self.state.client_ip

    @property
    def credential(self) -> str | None:
        return self.state.credential

    @property
    def txn(self) -> Transaction | None:
        return self.mail.txn

    @property
    def body(self) -> BodyReader | None:
        return self.mail.body

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self.context.sessions.add(self)
        disable_nagle(self.transport)
        write_eagerly(self.transport)
        self.state.started_tls = self.listener.tls == "implicit"
        self.state.can_start_tls = (ITLSTransport.providedBy(self.transport)
                                    and self.listener.tls == "starttls"
                                    and self.context.tls_options is not None)
        if not self.admit():  # behind PROXY too: the header was read before this
            return
        log.debug("connect client={client_ip} listener={listener}", client_ip=self.client_ip,
                  listener=self.listener.name)
        self.sendCode(220, self.host + b" ESMTP relaymail")
        self.setTimeout(self.timeout)

    def admit(self) -> bool:
        """Apply blocked networks and connection limits; refuse and close if needed."""
        peer = self.transport.getPeer()
        self.state.client_ip = str(getattr(peer, "host", peer))
        refusal = self.context.connections.admit(self.client_ip, self.context.smtp)
        if refusal is not None:
            log.info("refused client={client_ip} listener={listener} reason={reason}",
                     client_ip=self.client_ip, listener=self.listener.name, reason=refusal.text)
            self.reply(refusal)
            self.close()
            return False
        self.admitted = True
        self.context.connections.per_listener[self.listener.name] += 1
        return True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.gone = self.state.closed = True
        self.context.sessions.discard(self)
        self.forget_abort()
        self.setTimeout(None)
        self.context.idle.session_gone()
        self.discard_transaction()
        if self.admitted:
            self.admitted = False
            self.context.connections.release(self.client_ip)
            self.context.connections.per_listener[self.listener.name] -= 1
            # One info line per accepted message ("queued"); a session that queued
            # nothing (a probe, a refused sender, a scanner) is logged when it ends.
            emit = log.debug if self.state.queued else log.info
            emit("disconnect client={client_ip} listener={listener} credential={credential} "
                 "queued={queued}", client_ip=self.client_ip, listener=self.listener.name,
                 credential=self.credential, queued=self.state.queued)

    def idle_sweeper(self) -> IdleSweeper:
        return self.context.idle

    def timeoutConnection(self) -> None:
        log.info("timeout client={client_ip} listener={listener}", client_ip=self.client_ip,
                 listener=self.listener.name)
        self.reply(replies.TIMEOUT)
        self.close()

    def lineLengthExceeded(self, line: bytes) -> None:
        log.info("line too long client={client_ip} listener={listener}",
                 client_ip=self.client_ip, listener=self.listener.name)
        self.discard_transaction()
        self.reply(replies.LINE_TOO_LONG)
        self.close()

    def too_many_errors(self) -> None:
        log.info("too many errors client={client_ip}", client_ip=self.client_ip)

    def discard_transaction(self) -> None:
        self.mail.discard()
        self._midline = False
        if self.mode == DATA:
            self.mode = COMMAND

    # ------------------------------------------------------------------ dispatch

    def command(self, verb: bytes) -> Callable[[bytes], Result] | None:
        handler = COMMANDS.get(verb)
        return None if handler is None else partial(handler, self)

    def data_line(self, line: bytes) -> None:
        self.mail.line(line)

    def data_piece(self, piece: bytes) -> None:
        self.mail.piece(piece)

    def data_block(self, block: bytes) -> None:
        self.mail.block(block)

    def end_of_data(self) -> Result:
        return self.mail.end()

    def auth_line(self, line: bytes) -> Result:
        return self.auth.line(line)

    # ------------------------------------------------------------------ simple commands

    def hello(self, rest: bytes, esmtp: bool) -> Result:
        name = rest.strip()
        if not name or len(name) > 255:
            return Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self.discard_transaction()
        self.state.helo, self.state.esmtp = name.decode("ascii", "replace"), esmtp
        if not esmtp:
            return Reply(250, "2.0.0", self.context.hostname)
        lines = [self.host] + [b" ".join(x) for x in self.ehlo_keywords()]
        self.write_reply(250, b"\n".join(lines))
        return None

    def ehlo_keywords(self) -> list[list[bytes]]:
        keywords = [[b"PIPELINING"], [b"SIZE", b"%d" % self.context.smtp.max_message_size],
                    [b"8BITMIME"], [b"ENHANCEDSTATUSCODES"]]
        if self.state.can_start_tls and not self.state.started_tls:
            keywords.append([b"STARTTLS"])
        if self.auth.offered():
            keywords.append([b"AUTH", *(m.encode() for m in MECHANISMS)])
        return keywords

    def rset(self, rest: bytes) -> Result:
        self.discard_transaction()
        return replies.OK

    def vrfy(self, rest: bytes) -> Result:
        if not rest.strip():
            return Reply(501, "5.5.4", "Syntax: VRFY address")
        return Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt "
                                   "delivery")

    def help(self, rest: bytes) -> Result:
        return Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY "
                                   "STARTTLS AUTH; see RFC 5321")

    # ------------------------------------------------------------------ STARTTLS

    def starttls(self, rest: bytes) -> Result:
        state = self.state
        if rest.strip():
            return Reply(501, "5.5.4", "Syntax: STARTTLS")
        if state.started_tls:
            return Reply(554, "5.5.1", "Error: TLS already active")
        if not state.can_start_tls:
            return Reply(502, "5.5.1", "Error: command not implemented")
        if self.mail.txn is not None:
            return Reply(503, "5.5.1", "Error: MAIL transaction in progress")
        self.reply(Reply(220, "2.0.0", "Ready to start TLS"))
        self.forget_plaintext_input()
        self.transport.startTLS(self.context.tls_options)
        state.started_tls = True
        state.helo, state.esmtp, state.credential = None, False, None
        return None

    def tls_comment(self) -> str:
        try:
            conn = self.transport.getHandle()
            return f" (using {conn.get_protocol_version_name()} with cipher " \
                   f"{conn.get_cipher_name()})"
        except Exception:
            return ""

    def spill_pressure(self, waiting: bool) -> None:
        """Stop reading while the spool catches up with a fast sender (bounded memory)."""
        if self.gone or self.closing:
            return
        if waiting:
            self.hold(HELD_FOR_DISK)
        else:
            self.release(HELD_FOR_DISK)


NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
BYE = Reply(221, "2.0.0", "Bye", close=True)

# verb -> handler(session, rest); one table for all sessions (no per-connection copies)
COMMANDS: dict[bytes, Callable[[RelayESMTP, bytes], Result]] = {
    b"HELO": lambda s, rest: s.hello(rest, esmtp=False),
    b"EHLO": lambda s, rest: s.hello(rest, esmtp=True),
    b"MAIL": lambda s, rest: s.auth.revoked() or s.mail.mail(rest),
    b"RCPT": lambda s, rest: s.mail.rcpt(rest),
    b"DATA": lambda s, rest: s.mail.data(rest),
    b"AUTH": lambda s, rest: s.auth.begin(rest, s.mail.txn is not None),
    b"STARTTLS": RelayESMTP.starttls, b"RSET": RelayESMTP.rset,
    b"NOOP": lambda s, rest: replies.OK, b"VRFY": RelayESMTP.vrfy,
    b"EXPN": lambda s, rest: NOT_IMPLEMENTED, b"HELP": RelayESMTP.help,
    b"QUIT": lambda s, rest: BYE,
}


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
