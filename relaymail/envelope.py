"""The envelope of a spooled message: who sent it, to whom, and each recipient's state.

Stored as JSON beside the body (never pickled), rewritten atomically on every change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
        raw = json.loads(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["recipients"] = [Recipient.from_dict(r) for r in raw.get("recipients", [])]
        return cls(**values)


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
