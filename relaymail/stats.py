"""Counters of what the relay did since it started: fed by the spool (accepted messages), the
SMTP sessions (refusals by reply code) and the relay manager's delivery events; read by
``/health`` and ``/metrics``."""

from __future__ import annotations

import bisect
from collections import Counter, deque
from typing import Any

from relaymail.spool.envelope import Envelope

# Accept-to-delivered seconds: a relay to a provider takes 0.05 s to minutes (retries).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14400)
# /health is "degraded" when the latest delivery attempts all failed (deferred or bounced):
# at least RECENT_MINIMUM recipients within RECENT_WINDOW seconds, none delivered since.
RECENT_WINDOW = 600.0
RECENT_MINIMUM = 3


class RelayStats:
    """In-memory counters; cheap enough to update on every message and reply."""

    def __init__(self) -> None:
        self.messages_received = 0
        self.recipients_received = 0
        self.refusals: Counter[tuple[int, str]] = Counter()  # (code, enhanced status)
        self.deliveries: Counter[tuple[str, str]] = Counter()  # (transport, result)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last: +Inf
        self.latency_sum = 0.0
        # (time, recipients sent, recipients not sent) of the latest outcome groups
        self.recent: deque[tuple[float, int, int]] = deque(maxlen=1000)

    def accepted(self, envelope: Envelope) -> None:
        """A spool commit listener: one message is safely queued."""
        self.messages_received += 1
        self.recipients_received += len(envelope.recipients)

    def refused(self, code: int, enhanced: str) -> None:
        self.refusals[(code, enhanced)] += 1

    def delivery_event(self, event: dict[str, Any]) -> None:
        """A relay manager observer: one outcome group of one attempt."""
        result = event["event"]  # sent, deferred or bounced
        count = len(event["recipients"])
        self.deliveries[(event.get("transport") or "none", result)] += count
        sent = count if result == "sent" else 0
        self.recent.append((float(event.get("time") or 0.0), sent, count - sent))
        if result == "sent":
            delay = float(event["delay"])
            self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, delay)] += count
            self.latency_sum += delay * count

    def total(self, result: str) -> int:
        return sum(n for (_, r), n in self.deliveries.items() if r == result)

    def success_rate(self) -> float:
        """Delivered recipients in percent of those that reached a final state."""
        sent, bounced = self.total("sent"), self.total("bounced")
        return 100.0 if sent + bounced == 0 else round(100.0 * sent / (sent + bounced), 2)

    def recent_failing(self, now: float) -> bool:
        """The latest deliveries all failed: at least RECENT_MINIMUM recipients deferred or
        bounced in the last RECENT_WINDOW seconds, none delivered since: mail is not
        getting out."""
        failed = 0
        for when, sent, not_sent in reversed(self.recent):
            if when < now - RECENT_WINDOW or sent:
                break
            failed += not_sent
        return failed >= RECENT_MINIMUM

    def average_delay_ms(self) -> float:
        sent = sum(self.latency_counts)
        return round(1000 * self.latency_sum / sent, 1) if sent else 0.0
