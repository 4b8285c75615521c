"""Console sessions: log in (the admin's or an account user's password, counted and locked
out like SMTP AUTH), log out, and the session's CSRF token and role for the page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.web.http import json_body, json_reply, str_arg
from relaymail.web.routing import Access, SubApp, route
from relaymail.web.session import COOKIE, Session, WebAuth, expired_cookie, session_cookie

OBJ = {"type": "object"}


def login_form(request: IRequest) -> tuple[str, str] | None:
    """(username, password) from a JSON body or a urlencoded form."""
    if (request.getHeader(b"content-type") or b"").startswith(b"application/json"):
        try:
            body = json_body(request)
        except ValueError:
            return None
        user, password = (body.get("username"), body.get("password")) \
            if isinstance(body, dict) else (None, None)
    else:
        user, password = str_arg(request, "username"), str_arg(request, "password")
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        return None
    return user, password


class ConsoleLogin(SubApp):
    unavailable = "console login is not configured"

    def __init__(self, auth: WebAuth, over_tls: Callable[[IRequest], bool]) -> None:
        self.auth = auth
        self.over_tls = over_tls  # does the browser reach us over HTTPS: Secure cookies

    @route("post", "/login", "Console login ({username, password} as JSON or a form): sets "
           "the HttpOnly session cookie, answers the CSRF token; 429 when locked out",
           Access.PUBLIC, body=OBJ)
    async def login(self, request: IRequest) -> bytes:
        """JSON ``{username, password}`` or a form; sets the session cookie and answers the
        CSRF token.  Failures are counted per address and user, and lock out like AUTH."""
        form = login_form(request)
        if form is None:
            return json_reply(request, {"error": "expected username and password"}, 400)
        if self.auth.admin_hash is None and not self.is_account(form[0]):
            return json_reply(request, {"error": "no admin password is set yet: use the "
                                                 "first-run setup link in relaymail's log, or "
                                                 "set web.admin_password_hash"}, 409)
        peer = getattr(request.getClientAddress(), "host", "?")
        result, value = await self.auth.login(peer, *form)
        if result == "locked":
            return json_reply(request, {"error": "too many failed logins; try again in "
                                                 f"{int(value) + 1} seconds"}, 429)
        if result == "disabled":
            return json_reply(request, {"error": "this account is disabled"}, 403)
        if result != "ok":
            return json_reply(request, {"error": "wrong username or password"}, 401)
        token, session = value
        if session.user_id is not None and self.auth.accounts is not None:
            self.auth.accounts.logged_in(session.user_id)
        request.setHeader(b"set-cookie", session_cookie(token, self.over_tls(request)))
        return json_reply(request, self.describe(session))

    def is_account(self, name: str) -> bool:
        accounts = self.auth.accounts
        return accounts is not None and accounts.current.user_named(name) is not None

    def describe(self, session: Session) -> dict[str, Any]:
        """The session as the page needs it: who, the role (what to show), the CSRF token."""
        role = "admin"
        if session.user_id is not None and self.auth.accounts is not None:
            user = self.auth.accounts.user(session.user_id)
            role = user.role if user is not None else "user"
        return {"user": session.user, "csrf": session.csrf, "role": role,
                "user_id": session.user_id}

    @route("post", "/logout", "End the console session", Access.USER)
    def logout(self, request: IRequest) -> bytes:
        cookie = request.getCookie(COOKIE)
        if cookie:
            self.auth.sessions.drop(cookie.decode("ascii", "replace"))
        request.setHeader(b"set-cookie", expired_cookie())
        return json_reply(request, {"ok": True})

    @route("get", "/api/session", "The console session's user and CSRF token (send it as "
           "X-CSRF-Token on changes)", Access.SESSION)
    def session(self, request: IRequest) -> bytes:
        """The page's CSRF token (the cookie itself is HttpOnly)."""
        session = self.auth.session_of(request)
        if session is None:  # it expired since the access check
            return json_reply(request, {"error": "not logged in"}, 401)
        return json_reply(request, self.describe(session))
