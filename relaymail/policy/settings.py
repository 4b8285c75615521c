"""The ``rate_limits`` config section moved to :mod:`relaymail.config.rate_limits` (the
config package imports nothing from the policy); re-exported here for existing importers."""

from relaymail.config.rate_limits import (
    SCOPES,
    WINDOWS,
    AuthLockoutConfig,
    Quota,
    RateLimitConfig,
    validate_auth_failures,
    validate_backend,
    validate_quota,
    validate_rate_limits,
)

__all__ = [
    "SCOPES", "WINDOWS", "AuthLockoutConfig", "Quota", "RateLimitConfig",
    "validate_auth_failures", "validate_backend", "validate_quota", "validate_rate_limits",
]
