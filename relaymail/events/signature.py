"""The webhook signature: ``X-Relaymail-Signature: t=<unix seconds>,v1=<hex>``, where the
hex is HMAC-SHA256 keyed with the endpoint's secret over ``"<t>." + raw body``.

The timestamp is signed with the body, so a receiver that refuses signatures older than a
few minutes is safe from replays; the same scheme as Stripe's, which many receivers already
know how to check.  :func:`verify` is what a receiver does (the docs show it standalone).
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Relaymail-Signature"
TOLERANCE = 300.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float,
           tolerance: float = TOLERANCE) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and is at most ``tolerance``
    seconds old (or early)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2].encode()
    return any(hmac.compare_digest(expected, v.encode("utf-8", "replace"))
               for v in fields.get("v1", []))
