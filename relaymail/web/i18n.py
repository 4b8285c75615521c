"""The console's two languages.  The catalogues are JSON files beside the scripts
(``static/en.json``, ``static/zh.json``: key -> text, ``{name}`` placeholders), which
translation tools read and write as they are; the page gets its language's catalogue.
Server errors reach the console with a message code (relaymail.web.errors) whose text is
``err_<code>`` here.

The choice comes from ``?lang=``, then the ``lang`` cookie, then Accept-Language (any zh*
means Simplified Chinese)."""

from __future__ import annotations

import json
from importlib import resources

from twisted.web.iweb import IRequest

LANGUAGES = ("en", "zh")


def catalogue(lang: str) -> dict[str, str]:
    text = resources.files("relaymail.web").joinpath("static", f"{lang}.json").read_text("utf-8")
    loaded: dict[str, str] = json.loads(text)
    return loaded


MESSAGES: dict[str, dict[str, str]] = {lang: catalogue(lang) for lang in LANGUAGES}


def choose_language(request: IRequest) -> str:
    asked = (request.args.get(b"lang") or [b""])[0].decode("ascii", "replace")
    if asked in LANGUAGES:
        return asked
    cookie = (request.getCookie(b"lang") or b"").decode("ascii", "replace")
    if cookie in LANGUAGES:
        return cookie
    accepted = (request.getHeader(b"accept-language") or b"").decode("ascii", "replace")
    first = accepted.split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"
