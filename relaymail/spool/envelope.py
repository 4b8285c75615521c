"""The envelope of a spooled message: who sent it, to whom, and each recipient's state.

Stored as JSON beside the body (never pickled), rewritten atomically on every change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
QUEUE_ID_RE = re.compile(r"[0-9A-Za-z]{1,40}")


class EnvelopeError(ValueError):
    """A stored envelope that is not one: wrong JSON shape or field types."""


@dataclass
class Recipient:
    """One envelope recipient and the outcome of delivery to it so far."""

    address: str
    state: str = PENDING
    attempts: int = 0
    last_reply: str | None = None
    transport: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipient:
        return cls(**{k: v for k, v in data.items() if k in _RECIPIENT_NAMES})


@dataclass
class Envelope:
    """Everything about a message except its bytes."""

    queue_id: str
    sender: str
    recipients: list[Recipient]
    received_at: float
    size: int = 0
    client_ip: str | None = None
    helo: str | None = None
    credential: str | None = None
    listener: str | None = None
    protocol: str = "ESMTP"
    body_8bit: bool = False
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Compact JSON; built field by field because dataclasses.asdict (a deep copy) showed
        up in the commit thread's profile."""
        data = {f: getattr(self, f) for f in _ENVELOPE_FIELDS}
        data["recipients"] = [r.__dict__ for r in self.recipients]
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """Parse and check a stored envelope; EnvelopeError names what is wrong."""
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise EnvelopeError(f"expected a JSON object, got {type(raw).__name__}")
        check_fields(raw, _FIELD_TYPES, "")
        if not QUEUE_ID_RE.fullmatch(raw["queue_id"]):
            raise EnvelopeError("queue_id: not a queue ID")
        recipients = raw.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            raise EnvelopeError("recipients: expected a non-empty list")
        for i, item in enumerate(recipients):
            if not isinstance(item, dict):
                raise EnvelopeError(f"recipients[{i}]: expected an object")
            check_fields(item, _RECIPIENT_TYPES, f"recipients[{i}].")
            if item.get("state", PENDING) not in (PENDING, DELIVERED, FAILED):
                raise EnvelopeError(f"recipients[{i}].state: unknown state")
        values = {k: v for k, v in raw.items() if k in _ENVELOPE_NAMES}
        values["recipients"] = [Recipient.from_dict(r) for r in recipients]
        return cls(**values)


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
_ABSENT = object()  # a missing field fails the quick check, and is looked at again
# Looked up once: dataclasses.fields() per envelope was a third of a restart's load time.
_ENVELOPE_NAMES = frozenset(_ENVELOPE_FIELDS)
_RECIPIENT_NAMES = frozenset(f.name for f in fields(Recipient))
_NUMBER = (int, float)
_OPTIONAL_STR = (str, type(None))
_OPTIONAL_NUMBER = (int, float, type(None))
# field -> (accepted types, required)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "queue_id": ((str,), True), "sender": ((str,), True), "received_at": (_NUMBER, True),
    "size": (_NUMBER, False), "client_ip": (_OPTIONAL_STR, False),
    "helo": (_OPTIONAL_STR, False), "credential": (_OPTIONAL_STR, False),
    "listener": (_OPTIONAL_STR, False), "protocol": ((str,), False),
    "body_8bit": ((bool,), False), "attempts": (_NUMBER, False),
    "next_attempt": (_NUMBER, False), "last_attempt": (_OPTIONAL_NUMBER, False),
    "reason": (_OPTIONAL_STR, False), "extra": ((dict,), False),
}
_RECIPIENT_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "address": ((str,), True), "state": ((str,), False), "attempts": (_NUMBER, False),
    "last_reply": (_OPTIONAL_STR, False), "transport": (_OPTIONAL_STR, False),
}


def check_fields(raw: dict[str, Any], types: dict[str, tuple[tuple[type, ...], bool]],
                 prefix: str) -> None:
    """EnvelopeError when a required field is missing or a known one has the wrong type
    (exact types: JSON gives no subclasses, and a bool is no number here).  The usual
    envelope (every field there, as relaymail writes it) takes one pass of C-level
    lookups: a restart reads 100,000 of them."""
    if all(type(raw.get(name, _ABSENT)) in accepted for name, (accepted, _) in types.items()):
        return
    for name, (accepted, required) in types.items():
        if name in raw:
            if type(raw[name]) not in accepted:
                raise EnvelopeError(f"{prefix}{name}: wrong type {type(raw[name]).__name__}")
        elif required:
            raise EnvelopeError(f"{prefix}{name}: missing")
