"""Builds the policy objects from the ``rate_limits`` section, and a service that closes the
counter backend at shutdown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from relaymail.policy.counters import Counters, MemoryCounters
from relaymail.policy.limits import RateLimiter
from relaymail.policy.lockout import AuthLockout
from relaymail.policy.settings import RateLimitConfig


@dataclass
class Policy:
    counters: Counters
    limits: RateLimiter | None
    lockout: AuthLockout | None
    backend: str = "memory"
    web_lockout: AuthLockout | None = None  # console logins, counted apart from SMTP AUTH

    # More counters of the same shape to add in (the acceptor processes' own).
    elsewhere: list[Callable[[], dict[str, dict[str, int]]]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        """Counters for status and metrics; the backend by kind only (its URL may hold a
        password)."""
        out: dict[str, Any] = {
            "backend": "memory" if self.backend == "memory" else "redis",
            "rate_limits": dict(self.limits.stats) if self.limits else {},
            "auth_lockouts": dict(self.lockout.stats) if self.lockout else {},
        }
        for more in self.elsewhere:
            for part, totals in more().items():
                for name, n in totals.items():
                    out[part][name] = out[part].get(name, 0) + n
        return out


def build_counters(config: RateLimitConfig, reactor: Any) -> Counters:
    if config.backend == "memory":
        return MemoryCounters(reactor.seconds)
    from relaymail.policy.redis_counters import RedisCounters  # redis only when used

    return RedisCounters(config.backend, reactor, config.backend_timeout)


def build_policy(config: RateLimitConfig, reactor: Any, counters: Counters | None = None
                 ) -> Policy:
    """The policy objects; ``counters`` replaces the configured backend when given."""
    counters = counters if counters is not None else build_counters(config, reactor)
    # Always built: a login's own quota applies even with no limit in the config file.
    limits = RateLimiter(config, counters, reactor.seconds, reactor)
    lockout = web_lockout = None
    if config.auth_failures.max_failures > 0:
        fail_open = config.on_backend_error == "allow"
        lockout = AuthLockout(config.auth_failures, counters, reactor, config.backend_timeout,
                              fail_open)
        web_lockout = AuthLockout(config.auth_failures, counters, reactor,
                                  config.backend_timeout, fail_open, scope="web")
    return Policy(counters, limits, lockout, config.backend, web_lockout)


class PolicyService(Service):
    """Closes the counter backend (the Redis connection and its threads) at shutdown."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def stopService(self) -> Deferred:
        super().stopService()
        return self.policy.counters.close()
