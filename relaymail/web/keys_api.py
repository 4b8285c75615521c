"""``/api/api-keys``: named, scoped, persistent keys for scripts (``Authorization: Bearer
rmk_<id>_<secret>``), shown once, stored as a digest, revocable, with a last-used time.
An account user manages their own; an admin sees and revokes everyone's.  Keys are managed
by signing in (a console session or a token from /api/auth/login), never with a key."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from relaymail.accounts.fields import AccountError
from relaymail.accounts.model import ApiKey
from relaymail.accounts.principal import SCOPES
from relaymail.accounts.service import Accounts
from relaymail.logs import Logger
from relaymail.web.access import principal_of
from relaymail.web.auth_api import refused
from relaymail.web.http import json_body, json_reply, str_arg
from relaymail.web.routing import Access, SubApp, query, route
from relaymail.web.session import who
from relaymail.web.shapes import iso

log = Logger(namespace="relaymail.web")

KEY = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"},
    "scopes": {"type": "array", "items": {"enum": list(SCOPES)},
               "description": "default [\"send\", \"read-logs\"]; \"admin\" for admins only"}}}


class ApiKeysAPI(SubApp):
    unavailable = "accounts are not enabled here"

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    @staticmethod
    def by_a_key(request: IRequest) -> bytes | None:
        """Keys are managed with a password (a session or a login token), never with a
        key: a leaked key must not mint more keys or revoke its owner's others."""
        if principal_of(request).key_id is None:
            return None
        return json_reply(request, {"error": "forbidden: API keys are managed by signing "
                                             "in, not with a key", "code": "keys_by_key"},
                          403)

    def shown(self, key: ApiKey) -> dict[str, Any]:
        data = key.public()
        owner = self.accounts.view.user(key.user_id)
        data["user"] = owner.username if owner is not None else None
        for name in ("created", "last_used"):
            data[name] = iso(data[name]) if data[name] else None
        return data

    @route("get", "/api/api-keys", "The caller's API keys (an admin: ?all=1 for everyone's)",
           Access.USER, query=[query("all", "1: every account's keys (admin)")])
    async def listing(self, request: IRequest) -> bytes:
        if (denied := self.by_a_key(request)) is not None:
            return denied
        try:
            keys = await self.accounts.api_keys(principal_of(request),
                                                str_arg(request, "all") == "1")
        except AccountError as e:
            return refused(request, e)
        return json_reply(request, {"api_keys": [self.shown(k) for k in keys]})

    @route("post", "/api/api-keys", "Make a key ({name, scopes}); the key is answered once",
           Access.USER, body=KEY)
    async def create(self, request: IRequest) -> bytes:
        if (denied := self.by_a_key(request)) is not None:
            return denied
        try:
            made, key = await self.accounts.create_api_key(principal_of(request),
                                                           json_body(request))
        except ValueError:
            return json_reply(request, {"error": "the body is not JSON"}, 400)
        except AccountError as e:
            return refused(request, e)
        log.info("web: API key {id} ({scopes}) made by {who}", id=made.id,
                 scopes=",".join(made.scopes), who=who(request))
        return json_reply(request, {"api_key": self.shown(made), "key": key,
                                    "note": "the key is shown only now"}, 201)

    @route("delete", "/api/api-keys/{key_id}", "Revoke a key (the caller's; an admin: any)",
           Access.USER)
    async def delete(self, request: IRequest, key_id: str) -> bytes:
        if (denied := self.by_a_key(request)) is not None:
            return denied
        try:
            await self.accounts.delete_api_key(principal_of(request), key_id[:16])
        except AccountError as e:
            return refused(request, e)
        log.info("web: API key {id} revoked by {who}", id=key_id[:16], who=who(request))
        return json_reply(request, {"deleted": key_id[:16]})
