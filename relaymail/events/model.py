"""Event documents: one JSON object per recipient and happening, the shape every webhook
receives (docs/operations.md, "Webhooks", lists the fields).

The relay manager's observer events name an outcome group (several recipients, one reply);
the spool's commit listeners give an envelope.  Both become per-recipient documents here.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

from relaymail.spool.envelope import Envelope

# The manager's event names (relaymail.relay.outcome, ``log_status``) -> webhook events.
MANAGER_EVENTS = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced",
                  "failed": "failed"}
ENHANCED = re.compile(r"^(?:\d{3}[ -])?([245]\.\d{1,3}\.\d{1,3})\b")


def iso(when: float) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as /health writes it."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_id() -> str:
    return "evt_" + secrets.token_hex(12)


def enhanced_code(reply: str | None) -> str | None:
    """The RFC 3463 code at the start of a reply text (``550 5.1.1 ...`` -> ``5.1.1``)."""
    if not reply:
        return None
    match = ENHANCED.match(reply)
    return match.group(1) if match else None


def base(event: str, time: float, queue_id: str, sender: str, recipient: str,
         **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": new_id(), "event": event, "status": event,
                           "timestamp": iso(time), "time": round(time, 3),
                           "queue_id": queue_id, "sender": sender, "recipient": recipient,
                           "message_id": None, "code": None, "enhanced_code": None,
                           "reply": None, "upstream": None, "transport": None,
                           "attempt": 0, "received_at": None, "credential": None,
                           "user": None}
    doc.update(fields)
    doc["enhanced_code"] = enhanced_code(doc["reply"])
    return doc


def accepted(envelope: Envelope) -> list[dict[str, Any]]:
    """A committed message: one ``accepted`` document per recipient."""
    return [base("accepted", envelope.received_at, envelope.queue_id, envelope.sender,
                 r.address, message_id=envelope.extra.get("message_id"), code=250,
                 reply=f"250 2.0.0 Ok: queued as {envelope.queue_id}",
                 received_at=iso(envelope.received_at), credential=envelope.credential,
                 user=envelope.extra.get("user"))
            for r in envelope.recipients]


def from_manager(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One outcome group of the relay manager: a document per recipient ([] for events that
    are not for webhooks)."""
    name = MANAGER_EVENTS.get(event.get("event", ""))
    if name is None:
        return []
    received = event.get("received_at")
    return [base(name, event["time"], event["queue_id"], event["sender"], rcpt,
                 message_id=event.get("message_id"), code=event.get("code"),
                 reply=event.get("reply"), upstream=event.get("relay"),
                 transport=event.get("transport"), attempt=event.get("attempt") or 0,
                 received_at=iso(received) if received else None,
                 credential=event.get("credential"), user=event.get("user"),
                 delay=event.get("delay"))
            for rcpt in event["recipients"]]


def suppressed(time: float, sender: str, recipient: str, credential: str | None,
               reply: str, queue_id: str = "") -> dict[str, Any]:
    """A recipient refused at RCPT because it is on the suppression list."""
    return base("suppressed", time, queue_id, sender, recipient, code=550, reply=reply,
                credential=credential)
