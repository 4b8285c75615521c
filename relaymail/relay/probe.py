"""``POST /api/relay/test``: connect to an upstream the way a delivery would, step by step
(TCP, banner, EHLO, STARTTLS with the certificate check, EHLO again, AUTH, QUIT), and report
each step's time and the server's reply, with a plain explanation of what failed.  An
OAuth2 upstream first gets its access token from the same token source deliveries use
(step "OAuth2 token"), then logs in with XOAUTH2 or OAUTHBEARER."""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from relaymail.relay.connector import Target, default_registry, endpoint_for, tls_creator
from relaymail.relay.oauth2 import OAuth2Error, TokenRegistry, TokenSource, problem
from relaymail.relay.sasl import OAuth2Authenticator


@dataclass
class Step:
    step: str
    ok: bool
    ms: float
    reply: str = ""
    error: str = ""


class ProbeFailedError(Exception):
    """A step failed; the message is meant for the person who typed the settings."""


class ProbeProtocol(LineReceiver):
    """Collects complete (multi-line) replies; ``next_reply`` waits for the next one."""

    transport: Any  # the TCP or TLS transport: ITransport has no abortConnection, startTLS

    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.replies: list[tuple[int, str]] = []
        self.waiting: Deferred | None = None
        self.lost: Failure | None = None

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self.lines.append(text)
        if len(text) >= 3 and text[3:4] != "-":
            code = int(text[:3]) if text[:3].isdigit() else 0
            self.replies.append((code, "\n".join(self.lines)))
            self.lines = []
            self._deliver()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason
        self._deliver()

    def _deliver(self) -> None:
        if self.waiting is None or not (self.replies or self.lost):
            return
        d, self.waiting = self.waiting, None
        if self.replies:
            d.callback(self.replies.pop(0))
        else:
            d.errback(self.lost)

    def next_reply(self, reactor: Any, timeout: float) -> Deferred:
        d: Deferred = Deferred()
        self.waiting = d
        self._deliver()
        return d.addTimeout(timeout, reactor)

    def command(self, line: str) -> None:
        self.sendLine(line.encode())


def explain(failure: Failure, target: Target, step: str) -> str:
    """The failure in words an operator can act on."""
    value = failure.value
    where = f"{target.host}:{target.port}"
    if isinstance(value, error.ConnectionRefusedError):
        return f"connection refused by {where}: nothing listens there (wrong port?)"
    if isinstance(value, (error.TimeoutError, error.TCPTimedOutError)) or \
            type(value).__name__ in ("TimeoutError", "CancelledError"):
        return f"{where} did not answer in time ({step}): a firewall, or the wrong port?"
    if isinstance(value, error.DNSLookupError):
        return f"host name {target.host} not found in DNS"
    text = str(value)
    if isinstance(value, OAuth2Error):
        return text
    if isinstance(value, VerificationError):
        return (f"TLS certificate of {where} is not valid for {target.host}: it was issued "
                "for other names; use the host name the provider documents")
    if isinstance(value, SSL.Error) or "certificate" in text.lower() or \
            "SSL" in type(value).__name__:
        if "verify" in text.lower() or "certificate" in text.lower():
            return (f"TLS certificate of {where} is not valid for {target.host} or not "
                    f"trusted ({text}); check the host name, or ca_file")
        return f"TLS handshake with {where} failed: {text}; does the port speak " \
               f"{'implicit TLS' if target.tls == 'implicit' else 'STARTTLS'}?"
    if isinstance(value, (error.ConnectionDone, error.ConnectionLost)):
        return f"{where} closed the connection during {step}"
    return f"{step} failed: {text or type(value).__name__}"


class Probe:
    """One test run; ``run`` fires with {"ok", "steps", "error"} and never fails."""

    def __init__(self, reactor: Any, target: Target, identity: str, timeout: float,
                 tokens: TokenRegistry | None = None) -> None:
        self.reactor, self.target, self.identity, self.timeout = reactor, target, identity, \
            timeout
        self.tokens = tokens
        self.steps: list[Step] = []
        self.protocol: ProbeProtocol | None = None
        self.access_token: str | None = None

    async def run(self) -> dict[str, Any]:
        problem = ""
        try:
            await self._session()
        except ProbeFailedError as e:
            problem = str(e)
        finally:
            if self.protocol is not None and self.protocol.transport is not None:
                self.protocol.transport.abortConnection()
        return {"ok": not problem, "steps": [asdict(s) for s in self.steps], "error": problem}

    async def _timed(self, name: str, action: Any, expect: tuple[int, ...] = (250,)) -> str:
        started = time.monotonic()
        try:
            code, reply = await action
        except Exception:
            failure = Failure()
            message = explain(failure, self.target, name)
            self.steps.append(Step(name, False, self._ms(started), error=message))
            raise ProbeFailedError(message) from None
        ok = code in expect
        step = Step(name, ok, self._ms(started), reply)
        self.steps.append(step)
        if not ok:
            step.error = self._refused(name, code, reply)
            raise ProbeFailedError(step.error)
        return reply

    def _refused(self, name: str, code: int, reply: str) -> str:
        if name == "AUTH" and self.target.oauth2 is not None and code in (535, 454, 534, 530):
            return f"authentication failed: the server refused the access token for " \
                   f"{self.target.username} ({reply.splitlines()[-1]}); the next delivery " \
                   f"fetches a new one"
        if name == "AUTH" and code in (535, 534, 530):
            return f"authentication failed: the server rejected the username or password " \
                   f"({reply.splitlines()[-1]})"
        return f"{name}: the server answered {reply.splitlines()[-1] if reply else code}"

    @staticmethod
    def _ms(started: float) -> float:
        return round((time.monotonic() - started) * 1000, 1)

    async def _connect(self) -> tuple[int, str]:
        creator = tls_creator(self.target)
        endpoint = endpoint_for(self.reactor, self.target, self.timeout)
        if self.target.tls == "implicit":
            endpoint = wrapClientTLS(creator, endpoint)
        self.protocol = await endpoint.connect(Factory.forProtocol(ProbeProtocol))
        peer = self.protocol.transport.getPeer()
        return 0, f"connected to {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def _say(self, line: str) -> Deferred:
        assert self.protocol is not None
        self.protocol.command(line)
        return self.protocol.next_reply(self.reactor, self.timeout)

    async def _session(self) -> None:
        if self.target.oauth2 is not None:
            await self._timed("OAuth2 token", self._token(), expect=(0,))
        await self._timed("TCP" + (" + TLS" if self.target.tls == "implicit" else ""),
                          self._connect(), expect=(0,))
        assert self.protocol is not None
        await self._timed("banner", self.protocol.next_reply(self.reactor, self.timeout),
                          expect=(220,))
        ehlo = await self._timed("EHLO", self._say(f"EHLO {self.identity}"))
        if self.target.tls in ("starttls", "opportunistic") and "STARTTLS" in ehlo.upper():
            await self._timed("STARTTLS", self._say("STARTTLS"), expect=(220,))
            self.protocol.transport.startTLS(tls_creator(self.target))
            ehlo = await self._timed("EHLO (TLS)", self._say(f"EHLO {self.identity}"))
        elif self.target.requires_tls:
            message = "the server does not offer STARTTLS (try tls \"implicit\" on port 465)"
            self.steps.append(Step("STARTTLS", False, 0.0, error=message))
            raise ProbeFailedError(message)
        if self.target.username:
            try:
                await self._timed("AUTH", self._auth(ehlo), expect=(235,))
            except ProbeFailedError:
                if self.access_token is not None:
                    self._source().invalidate(self.access_token)
                raise
        await self._timed("QUIT", self._say("QUIT"), expect=(221,))

    def _source(self) -> TokenSource:
        assert self.target.oauth2 is not None
        tokens = self.tokens if self.tokens is not None else default_registry(self.reactor)
        return tokens.source(self.target.oauth2, self.target.username or "")

    async def _token(self) -> tuple[int, str]:
        """The access token deliveries would use (cached, or fetched now)."""
        assert self.target.oauth2 is not None
        unusable = problem(self.target.oauth2, self.target.username)
        if unusable is not None:
            raise OAuth2Error(unusable)
        source = self._source()
        self.access_token = await source.token()
        cached = source.cached
        left = f", valid {cached.expires_at - source.clock():.0f} s" if cached else ""
        return 0, f"access token for {self.target.username} from " \
                  f"{self.target.oauth2.token_url}{left}"

    def _auth(self, ehlo: str) -> Deferred:
        if self.target.oauth2 is not None:
            return ensureDeferred(self._oauth2_auth())
        assert self.target.username is not None and self.target.password is not None
        offered = " ".join(line[4:] for line in ehlo.splitlines() if
                           line[4:].upper().startswith("AUTH")).upper()
        if "PLAIN" in offered or not offered:
            token = base64.b64encode(f"\0{self.target.username}\0{self.target.password}"
                                     .encode()).decode()
            return self._say(f"AUTH PLAIN {token}")
        return ensureDeferred(self._login())

    async def _login(self) -> tuple[int, str]:
        assert self.target.username is not None and self.target.password is not None
        code, reply = await self._say("AUTH LOGIN")
        if code != 334:
            return code, reply
        code, reply = await self._say(base64.b64encode(self.target.username.encode()).decode())
        if code != 334:
            return code, reply
        return await self._say(base64.b64encode(self.target.password.encode()).decode())

    async def _oauth2_auth(self) -> tuple[int, str]:
        """AUTH XOAUTH2/OAUTHBEARER with the initial response; an error challenge (334) is
        answered as RFC 7628 §3.2.3 says, and the final reply counts."""
        assert self.target.oauth2 is not None and self.access_token is not None
        sasl = OAuth2Authenticator(self.target.oauth2.mechanism, self.target.username or "")
        initial = sasl.challengeResponse(self.access_token.encode())
        code, reply = await self._say(f"AUTH {self.target.oauth2.mechanism} "
                                      f"{base64.b64encode(initial).decode()}")
        if code != 334:
            return code, reply
        challenge = base64.b64decode(reply[4:].strip() or "", validate=False)
        dummy = sasl.challengeResponse(self.access_token.encode(), challenge)
        code, final = await self._say(base64.b64encode(dummy).decode())
        return code, f"{final} (token status {sasl.error_status})"
