"""``/api/smtp-credentials``: list, create (the password is in the answer once), reset the
password, change limits, delete.  bcrypt and the file writes run in the thread pool.

Two kinds of login answer here: the credentials file's (the admin's, named freely) and the
account users' (``relay_<8 hex>_<4 hex>``, in the accounts database).  A user reaches only
their own; another user's login is "not found" to them, so its existence is not told."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from relaymail.accounts.fields import AccountError
from relaymail.accounts.model import SmtpLogin
from relaymail.accounts.principal import Principal
from relaymail.accounts.service import Accounts
from relaymail.credentials import CredentialsError, CredentialStore
from relaymail.logs import Logger
from relaymail.web.access import principal_of
from relaymail.web.auth_api import answer_change, refused
from relaymail.web.http import json_reply as reply
from relaymail.web.routing import Access, SubApp, route
from relaymail.web.session import who

log = Logger(namespace="relaymail.web")

CREDENTIAL = {"type": "object", "properties": {
    "name": {"type": "string"}, "enabled": {"type": "boolean"},
    "allowed_sender_domains": {"type": "array", "items": {"type": "string"}},
    "hourly_quota": {"type": ["integer", "null"]}, "daily_quota": {"type": ["integer", "null"]},
    "check_header_from": {"type": "boolean"}, "description": {"type": "string"},
    "user": {"type": "string", "description": "admin: make the login for this account"}}}
EDITABLE = {"allowed_sender_domains", "hourly_quota", "daily_quota", "enabled",
            "check_header_from", "description"}


def checked_fields(body: Any) -> dict[str, Any]:
    """The editable fields of a request, type-checked; ValueError names the bad one."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "name":
            continue
        if key not in EDITABLE:
            raise ValueError(f"{key}: unknown field")
        if key in ("hourly_quota", "daily_quota"):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{key}: expected an integer >= 1 or null")
        elif key in ("enabled", "check_header_from"):
            if not isinstance(value, bool):
                raise ValueError(f"{key}: expected true or false")
        elif key == "allowed_sender_domains":
            if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
                raise ValueError(f"{key}: expected a list of domains or addresses")
        elif not isinstance(value, str):
            raise ValueError(f"{key}: expected a string")
        out[key] = value
    return out


def status_of(error: CredentialsError) -> int:
    text = str(error)
    return 404 if text.startswith("no credential") else 409 if "already exists" in text else 400


class CredentialsAPI(SubApp):
    """The credentials file's logins (the admin's) and, with accounts, the users' own: an
    account user sees and changes only theirs; an admin sees every one (``user`` says
    whose) and makes a user's login by naming the ``user``."""

    unavailable = "credentials are not managed here"

    def __init__(self, store: CredentialStore, run_in_thread: Callable[..., Deferred],
                 accounts: Accounts | None = None) -> None:
        self.store = store
        self.run_in_thread = run_in_thread
        self.accounts = accounts

    async def _change(self, request: IRequest, f: Callable[[], Any], code: int = 200,
                      what: str = "") -> bytes:
        try:
            answer = await self.run_in_thread(f)
        except CredentialsError as e:
            return reply(request, {"error": str(e)}, status_of(e))
        log.info("web: SMTP credential {what} by {who}", what=what, who=who(request))
        return reply(request, answer, code)

    async def _account_change(self, request: IRequest, change: Callable[[], Any],
                              code: int = 200, what: str = "") -> bytes:
        return await answer_change(request, change, f"SMTP credential {what}", code)

    def _accounts_having(self, name: str) -> Accounts:
        if self.accounts is None:
            raise AccountError("not_found", f"no SMTP credential {name}")
        return self.accounts

    @staticmethod
    def _body(request: IRequest) -> Any:
        try:
            return json.loads(request.content.read() or b"{}")
        except ValueError:
            raise ValueError("the body is not JSON") from None

    def _owner_of_login(self, request: IRequest, name: str) -> int | bool | None:
        """Whose login ``name`` is for this caller: False when it is the file's (admins
        only), else the user id to scope the change to (None: any, for an admin)."""
        principal = principal_of(request)
        accounts = self.accounts
        is_account_login = accounts is not None and name in accounts.view.current.logins
        if principal.sees_everyone and not is_account_login:
            return False
        return None if principal.sees_everyone else (principal.user_id or -1)

    def _shown(self, login: SmtpLogin) -> dict[str, Any]:
        assert self.accounts is not None
        owner = self.accounts.view.user(login.user_id)
        return login.public(owner.username if owner is not None else "?")

    @route("get", "/api/smtp-credentials", "SMTP AUTH credentials, never passwords: an "
           "account user's own; an admin's: the credentials file's and every account's",
           Access.USER, scope="manage-credentials")
    async def listing(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        out: list[dict[str, Any]] = []
        if principal.sees_everyone:
            out = [{**c.public(), "source": "file"} for c in self.store.all()]
        if self.accounts is not None and (principal.sees_everyone or principal.user_id):
            try:
                logins = await self.accounts.logins(None if principal.sees_everyone
                                                    else principal.user_id)
            except AccountError as e:
                return refused(request, e)
            out += [{**self._shown(login), "source": "account"} for login in logins]
        return reply(request, {"credentials": out})

    @route("post", "/api/smtp-credentials", "Create; the answer holds the password, once. An "
           "account user gets a generated login relay_<8 hex>_<4 hex> ({name, hourly_quota, "
           "daily_quota, allowed_sender_domains}); an admin names it (the file's) or gives "
           "\"user\" (that account's)", Access.USER, body=CREDENTIAL,
           scope="manage-credentials")
    async def create(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        try:
            body = self._body(request)
        except ValueError as e:
            return reply(request, {"error": str(e)}, 400)
        if not principal.sees_everyone or (isinstance(body, dict) and "user" in body):
            return await self.create_for_account(request, principal, body)
        return await self.create_in_file(request, body)

    async def create_for_account(self, request: IRequest, principal: Principal, body: Any
                                 ) -> bytes:
        accounts = self.accounts
        if accounts is None:
            return reply(request, {"error": "accounts are not enabled here"}, 404)
        owner: int | None = principal.user_id
        if principal.sees_everyone and isinstance(body, dict) and "user" in body:
            user = accounts.view.current.user_named(str(body.get("user")))
            if user is None:
                return reply(request, {"error": "user: no such account", "field": "user"}, 400)
            owner = user.id

        async def create() -> dict[str, Any]:
            login, password = await accounts.create_login(owner, body)
            shown = self._shown(login)
            return {"credential": shown, "id": login.username, "username": login.username,
                    "password": password, "note": "the password is shown only now"}

        return await self._account_change(request, create, 201, "created for an account")

    async def create_in_file(self, request: IRequest, body: Any) -> bytes:
        try:
            fields = checked_fields(body)
            name = body.get("name")
            if not isinstance(name, str):
                raise ValueError("name: expected a string")
        except ValueError as e:
            return reply(request, {"error": str(e)}, 400)

        def create() -> dict[str, Any]:
            password = self.store.add(name, **fields)
            credential = self.store.get(name)
            assert credential is not None
            answer = {"credential": credential.public(), "password": password,
                      "note": "the password is shown only now"}
            warning = self.store.unrestricted_warning(name)
            if warning:
                answer["warning"] = warning
            return answer

        return await self._change(request, create, 201, f"{name!r} created")

    @route("post", "/api/smtp-credentials/{name}/reset-password", "New password, shown once",
           Access.USER, scope="manage-credentials")
    async def reset(self, request: IRequest, name: str) -> bytes:
        owner = self._owner_of_login(request, name)
        if owner is False:
            return await self._change(request, lambda: {
                "name": name, "password": self.store.reset(name),
                "note": "the password is shown only now"}, what=f"{name!r}: password reset")
        async def reset() -> dict[str, Any]:
            password = await self._accounts_having(name).reset_login(
                name, owner)  # type: ignore[arg-type]
            return {"name": name, "id": name, "username": name, "password": password,
                    "note": "the password is shown only now"}

        return await self._account_change(request, reset, what=f"{name!r}: password reset")

    @route("patch", "/api/smtp-credentials/{name}", "Change quotas, sender domains, flags "
           "(within the account's own bounds)", Access.USER, body=CREDENTIAL,
           scope="manage-credentials")
    async def update(self, request: IRequest, name: str) -> bytes:
        owner = self._owner_of_login(request, name)
        if owner is not False:
            async def change() -> dict[str, Any]:
                login = await self._accounts_having(name).update_login(
                    name, owner, self._body(request))  # type: ignore[arg-type]
                return {"credential": self._shown(login)}

            return await self._account_change(request, change, what=f"{name!r} changed")
        try:
            fields = checked_fields(self._body(request))
        except ValueError as e:
            return reply(request, {"error": str(e)}, 400)
        if not fields:
            return reply(request, {"error": "nothing to change"}, 400)
        return await self._change(request,
                                  lambda: {"credential": self.store.update(name, **fields)
                                           .public()},
                                  what=f"{name!r} changed ({', '.join(sorted(fields))})")

    @route("delete", "/api/smtp-credentials/{name}", "Delete a credential", Access.USER,
           scope="manage-credentials")
    async def delete(self, request: IRequest, name: str) -> bytes:
        owner = self._owner_of_login(request, name)
        if owner is not False:
            async def remove() -> dict[str, Any]:
                await self._accounts_having(name).delete_login(
                    name, owner)  # type: ignore[arg-type]
                return {"deleted": name}

            return await self._account_change(request, remove, what=f"{name!r} deleted")

        def delete() -> dict[str, Any]:
            self.store.remove(name)
            return {"deleted": name}

        return await self._change(request, delete, what=f"{name!r} deleted")
