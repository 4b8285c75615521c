"""``/api/users`` (admin): list the accounts with their usage, create one (the password
given or generated and shown once), change role, quotas, sender domains or enabled (a
disabled user's logins stop at their next MAIL, tokens are revoked), reset the password,
delete, and invite by email when ``accounts.registration`` is ``invite``."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from relaymail.accounts.fields import AccountError
from relaymail.accounts.service import Accounts
from relaymail.web.auth_api import answer_change, refused, user_answer
from relaymail.web.http import json_body, json_reply
from relaymail.web.routing import SubApp, route
from relaymail.web.session import who
from relaymail.web.shapes import iso

USER = {"type": "object", "properties": {
    "username": {"type": "string"}, "email": {"type": "string"},
    "password": {"type": "string", "description": "left out: generated, answered once"},
    "role": {"enum": ["admin", "user"]}, "enabled": {"type": "boolean"},
    "hourly_quota": {"type": ["integer", "null"]}, "daily_quota": {"type": ["integer", "null"]},
    "allowed_sender_domains": {"type": "array", "items": {"type": "string"}}}}
INVITE = {"type": "object", "required": ["email"], "properties": {
    "email": {"type": "string"}, "role": {"enum": ["admin", "user"]}}}


def user_id_of(text: str, accounts: Accounts) -> int:
    """``/api/users/<id or username>``."""
    if text.isdigit() and len(text) <= 12:
        return int(text)
    user = accounts.view.current.user_named(text[:254])
    if user is None:
        raise AccountError("not_found", f"no user {text[:20]!r}")
    return user.id


def fields_of(request: IRequest) -> list[str]:
    """The fields a change names, for its log line."""
    try:
        request.content.seek(0)
        body = json_body(request)
    except ValueError:
        return []
    finally:
        request.content.seek(0)  # the change reads it again
    return [str(k)[:40] for k in body][:10] if isinstance(body, dict) else []


class UsersAPI(SubApp):
    unavailable = "accounts are not enabled here"

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    @route("get", "/api/users", "Every account with its number of SMTP credentials (admin)")
    async def listing(self, request: IRequest) -> bytes:
        try:
            logins = await self.accounts.logins(None)
            users = await self.accounts.users()
        except AccountError as e:
            return refused(request, e)
        per_user: dict[int, int] = {}
        for login in logins:
            per_user[login.user_id] = per_user.get(login.user_id, 0) + 1
        return json_reply(request, {"users": [
            {**user_answer(u), "smtp_credentials": per_user.get(u.id, 0)} for u in users],
            "registration": self.accounts.config.registration})

    @route("post", "/api/users", "Create an account; a generated password is answered once",
           body=USER)
    async def create(self, request: IRequest) -> bytes:
        async def create() -> dict[str, Any]:
            user, password = await self.accounts.create_user(json_body(request))
            answer: dict[str, Any] = {"user": user_answer(user)}
            if password is not None:
                answer["password"] = password
                answer["note"] = "the password is shown only now"
            return answer

        return await answer_change(request, create, "account created", 201)

    @route("patch", "/api/users/{user_id}", "Change role, enabled, quotas, allowed sender "
           "domains or email (the user by id or username)", body=USER)
    async def update(self, request: IRequest, user_id: str) -> bytes:
        async def update() -> dict[str, Any]:
            user = await self.accounts.update_user(user_id_of(user_id, self.accounts),
                                                   json_body(request))
            return {"user": user_answer(user)}

        return await answer_change(request, update, f"account {user_id} changed "
                                   f"({', '.join(sorted(fields_of(request)))})")

    @route("post", "/api/users/{user_id}/reset-password", "A generated password, answered "
           "once; the account's tokens are revoked")
    async def reset(self, request: IRequest, user_id: str) -> bytes:
        async def reset() -> dict[str, Any]:
            password = await self.accounts.reset_password(user_id_of(user_id, self.accounts))
            return {"password": password, "note": "the password is shown only now"}

        return await answer_change(request, reset, f"account {user_id}: password reset")

    @route("delete", "/api/users/{user_id}", "Delete an account with its SMTP credentials, "
           "tokens and API keys")
    async def delete(self, request: IRequest, user_id: str) -> bytes:
        async def delete() -> dict[str, Any]:
            await self.accounts.delete_user(user_id_of(user_id, self.accounts))
            return {"deleted": user_id}

        return await answer_change(request, delete, f"account {user_id} deleted")

    @route("get", "/api/users/invites", "Live invitations (the codes are not kept)")
    async def invitations(self, request: IRequest) -> bytes:
        try:
            found = await self.accounts.invites()
        except AccountError as e:
            return refused(request, e)
        for item in found:
            item["created"], item["expires"] = iso(item["created"]), iso(item["expires"])
        return json_reply(request, {"invites": found})

    @route("delete", "/api/users/invites/{invite_id}", "Withdraw an invitation")
    async def withdraw(self, request: IRequest, invite_id: str) -> bytes:
        async def withdraw() -> dict[str, Any]:
            await self.accounts.delete_invite(invite_id)
            return {"deleted": invite_id[:16]}

        return await answer_change(request, withdraw, f"invitation {invite_id[:16]} withdrawn")

    @route("post", "/api/users/invites", "An invitation code for an email (valid 7 days, "
           "used once), for accounts.registration \"invite\"", body=INVITE)
    async def invite(self, request: IRequest) -> bytes:
        async def invite() -> dict[str, Any]:
            return await self.accounts.invite(json_body(request), who(request))

        return await answer_change(request, invite, "invitation made", 201)
