"""The JSON answer every API handler gives."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest


def json_reply(request: IRequest, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, ensure_ascii=False).encode()
