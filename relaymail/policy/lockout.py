"""Brute-force protection: repeated AUTH failures lock out a client address or a login.

After ``max_failures`` failures within ``window`` seconds, the address (or username) is
locked for ``lockout`` seconds, doubling with each further lockout within a day, up to
``max_lockout``.  The counters live in the rate-limit backend, so with Redis every instance
behind a load balancer sees the same failures and the same lockouts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from relaymail.logs import Logger
from relaymail.policy.counters import Counters
from relaymail.policy.settings import AuthLockoutConfig

log = Logger(namespace="relaymail.policy")

LEVEL_MEMORY = 86400.0  # lockouts within a day of each other grow longer


class AuthLockout:
    """Counts AUTH failures per client address and per username; answers lockouts."""

    def __init__(self, config: AuthLockoutConfig, counters: Counters, reactor: Any,
                 timeout: float, fail_open: bool, scope: str = "auth") -> None:
        self.scope = scope  # key prefix: "auth" for SMTP AUTH, "web" for the console login
        self.config = config
        self.counters = counters
        self.reactor = reactor
        self.timeout = timeout
        self.fail_open = fail_open
        self.stats: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.config.max_failures > 0

    def locked_for(self, kind: str, subject: str) -> Deferred:
        """Seconds the address ("ip") or login ("user") stays locked; 0 when it is not."""
        if not self.enabled:
            return succeed(0.0)
        d = self.counters.ttl(f"{self.scope}:lock:{kind}:{subject}")
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._backend_failed)

    def _backend_failed(self, failure: Failure) -> float:
        self.stats["backend_errors"] += 1
        log.warn("auth lockout backend failed ({error}); {action}",
                 error=failure.getErrorMessage() or failure.type.__name__,
                 action="not locking" if self.fail_open else "refusing AUTH for now")
        return 0.0 if self.fail_open else 60.0

    def failed(self, ip: str, username: str) -> Deferred:
        """Count one failure for the address and the login; lock those over the limit."""
        if not self.enabled:
            return succeed(None)
        pending = [self._count("ip", ip), self._count("user", username.lower())]
        d = gatherResults(pending, consumeErrors=True)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._backend_failed)

    def _count(self, kind: str, subject: str) -> Deferred:
        d = self.counters.incr(f"{self.scope}:fail:{kind}:{subject}", self.config.window)
        d.addCallback(lambda n: self._lock(kind, subject) if n >= self.config.max_failures
                      else None)
        return d

    def _lock(self, kind: str, subject: str) -> Deferred:
        d = self.counters.incr(f"{self.scope}:level:{kind}:{subject}", LEVEL_MEMORY)

        def lock(level: int) -> Deferred:
            seconds = min(self.config.lockout * 2 ** (level - 1), self.config.max_lockout)
            self.stats[f"lockouts.{kind}"] += 1
            log.warn("auth lockout: {kind} {subject} locked for {seconds:.0f} s after "
                     "{failures} failures (lockout #{count})", kind=kind, subject=subject,
                     seconds=seconds, failures=self.config.max_failures, count=level)
            return gatherResults([
                self.counters.put(f"{self.scope}:lock:{kind}:{subject}", 1, seconds),
                self.counters.delete(f"{self.scope}:fail:{kind}:{subject}"),
            ], consumeErrors=True)

        return d.addCallback(lock)

    def succeeded(self, username: str) -> None:
        """A good login clears that login's failure count.  The address's count stays: one
        valid login must not let the same client keep guessing others' passwords."""
        if self.enabled:
            key = f"{self.scope}:fail:user:{username.lower()}"
            self.counters.delete(key).addErrback(lambda f: None)
