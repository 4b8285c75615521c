"""First-run setup, as Grafana and Jenkins do it: while no admin password is set, the log
says where the console is and prints a one-time setup token; the first visit to
``/setup`` from this host (loopback, not through a proxy) with that token sets the admin
password, saves its bcrypt hash to ``web.admin_password_hash`` in the config file (the
previous file kept as ``.bak``) and logs the browser in.  The token is then spent; a
restart with no password set prints a new one.  ``relaymail hash-password`` stays for
automation.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from relaymail.common.networks import is_loopback
from relaymail.config import Config, endpoint_address
from relaymail.credentials import hash_password
from relaymail.logs import Logger
from relaymail.web.guard import forwarded
from relaymail.web.http import json_body, json_reply
from relaymail.web.routing import Access, SubApp, route
from relaymail.web.session import WebAuth, session_cookie

log = Logger(namespace="relaymail.web")

MIN_PASSWORD = 10
OBJ = {"type": "object", "properties": {"token": {"type": "string"},
                                        "password": {"type": "string"},
                                        "confirm": {"type": "string"}}}


def console_url(config: Config) -> str:
    """The console's address as a browser on this host reaches it."""
    port, interface, _ = endpoint_address(config.web.endpoint)
    host = interface or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.web.tls.certificate is not None else "http"
    return f"{scheme}://{host}:{port}/"


class FirstRunSetup(SubApp):
    """``/setup``: open while ``auth.admin_hash`` is unset, to loopback clients with the
    token printed in the log."""

    unavailable = "first-run setup is not available here"

    def __init__(self, auth: WebAuth, save_hash: Callable[[str], Awaitable[None]],
                 run_in_thread: Callable[..., Deferred], over_tls: Callable[[IRequest], bool],
                 token: str | None = None) -> None:
        self.auth = auth
        self.save_hash = save_hash  # writes web.admin_password_hash to the config file
        self.run_in_thread = run_in_thread
        self.over_tls = over_tls
        self.token: str | None = None
        if auth.admin_hash is None:
            self.token = token or secrets.token_urlsafe(18)

    @property
    def pending(self) -> bool:
        return self.token is not None and self.auth.admin_hash is None

    def announce(self, url: str) -> None:
        """The log lines that tell a new operator where to go."""
        if not self.pending:
            log.info("web: console at {url}", url=url)
            return
        log.warn("web: no admin password is set. Open {url}setup?token={token} in a browser "
                 "on this host to set it (one-time setup token: {token}); or put the output "
                 "of `relaymail hash-password` in web.admin_password_hash",
                 url=url, token=self.token)

    @route("post", "/setup", "First-run setup: {token, password, confirm} from loopback "
           "while no admin password is set; saves its hash, logs in, answers the CSRF token",
           Access.PUBLIC, body=OBJ)
    async def setup(self, request: IRequest) -> bytes:
        if not self.pending:
            return json_reply(request, {"error": "the admin password is already set; log "
                                                 "in"}, 409)
        peer = getattr(request.getClientAddress(), "host", "")
        if not is_loopback(peer) or forwarded(request):
            return json_reply(request, {"error": "first-run setup is open only to this host "
                                                 "(loopback, not through a proxy)"}, 403)
        try:
            body: Any = json_body(request)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return json_reply(request, {"error": "expected a JSON object"}, 400)
        token, password = body.get("token"), body.get("password")
        if not isinstance(token, str) or self.token is None or \
                not hmac.compare_digest(token.encode(), self.token.encode()):
            return json_reply(request, {"error": "wrong or used setup token: it is in "
                                                 "relaymail's log"}, 403)
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            return json_reply(request, {"error": f"password: at least {MIN_PASSWORD} "
                                                 "characters"}, 400)
        if body.get("confirm") != password:
            return json_reply(request, {"error": "the two passwords differ"}, 400)
        self.token = None  # spent, even if saving fails below: a restart prints a new one
        digest = await self.run_in_thread(hash_password, password)
        try:
            await self.save_hash(digest)
        except ValueError as e:
            return json_reply(request, {"error": f"not saved: {e}"}, 500)
        self.auth.admin_hash = digest
        log.info("web: admin password set through first-run setup from {peer}", peer=peer)
        token_value, session = self.auth.sessions.create(self.auth.admin_user)
        request.setHeader(b"set-cookie", session_cookie(token_value, self.over_tls(request)))
        return json_reply(request, {"user": session.user, "csrf": session.csrf})
