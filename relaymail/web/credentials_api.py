"""``/api/smtp-credentials``: list, create (the password is in the answer once), reset the
password, change limits, delete.  bcrypt and the file writes run in the thread pool."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from relaymail.credentials import CredentialsError, CredentialStore
from relaymail.logs import Logger
from relaymail.web.http import json_reply as reply
from relaymail.web.routing import SubApp, route
from relaymail.web.session import who

log = Logger(namespace="relaymail.web")

CREDENTIAL = {"type": "object", "properties": {
    "name": {"type": "string"}, "enabled": {"type": "boolean"},
    "allowed_sender_domains": {"type": "array", "items": {"type": "string"}},
    "hourly_quota": {"type": ["integer", "null"]}, "daily_quota": {"type": ["integer", "null"]},
    "check_header_from": {"type": "boolean"}, "description": {"type": "string"}}}
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
    unavailable = "credentials are not managed here"

    def __init__(self, store: CredentialStore, run_in_thread: Callable[..., Deferred]) -> None:
        self.store = store
        self.run_in_thread = run_in_thread

    async def _change(self, request: IRequest, f: Callable[[], Any], code: int = 200,
                      what: str = "") -> bytes:
        try:
            answer = await self.run_in_thread(f)
        except CredentialsError as e:
            return reply(request, {"error": str(e)}, status_of(e))
        log.info("web: SMTP credential {what} by {who}", what=what, who=who(request))
        return reply(request, answer, code)

    @staticmethod
    def _body(request: IRequest) -> Any:
        try:
            return json.loads(request.content.read() or b"{}")
        except ValueError:
            raise ValueError("the body is not JSON") from None

    @route("get", "/api/smtp-credentials", "List SMTP AUTH credentials (never passwords)")
    def listing(self, request: IRequest) -> bytes:
        return reply(request, {"credentials": [c.public() for c in self.store.all()]})

    @route("post", "/api/smtp-credentials", "Create; the answer holds the password, once",
           body=CREDENTIAL)
    async def create(self, request: IRequest) -> bytes:
        try:
            body = self._body(request)
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

    @route("post", "/api/smtp-credentials/{name}/reset-password", "New password, shown once")
    async def reset(self, request: IRequest, name: str) -> bytes:
        return await self._change(request, lambda: {
            "name": name, "password": self.store.reset(name),
            "note": "the password is shown only now"}, what=f"{name!r}: password reset")

    @route("patch", "/api/smtp-credentials/{name}", "Change quotas, sender domains, flags",
           body=CREDENTIAL)
    async def update(self, request: IRequest, name: str) -> bytes:
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

    @route("delete", "/api/smtp-credentials/{name}", "Delete a credential")
    async def delete(self, request: IRequest, name: str) -> bytes:
        def delete() -> dict[str, Any]:
            self.store.remove(name)
            return {"deleted": name}

        return await self._change(request, delete, what=f"{name!r} deleted")
