"""The console's pages: one server-rendered shell per page (navigation, language switch,
the page's empty regions), filled by ``static/console.js`` from the JSON API.

Every mail-derived string reaches the page through ``textContent`` in the script, never as
markup, and the Content-Security-Policy allows only this origin's script: a subject line
or server reply cannot become code."""

from __future__ import annotations

import functools
import html
import json
from importlib import resources

from relaymail.web.i18n import MESSAGES

PAGES = ("dashboard", "relay", "queue", "failed", "credentials", "logs", "send")
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       b"img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PATHS = {"dashboard": "/", **{p: f"/{p}" for p in PAGES if p != "dashboard"}}


@functools.cache
def static_file(name: str) -> bytes:
    """Read once per process (the files ship with the package)."""
    return resources.files("relaymail.web").joinpath("static", name).read_bytes()


def shell(page: str, lang: str, user: str | None, presets: list[dict[str, object]]) -> bytes:
    t = MESSAGES[lang]
    other = "zh" if lang == "en" else "en"
    nav = "" if user is None else "".join(
        f'<a href="{PATHS[p]}"{" class=on" if p == page else ""}>{html.escape(t[p])}</a>'
        for p in PAGES) + f'<button id="logout">{html.escape(t["logout"])}</button>'
    data = html.escape(json.dumps({"page": page, "lang": lang, "t": t, "presets": presets},
                                  ensure_ascii=False))
    title = t["login"] if page == "login" else t[page]
    return (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width,'
        'initial-scale=1"><link rel="stylesheet" href="/static/console.css">'
        f'<title>{html.escape(title)} · relaymail</title></head>'
        f'<body data-console="{data}"><header><b>relaymail</b><nav>{nav}</nav>'
        f'<a class="lang" href="?lang={other}">{html.escape(t["language"])}</a></header>'
        f'<main id="main"><h1>{html.escape(title)}</h1><p id="message" role="status"></p>'
        '<div id="content"></div></main><script src="/static/console.js"></script>'
        '</body></html>').encode()
