"""Per-upstream health: a circuit breaker and the counters the console shows.

After ``threshold`` session failures in a row (connect, greeting, TLS, AUTH, a connection
lost mid-transaction; never a recipient's reply) an upstream is marked down for a
cool-down that doubles on each further failure (up to ``max_cooldown``); when it runs out,
the next delivery is the probe.  One working session closes the breaker and clears the
last error (its time stays in ``last_failure``).

``state`` is what the console shows: ``down`` from the first failed session on (the
breaker may still be closed: the next delivery tries again), ``up`` once a session worked
since, ``unknown`` before any session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class UpstreamHealth:
    label: str
    consecutive_failures: int = 0
    down_until: float = 0.0
    cooldown: float = 0.0
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    messages_relayed: int = 0
    sessions_opened: int = 0
    answered: bool = False  # a session worked, its replies were recipients' refusals

    def state(self) -> str:
        if self.consecutive_failures:
            return "down"
        return "up" if self.last_success is not None or self.answered else "unknown"

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "upstream": self.label,
            "state": self.state(),
            "reachable": self.down_until <= now and self.consecutive_failures == 0,
            "down": self.down_until > now,
            "down_until": self.down_until if self.down_until > now else None,
            "consecutive_failures": self.consecutive_failures,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "last_error": self.last_error,
            "messages_relayed": self.messages_relayed,
            "sessions_opened": self.sessions_opened,
        }


class HealthBoard:
    """All upstreams' health, keyed by label."""

    def __init__(self, clock: Callable[[], float], threshold: int = 3,
                 base_cooldown: float = 30.0, max_cooldown: float = 300.0) -> None:
        self.clock = clock
        self.threshold = threshold
        self.base_cooldown = base_cooldown
        self.max_cooldown = max_cooldown
        self.upstreams: dict[str, UpstreamHealth] = {}

    def get(self, label: str) -> UpstreamHealth:
        health = self.upstreams.get(label)
        if health is None:
            health = self.upstreams[label] = UpstreamHealth(label)
        return health

    def available(self, label: str) -> bool:
        return self.get(label).down_until <= self.clock()

    def succeeded(self, label: str, messages: int = 0) -> None:
        health = self.get(label)
        health.consecutive_failures = 0
        health.down_until = 0.0
        health.cooldown = 0.0
        health.last_success = self.clock()
        health.last_error = None
        health.messages_relayed += messages

    def answered(self, label: str) -> None:
        """A session worked (its replies were recipients' 4xx/5xx): the server is alive."""
        health = self.get(label)
        health.consecutive_failures = 0
        health.down_until = 0.0
        health.cooldown = 0.0
        health.last_error = None
        health.answered = True

    def failed(self, label: str, error: str) -> bool:
        """Count a failure; True when this one opened the breaker."""
        health = self.get(label)
        now = self.clock()
        health.consecutive_failures += 1
        health.last_failure = now
        health.last_error = error
        if health.consecutive_failures < self.threshold:
            return False
        health.cooldown = min(self.max_cooldown, health.cooldown * 2 or self.base_cooldown)
        health.down_until = now + health.cooldown
        return True

    def snapshot(self) -> list[dict[str, object]]:
        now = self.clock()
        return [h.as_dict(now) for h in self.upstreams.values()]
