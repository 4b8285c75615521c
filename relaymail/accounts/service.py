"""The accounts of one process: the database, the view every lookup reads, and the
changes the HTTP API and the command line make (bcrypt in the reactor's thread pool,
writes in the database's own pool, then the view reloaded so the next request sees them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from twisted.application.service import Service
from twisted.internet.defer import Deferred

from relaymail.accounts import fields, store
from relaymail.accounts.database import Database, DatabaseError, shown
from relaymail.accounts.fields import AccountError
from relaymail.accounts.model import ApiKey, SmtpLogin, User
from relaymail.accounts.principal import Principal
from relaymail.accounts.secrets import digest, new_api_key, new_invite, new_login, new_token
from relaymail.accounts.view import AccountsView
from relaymail.config.accounts import AccountsConfig
from relaymail.credentials import generate_password, hash_password
from relaymail.logs import Logger
from relaymail.policy.senders import listed

INVITE_LIFETIME = 7 * 86400.0
log = Logger(namespace="relaymail.accounts")


class Accounts(Service):
    def __init__(self, config: AccountsConfig, reactor: Any,
                 run_in_thread: Callable[..., Deferred], reserved: tuple[str, ...] = ()
                 ) -> None:
        self.config = config
        self.reserved = {name.lower() for name in reserved}  # web.admin_user: not an account
        self.clock = reactor.seconds
        self.db = Database(config.database, reactor)
        self.view = AccountsView(self.db, reactor.seconds, reactor)
        self.run_in_thread = run_in_thread  # bcrypt, off the database's threads
        # Called after each change (the acceptor processes reload), awaited before the
        # answer, so that a login made over the API works at once on every listener.
        self.changed: list[Callable[[], Deferred]] = []

    def open_now(self) -> None:
        """Startup: connect, migrate, load the first copy (DatabaseError stops startup)."""
        self.db.open_now()
        try:
            self.view.load_now()
        except SQLAlchemyError as e:
            raise DatabaseError(f"accounts database {shown(self.config.database)}: "
                                f"{type(e).__name__}: {str(e).strip()[:300]}") from None

    def startService(self) -> None:
        super().startService()
        self.view.start()
        log.info("accounts: {database}, {users} user(s), registration {registration}",
                 database=shown(self.config.database), users=len(self.view.current.users),
                 registration=self.config.registration)

    def stopService(self) -> Deferred:
        super().stopService()
        return self.view.stop()

    async def _run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One transaction; a database that fails (PostgreSQL down, a locked file) is a
        503 for the request, logged once here: logins keep working from the view."""
        try:
            return await self.db.run(f, *args, **kwargs)
        except SQLAlchemyError as e:
            log.warn("accounts: the database failed: {error}", error=str(e).strip()[:300])
            raise AccountError("unavailable", "the accounts database is unavailable; try "
                               "again later") from None

    async def _write(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = await self._run(f, *args, **kwargs)
        await self.view.refresh()
        for tell in self.changed:
            await tell()
        return result

    async def _hash(self, password: str) -> str:
        return str(await self.run_in_thread(hash_password, password))

    # -- users -----------------------------------------------------------------------

    async def register(self, body: Any, invited_only: bool) -> User:
        """``POST /api/auth/register``: {username, email, password[, invite]}."""
        body = fields.body_object(body)
        fields.only(body, {"username", "email", "password", "invite"})
        username = self._new_name(body.get("username"))
        email = fields.email(body.get("email"))
        password = fields.password(body.get("password"), self.config.min_password_length)
        invite = body.get("invite")
        if invited_only and not isinstance(invite, str):
            raise AccountError("forbidden", "invite: registration needs an invitation",
                               "invite")
        password_hash = await self._hash(password)
        now = self.clock()

        def register(conn: Any) -> User:
            role = "user"
            if invited_only:
                invited_email, role = store.take_invite(conn, digest(str(invite)), now)
                if invited_email.lower() != email.lower():
                    raise AccountError("forbidden", "invite: this invitation is for "
                                       "another address", "invite")
            # Unverified: the account may send as the address it gave, until an admin
            # gives it domains, and within the configured quota for new accounts.
            return store.create_user(conn, username, email, password_hash, role, now,
                                     allowed_sender_domains=[email.lower()],
                                     hourly_quota=self.config.new_account_hourly_quota,
                                     daily_quota=self.config.new_account_daily_quota)

        return await self._write(register)  # type: ignore[no-any-return]

    def _new_name(self, value: Any) -> str:
        username = fields.username(value)
        if username.lower() in self.reserved:
            raise AccountError("exists", "username: already taken", "username")
        return username

    async def create_user(self, body: Any) -> tuple[User, str | None]:
        """An admin makes an account: the password is given or generated (returned once)."""
        body = fields.body_object(body)
        fields.only(body, {"username", "email", "password", "role", "hourly_quota",
                           "daily_quota", "allowed_sender_domains"})
        given = body.get("password")
        password = generate_password() if given is None else \
            fields.password(given, self.config.min_password_length)
        username = self._new_name(body.get("username"))
        email = fields.email(body.get("email"))
        role = fields.role(body.get("role", "user"))
        limits = fields.limits(body)
        password_hash = await self._hash(password)
        user = await self._write(store.create_user, username, email, password_hash, role,
                                 self.clock(), **limits)
        return user, (password if given is None else None)

    async def update_user(self, user_id: int, body: Any) -> User:
        body = fields.body_object(body)
        fields.only(body, {"role", "enabled", "hourly_quota", "daily_quota",
                           "allowed_sender_domains", "email"})
        changes = fields.limits(body)
        if "role" in body:
            changes["role"] = fields.role(body["role"])
        if "enabled" in body:
            changes["enabled"] = fields.flag(body["enabled"], "enabled")
        if "email" in body:
            changes["email"] = fields.email(body["email"])
        if not changes:
            raise AccountError("invalid", "nothing to change")
        return await self._write(store.update_user, user_id, self.clock(),  # type: ignore
                                 **changes)

    async def reset_password(self, user_id: int) -> str:
        password = generate_password()
        await self._write(store.set_password, user_id, await self._hash(password),
                          self.clock())
        return password

    async def change_password(self, principal: Principal, body: Any,
                              matches: Callable[[str, str], Deferred]) -> None:
        """The user's own: the current password first (a stolen token cannot lock the
        owner out)."""
        body = fields.body_object(body)
        user = self.view.user(principal.user_id)
        if user is None:
            raise AccountError("forbidden", "only account users have a password to change")
        current = body.get("current_password")
        if not isinstance(current, str) or not await matches(current, user.password_hash):
            raise AccountError("forbidden", "current_password: wrong password",
                               "current_password")
        new = fields.password(body.get("new_password"), self.config.min_password_length,
                              "new_password")
        await self._write(store.set_password, user.id, await self._hash(new), self.clock())

    async def delete_user(self, user_id: int) -> None:
        await self._write(store.delete_user, user_id)

    async def invite(self, body: Any, by: str) -> dict[str, Any]:
        body = fields.body_object(body)
        fields.only(body, {"email", "role"})
        email = fields.email(body.get("email"))
        role = fields.role(body.get("role", "user"))
        code, now = new_invite(), self.clock()
        await self._run(store.add_invite, digest(code), email, role, now,
                          now + INVITE_LIFETIME, by)
        return {"invite": code, "id": digest(code)[:16], "email": email, "role": role,
                "expires_at": now + INVITE_LIFETIME}

    async def users(self) -> list[User]:
        """Every account as the table has it now (last logins included)."""
        return await self._run(store.list_users)  # type: ignore[no-any-return]

    async def invites(self) -> list[dict[str, Any]]:
        return await self._run(store.list_invites, self.clock())  # type: ignore

    async def delete_invite(self, invite_id: str) -> None:
        await self._run(store.delete_invite, invite_id)

    # -- tokens ----------------------------------------------------------------------

    async def issue_token(self, user: User) -> tuple[str, float]:
        token, now = new_token(), self.clock()
        expires = now + self.config.token_lifetime
        await self._write(store.add_token, digest(token), user.id, now, expires)
        return token, expires

    async def revoke_token(self, token: str) -> None:
        await self._write(store.revoke_token, digest(token))

    # -- API keys --------------------------------------------------------------------

    async def create_api_key(self, principal: Principal, body: Any) -> tuple[ApiKey, str]:
        body = fields.body_object(body)
        fields.only(body, {"name", "scopes"})
        name = fields.text(body.get("name"), "name")
        scopes = fields.scopes(body.get("scopes", ["send", "read-logs"]))
        if "admin" in scopes and principal.role != "admin":
            raise AccountError("forbidden", "scopes: only an admin can make an admin key",
                               "scopes")
        if principal.key_id is not None and not set(scopes) <= principal.scopes:
            raise AccountError("forbidden", "scopes: a key cannot make a key with more "
                               "scopes than its own", "scopes")
        key_id, key = new_api_key()
        made = await self._write(store.add_api_key, key_id, principal.user_id, name,
                                 digest(key), scopes, self.clock())
        return made, key

    async def api_keys(self, principal: Principal, everyone: bool) -> list[ApiKey]:
        await self.view.flush_used()
        return await self._run(store.list_api_keys, principal.user_id,  # type: ignore
                                 everyone and principal.is_admin)

    async def delete_api_key(self, principal: Principal, key_id: str) -> None:
        await self._write(store.delete_api_key, key_id, principal.user_id, principal.is_admin)

    # -- SMTP credentials of users ---------------------------------------------------

    def _owner(self, user_id: int | None) -> User:
        user = self.view.user(user_id)
        if user is None:
            raise AccountError("forbidden", "SMTP credentials of accounts belong to a user "
                               "(use \"user\" to say whose)")
        return user

    @staticmethod
    def _within(user: User, domains: list[str]) -> None:
        """A credential's sender domains must lie within its user's (when the user has a
        list): checked here to say so, and at MAIL again (both lists)."""
        for entry in domains:
            probe = entry if "@" in entry else "postmaster@" + entry.replace("*.", "x.", 1)
            if not listed(user.allowed_sender_domains, probe):
                raise AccountError("forbidden", f"allowed_sender_domains: {entry} is not "
                                   "within the account's allowed sender domains",
                                   "allowed_sender_domains")

    async def create_login(self, user_id: int | None, body: Any) -> tuple[SmtpLogin, str]:
        """``{"name", "daily_quota", "hourly_quota", "allowed_sender_domains",
        "check_header_from"}`` -> the login and its password, shown once."""
        user = self._owner(user_id)
        body = fields.body_object(body)
        fields.only(body, {"name", "description", "hourly_quota", "daily_quota",
                           "allowed_sender_domains", "check_header_from", "user"})
        name = fields.text(body.get("name") or body.get("description") or "SMTP", "name")
        limits = fields.limits(body)
        self._within(user, limits.get("allowed_sender_domains", []))
        check_from = fields.flag(body.get("check_header_from", False), "check_header_from")
        password = generate_password()
        login = SmtpLogin(username=new_login(), user_id=user.id, name=name,
                          password_hash=await self._hash(password), enabled=True,
                          hourly_quota=limits.get("hourly_quota"),
                          daily_quota=limits.get("daily_quota"),
                          allowed_sender_domains=limits.get("allowed_sender_domains", []),
                          check_header_from=check_from, created=self.clock())
        return await self._write(store.add_login, login), password

    async def logins(self, user_id: int | None) -> list[SmtpLogin]:
        return await self._run(store.logins_of, user_id)  # type: ignore[no-any-return]

    async def get_login(self, username: str, user_id: int | None) -> SmtpLogin:
        return await self._run(store.get_login, username, user_id)  # type: ignore

    async def update_login(self, username: str, user_id: int | None, body: Any
                           ) -> SmtpLogin:
        body = fields.body_object(body)
        fields.only(body, {"name", "description", "enabled", "hourly_quota", "daily_quota",
                           "allowed_sender_domains", "check_header_from"})
        changes = fields.limits(body)
        for key in ("enabled", "check_header_from"):
            if key in body:
                changes[key] = fields.flag(body[key], key)
        if "name" in body or "description" in body:
            changes["name"] = fields.text(body.get("name", body.get("description")), "name")
        if not changes:
            raise AccountError("invalid", "nothing to change")
        login = await self.get_login(username, user_id)
        self._within(self._owner(login.user_id), changes.get("allowed_sender_domains", []))
        return await self._write(store.update_login, username, user_id,  # type: ignore
                                 **changes)

    async def reset_login(self, username: str, user_id: int | None) -> str:
        password = generate_password()
        password_hash = await self._hash(password)
        await self._write(store.update_login, username, user_id, password_hash=password_hash)
        return password

    async def delete_login(self, username: str, user_id: int | None) -> None:
        await self._write(store.delete_login, username, user_id)
