"""The console's pages and their static files (relaymail.web.console renders them); a
page without a console session redirects to ``/login``."""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest

from relaymail.config import Config, endpoint_address
from relaymail.relay.presets import PRESETS
from relaymail.web.console import ACCOUNT_PAGES, CSP, PAGES, SCRIPTS, USER_PAGES, shell, static_file
from relaymail.web.i18n import choose_language
from relaymail.web.routing import Access, SubApp, route
from relaymail.web.session import Session, WebAuth

STATIC = {**dict.fromkeys(SCRIPTS, b"text/javascript; charset=utf-8"),
          "console.css": b"text/css; charset=utf-8",
          "favicon.svg": b"image/svg+xml"}


def page_headers(request: IRequest, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")


def preset_list() -> list[dict[str, object]]:
    """The provider presets, for the relay page's form."""
    return [{"name": p.name, "label": p.label, "host": p.host, "port": p.port, "tls": p.tls,
             "oauth2": p.oauth2 is not None, "auth_note": p.auth_note}
            for p in PRESETS.values()]


def listener_list(config: Config) -> list[dict[str, object]]:
    """The SMTP listeners as a client is set up for them (the credentials page's snippet):
    those that offer AUTH first."""
    out: list[dict[str, object]] = []
    for listener in config.smtp.listeners:
        port, interface, _ = endpoint_address(listener.endpoint)
        host = interface if interface and interface not in ("0.0.0.0", "::") \
            else config.hostname
        out.append({"name": listener.name, "host": host, "port": port, "tls": listener.tls,
                    "auth": listener.auth})
    return sorted(out, key=lambda x: x["tls"] == "none")


class ConsolePages(SubApp):
    unavailable = "console login is not configured"

    def __init__(self, auth: WebAuth, setup_pending: Callable[[], bool] = lambda: False,
                 config: Callable[[], Config] | None = None,
                 absent: frozenset[str] = frozenset(),
                 registration: Callable[[], str] = lambda: "off",
                 min_password_length: Callable[[], int] = lambda: 10) -> None:
        self.auth = auth
        self.setup_pending = setup_pending  # first-run setup open: no admin password yet
        self.config = config  # the configuration in force: the SMTP listeners to show
        self.absent = absent  # pages of areas this process was built without: not in the nav
        self.registration = registration  # accounts.registration: off, invite or open
        self.min_password_length = min_password_length  # accounts.min_password_length

    @route("get", "/static/{name}", "The console's script and style sheet", Access.PUBLIC)
    def static(self, request: IRequest, name: str) -> bytes:
        if name not in STATIC:
            request.setResponseCode(404)
            return b"not found"
        page_headers(request, STATIC[name])
        request.setHeader(b"cache-control", b"no-cache")
        return static_file(name)

    @route("get", "/favicon.ico", "The console's icon (SVG)", Access.PUBLIC)
    def favicon(self, request: IRequest) -> bytes:
        return self.static(request, "favicon.svg")

    @route("get", "/login", "Console login page", Access.PUBLIC)
    def login_page(self, request: IRequest) -> bytes:
        page_headers(request, b"text/html; charset=utf-8")
        return shell("login", choose_language(request), None, [],
                     {"setup_pending": self.setup_pending(),
                      "registration": self.registration()})

    @route("get", "/register", "Account registration page (accounts.registration \"open\" "
           "or \"invite\"; the API refuses it otherwise)", Access.PUBLIC)
    def register_page(self, request: IRequest) -> bytes:
        page_headers(request, b"text/html; charset=utf-8")
        return shell("register", choose_language(request), None, [],
                     {"registration": self.registration(),
                      "min_password_length": self.min_password_length()})

    @route("get", "/setup", "First-run setup page (while no admin password is set)",
           Access.PUBLIC)
    def setup_page(self, request: IRequest) -> bytes:
        if not self.setup_pending():
            request.redirect(b"/login")
            return b""
        page_headers(request, b"text/html; charset=utf-8")
        return shell("setup", choose_language(request), None, [])

    @route("get", "/", "Console: dashboard (HTML; redirects to /login without a session)",
           Access.PUBLIC)
    def dashboard_page(self, request: IRequest) -> bytes:
        return self.page(request, "dashboard")

    @route("get", "/{name}", "Console pages: relay, queue, hold, failed, credentials, logs, "
           "send, archive, webhooks, suppressions, users, keys, account (an account user: "
           "only their own; an admin page redirects them to the dashboard)", Access.PUBLIC)
    def console_page(self, request: IRequest, name: str) -> bytes:
        return self.page(request, name)

    def page(self, request: IRequest, name: str) -> bytes:
        if name not in PAGES:
            request.setResponseCode(404)
            return b"not found"
        session = self.auth.session_of(request)
        role = self.role_of(session) if session is not None else None
        if session is None or role is None:
            request.redirect(b"/setup" if self.setup_pending() else b"/login")
            return b""
        hidden = self.hidden_pages(session, role)
        if name in hidden and role == "user":  # an admin page: not theirs
            request.redirect(b"/")
            return b""
        page_headers(request, b"text/html; charset=utf-8")
        listeners = listener_list(self.config()) if self.config is not None else []
        return shell(name, choose_language(request), session.user, preset_list(),
                     {"listeners": listeners, "role": role,
                      "account": session.user_id is not None,
                      "min_password_length": self.min_password_length()}, hidden)

    def role_of(self, session: Session) -> str | None:
        """admin or user; None when the session no longer counts (its account gone,
        disabled, or signed out since), as for the API (relaymail.web.access)."""
        if session.user_id is None:
            return "admin"
        accounts = self.auth.accounts
        principal = accounts.session_principal(session.user_id, session.created) \
            if accounts is not None else None
        return None if principal is None else str(principal.role)

    def hidden_pages(self, session: Session, role: str) -> frozenset[str]:
        """The pages left out of this caller's navigation: areas not built here, the
        accounts pages without accounts, an account user's the admin's pages, and the
        password page of the configured admin (whose password is in the config)."""
        hidden = set(self.absent)
        if self.auth.accounts is None:
            hidden |= set(ACCOUNT_PAGES)
        if role == "user":
            hidden |= set(PAGES) - set(USER_PAGES)
        if session.user_id is None:
            hidden.add("account")
        return frozenset(hidden)
