"""Request and answer plumbing every handler shares: the JSON answer (errors with their
message code), query arguments and the JSON body."""

from __future__ import annotations

import datetime
import json
from typing import Any

from twisted.web.iweb import IRequest

from relaymail.web.errors import with_code


def json_reply(request: IRequest, body: Any, code: int = 200) -> bytes:
    """The JSON answer; an ``error`` gets its message code for the console
    (relaymail.web.errors)."""
    if isinstance(body, dict):
        body = with_code(body)
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, ensure_ascii=False).encode()


def json_body(request: IRequest) -> Any:
    """The request's JSON body (``{}`` when empty); ValueError when it is not JSON."""
    return json.loads(request.content.read() or b"{}")


def str_arg(request: IRequest, name: str) -> str | None:
    raw = request.args.get(name.encode(), [b""])[0]
    return raw.decode("utf-8", "replace") or None


def int_arg(request: IRequest, name: str, default: int) -> int:
    raw = request.args.get(name.encode(), [b""])[0]
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


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
