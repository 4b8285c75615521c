"""``/api/openapi.json`` (OpenAPI 3.1) and ``/api/docs``, a readable page made from it.

The table below is the single description of every route; a test checks it against the
routes Klein actually serves, so the document cannot drift from the code."""

from __future__ import annotations

import html
from typing import Any

OBJ: dict[str, Any] = {"type": "object"}
ERROR = {"description": "bad request; `error` says which field", "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "error": {"type": "string"}}}}}}
UPSTREAM = {"type": "object", "properties": {
    "enabled": {"type": "boolean"}, "host": {"type": "string"},
    "port": {"type": "integer"}, "username": {"type": ["string", "null"]},
    "password": {"type": ["string", "null"], "description": "write-only; GET shows ********"},
    "use_tls": {"type": "boolean"}, "preset": {"type": ["string", "null"]},
    "tls": {"enum": ["starttls", "implicit", "opportunistic", "none"]},
    "upstreams": {"type": "array", "items": OBJ}}}
CREDENTIAL = {"type": "object", "properties": {
    "name": {"type": "string"}, "enabled": {"type": "boolean"},
    "allowed_sender_domains": {"type": "array", "items": {"type": "string"}},
    "hourly_quota": {"type": ["integer", "null"]}, "daily_quota": {"type": ["integer", "null"]},
    "check_header_from": {"type": "boolean"}, "description": {"type": "string"}}}
SEND = {"type": "object", "required": ["from", "to"], "properties": {
    "from": {"type": "string"}, "from_name": {"type": "string"},
    "to": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "subject": {"type": "string"}, "text": {"type": "string"}, "html": {"type": "string"}}}


def q(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": kind}}


def p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# (method, path, summary, parameters, request body schema or None, public)
ROUTES: list[tuple[str, str, str, list[dict[str, Any]], dict[str, Any] | None, bool]] = [
    ("get", "/health", "Health: 200 ok/degraded, 503 error (spool not writable, disk low)",
     [], None, True),
    ("get", "/metrics", "Prometheus text; ?format=json for the simple JSON shape",
     [q("format", "json for {total_emails, successful_emails, failed_emails, "
                  "total_recipients, avg_processing_time_ms}")], None, True),
    ("get", "/api/relay/config", "The relay upstream (simple shape, passwords masked)", [],
     None, False),
    ("post", "/api/relay/config", "Change the relay upstream; validated, saved with a .bak, "
     "applied without restart", [], UPSTREAM, False),
    ("post", "/api/relay/test", "Connect step by step (TCP, banner, EHLO, STARTTLS, AUTH, "
     "QUIT) to the given or saved upstream", [], UPSTREAM, False),
    ("get", "/api/relay/status", "Upstream health, queue counts, counters, policy", [], None,
     False),
    ("get", "/api/queue", "List queued, held or failed messages",
     [q("state", "queue, hold or failed"), q("sender", "substring"),
      q("recipient", "substring"), q("offset", "paging", "integer"),
      q("limit", "paging", "integer")], None, False),
    ("get", "/api/queue/{qid}", "One message: envelope, recipients' states, headers",
     [p("qid")], None, False),
    ("post", "/api/queue/{qid}/{action}", "retry, hold, release or bounce one message",
     [p("qid"), p("action")], None, False),
    ("delete", "/api/queue/{qid}", "Delete one message (no bounce)", [p("qid")], None, False),
    ("post", "/api/queue/flush", "Retry every deferred message now", [], None, False),
    ("post", "/admin/retry-failed", "Move every failed message back to the queue", [], None,
     False),
    ("get", "/api/smtp-credentials", "List SMTP AUTH credentials (never passwords)", [], None,
     False),
    ("post", "/api/smtp-credentials", "Create; the answer holds the password, once", [],
     CREDENTIAL, False),
    ("post", "/api/smtp-credentials/{name}/reset-password", "New password, shown once",
     [p("name")], None, False),
    ("patch", "/api/smtp-credentials/{name}", "Change quotas, sender domains, flags",
     [p("name")], CREDENTIAL, False),
    ("delete", "/api/smtp-credentials/{name}", "Delete a credential", [p("name")], None, False),
    ("get", "/api/mail-logs", "Search the delivery history, newest first",
     [q("sender", "substring"), q("recipient", "substring"), q("queue_id", "exact"),
      q("status", "received, sent, deferred or bounced"),
      q("since", "ISO 8601 or Unix seconds"), q("until", "ISO 8601 or Unix seconds"),
      q("limit", "at most 1000", "integer"), q("offset", "paging", "integer")], None, False),
    ("get", "/api/mail-logs/stats", "Totals, success rate, per hour, top senders",
     [q("hours", "window, default 24", "integer")], None, False),
    ("post", "/api/send", "Compose, DKIM-sign and queue a message; 202 with the queue ID",
     [], SEND, False),
    ("post", "/login", "Console login ({username, password} as JSON or a form): sets the "
     "HttpOnly session cookie, answers the CSRF token; 429 when locked out", [], OBJ, True),
    ("post", "/logout", "End the console session", [], None, False),
    ("get", "/api/session", "The console session's user and CSRF token (send it as "
     "X-CSRF-Token on changes)", [], None, True),
    ("get", "/", "Console: dashboard (HTML; redirects to /login without a session)", [],
     None, True),
    ("get", "/{name}", "Console pages: relay, queue, failed, credentials, logs, send",
     [p("name")], None, True),
    ("get", "/login", "Console login page", [], None, True),
    ("get", "/static/{name}", "The console's script and style sheet", [p("name")], None,
     True),
    ("get", "/api/openapi.json", "This document", [], None, True),
    ("get", "/api/docs", "This document as a page", [], None, True),
]


def document(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, params, body, public in ROUTES:
        operation: dict[str, Any] = {"summary": summary, "parameters": params,
                                     "responses": {"200": {"description": "OK"},
                                                   "400": ERROR}}
        if not public:
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = {"description": "token missing or wrong"}
        if body is not None:
            operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "relaymail", "version": version,
                 "description": "Queue, relay, credentials, history and monitoring of one "
                                "relaymail instance. Scripts send `Authorization: Bearer "
                                "<token>` (the local token is in `<spool>/control.token`)."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def docs_page(spec: dict[str, Any]) -> bytes:
    """Plain HTML, no scripts or outside assets: readable anywhere, even offline."""
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = ", ".join(f"<code>{html.escape(x['name'])}</code>"
                               for x in op["parameters"])
            lock = "" if "security" not in op else " 🔒"
            rows.append(f"<tr><td><b>{method.upper()}</b></td><td><code>{html.escape(path)}"
                        f"</code>{lock}</td><td>{html.escape(op['summary'])}</td>"
                        f"<td>{params}</td></tr>")
    return ("<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-"
            "width'><title>relaymail API</title><style>body{font-family:sans-serif;margin:1em}"
            "td{border-top:1px solid #ddd;padding:.3em;vertical-align:top}</style>"
            f"<h1>relaymail API {html.escape(spec['info']['version'])}</h1>"
            f"<p>{html.escape(spec['info']['description'])} "
            "<a href='/api/openapi.json'>openapi.json</a></p><table>"
            + "".join(rows) + "</table>").encode()
