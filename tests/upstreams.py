"""Real SMTP peers for relay tests: an aiosmtpd "provider" (STARTTLS, AUTH, trustme
certificates) in its own thread, and a scripted Twisted server that misbehaves on cue."""

from __future__ import annotations

import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from tests.helpers import free_port, shared_ca


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str] = field(default_factory=list)
    tls: bool = False
    auth_user: str | None = None
    at: float = 0.0  # when the final "." arrived (reactor time)


class RecordingHandler:
    """aiosmtpd handler: records messages; per-recipient replies can be scripted."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login.decode() if session.auth_data else None
        with self.lock:
            self.messages.append(Received(
                envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                list(envelope.mail_options), session.ssl is not None, login))
        return "250 2.0.0 OK queued"


class AioUpstream:
    """A provider stand-in: STARTTLS required, AUTH PLAIN/LOGIN required over TLS."""

    def __init__(self, username: str | None = "relay", password: str = "s3cret-pass",
                 cert_names: tuple[str, ...] = ("localhost", "127.0.0.1"),
                 implicit: bool = False, handler: RecordingHandler | None = None) -> None:
        self.port = free_port()
        self.handler = handler or RecordingHandler()
        self.username, self.password = username, password
        leaf = shared_ca().issue_cert(*cert_names)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        tls: dict[str, Any] = ({"ssl_context": context} if implicit else
                               {"tls_context": context, "require_starttls": True})
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port,
            authenticator=self._check if username else None,
            # aiosmtpd only counts STARTTLS as TLS; on implicit TLS everything is TLS.
            auth_required=username is not None, auth_require_tls=not implicit, **tls)

    def _check(self, server: Any, session: Any, envelope: Any, mechanism: str,
               auth_data: Any) -> AuthResult:
        ok = (auth_data.login.decode() == self.username
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def start(self) -> AioUpstream:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def ca_file() -> str:
    path = tempfile.mktemp(suffix=".pem")
    shared_ca().cert_pem.write_to_path(path)
    return path


# ---------------------------------------------------------------------- scripted server


@dataclass
class Script:
    """How one session behaves.  Replies are full lines; None in ``stall`` never answers."""

    banner: str = "220 scripted.test ESMTP"
    extensions: tuple[str, ...] | None = ("PIPELINING", "SIZE 10000000", "8BITMIME")
    mail: str = "250 2.1.0 Ok"
    rcpt: dict[str, str] = field(default_factory=dict)
    rcpt_first_time: dict[str, str] = field(default_factory=dict)  # only for the first RCPT
    data: str = "354 End data with <CR><LF>.<CR><LF>"
    end: str = "250 2.0.0 Ok: queued"
    drop_in_data: bool = False
    stall_on: str | None = None


class ScriptedSession(LineReceiver):
    MAX_LENGTH = 1_000_000

    def __init__(self, server: ScriptedUpstream, script: Script) -> None:
        self.server, self.script = server, script
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.lines: list[bytes] | None = None
        self.commands: list[str] = []

    def connectionMade(self) -> None:
        self.server.sessions.append(self)
        self.server.open += 1
        self.server.most_open = max(self.server.most_open, self.server.open)
        if self.script.stall_on != "banner":
            self.reply(self.script.banner)
        else:
            return
        if self.script.banner[0] != "2":
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.server.open -= 1

    def reply(self, line: str) -> None:
        self.sendLine(line.encode())

    def lineReceived(self, line: bytes) -> None:
        if self.lines is not None:
            self.data_line(line)
            return
        text = line.decode("utf-8", "replace")
        verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
        self.commands.append(text)
        if self.script.stall_on == verb:
            return
        handler = getattr(self, f"do_{verb}", None)
        if handler is None:
            self.reply("502 5.5.2 unknown command")
        else:
            handler(text)

    def do_EHLO(self, text: str) -> None:
        if self.script.extensions is None:
            self.reply("502 5.5.2 EHLO not supported")
            return
        lines = ["scripted.test", *self.script.extensions]
        for i, item in enumerate(lines):
            self.reply(("250 " if i == len(lines) - 1 else "250-") + item)

    def do_HELO(self, text: str) -> None:
        self.reply("250 scripted.test")

    def do_MAIL(self, text: str) -> None:
        self.mail_from = text[text.index("<") + 1:text.index(">")]
        self.rcpts = []
        self.reply(self.script.mail)

    def do_RCPT(self, text: str) -> None:
        address = text[text.index("<") + 1:text.index(">")]
        reply = self.script.rcpt.get(address, "250 2.1.5 Ok")
        if address in self.script.rcpt_first_time and address not in self.server.seen:
            reply = self.script.rcpt_first_time[address]
        self.server.seen.add(address)
        if reply.startswith("2") and self.script.mail.startswith("2"):
            self.rcpts.append(address)
        self.reply(reply)

    def do_DATA(self, text: str) -> None:
        if not self.rcpts:
            self.reply("554 5.5.1 no valid recipients")
            return
        self.reply(self.script.data)
        if self.script.data.startswith("354"):
            self.lines = []

    def do_RSET(self, text: str) -> None:
        self.mail_from, self.rcpts = None, []
        self.reply("250 2.0.0 Ok")

    def do_STARTTLS(self, text: str) -> None:
        """Says yes, then speaks garbage instead of a TLS handshake."""
        self.reply("220 2.0.0 Ready to start TLS")
        self.transport.write(b"this is not TLS\r\n" * 4)
        self.transport.loseConnection()

    def do_NOOP(self, text: str) -> None:
        self.reply("250 2.0.0 Ok")

    def do_QUIT(self, text: str) -> None:
        self.reply("221 2.0.0 Bye")
        self.transport.loseConnection()

    def data_line(self, line: bytes) -> None:
        assert self.lines is not None
        if self.script.drop_in_data:
            self.transport.abortConnection()
            return
        if line == b".":
            content = b"".join(x + b"\r\n" for x in self.lines)
            self.lines = None
            if self.script.stall_on == "END":
                return
            if self.script.end.startswith("2"):
                self.server.messages.append(Received(self.mail_from or "", self.rcpts, content,
                                                     at=reactor.seconds()))
            self.reply(self.script.end)
            return
        self.lines.append(line[1:] if line.startswith(b".") else line)


class ScriptedUpstream:
    """Listens on 127.0.0.1; ``scripts`` gives the Script for session number n (0-based)."""

    def __init__(self, scripts: Callable[[int], Script] | Script | None = None) -> None:
        if scripts is None:
            scripts = Script()
        self.scripts = scripts if callable(scripts) else (lambda n, s=scripts: s)
        self.sessions: list[ScriptedSession] = []
        self.messages: list[Received] = []
        self.seen: set[str] = set()
        self.listening: Any = None
        self.open = self.most_open = 0  # sessions open now, and at most at once

    async def start(self) -> ScriptedUpstream:
        factory = Factory.forProtocol(
            lambda: ScriptedSession(self, self.scripts(len(self.sessions))))
        self.listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory)
        return self

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    async def stop(self) -> None:
        await self.listening.stopListening()
        for session in self.sessions:
            if session.transport is not None and session.transport.connected:
                session.transport.abortConnection()
        await deferLater(reactor, 0.01, lambda: None)


async def wait_until(predicate: Callable[[], bool], seconds: float = 15.0,
                     what: str = "condition") -> None:
    """Poll (without blocking the reactor) until ``predicate()`` holds."""
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")
