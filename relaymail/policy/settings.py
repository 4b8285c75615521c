"""The ``rate_limits`` config section: limits, counting mode, backend, AUTH lockouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relaymail.config import IPNetwork, _Check

SCOPES = ("per_sender", "per_credential", "per_ip", "global")
WINDOWS = {"hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Quota:
    """At most ``hour`` / ``day`` units (None: unlimited) in each fixed UTC window."""

    hour: int | None = None
    day: int | None = None

    def items(self) -> list[tuple[str, int]]:
        return [(w, n) for w, n in (("hour", self.hour), ("day", self.day)) if n is not None]


@dataclass(frozen=True)
class AuthLockoutConfig:
    max_failures: int  # 0 disables lockouts
    window: float
    lockout: float
    max_lockout: float


@dataclass(frozen=True)
class RateLimitConfig:
    backend: str
    quotas: dict[str, Quota]  # scope -> quota, for the scopes that are configured
    count: str  # "messages" or "recipients"
    exempt_networks: tuple[IPNetwork, ...]
    on_backend_error: str  # "allow" (fail open) or "defer" (451)
    backend_timeout: float
    auth_failures: AuthLockoutConfig


def validate_quota(c: _Check, value: Any, key: str) -> Quota | None:
    if value is None:
        return None
    d = c.obj(value, key, set(WINDOWS))
    limits = {w: None if d.get(w) is None else c.integer(d[w], f"{key}.{w}", 1)
              for w in WINDOWS}
    return Quota(**limits) if any(v is not None for v in limits.values()) else None


def validate_backend(c: _Check, value: Any) -> str:
    text = c.string(value, "rate_limits.backend")
    if text != "memory" and not text.startswith(("redis://", "rediss://", "unix://")):
        raise c.fail("rate_limits.backend", "expected \"memory\" or a URL like "
                     "redis://127.0.0.1:6379/0", value)
    return text


def validate_rate_limits(c: _Check, d: dict[str, Any]) -> RateLimitConfig:
    """``d`` is the section merged over its defaults (config.DEFAULTS["rate_limits"])."""
    auth = d["auth_failures"]
    quotas = {scope: q for scope in SCOPES
              if (q := validate_quota(c, d[scope], f"rate_limits.{scope}")) is not None}
    return RateLimitConfig(
        backend=validate_backend(c, d["backend"]),
        quotas=quotas,
        count=c.choice(d["count"], "rate_limits.count", ("messages", "recipients")),
        exempt_networks=c.networks(d["exempt_networks"], "rate_limits.exempt_networks"),
        on_backend_error=c.choice(d["on_backend_error"], "rate_limits.on_backend_error",
                                  ("allow", "defer")),
        backend_timeout=c.number(d["backend_timeout"], "rate_limits.backend_timeout", 0.05),
        auth_failures=AuthLockoutConfig(
            max_failures=c.integer(auth["max_failures"], "rate_limits.auth_failures."
                                   "max_failures"),
            window=c.number(auth["window"], "rate_limits.auth_failures.window", 1),
            lockout=c.number(auth["lockout"], "rate_limits.auth_failures.lockout", 1),
            max_lockout=c.number(auth["max_lockout"], "rate_limits.auth_failures.max_lockout",
                                 1),
        ),
    )
