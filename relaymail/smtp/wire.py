"""The wire layer of an inbound session: bytes to lines, handler results to replies.

It knows nothing of mail.  It splits input on CRLF itself (a DATA line may be longer than
``max_line_length`` and is handed on in pieces, in bounded memory; a command line that
long is answered and the connection closed), holds further input while a reply waits on a
Deferred (the pipelining fix: stock Twisted runs queued lines meanwhile, so replies come
out of order or body lines run as commands), forgets plaintext pipelined behind STARTTLS,
adds enhanced status codes, and counts errors.

Handlers (``session.py`` dispatches to them) return what to say: a ``Reply``, a
``Continue`` (334/354: the next lines belong to AUTH or DATA), a Deferred firing with one of
those, or None when nothing is to be said.  ``answer`` is the one place that writes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail.smtp import ESMTP
from twisted.python.failure import Failure

from relaymail.common import replies
from relaymail.common.replies import Continue, Reply
from relaymail.logs import Logger
from relaymail.smtp.idle import IdleSweeper

log = Logger(namespace="relaymail.smtp")

COMMAND, DATA, AUTH = "command", "data", "auth"
# Why reading is paused (a bit each): input came while a reply waited; the spool is behind.
HELD_FOR_REPLY, HELD_FOR_DISK = 1, 2
ABORT_AFTER = 5.0  # seconds a peer gets to close once we said goodbye
Result = Reply | Continue | Deferred | None


class WireProtocol(ESMTP):
    """Lines in, replies out; subclasses provide ``command``, ``data_line``,
    ``data_piece`` and ``auth_line``."""

    # Twisted's concrete TCP/TLS transport: ITransport declares none of disconnecting,
    # pauseProducing, resumeProducing, abortConnection, startTLS or getHandle.
    transport: Any
    timeout: float  # type: ignore[assignment]  # idle seconds; SMTP says int, fractions work
    max_errors = 20
    # The wire state is kept in slots, not in the instance dict: CPython shares a dict's
    # keys between instances only up to 30 attributes, and a session with more paid 1.3 KB
    # more (50,000 idle sessions: 4.3 KiB each instead of 2.9; tests/test_smtp_protocol.py).
    __slots__ = ("_abort_call", "_backlog", "_blocked", "_discard_rest", "_held",
                 "_idle_deadline", "_in_data_received", "_midline", "_pending", "closing",
                 "errors", "gone", "mode")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.mode = COMMAND
        self.errors = 0
        self._backlog: deque[bytes] | None = None
        self._blocked = False
        self._held = 0  # HELD_FOR_* bits: reading is paused while any is set
        self._in_data_received = False
        self._discard_rest = False
        self._pending = b""  # received bytes after the last CRLF
        self._midline = False  # part of the current DATA line was already handed on
        self.gone = False  # the connection is closed; a peer close leaves disconnecting False
        self.closing = False  # we said goodbye: nothing more is read, run or answered
        self._abort_call: Any = None
        self._idle_deadline: float | None = None  # when the idle timeout runs out

    # ------------------------------------------------------------------ idle timeout

    # TimeoutMixin's API, kept as a deadline that one sweeper per process checks
    # (relaymail.smtp.idle) instead of a DelayedCall per session, re-armed at every line.
    def idle_sweeper(self) -> IdleSweeper:
        raise NotImplementedError  # the process's sweeper (RelayESMTP: its context's)

    def setTimeout(self, period: float | None) -> None:  # type: ignore[override]
        if period is None:
            self._idle_deadline = None
            return
        sweeper = self.idle_sweeper()
        self._idle_deadline = sweeper.seconds() + period
        sweeper.watch(self.callLater, period)

    def resetTimeout(self) -> None:
        if self._idle_deadline is not None:
            self._idle_deadline = self.idle_sweeper().seconds() + self.timeout

    # ------------------------------------------------------------------ input

    def dataReceived(self, data: bytes) -> None:
        if self.closing:  # TLS keeps delivering after its close until the peer agrees
            return
        if self._blocked and not self._held & HELD_FOR_REPLY:
            self.hold(HELD_FOR_REPLY)  # input during a wait: no more until the reply is out
        self._in_data_received = True
        try:
            buffer = self._pending + data
            if self.mode == DATA and not self._blocked and not self._midline:
                buffer = self._data_in_bulk(buffer)
            lines = buffer.split(b"\r\n")
            self._pending = lines.pop()
            for line in lines:
                if self._discard_rest or self.closing:
                    return
                self.lineReceived(line)
            if len(self._pending) > self.MAX_LENGTH and not self._discard_rest:
                self.long_line_piece()
        finally:
            self._in_data_received = False
            if self._discard_rest:
                self._pending = b""
            self._discard_rest = False

    def _data_in_bulk(self, buffer: bytes) -> bytes:
        """DATA: hand on every complete line before the final "." at once (one call per
        chunk instead of one per line); returns what the line-by-line path still reads:
        the final "." and what follows it, or a last incomplete line."""
        end = buffer.find(b"\r\n.\r\n")
        cut = end + 2 if end >= 0 else buffer.rfind(b"\r\n") + 2
        if cut < 2 or buffer.startswith(b".\r\n"):
            return buffer
        self.resetTimeout()
        self.data_block(buffer[:cut])
        return buffer[cut:]

    def long_line_piece(self) -> None:
        """No CRLF within ``MAX_LENGTH``: in DATA, pass the piece on (keeping a final CR,
        which may be half of a CRLF); anywhere else it is an over-long command line."""
        if self.mode != DATA or self._blocked or self.closing:
            if not self._blocked:
                self.lineLengthExceeded(self._pending)
            return
        keep = 1 if self._pending.endswith(b"\r") else 0
        piece, self._pending = self._pending[:len(self._pending) - keep], \
            self._pending[len(self._pending) - keep:]
        self.resetTimeout()
        self.data_piece(piece)
        self._midline = True

    def lineReceived(self, line: bytes) -> None:
        if self._discard_rest or self.closing:
            return
        if self._blocked:
            assert self._backlog is not None
            self._backlog.append(line)
            if not self._held & HELD_FOR_REPLY:
                self.hold(HELD_FOR_REPLY)
            return
        self.dispatch(line)

    def dispatch(self, line: bytes) -> None:
        """One line, by mode: a DATA line (the sync fast path), an AUTH answer, a command."""
        self.resetTimeout()
        if self.mode == DATA:
            if line == b"." and not self._midline:
                self.mode = COMMAND
                self.answer(self.end_of_data())
            else:
                self._midline = False
                self.data_line(line)
        elif len(line) > self.MAX_LENGTH:
            self.lineLengthExceeded(line)
        elif self.mode == AUTH:
            result = self.auth_line(line)
            if not isinstance(result, Continue):
                self.mode = COMMAND
            self.answer(result)
        else:
            self.command_line(line)

    def command_line(self, line: bytes) -> None:
        parts = line.strip().split(None, 1)
        if not parts:
            self.reply(Reply(500, "5.5.2", "Error: bad syntax"))
            return
        handler = self.command(parts[0].upper()) if parts[0].isalpha() else None
        if handler is None:
            self.reply(Reply(500, "5.5.2", "Error: command not recognized"))
            return
        self.answer(handler(parts[1] if len(parts) == 2 else b""))

    # hooks for the session
    def command(self, verb: bytes) -> Callable[[bytes], Result] | None:
        raise NotImplementedError

    def data_line(self, line: bytes) -> None:
        raise NotImplementedError

    def data_piece(self, piece: bytes) -> None:
        raise NotImplementedError

    def data_block(self, block: bytes) -> None:
        """Complete DATA lines, each with its CRLF (never the final ".")."""
        for line in block[:-2].split(b"\r\n"):
            self.data_line(line)

    def end_of_data(self) -> Result:
        raise NotImplementedError

    def auth_line(self, line: bytes) -> Result:
        raise NotImplementedError

    # ------------------------------------------------------------------ answers

    def answer(self, result: Result | Failure) -> None:
        """Say what a handler returned; a Deferred holds input until it has fired."""
        if isinstance(result, Deferred):
            self.await_reply(result, self.answer)
        elif isinstance(result, Reply):
            self.reply(result)
            if result.close:
                self.close()
            if result.then is not None:
                result.then()
        elif isinstance(result, Continue):
            self.mode = result.mode
            self.write_reply(result.code, result.text)
        elif isinstance(result, Failure):
            log.failure("smtp: a handler failed", failure=result)
            self.mode = COMMAND
            self.reply(replies.LOCAL_ERROR)

    def await_reply(self, d: Deferred, handler: Callable[[Any], None]) -> None:
        """Run ``handler`` with the result of ``d``; hold further input until it has run
        (and until any wait the handler starts itself is over)."""
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
        """Hold input while a reply waits.  Reading is paused only if input does come
        meanwhile (``dataReceived``): a client that waits for the reply, as nearly all do
        after the end of data, costs no pause and resume (two system calls each)."""
        self._blocked = True
        if self._backlog is None:
            self._backlog = deque()
        self.setTimeout(None)

    def unblock(self) -> None:
        self._blocked = False
        if self.gone or self.closing:
            return
        self.setTimeout(self.timeout)
        while self._backlog and not self._blocked and not self.closing:
            self.dispatch(self._backlog.popleft())
        if not self._blocked and not self.closing:
            self.release(HELD_FOR_REPLY)

    def hold(self, reason: int) -> None:
        """Pause reading for ``reason`` (a HELD_FOR_* bit)."""
        if not self._held:
            self.transport.pauseProducing()
        self._held |= reason

    def release(self, reason: int) -> None:
        """``reason`` is over; reading resumes once no other reason holds it."""
        if not self._held & reason:
            return
        self._held &= ~reason
        if not self._held and not self.gone and not self.closing:
            self.transport.resumeProducing()

    def forget_plaintext_input(self) -> None:
        """Anything sent behind STARTTLS in plaintext must not run inside TLS (CVE-2011-0411)."""
        self._pending = b""
        if self._backlog:
            self._backlog.clear()
        if self._in_data_received:
            self._discard_rest = True

    def count_refusal(self, code: int, enhanced: str) -> None:
        """Hook: a 4xx or 5xx reply was sent (the session counts it for metrics)."""

    def reply(self, r: Reply) -> None:
        self.sendCode(r.code, r.encode())

    def write_reply(self, code: int, text: bytes) -> None:
        """A reply of one or more lines (``text`` split at line ends) in one write: stock
        twisted.mail writes each line of a multi-line reply (EHLO's, five or more) on its
        own, one system call and one TCP segment each."""
        prefix = b"%03d" % code
        if b"\n" not in text and b"\r" not in text:  # most replies: one line
            self.transport.write(b"%s %s\r\n" % (prefix, text))
            return
        lines = text.splitlines() or [b""]
        self.transport.write(b"".join([*(prefix + b"-" + line + b"\r\n" for line in lines[:-1]),
                                       prefix, b" ", lines[-1], b"\r\n"]))

    def sendCode(self, code: int, message: bytes = b"") -> None:
        if self.gone or self.closing or self.transport is None:
            return
        text = replies.with_enhanced(code, message)
        self.write_reply(code, text)
        if code >= 400:
            enhanced = text.split(b" ", 1)[0] if replies.ENHANCED_RE.match(text) else b""
            self.count_refusal(code, enhanced.decode())
        if code >= 500:
            self.errors += 1
            if self.errors >= self.max_errors:
                self.too_many_errors()
                self.write_reply(421, replies.TOO_MANY_ERRORS.encode())
                self.close()

    def too_many_errors(self) -> None:
        """Hook: the session logs it."""

    def close(self, grace: float = ABORT_AFTER) -> None:
        """Say goodbye: stop reading, running and answering at once, close politely, and
        abort if the peer does not let go (a TLS peer that never answers our close_notify
        keeps the connection, and its input, coming otherwise)."""
        if self.closing or self.gone:
            return
        self.closing = True
        self._pending = b""
        if self._backlog:
            self._backlog.clear()
        self.setTimeout(None)
        self.transport.loseConnection()
        self._abort_call = self.callLater(grace, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self.gone:
            self.transport.abortConnection()

    def forget_abort(self) -> None:
        """The connection is gone: no abort is due."""
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
