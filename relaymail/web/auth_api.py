"""``/api/auth/*``: account users register, log in for a bearer token, see who they are,
change their password, log out (the token is revoked).

The shapes are those users of smtp2go-like services script against:
``POST /api/auth/register {"username","email","password"}`` and
``POST /api/auth/login {"email","password"}`` -> ``{"token", "expires_at", "user"}``.
Logins are counted and locked out like the console's and SMTP AUTH's; registrations are
counted per client address (``accounts.max_registrations_per_hour``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from relaymail.accounts.fields import AccountError
from relaymail.accounts.service import Accounts
from relaymail.logs import Logger
from relaymail.policy.counters import Bucket, Counters
from relaymail.web.access import principal_of
from relaymail.web.http import json_body, json_reply
from relaymail.web.routing import Access, SubApp, route
from relaymail.web.session import WebAuth, password_matches, who
from relaymail.web.shapes import iso

log = Logger(namespace="relaymail.web")

OBJ = {"type": "object"}
REGISTER = {"type": "object", "required": ["username", "email", "password"], "properties": {
    "username": {"type": "string"}, "email": {"type": "string"},
    "password": {"type": "string"},
    "invite": {"type": "string", "description": "with accounts.registration \"invite\""}}}
LOGIN = {"type": "object", "required": ["password"], "properties": {
    "email": {"type": "string"}, "username": {"type": "string"},
    "password": {"type": "string"}}}
PASSWORD = {"type": "object", "required": ["current_password", "new_password"],
            "properties": {"current_password": {"type": "string"},
                           "new_password": {"type": "string"}}}


def refused(request: IRequest, error: AccountError) -> bytes:
    return json_reply(request, error.answer(), error.status)


async def answer_change(request: IRequest, change: Callable[[], Any], what: str,
                        code: int = 200) -> bytes:
    """Run an accounts change; its answer, or the 4xx of its AccountError; one log line."""
    try:
        answer = await change()
    except ValueError:
        return json_reply(request, {"error": "the body is not JSON"}, 400)
    except AccountError as e:
        return refused(request, e)
    log.info("web: {what} by {who}", what=what, who=who(request))
    return json_reply(request, answer, code)


def client_network(ip: str) -> str:
    """What registrations are counted on: the address, or its /64 for IPv6 (one
    subscriber's prefix holds more addresses than any limit)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return ip


def peer_of(request: IRequest) -> str:
    return getattr(request.getClientAddress(), "host", "?")


class AuthAPI(SubApp):
    unavailable = "accounts are not enabled here"

    def __init__(self, accounts: Accounts, auth: WebAuth, counters: Counters,
                 run_in_thread: Callable[..., Deferred]) -> None:
        self.accounts = accounts
        self.auth = auth  # the console's login check, lockout included
        self.counters = counters  # registrations per address (shared with Redis)
        self.run_in_thread = run_in_thread

    async def _registration_allowed(self, request: IRequest) -> AccountError | None:
        mode = self.accounts.config.registration
        if mode == "off":
            return AccountError("closed", "registration is closed: ask the admin for an "
                                "account")
        hour = int(self.accounts.clock() // 3600)
        bucket = Bucket(f"rl:register:{client_network(peer_of(request))}:{hour}",
                        self.accounts.config.max_registrations_per_hour, 3660)
        if await self.counters.reserve([bucket], 1) >= 0:
            return AccountError("too_many", "too many registrations from this address; "
                                "try again in an hour")
        return None

    @route("post", "/api/auth/register", "Create an account (accounts.registration "
           "\"open\", or \"invite\" with an invitation): 201 with the user",
           Access.PUBLIC, body=REGISTER)
    async def register(self, request: IRequest) -> bytes:
        closed = await self._registration_allowed(request)
        if closed is not None:
            return refused(request, closed)
        try:
            user = await self.accounts.register(
                json_body(request), self.accounts.config.registration == "invite")
        except ValueError:
            return json_reply(request, {"error": "the body is not JSON"}, 400)
        except AccountError as e:
            return refused(request, e)
        log.info("web: account {user!r} registered from {ip}", user=user.username,
                 ip=peer_of(request))
        return json_reply(request, {"user": user_answer(user)}, 201)

    @route("post", "/api/auth/login", "A bearer token for an account ({email or username, "
           "password}); 401 wrong, 403 disabled, 429 locked out", Access.PUBLIC, body=LOGIN)
    async def login(self, request: IRequest) -> bytes:
        try:
            body = json_body(request)
        except ValueError:
            body = None
        name = body.get("email") or body.get("username") if isinstance(body, dict) else None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(name, str) or not isinstance(password, str) or len(name) > 254:
            return json_reply(request, {"error": "expected email (or username) and "
                                                 "password"}, 400)
        result, user = await self.auth.check(peer_of(request), name, password)
        if result == "locked":
            return json_reply(request, {"error": "too many failed logins; try again in "
                                                 f"{int(user) + 1} seconds"}, 429)
        if result == "disabled":
            return json_reply(request, {"error": "this account is disabled"}, 403)
        if result != "ok" or user is None:  # the configured admin has no account token
            return json_reply(request, {"error": "wrong email or password"}, 401)
        try:
            token, expires = await self.accounts.issue_token(user)
        except AccountError as e:
            return refused(request, e)
        return json_reply(request, {"token": token, "token_type": "Bearer",
                                    "expires_at": iso(expires), "expires_in":
                                    int(expires - self.accounts.clock()),
                                    "user": user_answer(user)})

    @route("get", "/api/auth/me", "Who the caller is: the user, role and scopes",
           Access.USER)
    def me(self, request: IRequest) -> bytes:
        principal = principal_of(request)
        user = self.accounts.view.user(principal.user_id)
        return json_reply(request, {
            "name": principal.name, "role": principal.role,
            "scopes": sorted(s for s in principal.scopes
                             if s != "admin" or principal.role == "admin"),
            "api_key": principal.key_id,
            "user": user_answer(user) if user is not None else None})

    @route("post", "/api/auth/logout", "Revoke the bearer token of this request",
           Access.USER)
    async def logout(self, request: IRequest) -> bytes:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        token = header.partition(" ")[2].strip()
        if token.startswith("rmt_"):
            try:
                await self.accounts.revoke_token(token)
            except AccountError as e:
                return refused(request, e)
        return json_reply(request, {"ok": True})

    @route("post", "/api/auth/password", "Change the caller's password (current_password, "
           "new_password; not with an API key); every token and console session of the "
           "account ends, this one too", Access.USER,
           body=PASSWORD)
    async def password(self, request: IRequest) -> bytes:
        if principal_of(request).key_id is not None:
            return json_reply(request, {"error": "forbidden: a password is changed by "
                                                 "signing in, not with an API key",
                                        "code": "password_by_key"}, 403)

        def matches(given: str, stored: str) -> Deferred:
            return self.run_in_thread(password_matches, given, stored)

        try:
            await self.accounts.change_password(principal_of(request), json_body(request),
                                                matches)
        except ValueError:
            return json_reply(request, {"error": "the body is not JSON"}, 400)
        except AccountError as e:
            return refused(request, e)
        log.info("web: password changed by {who}", who=who(request))
        return json_reply(request, {"ok": True})


def user_answer(user: Any) -> dict[str, Any]:
    data = user.public()
    for key in ("created", "last_login"):
        data[key] = iso(data[key]) if data[key] else None
    return data
