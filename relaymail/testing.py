"""Test doubles shipped with relaymail, as treq ships ``treq.testing.StubTreq``: no sockets,
no threads, no real time.

- ``TLSCapableTransport``: a ``StringTransport`` that records STARTTLS instead of doing it.
- ``ManualRunner``: a ``run_in_thread`` whose results the test releases.
- ``FakeChecker``: a credential checker that knows ``user``/``secret``.
- ``FailingOps``: the spool's file operations, one of which fails on cue.
- ``ScriptedTransport``: a relay transport answering each recipient from a script.
- ``ScriptedPeer``: an SMTP server answering from a ``{command: reply}`` table, over a
  ``StringTransport`` or ``twisted.test.iosim``; ``connect_client`` joins a
  ``RelayClient`` to one, and ``ScriptedOpener`` is a ``SessionPool`` opener that does so
  for each session the pool opens.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim
from zope.interface import implementer

from relaymail.relay.client import RelayClient
from relaymail.relay.connector import Target
from relaymail.relay.outcome import Outcome, SessionError
from relaymail.spool.envelope import Envelope
from relaymail.spool.safeio import FileOps

# ---------------------------------------------------------------------- transports, threads


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):  # type: ignore[misc]  # no TCP options
    """A StringTransport that records STARTTLS instead of doing it."""

    tls_started_with: Any = None

    def startTLS(self, contextFactory: Any) -> None:
        self.tls_started_with = contextFactory


class ManualRunner:
    """A ``run_in_thread`` whose results the test releases, to hold replies outstanding."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((f, args, d))
        return d

    def release(self) -> None:
        calls, self.calls = self.calls, []
        for f, args, d in calls:
            d.callback(f(*args))


class FakeChecker:
    """Accepts user/secret; anything else is refused. ``pending`` holds answers back."""

    def __init__(self) -> None:
        self.pending: list[Deferred] | None = None

    def requestAvatarId(self, creds: Any) -> Deferred:
        ok = creds.username == b"user" and creds.password == b"secret"
        result = succeed("user") if ok else fail(UnauthorizedLogin())
        if self.pending is None:
            return result
        pending = self.pending
        d: Deferred = Deferred()
        pending.append(d)

        def keep(r: Any) -> None:  # keep result to fire later
            pending.append(r)

        result.addBoth(keep)
        return d


class FailingOps(FileOps):
    """FileOps that raise the given errno on the named operation."""

    def __init__(self, operation: str, code: int = errno.ENOSPC) -> None:
        self.operation, self.code = operation, code

    def __getattribute__(self, name: str) -> Any:
        if name == object.__getattribute__(self, "operation"):
            def broken(*args: Any) -> None:
                raise OSError(object.__getattribute__(self, "code"), os.strerror(errno.ENOSPC))
            return broken
        return object.__getattribute__(self, name)


class ScriptedTransport:
    """A relay transport answering each recipient from ``script`` (address -> list of
    outcomes, the last repeating), ``default`` for the others; ``calls`` records
    (queue ID, recipients) per delivery."""

    def __init__(self, name: str, script: dict[str, list[Outcome]] | None = None,
                 default: Outcome = Outcome(250, "2.0.0 ok", "up")) -> None:  # noqa: B008
        self.name = name
        self.script = script or {}
        self.default = default
        self.calls: list[tuple[str, list[str]]] = []

    def deliver(self, envelope: Envelope, recipients: list[str], body_path: str) -> Deferred:
        self.calls.append((envelope.queue_id, list(recipients)))
        out = {}
        for r in recipients:
            queue = self.script.get(r)
            out[r] = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else self.default
        return succeed(out)


# ---------------------------------------------------------------------- a scripted SMTP peer

DROP = "<drop>"  # a reply that closes the connection instead of answering
SILENT = "<silent>"  # a reply that never comes

DEFAULT_REPLIES: dict[str, str] = {
    "banner": "220 peer.test ESMTP scripted",
    "EHLO": "250-peer.test\n250-PIPELINING\n250-SIZE 10000000\n250 8BITMIME",
    "HELO": "250 peer.test",
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    ".": "250 2.0.0 Ok: queued",
    "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok",
    "QUIT": "221 2.0.0 Bye",
}
NO_VALID_RECIPIENTS = "554 5.5.1 Error: no valid recipients"


@dataclass
class PeerMessage:
    """One transaction the peer saw end with ``.``: ``wire`` as sent (dot-stuffed),
    ``content`` unstuffed, ``accepted`` true when the final reply was 2xx."""

    sender: str
    recipients: list[str]
    wire: bytes = b""
    content: bytes = b""
    reply: str = ""

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")


@dataclass
class _Transaction:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    lines: list[bytes] | None = None  # set while reading DATA


class ScriptedPeer(LineReceiver):
    """An SMTP server that answers from a table, over any transport.

    Keys: ``banner``; a verb (``EHLO``, ``MAIL``, ``RCPT``, ``DATA``, ``RSET``...);
    ``VERB address`` for MAIL and RCPT of one address (``"RCPT b@y.test"``); ``.`` for the
    end of the data; ``body`` for the first body line (only ``DROP`` makes sense there).
    A value is one reply (several lines joined by ``\\n``), or a list used in turn whose
    last item repeats; ``DROP`` closes the connection, ``SILENT`` never answers.  DATA
    with no accepted recipient is answered ``554`` whatever the table says.

    ``commands`` has every command line; ``messages`` every transaction ended with ``.``.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 10_000_000

    def __init__(self, replies: Mapping[str, str | list[str]] | None = None) -> None:
        self.replies: dict[str, str | list[str]] = {**DEFAULT_REPLIES, **(replies or {})}
        self.used: dict[str, int] = {}
        self.commands: list[str] = []
        self.messages: list[PeerMessage] = []
        self.transaction = _Transaction()
        self.closed = False

    # ------------------------------------------------------------------ table

    def answer(self, key: str) -> str:
        """The next reply for ``key`` (and counts it as used)."""
        value = self.replies[key]
        if isinstance(value, str):
            return value
        n = self.used.get(key, 0)
        self.used[key] = n + 1
        return value[min(n, len(value) - 1)]

    def say(self, reply: str) -> None:
        if reply == SILENT:
            return
        if reply == DROP:
            self.drop()
            return
        for line in reply.split("\n"):
            self.sendLine(line.encode())

    def drop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    # ------------------------------------------------------------------ protocol

    def connectionMade(self) -> None:
        banner = self.answer("banner")
        self.say(banner)
        if banner not in (SILENT, DROP) and not banner.startswith("2"):
            self.drop()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True

    def lineReceived(self, line: bytes) -> None:
        if self.transaction.lines is not None:
            self._data_line(line)
            return
        text = line.decode("utf-8", "replace")
        self.commands.append(text)
        verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
        address = text[text.find("<") + 1:text.find(">")] if "<" in text else ""
        key = f"{verb} {address}"
        if verb in ("MAIL", "RCPT") and key in self.replies:
            reply = self.answer(key)
        elif verb in self.replies:
            reply = self.answer(verb)
        else:
            reply = "502 5.5.2 Error: command not recognized"
        getattr(self, f"on_{verb}", lambda *_: None)(address, reply)
        if verb == "DATA" and not self.transaction.recipients:
            reply = NO_VALID_RECIPIENTS
        self.say(reply)
        if verb == "DATA" and reply.startswith("354"):
            self.transaction.lines = []
        if verb == "QUIT" and reply not in (SILENT, DROP):
            self.drop()

    def on_MAIL(self, address: str, reply: str) -> None:
        if reply.startswith("2"):
            self.transaction = _Transaction(sender=address)

    def on_RCPT(self, address: str, reply: str) -> None:
        if reply.startswith("2") and self.transaction.sender is not None:
            self.transaction.recipients.append(address)

    def on_RSET(self, address: str, reply: str) -> None:
        self.transaction = _Transaction()

    def _data_line(self, line: bytes) -> None:
        lines = self.transaction.lines
        assert lines is not None
        if line != b".":
            if not lines and "body" in self.replies and self.answer("body") == DROP:
                self.drop()
            lines.append(line)
            return
        wire = b"".join(x + b"\r\n" for x in lines)
        content = b"".join((x[1:] if x.startswith(b".") else x) + b"\r\n" for x in lines)
        reply = self.answer(".")
        self.messages.append(PeerMessage(self.transaction.sender or "",
                                         list(self.transaction.recipients), wire, content,
                                         reply))
        self.transaction = _Transaction()
        self.say(reply)


def connect_client(client: RelayClient, peer: ScriptedPeer, clock: Any = None
                   ) -> iosim.IOPump:
    """Join ``client`` to ``peer`` in memory (``twisted.test.iosim``) and run the greeting
    and handshake; the client's timeouts run on ``clock``.  ``pump.flush()`` moves what
    each side wrote since (and streams the message body)."""
    clock = clock if clock is not None else iosim.MemoryReactorClock()
    client.callLater = clock.callLater  # type: ignore[method-assign]
    return iosim.connect(peer, iosim.makeFakeServer(peer), client,
                         iosim.makeFakeClient(client), clock=clock)


def relay_client(label: str = "peer.test:25", timeout: float = 300.0, **kw: Any
                 ) -> RelayClient:
    """A RelayClient for a plaintext peer: no TLS, no AUTH unless ``username`` is given."""
    values: dict[str, Any] = dict(identity="relay.test", username=None, password=None,
                                  tls_context=None, require_tls=False)
    values.update(kw)
    return RelayClient(label=label, timeout=timeout, **values)


PeerFactory = Callable[[Target, int], "ScriptedPeer | BaseException"]


class ScriptedOpener:
    """A ``SessionPool`` opener: each session is a RelayClient joined in memory to the
    ScriptedPeer that ``peers(target, n)`` makes (n counts the sessions tried so far), or
    fails with the exception it returns instead.  With ``hold`` set, connections wait in
    ``pending`` until ``release()``; ``flush()`` moves the bytes of every session."""

    def __init__(self, peers: PeerFactory | None = None, clock: Any = None,
                 hold: bool = False) -> None:
        self.peers: PeerFactory = peers or (lambda target, n: ScriptedPeer())
        self.clock = clock
        self.hold = hold
        self.opened: list[tuple[Target, RelayClient, ScriptedPeer]] = []
        self.attempts: list[Target] = []
        self.pending: list[tuple[Target, Deferred]] = []
        self.pumps: list[iosim.IOPump] = []
        self.made = 0

    def __call__(self, reactor: Any, target: Target, identity: str, connect_timeout: float,
                 command_timeout: float) -> Deferred:
        self.attempts.append(target)
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((target, d))
            return d
        return self._open(target, identity, command_timeout)

    def _open(self, target: Target, identity: str = "relay.test",
              command_timeout: float = 300.0) -> Deferred:
        peer = self.peers(target, self.made)
        self.made += 1
        if isinstance(peer, BaseException):
            return fail(peer)
        client = relay_client(target.label, command_timeout, identity=identity,
                              username=target.username, password=target.password)
        self.opened.append((target, client, peer))
        ready = client.ready
        self.pumps.append(connect_client(client, peer, self.clock or iosim.MemoryReactorClock()))
        return ready

    def release(self, error: BaseException | None = None) -> None:
        """Go on with the held connections: each opens (or fails with ``error``)."""
        pending, self.pending = self.pending, []
        for target, d in pending:
            if error is not None:
                d.errback(error)
            else:
                self._open(target).chainDeferred(d)
        self.flush()

    def flush(self) -> None:
        """Move bytes on every session until none moves (also streams bodies)."""
        for _ in range(1000):
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
                elif pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if not moved:
                return
        raise AssertionError("the sessions never went quiet")

    @property
    def peers_made(self) -> list[ScriptedPeer]:
        return [peer for _, _, peer in self.opened]


def connect_refused(text: str = "Connection refused") -> SessionError:
    """What the opener fails with when nothing listens."""
    return SessionError("connect", text)
