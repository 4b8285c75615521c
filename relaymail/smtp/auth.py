"""The AUTH layer of an inbound session: the SASL exchange, the lockout around the
password check, and the end of a login that was removed or disabled since.

AUTH is offered and accepted only over TLS (or in plaintext from loopback where the
listener allows it).  The lockout (relaymail.policy.lockout) counts each attempt before its
password is checked, hangs up on a locked client network, refuses a locked login from that
network, and delays attempts at a login under attack from many networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.python.failure import Failure

from relaymail.common.networks import is_loopback
from relaymail.common.replies import Continue, Reply
from relaymail.logs import Logger, printable
from relaymail.policy.lockout import Attempt
from relaymail.smtp.sasl import MECHANISMS, Exchange, SASLError, challenge_line
from relaymail.smtp.state import SessionState

log = Logger(namespace="relaymail.smtp")

Result = Reply | Continue | Deferred
CREDENTIAL_REVOKED = Reply(530, "5.7.0", "Authentication no longer valid: the login was "
                                         "removed or disabled")


class LoginLockedError(Exception):
    """The login is locked out after repeated failures; no password is checked."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"locked for {seconds:.0f} s")
        self.seconds = seconds


class AuthLayer:
    """AUTH for one session; it sets ``state.credential`` on success."""

    __slots__ = ("exchange", "state")  # one per open session

    def __init__(self, state: SessionState) -> None:
        self.state = state
        self.exchange: Exchange | None = None

    def offered(self) -> bool:
        """AUTH only over TLS, or in plaintext from loopback when the listener allows it."""
        state = self.state
        if state.context.checker is None or state.credential is not None:
            return False
        if state.started_tls:
            return True
        return state.listener.auth == "plaintext-loopback" and is_loopback(state.client_ip)

    def refusal(self, in_transaction: bool) -> Reply | None:
        state = self.state
        if state.helo is None or not state.esmtp:
            return Reply(503, "5.5.1", "Error: send EHLO first")
        if state.credential is not None:
            return Reply(503, "5.5.1", "Error: already authenticated")
        if in_transaction:
            return Reply(503, "5.5.1", "Error: MAIL transaction in progress")
        if state.context.checker is None:
            return Reply(503, "5.5.1", "Error: authentication not enabled")
        if not self.offered():
            return Reply(538, "5.7.11", "Encryption required for requested authentication "
                                        "mechanism")
        return None

    def begin(self, rest: bytes, in_transaction: bool) -> Result:
        """``AUTH mechanism [initial-response]``."""
        refusal = self.refusal(in_transaction)
        if refusal is not None:
            return refusal
        parts = rest.split()
        if not parts or len(parts) > 2:
            return Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        mechanism = parts[0].upper().decode("ascii", "replace")
        if mechanism not in MECHANISMS:
            return Reply(504, "5.5.4", "Unsupported authentication mechanism")
        exchange = Exchange(mechanism)
        initial = parts[1] if len(parts) == 2 else None
        if self.state.context.lockout is None:
            return self.start(exchange, initial, 0.0)
        return ensureDeferred(self.begin_after_lockout_check(exchange, initial))

    async def begin_after_lockout_check(self, exchange: Exchange, initial: bytes | None
                                        ) -> Result:
        lockout = self.state.context.lockout
        assert lockout is not None
        locked = await lockout.locked_for("ip", self.state.client_ip)  # its own fallbacks
        result = self.start(exchange, initial, locked)
        return await result if isinstance(result, Deferred) else result

    def start(self, exchange: Exchange, initial: bytes | None, locked: float) -> Result:
        """Begin the exchange unless the client's network is locked out (then hang up)."""
        if locked > 0:
            wait = int(locked) + 1
            log.info("auth refused client={client_ip} listener={listener}: address locked "
                     "for {wait} s", client_ip=self.state.client_ip,
                     listener=self.state.listener.name, wait=wait)
            return Reply(454, "4.7.0", "Too many failed authentication attempts from your "
                                       f"address; try again in {wait} seconds", close=True)
        self.exchange = exchange
        return self.step(lambda: exchange.start(initial))

    def line(self, line: bytes) -> Result:
        """A line of the exchange (a challenge's answer)."""
        exchange = self.exchange
        assert exchange is not None
        return self.step(lambda: exchange.step(line))

    def step(self, step: Callable[[], bytes | tuple[str, str]]) -> Result:
        try:
            result = step()
        except SASLError as e:
            self.exchange = None
            return e.reply
        if isinstance(result, bytes):
            return Continue(334, challenge_line(result), "auth")
        self.exchange = None
        username, password = result
        return ensureDeferred(self.authenticate(username, password))

    async def authenticate(self, username: str, password: str) -> Reply:
        """The check, then its reply (and its log line)."""
        try:
            avatar = await self.check_login(username, password)
        except Exception:
            return self.finished(username, Failure())
        return self.finished(username, avatar)

    def check_login(self, username: str, password: str) -> Deferred:
        """The credential check, with the lockout's accounting around it: the attempt is
        counted first (so concurrent guesses cannot race past the limit), refused without a
        check while locked (LoginLockedError), delayed when the login is under attack from
        many addresses, and a failure is recorded before the 535 goes out."""
        credentials = UsernamePassword(username.encode(), password.encode())
        checker, lockout = self.state.context.checker, self.state.context.lockout
        if lockout is None:
            return maybeDeferred(checker.requestAvatarId, credentials)

        def check(attempt: Attempt) -> Deferred:
            if attempt.locked > 0:
                raise LoginLockedError(attempt.locked)
            d = lockout.wait(attempt)
            d.addCallback(lambda _: checker.requestAvatarId(credentials))
            d.addCallbacks(lambda avatar: succeeded(avatar, attempt),
                           lambda failure: failed(failure, attempt))
            return d

        def succeeded(avatar: Any, attempt: Attempt) -> Any:
            lockout.attempt_succeeded(attempt)
            return avatar

        def failed(failure: Failure, attempt: Attempt) -> Any:
            if not failure.check(UnauthorizedLogin):
                return failure
            return lockout.attempt_failed(attempt).addCallback(lambda _: failure)

        return lockout.attempt(self.state.client_ip, username).addCallback(check)

    def finished(self, username: str, outcome: Any) -> Reply:
        result = "ok"
        if isinstance(outcome, Failure):
            result = "locked" if outcome.check(LoginLockedError) else "failed"
            if not outcome.check(UnauthorizedLogin, LoginLockedError):
                log.failure("smtp: credential check failed", failure=outcome)
        log.info("auth {result} client={client_ip} listener={listener} credential={credential}",
                 result=result, client_ip=self.state.client_ip,
                 listener=self.state.listener.name, credential=printable(username))
        if result == "ok":
            self.state.credential = str(outcome)
            return Reply(235, "2.7.0", "Authentication successful")
        if result == "locked":
            wait = int(outcome.value.seconds) + 1
            return Reply(454, "4.7.0", "Too many failed authentication attempts for this "
                                       f"login; try again in {wait} seconds")
        if outcome.check(UnauthorizedLogin):
            return Reply(535, "5.7.8", "Authentication credentials invalid")
        return Reply(454, "4.7.0", "Temporary authentication failure")

    def revoked(self) -> Reply | None:
        """The login was removed or disabled since AUTH: the session's authentication ends
        here, before it can send with none of the login's restrictions."""
        state = self.state
        if state.credential is None or state.context.credentials is None:
            return None
        login = state.context.credentials.get(state.credential)
        if login is not None and login.enabled:
            return None
        log.info("auth revoked client={client_ip} listener={listener} credential={credential}"
                 ": removed or disabled", client_ip=state.client_ip,
                 listener=state.listener.name, credential=printable(state.credential))
        state.credential = None
        return CREDENTIAL_REVOKED
