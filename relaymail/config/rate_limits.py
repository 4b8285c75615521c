"""The ``rate_limits`` section: quotas per sender, login, client address and relay-wide,
the counting mode, the counters' backend, and the AUTH lockouts.  relaymail.policy applies
them (relaymail.policy.settings re-exports these names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check, IPNetwork

SCOPES = ("per_sender", "per_credential", "per_ip", "global")
WINDOWS = {"hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Quota:
    """At most ``hour`` / ``day`` units (None: unlimited) in each fixed UTC window."""

    hour: int | None = None
    day: int | None = None

    def items(self) -> list[tuple[str, int]]:
        """The windows that have a limit, as (window, limit) pairs."""
        return [(w, n) for w, n in (("hour", self.hour), ("day", self.day)) if n is not None]


@dataclass(frozen=True)
class AuthLockoutConfig:
    """``rate_limits.auth_failures``: attempts per window, then lockouts (seconds)."""

    max_failures: int  # 0 disables lockouts
    window: float
    lockout: float
    max_lockout: float


@dataclass(frozen=True)
class RateLimitConfig:
    """The ``rate_limits`` section, validated."""

    backend: str
    quotas: dict[str, Quota]  # scope -> quota, for the scopes that are configured
    count: str  # "messages" or "recipients"
    exempt_networks: tuple[IPNetwork, ...]
    on_backend_error: str  # "allow" (fail open) or "defer" (451)
    backend_timeout: float
    auth_failures: AuthLockoutConfig


def validate_quota(c: Check, value: Any, key: str) -> Quota | None:
    """``{"hour": N, "day": N}``; None when absent or when neither window has a limit."""
    if value is None:
        return None
    d = c.obj(value, key, set(WINDOWS))
    limits = {w: None if d.get(w) is None else c.integer(d[w], f"{key}.{w}", 1)
              for w in WINDOWS}
    return Quota(**limits) if any(v is not None for v in limits.values()) else None


def validate_backend(c: Check, value: Any) -> str:
    """``"memory"`` or a Redis URL (redis://, rediss://, unix://)."""
    text = c.string(value, "rate_limits.backend")
    if text != "memory" and not text.startswith(("redis://", "rediss://", "unix://")):
        raise c.fail("rate_limits.backend", "expected \"memory\" or a URL like "
                     "redis://127.0.0.1:6379/0", value)
    return text


def validate_rate_limits(c: Check, d: dict[str, Any]) -> RateLimitConfig:
    """``d`` is the section merged over its defaults (config.DEFAULTS["rate_limits"])."""
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
        auth_failures=validate_auth_failures(c, d["auth_failures"]),
    )


def validate_auth_failures(c: Check, auth: dict[str, Any]) -> AuthLockoutConfig:
    """``rate_limits.auth_failures``, merged over its defaults; ``max_failures: 0`` turns
    the lockouts off."""
    key = "rate_limits.auth_failures"
    return AuthLockoutConfig(
        max_failures=c.integer(auth["max_failures"], f"{key}.max_failures"),
        window=c.number(auth["window"], f"{key}.window", 1),
        lockout=c.number(auth["lockout"], f"{key}.lockout", 1),
        max_lockout=c.number(auth["max_lockout"], f"{key}.max_lockout", 1),
    )
