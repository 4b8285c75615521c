"""What every process reads on the reactor: an in-memory copy of the accounts tables.

SMTP AUTH, MAIL and every HTTP request look logins, tokens and keys up here, without a
query and without waiting.  The copy is reloaded whole when ``generation`` moved: this
process polls it every ``interval`` seconds (one indexed read), and reloads at once after
a change it made itself.  So a user disabled on one instance stops sending everywhere
within about a second, and the SMTP hot path never touches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from relaymail.accounts import store
from relaymail.accounts.database import Database, current_generation
from relaymail.accounts.model import Snapshot, User
from relaymail.accounts.principal import SCOPES, Principal
from relaymail.accounts.secrets import TOKEN_RE, digest, split_api_key
from relaymail.credentials import Credential
from relaymail.logs import Logger

log = Logger(namespace="relaymail.accounts")
TOUCH_EVERY = 30.0  # seconds between writes of API keys' last-used times


class AccountsView:
    def __init__(self, db: Database, clock: Callable[[], float], reactor: Any,
                 interval: float = 1.0) -> None:
        self.db = db
        self.clock = clock
        self.reactor = reactor
        self.interval = interval
        self.current = Snapshot(generation=-1)
        self._used: dict[str, float] = {}
        self._last_touch = 0.0
        self._loop: LoopingCall | None = None
        self._polling: Deferred | None = None
        self.healthy = True  # the last poll reached the database

    # -- keeping the copy current ----------------------------------------------------

    def load_now(self) -> None:
        """At startup, on the calling thread: the first copy before any session runs."""
        self.current = self.db.transaction(store.snapshot, self.clock())

    def start(self) -> None:
        self.db.start()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> Deferred:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d = self._polling or succeed(None)
        d.addBoth(lambda _: self.flush_used())
        d.addBoth(lambda _: self.db.stop())
        return d

    def poll(self) -> Deferred | None:
        """Reload when another process (or instance) changed something."""
        if self._polling is not None:
            return None  # the database is slow: one poll at a time
        d = self.db.run(self._changed_snapshot, self.current.generation, self.clock())
        d.addCallbacks(self._install, self._poll_failed)
        d.addBoth(self._polled)
        self._polling = d
        if self.clock() - self._last_touch >= TOUCH_EVERY:
            self.flush_used()
        return d

    def _polled(self, _: Any) -> None:
        self._polling = None

    def _poll_failed(self, failure: Any) -> None:
        """Logged when the database goes away and when it is back, not every second;
        meanwhile every lookup answers from the last copy."""
        if self.healthy:
            log.warn("accounts: cannot read the database ({error}); using the copy loaded "
                     "last", error=failure.getErrorMessage()[:300])
        self.healthy = False

    @staticmethod
    def _changed_snapshot(conn: Any, known: int, now: float) -> Snapshot | None:
        if current_generation(conn) == known:
            return None
        return store.snapshot(conn, now)

    def _install(self, snapshot: Snapshot | None) -> None:
        """A poll and a reload may overlap (two threads): the newer copy wins."""
        if not self.healthy:
            log.info("accounts: the database answers again")
            self.healthy = True
        if snapshot is not None and snapshot.generation >= self.current.generation:
            self.current = snapshot

    def refresh(self) -> Deferred:
        """Reload now (after a change made here), so the next request sees it."""
        d = self.db.run(store.snapshot, self.clock())
        d.addCallback(self._install)
        return d

    def logged_in(self, user_id: int) -> Deferred:
        """A console login of an account: its last-login time, recorded behind."""
        d = self.db.run(store.record_login, user_id, self.clock())
        d.addErrback(lambda f: log.warn("accounts: cannot record a login: {error}",
                                        error=f.getErrorMessage()))
        return d

    def flush_used(self) -> Deferred:
        self._last_touch = self.clock()
        used, self._used = self._used, {}
        if not used:
            return succeed(None)
        d = self.db.run(store.touch_api_keys, used)
        d.addErrback(lambda f: log.warn("accounts: cannot record API key use: {error}",
                                        error=f.getErrorMessage()))
        return d

    # -- lookups (synchronous, on the reactor) ---------------------------------------

    def user(self, user_id: int | None) -> User | None:
        return None if user_id is None else self.current.users.get(user_id)

    def credential(self, name: str) -> Credential | None:
        """A user's SMTP login as the SMTP layer knows credentials: usable only while the
        login and its user are enabled; sender rights and quotas of both apply."""
        login = self.current.logins.get(name)
        owner = self.user(login.user_id) if login is not None else None
        if login is None or owner is None:
            return None
        return Credential(
            name=login.username, password_hash=login.password_hash,
            enabled=login.enabled and owner.enabled,
            allowed_sender_domains=login.allowed_sender_domains,
            hourly_quota=login.hourly_quota, daily_quota=login.daily_quota,
            check_header_from=login.check_header_from, created=login.created,
            description=login.name, owner=owner.username, owner_id=owner.id,
            owner_sender_domains=owner.allowed_sender_domains,
            owner_hourly_quota=owner.hourly_quota, owner_daily_quota=owner.daily_quota)

    def by_token(self, token: str) -> Principal | None:
        """The user a bearer token (``rmt_...``) was given to, while it is live."""
        if not TOKEN_RE.fullmatch(token):
            return None
        found = self.current.tokens.get(digest(token))
        if found is None or found.expires <= self.clock():
            return None
        user = self.user(found.user_id)
        if user is None or not user.enabled:
            return None
        return Principal(name=user.username, role=user.role, user_id=user.id)

    def by_api_key(self, key: str, admin_name: str) -> Principal | None:
        """The owner of an API key (``rmk_<id>_<secret>``) with the key's scopes; a key
        of the configured admin (no user row) is ``admin_name``'s."""
        parts = split_api_key(key)
        found = self.current.keys.get(parts[0]) if parts else None
        if parts is None or found is None or found.digest != parts[1]:
            return None
        scopes = frozenset(s for s in found.scopes if s in SCOPES)
        if found.user_id is None:
            self._used[found.id] = self.clock()
            return Principal(name=f"key {found.id} of {admin_name}", role="admin",
                             scopes=scopes, key_id=found.id)
        user = self.user(found.user_id)
        if user is None or not user.enabled:
            return None
        self._used[found.id] = self.clock()
        return Principal(name=f"key {found.id} of {user.username}", role=user.role,
                         user_id=user.id, scopes=scopes, key_id=found.id)

    def session_principal(self, user_id: int, created: float) -> Principal | None:
        """A console session of an account user made at ``created``, while the user is
        enabled and has not been signed out since (a new password, a disable)."""
        user = self.user(user_id)
        if user is None or not user.enabled or created < user.signed_out:
            return None
        return Principal(name=user.username, role=user.role, user_id=user.id)


class CombinedCredentials:
    """The SMTP layer's credentials: the credentials file first (the admin's, as before
    accounts existed), then the users' logins from the accounts view."""

    def __init__(self, file_store: Any, view: AccountsView | None) -> None:
        self.file_store = file_store
        self.view = view

    def get(self, name: str) -> Credential | None:
        found = self.file_store.get(name)
        if found is None and self.view is not None:
            return self.view.credential(name)
        return found
