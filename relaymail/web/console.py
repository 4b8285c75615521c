"""The console's pages: one server-rendered shell per page (navigation, language switch,
links to health, metrics and the API docs, the page's empty regions), filled by the scripts
in ``static/`` from the JSON API.

Every mail-derived string reaches the page through ``textContent`` in the script, never as
markup, and the Content-Security-Policy allows only this origin's script and style sheet
(no inline style either: the charts are SVG drawn with attributes and classes): a subject
line or server reply cannot become code."""

from __future__ import annotations

import functools
import html
import json
from importlib import resources

from relaymail.web.i18n import MESSAGES

PAGES = ("dashboard", "relay", "queue", "hold", "failed", "credentials", "logs", "archive",
         "send", "webhooks", "suppressions", "users", "keys", "account")
# What an account user (role "user") sees: their own mail, logins and keys.
USER_PAGES = ("dashboard", "credentials", "logs", "send", "keys", "account")
# The pages of relaymail.accounts: not shown where accounts are off.
ACCOUNT_PAGES = ("users", "keys", "account")
# Pages without navigation, open without a session.
OPEN_PAGES = ("login", "setup", "register")
# frame-src: the archive's message view frames /api/archive/<id>/html, which is sandboxed
# by its own policy (relaymail.web.archive_api).
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       b"img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       b"base-uri 'none'")
PATHS = {"dashboard": "/", **{p: f"/{p}" for p in PAGES if p != "dashboard"}}
# In load order: the helpers first, the page that starts it all last.
SCRIPTS = ("console.js", "chart.js", "dashboard.js", "queue.js", "relay.js",
           "credentials.js", "logs.js", "archive.js", "events.js", "users.js", "account.js",
           "main.js")


@functools.cache
def static_file(name: str) -> bytes:
    """Read once per process (the files ship with the package)."""
    return resources.files("relaymail.web").joinpath("static", name).read_bytes()


def shell(page: str, lang: str, user: str | None, presets: list[dict[str, object]],
          extra: dict[str, object] | None = None, absent: frozenset[str] = frozenset()
          ) -> bytes:
    """A page; ``absent`` pages (areas not built here, or not the caller's) are left out of
    the navigation."""
    t = MESSAGES[lang]
    other = "zh" if lang == "en" else "en"
    shown = [p for p in PAGES if p not in absent]
    nav = "" if user is None else "".join(
        f'<a href="{PATHS[p]}"{" class=on" if p == page else ""}>{html.escape(t["nav_" + p])}'
        "</a>" for p in shown)
    logout = "" if user is None else \
        f'<button id="logout" type="button">{html.escape(t["logout"])}</button>'
    data = html.escape(json.dumps({"page": page, "lang": lang, "t": t, "presets": presets,
                                   "pages": shown, **(extra or {})}, ensure_ascii=False))
    title = t["nav_" + page] if page in PAGES else t[page]
    monitor = "" if (extra or {}).get("role") == "user" else (  # the relay's, admins only
        '<a href="/health" id="link-health">' + html.escape(t["link_health"]) +
        '</a><a href="/metrics" id="link-metrics">' + html.escape(t["link_metrics"]) + "</a>")
    links = "" if user is None else (
        f'<footer>{monitor}<a href="/api/docs" id="link-docs">' +
        html.escape(t["link_docs"]) + "</a></footer>")
    scripts = "".join(f'<script src="/static/{name}"></script>' for name in SCRIPTS)
    return (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width,'
        'initial-scale=1"><link rel="stylesheet" href="/static/console.css">'
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        f'<title>{html.escape(title)} · relaymail</title></head>'
        f'<body data-console="{data}"><header><b translate="no">relaymail</b>'
        f'<nav id="nav">{nav}</nav><span class="tools">{logout}'
        f'<a class="lang" href="?lang={other}">{html.escape(t["language"])}</a></span>'
        f'</header><main id="main"><h1>{html.escape(title)}</h1>'
        '<p id="message" role="status" aria-live="polite"></p>'
        f'<div id="content"></div></main>{links}{scripts}</body></html>').encode()
