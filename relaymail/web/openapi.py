"""``/api/openapi.json`` (OpenAPI 3.1) and ``/api/docs``, a readable page made from it.

The document is made from the route declarations (relaymail.web.routing.route) that Klein
serves, so it cannot drift from the code; each operation says the access it needs
(``x-access``, and ``security``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.web.http import json_reply
from relaymail.web.routing import Access, Route, SubApp, route

ERROR = {"description": "bad request; `error` says which field", "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "error": {"type": "string"}}}}}}
SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.ADMIN: [{"bearer": []}, {"session": []}],
    Access.LOCAL_OR_ADMIN: [{}, {"bearer": []}, {"session": []}],
    Access.SESSION: [{"session": []}],
    Access.USER: [{"bearer": []}, {"session": []}],
}
DENIED = {
    Access.ADMIN: "token missing or wrong, and no console session",
    Access.LOCAL_OR_ADMIN: "not a loopback client (or web.open_metrics_to_loopback is off), "
                           "and no token or console session",
    Access.SESSION: "not logged in",
    Access.USER: "no token, API key or console session",
}
# Who may call a route, as x-role says it.
ROLE = {Access.PUBLIC: "anyone", Access.ADMIN: "admin", Access.LOCAL_OR_ADMIN: "admin",
        Access.SESSION: "user", Access.USER: "user"}
SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an account's token from POST /api/auth/login (`rmt_...`), an "
                              "API key (`rmk_<id>_<secret>`, with scopes), or "
                              "`<spool>/control.token`, as `relaymail queue` uses it"},
    "session": {"type": "apiKey", "in": "cookie", "name": "relaymail_session",
                "description": "the console's login (POST /login); changes also send the "
                               "session's CSRF token as X-CSRF-Token"},
}
# Plain words, no emoji: a machine without an emoji font shows them too.
ACCESS_NOTE = {Access.PUBLIC: " <small>(public)</small>",
               Access.ADMIN: " <small>(admin)</small>",
               Access.LOCAL_OR_ADMIN: " <small>(admin or loopback)</small>",
               Access.SESSION: " <small>(console session)</small>",
               Access.USER: " <small>(user: own objects; admin: all)</small>"}


def operation(r: Route) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in r.path_variables]
    op: dict[str, Any] = {"summary": r.summary, "parameters": [*params, *r.query],
                          "x-access": r.access.value, "x-role": ROLE[r.access],
                          "x-scope": "admin" if r.access in (Access.ADMIN,
                                                              Access.LOCAL_OR_ADMIN)
                          else r.scope,
                          "responses": {"200": {"description": "OK"}, "400": ERROR}}
    if r.access in SECURITY:
        op["security"] = SECURITY[r.access]
        op["responses"]["401"] = {"description": DENIED[r.access]}
    if r.access is Access.ADMIN:
        op["responses"]["403"] = {"description": "not an admin (an account user, or an API "
                                                 "key without the admin scope), or a console "
                                                 "session without its CSRF token"}
    if r.access is Access.USER:
        scope = f"an API key without the {r.scope} scope, or " if r.scope else ""
        op["responses"]["403"] = {"description": f"{scope}a console session without its "
                                                 "CSRF token"}
    if r.body is not None:
        op["requestBody"] = {"content": {"application/json": {"schema": r.body}}}
    return op


def document(version: str, routes: Sequence[Route] | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``routes``; by default, of every route the API serves."""
    if routes is None:
        from relaymail.web.api import ControlAPI  # it imports this module

        routes = ControlAPI.routes
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method] = operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "relaymail", "version": version,
                 "description": "Queue, relay, credentials, history and monitoring of one "
                                "relaymail instance. Scripts send `Authorization: Bearer "
                                "<token>` (the local token is in `<spool>/control.token`)."},
        "components": {"securitySchemes": SCHEMES},
        "paths": paths,
    }


class ApiDocs(SubApp):
    def __init__(self, version: str, routes: Sequence[Route]) -> None:
        self.version = version
        self.routes_served = routes

    @route("get", "/api/openapi.json", "This document", Access.PUBLIC)
    def openapi(self, request: IRequest) -> bytes:
        return json_reply(request, document(self.version, self.routes_served))

    @route("get", "/api/docs", "This document as a page", Access.PUBLIC)
    def api_docs(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'; style-src "
                                                       b"'unsafe-inline'; img-src 'self'")
        return docs_page(document(self.version, self.routes_served))


def docs_page(spec: dict[str, Any]) -> bytes:
    """Plain HTML, no scripts or outside assets: readable anywhere, even offline."""
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = ", ".join(f"<code>{html.escape(x['name'])}</code>"
                               for x in op["parameters"])
            lock = ACCESS_NOTE[Access(op["x-access"])]
            rows.append(f"<tr><td><b>{method.upper()}</b></td><td><code>{html.escape(path)}"
                        f"</code>{lock}</td><td>{html.escape(op['summary'])}</td>"
                        f"<td>{params}</td></tr>")
    return ("<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-"
            "width'><link rel=icon href='/static/favicon.svg' type='image/svg+xml'>"
            "<title>relaymail API</title><style>body{font-family:sans-serif;margin:1em}"
            "td{border-top:1px solid #ddd;padding:.3em;vertical-align:top}</style>"
            f"<h1>relaymail API {html.escape(spec['info']['version'])}</h1>"
            f"<p>{html.escape(spec['info']['description'])} "
            "<a href='/api/openapi.json'>openapi.json</a> · <a href='/'>console</a></p><table>"
            + "".join(rows) + "</table>").encode()
