"""The one access check of every route: who is asking (a script with the bearer token, a
logged-in console session, a loopback monitor) against what the route declares it needs
(relaymail.web.routing.Access).

Scripts authenticate with ``Authorization: Bearer <token>``; the local control token (see
``relaymail.spool.lock``) is what ``relaymail queue`` uses."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from twisted.web.iweb import IRequest

from relaymail.common.networks import is_loopback
from relaymail.web.guard import forwarded
from relaymail.web.http import json_reply
from relaymail.web.routing import Access
from relaymail.web.session import WHO, WebAuth


class AccessGate:
    def __init__(self, token: Callable[[], str], auth: WebAuth | None,
                 open_to_loopback: bool) -> None:
        self.token = token
        self.auth = auth  # console logins; None: the token only
        self.open_to_loopback = open_to_loopback  # web.open_metrics_to_loopback

    def authorized(self, request: IRequest) -> bool:
        """The request carries the bearer token."""
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.decode("latin-1").partition(" ")
        expected = self.token()
        return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode())

    def may_send_body(self, request: IRequest) -> bool:
        """For relaymail.web.guard, when the headers are in: the bearer token or a live
        session cookie (CSRF is checked by the route).  Only these may send large bodies."""
        if self.authorized(request):
            return True
        return self.auth is not None and self.auth.session_of(request) is not None

    def refusal(self, access: Access, request: IRequest) -> bytes | None:
        """None when ``request`` has the access its route needs; else the 401 or 403."""
        if access is Access.PUBLIC:
            return None
        if access is Access.SESSION:
            if self.auth is None or self.auth.session_of(request) is None:
                return json_reply(request, {"error": "not logged in"}, 401)
            return None
        if access is Access.LOCAL_OR_ADMIN and self.local_monitor(request):
            return None
        return self.admin_refusal(request)

    def local_monitor(self, request: IRequest) -> bool:
        """Open to loopback clients when configured.  A request a proxy on this host
        forwarded (it names whom for) is not a loopback client: it may come from anywhere."""
        peer = getattr(request.getClientAddress(), "host", "")
        return self.open_to_loopback and is_loopback(peer) and not forwarded(request)

    def admin_refusal(self, request: IRequest) -> bytes | None:
        """None when the bearer token or a console session (with its CSRF token for
        changes) allows the request; else the 401 or 403 answer."""
        if self.authorized(request):
            setattr(request, WHO, "the API token")
            return None
        auth = self.auth
        if auth is not None and (session := auth.session_of(request)) is not None:
            if auth.csrf_ok(request, session):
                setattr(request, WHO, f"console user {session.user}")
                return None
            return json_reply(request, {"error": "CSRF token missing or wrong"}, 403)
        request.setHeader(b"www-authenticate", b'Bearer realm="relaymail"')
        return json_reply(request, {"error": "authentication required"}, 401)
