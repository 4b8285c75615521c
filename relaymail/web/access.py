"""The one access check of every route: who is asking (relaymail.accounts.principal) against
what the route declares it needs (relaymail.web.routing.Access, and a scope for API keys).

A caller is one of:

* the local control token (``relaymail queue`` uses it; see relaymail.spool.lock): the
  configured admin;
* a console session cookie (the configured admin or an account user; changes carry the
  session's CSRF token);
* ``Authorization: Bearer rmt_...``: a token from ``POST /api/auth/login``;
* ``Authorization: Bearer rmk_...``: an API key, with the scopes it was made with.

Every lookup is in memory (the accounts view), so the check never waits.  The principal
is left on the request (``principal_of``) for the handler, which limits an account user
to their own objects."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.accounts.principal import Principal
from relaymail.common.networks import is_loopback
from relaymail.web.guard import forwarded
from relaymail.web.http import json_reply
from relaymail.web.routing import Access
from relaymail.web.session import WHO, WebAuth

PRINCIPAL = "relaymail_principal"  # the request attribute the gate sets


def principal_of(request: IRequest) -> Principal:
    """The caller of a route past the gate (USER and ADMIN routes always have one)."""
    found = getattr(request, PRINCIPAL, None)
    assert found is not None, "principal_of on a route without a signed-in caller"
    return found  # type: ignore[no-any-return]


class AccessGate:
    def __init__(self, token: Callable[[], str], auth: WebAuth | None,
                 open_to_loopback: bool, accounts: Any = None) -> None:
        self.token = token
        self.auth = auth  # console logins; None: the token only
        self.open_to_loopback = open_to_loopback  # web.open_metrics_to_loopback
        self.accounts = accounts  # relaymail.accounts.view.AccountsView, or None

    def bearer(self, request: IRequest) -> str | None:
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.decode("latin-1").partition(" ")
        return given.strip() if scheme.lower() == "bearer" and given.strip() else None

    def authorized(self, request: IRequest) -> bool:
        """The request carries the local control token."""
        given, expected = self.bearer(request), self.token()
        return bool(expected) and given is not None and hmac.compare_digest(
            given.encode(), expected.encode())

    def by_bearer(self, request: IRequest) -> Principal | None:
        """The principal of the Authorization header (control token, user token, key)."""
        given = self.bearer(request)
        if given is None:
            return None
        if self.authorized(request):
            return Principal(name="the API token", role="admin")
        if self.accounts is None:
            return None
        if given.startswith("rmk_"):
            admin = self.auth.admin_user if self.auth is not None else "admin"
            return self.accounts.by_api_key(given, admin)  # type: ignore[no-any-return]
        return self.accounts.by_token(given)  # type: ignore[no-any-return]

    def by_session(self, request: IRequest) -> Principal | None:
        session = self.auth.session_of(request) if self.auth is not None else None
        if session is None:
            return None
        if session.user_id is None:
            return Principal(name=f"console user {session.user}", role="admin")
        if self.accounts is None:
            return None
        return self.accounts.session_principal(  # type: ignore[no-any-return]
            session.user_id, session.created)

    def may_send_body(self, request: IRequest) -> bool:
        """For relaymail.web.guard, when the headers are in: a signed-in caller who may
        send (CSRF is checked by the route).  Only these may send large bodies (the one
        route that takes them is /api/send)."""
        found = self.by_bearer(request) or self.by_session(request)
        return found is not None and found.may("send")

    def refusal(self, access: Access, request: IRequest, scope: str | None = None
                ) -> bytes | None:
        """None when ``request`` has the access its route needs; else the 401 or 403."""
        if access is Access.PUBLIC:
            return None
        if access is Access.SESSION:
            if self.by_session(request) is None:
                return json_reply(request, {"error": "not logged in"}, 401)
            return None
        if access is Access.LOCAL_OR_ADMIN and self.local_monitor(request):
            return None
        found, refused = self.signed_in(request)
        if refused is not None:
            return refused
        assert found is not None
        if access is Access.USER and found.may(scope):
            return None
        if access is not Access.USER and found.is_admin:
            return None
        needed = f"the {scope} scope" if access is Access.USER else "an admin"
        return json_reply(request, {"error": f"forbidden: this needs {needed}"}, 403)

    def signed_in(self, request: IRequest) -> tuple[Principal | None, bytes | None]:
        """(the caller, None), or (None, the 401/403 answer)."""
        found = self.by_bearer(request)
        if found is None and (found := self.by_session(request)) is not None:
            session = self.auth.session_of(request) if self.auth is not None else None
            if session is None or not self.auth.csrf_ok(request, session):  # type: ignore
                return None, json_reply(request, {"error": "CSRF token missing or wrong"},
                                        403)
        if found is None:
            request.setHeader(b"www-authenticate", b'Bearer realm="relaymail"')
            return None, json_reply(request, {"error": "authentication required"}, 401)
        setattr(request, WHO, found.name)
        setattr(request, PRINCIPAL, found)
        return found, None

    def local_monitor(self, request: IRequest) -> bool:
        """Open to loopback clients when configured.  A request a proxy on this host
        forwarded (it names whom for) is not a loopback client: it may come from anywhere."""
        peer = getattr(request.getClientAddress(), "host", "")
        return self.open_to_loopback and is_loopback(peer) and not forwarded(request)

    def admin_refusal(self, request: IRequest) -> bytes | None:
        """None when an admin is asking; else the 401 or 403 answer."""
        return self.refusal(Access.ADMIN, request)
