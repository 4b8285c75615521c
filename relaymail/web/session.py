"""Console logins: the admin password (a bcrypt hash in the config), sessions in a cookie
(HttpOnly, SameSite=Strict), a CSRF token per session for every state-changing request,
and login attempts counted and locked out like SMTP AUTH."""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from relaymail.credentials import dummy_hash

COOKIE = b"relaymail_session"
LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")


@dataclass
class Session:
    user: str
    csrf: str
    expires: float
    user_id: int | None = None  # an account user's (relaymail.accounts); None: the admin
    created: float = 0.0


class Sessions:
    """In memory, bounded: the oldest session goes when the table is full."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.items: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, user_id: int | None = None) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(user, secrets.token_urlsafe(32), now + LIFETIME, user_id, now)
        self.items[token] = session
        while len(self.items) > MAX_SESSIONS:
            self.items.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        session = self.items.get(token or "")
        if session is None:
            return None
        if session.expires <= self.clock():
            del self.items[token or ""]
            return None
        return session

    def drop(self, token: str | None) -> None:
        self.items.pop(token or "", None)


def password_matches(password: str, stored_hash: str | None) -> bool:
    """Thread: bcrypt; a missing hash still costs one comparison at the real cost (no
    timing oracle)."""
    try:
        if not stored_hash:
            bcrypt.checkpw(password.encode(), dummy_hash())
            return False
        return bcrypt.checkpw(password.encode(), stored_hash.encode())
    except ValueError:  # a malformed hash, or a password over bcrypt's 72 bytes
        return False


class WebAuth:
    """Who is asking: a script with the bearer token, or a logged-in console session."""

    def __init__(self, sessions: Sessions, admin_user: str, admin_hash: str | None,
                 lockout: Any, run_in_thread: Callable[..., Deferred]) -> None:
        self.sessions = sessions
        self.admin_user = admin_user
        self.admin_hash = admin_hash
        self.lockout = lockout  # AuthLockout(scope="web") or None
        self.run_in_thread = run_in_thread
        self.accounts: Any = None  # relaymail.accounts.view.AccountsView: users log in too

    def session_of(self, request: IRequest) -> Session | None:
        token = request.getCookie(COOKIE)
        return self.sessions.get(token.decode("ascii", "replace") if token else None)

    def csrf_ok(self, request: IRequest, session: Session) -> bool:
        """State-changing requests from a page carry the session's CSRF token (header for
        fetch, form field for plain forms)."""
        if request.method in SAFE_METHODS:
            return True
        given = request.getHeader(b"x-csrf-token")
        if given is None:
            given = (request.args.get(b"csrf") or [b""])[0]
        return hmac.compare_digest(given, session.csrf.encode())

    async def check(self, ip: str, username: str, password: str) -> tuple[str, Any]:
        """("ok", the account User or None for the admin), ("locked", seconds),
        ("disabled", None: a right password of a disabled account) or ("bad", None).

        Accounted like SMTP AUTH (relaymail.policy.lockout): a locked address is refused
        first; then the attempt is counted *before* the password is checked, so guesses
        sent at once each take their place in the count and no more than max_failures are
        checked; the address and the login+address lock; guesses at one login from many
        addresses wait longer and longer before their check.  One bcrypt comparison runs
        whatever the name (the admin's hash for an unknown one), so an unknown name costs
        the same as a real one."""
        lockout, attempt = self.lockout, None
        if lockout is not None:
            locked = await lockout.locked_for("ip", ip)
            if locked > 0:
                return "locked", locked
            attempt = await lockout.attempt(ip, username)
            if attempt.locked > 0:
                return "locked", attempt.locked
            await lockout.wait(attempt)
        is_admin = hmac.compare_digest(username.encode(), self.admin_user.encode())
        account = None if is_admin or self.accounts is None else \
            self.accounts.current.user_named(username)
        stored = account.password_hash if account is not None else self.admin_hash
        matches = await self.run_in_thread(password_matches, password, stored)
        if matches and (is_admin or account is not None):
            if attempt is not None:
                lockout.attempt_succeeded(attempt)
            if account is not None and not account.enabled:
                return "disabled", None
            return "ok", account
        if attempt is not None:
            await lockout.attempt_failed(attempt)
        return "bad", None

    async def login(self, ip: str, username: str, password: str) -> tuple[str, Any]:
        """``check``, then a console session: ("ok", (cookie token, session))."""
        result, account = await self.check(ip, username, password)
        if result != "ok":
            return result, account
        if account is None:
            return "ok", self.sessions.create(username)
        return "ok", self.sessions.create(account.username, account.id)


WHO = "relaymail_who"  # the request attribute the access gate sets for ``who``


def who(request: IRequest) -> str:
    """Who made a change, for the log line that records it: the console user or the
    token, and the client address."""
    peer = getattr(request.getClientAddress(), "host", "?")
    return f"{getattr(request, WHO, 'someone')} from {peer}"


def session_cookie(token: str, secure: bool) -> bytes:
    flags = "; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")
    return COOKIE + b"=" + token.encode() + flags.encode()


def expired_cookie() -> bytes:
    return COOKIE + b"=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/"
