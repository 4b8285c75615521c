"""The JSON API (Klein): queue control and relay status.

Scripts authenticate with ``Authorization: Bearer <token>``; the local control token (see
``relaymail.spool_lock``) is what ``relaymail queue`` uses.  Shapes follow DESIGN.md.
"""

from __future__ import annotations

import datetime
import hmac
import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.iweb import IRequest

import relaymail
from relaymail.envelope import Envelope
from relaymail.relay.build import apply_routing
from relaymail.relay.manager import QueueError, RelayManager, read_headers
from relaymail.relay.oauth2 import registry_for
from relaymail.relay.presets import PRESETS
from relaymail.relay.probe import Probe
from relaymail.relay.transports import target_from_upstream
from relaymail.smtp.access import is_loopback
from relaymail.web.compose import compose, sign_whole
from relaymail.web.console import CSP, PAGES, shell, static_file
from relaymail.web.guard import forwarded, reached_over_tls
from relaymail.web.http import json_reply
from relaymail.web.i18n import choose_language
from relaymail.web.openapi import docs_page
from relaymail.web.openapi import document as openapi_document
from relaymail.web.relayconfig import relay_view, requested_upstream
from relaymail.web.relayconfig import update as update_relay_config
from relaymail.web.session import COOKIE, expired_cookie, session_cookie

QUEUE_ACTIONS = ("retry", "hold", "release", "bounce")
STATES = ("queue", "hold", "failed")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def envelope_json(envelope: Envelope, state: str, now: float, active: bool) -> dict[str, Any]:
    return {
        "queue_id": envelope.queue_id,
        "state": "active" if active else state,
        "sender": envelope.sender,
        "recipients": [r.__dict__ for r in envelope.recipients],
        "size": envelope.size,
        "received_at": iso(envelope.received_at),
        "age_seconds": round(now - envelope.received_at, 1),
        "attempts": envelope.attempts,
        "next_attempt": iso(envelope.next_attempt) if state == "queue" else None,
        "last_attempt": iso(envelope.last_attempt),
        "reason": envelope.reason,
        "client_ip": envelope.client_ip,
        "credential": envelope.credential,
        "listener": envelope.listener,
    }


def matches(envelope: Envelope, sender: str | None, recipient: str | None) -> bool:
    if sender and sender.lower() not in envelope.sender.lower():
        return False
    return not recipient or any(recipient.lower() in r.address.lower()
                                for r in envelope.recipients)


def int_arg(request: IRequest, name: str, default: int) -> int:
    raw = request.args.get(name.encode(), [b""])[0]
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


def login_form(request: IRequest) -> tuple[str, str] | None:
    """(username, password) from a JSON body or a urlencoded form."""
    if (request.getHeader(b"content-type") or b"").startswith(b"application/json"):
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            return None
        user, password = (body.get("username"), body.get("password")) \
            if isinstance(body, dict) else (None, None)
    else:
        user, password = str_arg(request, "username"), str_arg(request, "password")
    if not isinstance(user, str) or not isinstance(password, str) or not user:
        return None
    return user, password


def time_arg(request: IRequest, name: str) -> float | None:
    """ISO 8601 (``2026-11-22T09:00:00Z``) or Unix seconds; None when absent."""
    text = str_arg(request, name)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: expected ISO 8601 or Unix seconds (got {text!r})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def str_arg(request: IRequest, name: str) -> str | None:
    raw = request.args.get(name.encode(), [b""])[0]
    return raw.decode("utf-8", "replace") or None


class ControlAPI:
    """Routes over a running relay manager."""

    app = Klein()

    def __init__(self, manager: RelayManager, token: Callable[[], str],
                 policy: Callable[[], dict[str, Any]] = dict, monitor: Any = None,
                 open_to_loopback: bool = True, config: Any = None, reactor: Any = None,
                 credentials: Any = None, signer: Any = None, history: Any = None,
                 auth: Any = None) -> None:
        self.auth = auth  # relaymail.web.session.WebAuth: console logins
        self.history = history  # relaymail.history.History, for /api/mail-logs
        self.signer = signer  # DKIM for /api/send, like mail received over SMTP
        self.credentials = credentials  # relaymail.web.credentials_api.CredentialsAPI
        self.config = config  # relaymail.config.Config, for /api/relay/test
        self.reactor = reactor
        self.manager = manager
        self.token = token
        self.policy = policy  # rate-limit and lockout counters, for status and metrics
        self.monitor = monitor  # relaymail.web.monitor.Monitor: /health and /metrics
        self.open_to_loopback = open_to_loopback

    # ------------------------------------------------------------------ plumbing

    def authorized(self, request: IRequest) -> bool:
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.decode("latin-1").partition(" ")
        expected = self.token()
        return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode())

    reply = staticmethod(json_reply)

    def may_send_body(self, request: IRequest) -> bool:
        """For relaymail.web.guard, when the headers are in: the bearer token or a live
        session cookie (CSRF is checked by the route).  Only these may send large bodies."""
        if self.authorized(request):
            return True
        return self.auth is not None and self.auth.session_of(request) is not None

    def over_tls(self, request: IRequest) -> bool:
        """The browser reaches us over HTTPS (here, or through a TLS proxy we believe)."""
        web = getattr(self.config, "web", None)
        if web is None:
            return request.isSecure()
        return reached_over_tls(request, web.behind_tls_proxy, web.trusted_proxies)

    def denied(self, request: IRequest) -> bytes | None:
        """None when the bearer token or a console session (with its CSRF token for
        changes) allows the request; else the 401 or 403 answer."""
        if self.authorized(request):
            return None
        session = self.auth.session_of(request) if self.auth is not None else None
        if session is not None:
            if self.auth.csrf_ok(request, session):
                return None
            return self.reply(request, {"error": "CSRF token missing or wrong"}, 403)
        request.setHeader(b"www-authenticate", b'Bearer realm="relaymail"')
        return self.reply(request, {"error": "authentication required"}, 401)

    # ------------------------------------------------------------------ console pages

    def page_headers(self, request: IRequest, content_type: bytes) -> None:
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"x-frame-options", b"DENY")

    @app.route("/static/<string:name>", methods=["GET"])
    def static(self, request: IRequest, name: str) -> bytes:
        kinds = {"console.js": b"text/javascript; charset=utf-8",
                 "console.css": b"text/css; charset=utf-8"}
        if name not in kinds:
            request.setResponseCode(404)
            return b"not found"
        self.page_headers(request, kinds[name])
        request.setHeader(b"cache-control", b"no-cache")
        return static_file(name)

    @app.route("/login", methods=["GET"])
    def login_page(self, request: IRequest) -> bytes:
        self.page_headers(request, b"text/html; charset=utf-8")
        return shell("login", choose_language(request), None, [])

    @app.route("/", methods=["GET"])
    def dashboard_page(self, request: IRequest) -> bytes:
        return self.page(request, "dashboard")

    @app.route("/<string:name>", methods=["GET"])
    def console_page(self, request: IRequest, name: str) -> bytes:
        return self.page(request, name)

    def page(self, request: IRequest, name: str) -> bytes:
        if name not in PAGES:
            request.setResponseCode(404)
            return b"not found"
        session = self.auth.session_of(request) if self.auth is not None else None
        if session is None:
            request.redirect(b"/login")
            return b""
        self.page_headers(request, b"text/html; charset=utf-8")
        presets = [{"name": p.name, "label": p.label, "host": p.host, "port": p.port,
                    "tls": p.tls, "oauth2": p.oauth2 is not None, "auth_note": p.auth_note}
                   for p in PRESETS.values()]
        return shell(name, choose_language(request), session.user, presets)

    # ------------------------------------------------------------------ console login

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        """JSON ``{username, password}`` or a form; sets the session cookie and answers the
        CSRF token.  Failures are counted per address and user, and lock out like AUTH."""
        if self.auth is None:
            return self.reply(request, {"error": "console login is not configured"}, 404)
        form = login_form(request)
        if form is None:
            return self.reply(request, {"error": "expected username and password"}, 400)
        peer = getattr(request.getClientAddress(), "host", "?")
        result, value = await self.auth.login(peer, *form)
        if result == "locked":
            return self.reply(request, {"error": "too many failed logins; try again in "
                                                 f"{int(value) + 1} seconds"}, 429)
        if result != "ok":
            return self.reply(request, {"error": "wrong username or password"}, 401)
        token, session = value
        request.setHeader(b"set-cookie", session_cookie(token, self.over_tls(request)))
        return self.reply(request, {"user": session.user, "csrf": session.csrf})

    @app.route("/logout", methods=["POST"])
    def logout(self, request: IRequest) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        cookie = request.getCookie(COOKIE)
        if self.auth is not None and cookie:
            self.auth.sessions.drop(cookie.decode("ascii", "replace"))
        request.setHeader(b"set-cookie", expired_cookie())
        return self.reply(request, {"ok": True})

    @app.route("/api/session", methods=["GET"])
    def session(self, request: IRequest) -> bytes:
        """The page's CSRF token (the cookie itself is HttpOnly)."""
        session = self.auth.session_of(request) if self.auth is not None else None
        if session is None:
            return self.reply(request, {"error": "not logged in"}, 401)
        return self.reply(request, {"user": session.user, "csrf": session.csrf})

    def monitor_denied(self, request: IRequest) -> bytes | None:
        """/health and /metrics: open to loopback clients when configured, else the token.
        A request a proxy on this host forwarded (it names whom for) is not a loopback
        client: it may come from anywhere."""
        peer = getattr(request.getClientAddress(), "host", "")
        if self.open_to_loopback and is_loopback(peer) and not forwarded(request):
            return None
        return self.denied(request)

    # ------------------------------------------------------------------ description

    @app.route("/api/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return self.reply(request, openapi_document(relaymail.__version__))

    @app.route("/api/docs", methods=["GET"])
    def api_docs(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'; style-src "
                                                       b"'unsafe-inline'")
        return docs_page(openapi_document(relaymail.__version__))

    # ------------------------------------------------------------------ monitoring

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        if (denied := self.monitor_denied(request)) is not None:
            return denied
        code, body = await self.monitor.health()
        return self.reply(request, body, code)

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        if (denied := self.monitor_denied(request)) is not None:
            return denied
        if str_arg(request, "format") == "json":
            return self.reply(request, self.monitor.metrics_json())
        text = await self.monitor.metrics_text()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return text

    # ------------------------------------------------------------------ credentials

    def credentials_call(self, request: IRequest, handler: str, *args: str) -> Any:
        if (denied := self.denied(request)) is not None:
            return denied
        if self.credentials is None:
            return self.reply(request, {"error": "credentials are not managed here"}, 404)
        return getattr(self.credentials, handler)(request, *args)

    @app.route("/api/smtp-credentials", methods=["GET"])
    def credentials_list(self, request: IRequest) -> Any:
        return self.credentials_call(request, "listing")

    @app.route("/api/smtp-credentials", methods=["POST"])
    def credentials_create(self, request: IRequest) -> Any:
        return self.credentials_call(request, "create")

    @app.route("/api/smtp-credentials/<string:name>/reset-password", methods=["POST"])
    def credentials_reset(self, request: IRequest, name: str) -> Any:
        return self.credentials_call(request, "reset", name)

    @app.route("/api/smtp-credentials/<string:name>", methods=["PATCH"])
    def credentials_update(self, request: IRequest, name: str) -> Any:
        return self.credentials_call(request, "update", name)

    @app.route("/api/smtp-credentials/<string:name>", methods=["DELETE"])
    def credentials_delete(self, request: IRequest, name: str) -> Any:
        return self.credentials_call(request, "delete", name)

    # ------------------------------------------------------------------ delivery history

    @app.route("/api/mail-logs", methods=["GET"])
    async def mail_logs(self, request: IRequest) -> bytes:
        """Search: sender, recipient (substrings), queue_id, status, since/until (ISO 8601
        or Unix seconds), limit (max 1000), offset; newest first."""
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            filters = {name: str_arg(request, name)
                       for name in ("sender", "recipient", "queue_id", "status")}
            filters["since"] = time_arg(request, "since")
            filters["until"] = time_arg(request, "until")
        except ValueError as e:
            return self.reply(request, {"error": str(e)}, 400)
        total, rows = await self.history.search(filters, int_arg(request, "limit", 100),
                                                int_arg(request, "offset", 0))
        for row in rows:
            row["time"] = iso(row["time"])
        return self.reply(request, {"total": total, "items": rows})

    @app.route("/api/mail-logs/stats", methods=["GET"])
    async def mail_log_stats(self, request: IRequest) -> bytes:
        """Counts by status for the last ``hours`` (default 24) and per hour, for the
        dashboard's chart."""
        if (denied := self.denied(request)) is not None:
            return denied
        hours = max(1, min(int_arg(request, "hours", 24), 24 * 31))
        now = self.manager.now()
        start = (int(now) // 3600 - hours + 1) * 3600
        raw = await self.history.stats(start)
        per_hour = [{"hour": iso(h), **{s: raw["buckets"].get(h, {}).get(s, 0)
                                        for s in ("received", "sent", "deferred", "bounced")}}
                    for h in range(start, int(now) + 1, 3600)]
        totals = {s: raw["totals"].get(s, 0) for s in ("received", "sent", "deferred",
                                                        "bounced")}
        final = totals["sent"] + totals["bounced"]
        return self.reply(request, {
            "hours": hours, "totals": totals,
            "success_rate": round(100 * totals["sent"] / final, 2) if final else 100.0,
            "per_hour": per_hour,
            "top_senders": [{"sender": s, "messages": n} for s, n in raw["top_senders"]]})

    # ------------------------------------------------------------------ send

    @app.route("/api/send", methods=["POST"])
    async def send(self, request: IRequest) -> bytes:
        """Compose and queue a message (the console's send form); 202 with the queue ID."""
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            form = json.loads(request.content.read() or b"{}")
            sender, rcpts, data = compose(form, self.config.hostname, self.manager.now(),
                                          self.config.smtp.max_recipients)
        except ValueError as e:  # ComposeError, or a body that is not JSON
            return self.reply(request, {"error": str(e)}, 400)
        data = await self.manager.spool.run_in_thread(sign_whole, self.signer, data)
        try:
            qid = await self.manager.inject(sender, rcpts, data, {"source": "api"})
        except Exception as e:
            return self.reply(request, {"error": f"not queued: {e}"}, 503)
        return self.reply(request, {"queue_id": qid, "sender": sender, "recipients": rcpts,
                                    "size": len(data)}, 202)

    # ------------------------------------------------------------------ relay config

    @app.route("/api/relay/config", methods=["GET"])
    def relay_config(self, request: IRequest) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        return self.reply(request, relay_view(self.config))

    @app.route("/api/relay/config", methods=["POST"])
    async def relay_config_update(self, request: IRequest) -> bytes:
        """Validate like startup, save atomically (previous file kept as .bak), apply to
        the next delivery; no restart."""
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            body = json.loads(request.content.read() or b"{}")
            new_config, view = await self.manager.spool.run_in_thread(
                update_relay_config, self.config.path, body, self.config)
        except ValueError as e:
            return self.reply(request, {"error": str(e)}, 400)
        apply_routing(self.manager, new_config, self.reactor)
        self.config = new_config
        return self.reply(request, {**view, "applied": True, "restart_required": []})

    # ------------------------------------------------------------------ relay test

    @app.route("/api/relay/test", methods=["POST"])
    async def relay_test(self, request: IRequest) -> bytes:
        """Connect to the given (or saved) upstream step by step; 200 with the steps whether
        or not it worked, 400 for an unusable request."""
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            body = json.loads(request.content.read() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            upstream = requested_upstream(body, self.config)
        except ValueError as e:
            return self.reply(request, {"error": str(e)}, 400)
        target = target_from_upstream(upstream)
        result = await Probe(self.reactor, target, self.config.hostname,
                             float(self.config.delivery.connect_timeout),
                             registry_for(self.reactor, self.config.spool_dir)).run()
        result["upstream"] = {"host": upstream.host, "port": upstream.port,
                              "tls": upstream.tls, "username": upstream.username}
        return self.reply(request, result)

    # ------------------------------------------------------------------ queue

    @app.route("/api/queue", methods=["GET"])
    async def list_queue(self, request: IRequest) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        state = str_arg(request, "state") or "queue"
        if state not in (*STATES, "all"):
            return self.reply(request, {"error": f"unknown state {state}"}, 400)
        now = self.manager.now()
        rows = []
        for name in STATES if state == "all" else (state,):
            # hold/ and failed/ are read from disk: in the thread pool, not the reactor.
            envelopes = (self.manager.list(name) if name == "queue" else
                         await self.manager.spool.run_in_thread(self.manager.list, name))
            for envelope in envelopes:
                if matches(envelope, str_arg(request, "sender"), str_arg(request, "recipient")):
                    rows.append(envelope_json(envelope, name, now,
                                              envelope.queue_id in self.manager.active))
        offset, limit = int_arg(request, "offset", 0), int_arg(request, "limit", 100)
        return self.reply(request, {"total": len(rows), "offset": offset, "limit": limit,
                                    "messages": rows[offset:offset + limit]})

    @app.route("/api/queue/<string:qid>", methods=["GET"])
    async def show(self, request: IRequest, qid: str) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            state, envelope = self.manager.find(qid)
        except QueueError as e:
            return self.reply(request, {"error": str(e)}, 404)
        body = envelope_json(envelope, state, self.manager.now(), qid in self.manager.active)
        path = self.manager.spool.path("data", qid + ".eml")
        body["headers"] = await self.manager.spool.run_in_thread(read_headers, path)
        return self.reply(request, body)

    @app.route("/api/queue/<string:qid>/<string:action>", methods=["POST"])
    async def act(self, request: IRequest, qid: str, action: str) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        if action not in QUEUE_ACTIONS:
            return self.reply(request, {"error": f"unknown action {action}"}, 404)
        return await self._run(request, qid, action, getattr(self.manager, action))

    @app.route("/api/queue/<string:qid>", methods=["DELETE"])
    async def delete(self, request: IRequest, qid: str) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        return await self._run(request, qid, "delete", self.manager.delete)

    async def _run(self, request: IRequest, qid: str, action: str, op: Any) -> bytes:
        try:
            state = await op(qid)
        except QueueError as e:
            code = 404 if str(e).startswith("no message") else 409
            return self.reply(request, {"error": str(e)}, code)
        return self.reply(request, {"queue_id": qid, "action": action, "state": state})

    @app.route("/api/queue/flush", methods=["POST"])
    def flush(self, request: IRequest) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        return self.reply(request, {"flushed": self.manager.flush()})

    @app.route("/admin/retry-failed", methods=["POST"])
    async def retry_failed(self, request: IRequest) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        return self.reply(request, {"requeued": await self.manager.retry_failed()})

    # ------------------------------------------------------------------ relay

    @app.route("/api/relay/status", methods=["GET"])
    def relay_status(self, request: IRequest) -> bytes:
        if (denied := self.denied(request)) is not None:
            return denied
        manager = self.manager
        health = manager.health.snapshot() if manager.health is not None else []
        pool = manager.pool
        return self.reply(request, {
            "upstreams": health,
            "queue": {"queued": len(manager.queued), "active": len(manager.active),
                      "hold": manager.spool.count("hold"),
                      "failed": manager.spool.count("failed")},
            "counters": dict(manager.counters),
            "connections_opened": pool.connections_opened if pool is not None else 0,
            "policy": self.policy(),
        })
