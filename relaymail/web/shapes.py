"""The JSON shapes the API, ``relaymail queue --json`` and ``/health`` share (DESIGN.md)."""

from __future__ import annotations

import datetime
from typing import Any

from relaymail.spool.envelope import Envelope


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
