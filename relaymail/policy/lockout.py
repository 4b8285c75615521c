"""Brute-force protection for AUTH (and the console login): lockouts and growing delays.

Every attempt is counted *before* its password is checked, with one atomic increment per
counter, so twenty guesses sent at once cannot all be checked when five are allowed.  Three
counters, each over ``window`` seconds:

* per client network (an IPv4 address, or an IPv6 /64: one host owns a /64, and rotating
  through it must not buy more tries): after ``max_failures`` the network is locked for
  ``lockout`` seconds, doubling with each further lockout within a day up to
  ``max_lockout``; a locked network is hung up on;
* per login *and* network: the same, so guessing one login from one place stops, while the
  login's owner, elsewhere, can still log in (a hard per-login lock would let any stranger
  lock out a known user with five bad passwords);
* per login, across networks: past ``max_failures`` each further attempt waits 1, 2, 4 ...
  seconds (at most ``MAX_DELAY``) before its password is checked, which slows guessing from
  many addresses without ever locking the owner out.

A good login gives back its own attempt and clears its login's counters; the network's
other failures stay (one valid login must not let a client keep guessing others').  The
counters live in the rate-limit backend, so with Redis every instance sees the same.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from relaymail.logs import Logger, printable
from relaymail.policy.counters import Counters
from relaymail.policy.settings import AuthLockoutConfig

log = Logger(namespace="relaymail.policy")

LEVEL_MEMORY = 86400.0  # lockouts within a day of each other grow longer
MAX_DELAY = 30.0


def network_of(ip: str) -> str:
    """The unit an address is counted in: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True)
class Attempt:
    """One counted attempt: whom it counted against, and what it may do now."""

    network: str
    user: str
    counts: tuple[int, int, int]  # network, login+network, login
    locked: float = 0.0  # > 0: refused without checking, for this many seconds
    delay: float = 0.0  # wait this long before checking the password


class AuthLockout:
    """Counts AUTH attempts per network, per login and network, and per login."""

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

    def key(self, what: str, kind: str, subject: str) -> str:
        return f"{self.scope}:{what}:{kind}:{subject}"

    def locked_for(self, kind: str, subject: str) -> Deferred:
        """Seconds the address ("ip": counted by its network) or login ("user") stays
        locked; 0 when it is not."""
        if not self.enabled:
            return succeed(0.0)
        if kind == "ip":
            subject = network_of(subject)
        d = self.counters.ttl(self.key("lock", kind, subject))
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._backend_failed)

    def _backend_failed(self, failure: Failure) -> float:
        self.stats["backend_errors"] += 1
        log.warn("auth lockout backend failed ({error}); {action}",
                 error=failure.getErrorMessage() or type(failure.value).__name__,
                 action="not locking" if self.fail_open else "refusing AUTH for now")
        return 0.0 if self.fail_open else 60.0

    # ------------------------------------------------------------------ attempts

    def attempt(self, ip: str, username: str) -> Deferred:
        """Count an attempt before its password is checked; fires with an Attempt."""
        network, user = network_of(ip), username.lower()
        if not self.enabled:
            return succeed(Attempt(network, user, (0, 0, 0)))
        window = self.config.window
        d = gatherResults([
            self.counters.incr(self.key("fail", "ip", network), window),
            self.counters.incr(self.key("fail", "pair", f"{user}|{network}"), window),
            self.counters.incr(self.key("fail", "user", user), window),
            self.counters.ttl(self.key("lock", "pair", f"{user}|{network}")),
        ], consumeErrors=True)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallback(lambda r: self._judge(network, user, (r[0], r[1], r[2]), r[3]))
        return d.addErrback(lambda f: Attempt(network, user, (0, 0, 0),
                                              locked=self._backend_failed(f)))

    def _judge(self, network: str, user: str, counts: tuple[int, int, int],
               pair_locked: float) -> Deferred | Attempt:
        limit = self.config.max_failures
        attempt = Attempt(network, user, counts)
        if pair_locked > 0:
            return Attempt(network, user, counts, locked=pair_locked)
        if counts[0] > limit or counts[1] > limit:  # over the limit, even if racing
            return self._lock_over(attempt)
        over = counts[2] - limit
        delay = min(MAX_DELAY, 2.0 ** (over - 1)) if over > 0 else 0.0
        return Attempt(network, user, counts, delay=delay)

    def _lock_over(self, attempt: Attempt) -> Deferred:
        limit = self.config.max_failures
        pending = []
        if attempt.counts[0] > limit:
            pending.append(self._lock("ip", attempt.network))
        if attempt.counts[1] > limit:
            pending.append(self._lock("pair", f"{attempt.user}|{attempt.network}"))
        d = gatherResults(pending, consumeErrors=True)
        return d.addCallback(lambda seconds: Attempt(attempt.network, attempt.user,
                                                     attempt.counts, locked=max(seconds)))

    def wait(self, attempt: Attempt) -> Deferred:
        """Fires once the attempt's progressive delay is over."""
        if attempt.delay <= 0:
            return succeed(None)
        self.stats["delayed"] += 1
        return deferLater(self.reactor, attempt.delay, lambda: None)

    def attempt_failed(self, attempt: Attempt) -> Deferred:
        """The password was wrong: lock now if this was the last failure allowed, so the
        next attempt already finds the lock."""
        limit = self.config.max_failures
        if not self.enabled or (attempt.counts[0] < limit and attempt.counts[1] < limit):
            return succeed(None)
        pending = []
        if attempt.counts[0] >= limit:
            pending.append(self._lock("ip", attempt.network))
        if attempt.counts[1] >= limit:
            pending.append(self._lock("pair", f"{attempt.user}|{attempt.network}"))
        d = gatherResults(pending, consumeErrors=True)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._backend_failed)

    def attempt_succeeded(self, attempt: Attempt) -> None:
        """Give the network its attempt back; clear the login's own counters."""
        if not self.enabled:
            return
        keys = [self.key("fail", "pair", f"{attempt.user}|{attempt.network}"),
                self.key("fail", "user", attempt.user)]
        for key in keys:
            self.counters.delete(key).addErrback(lambda f: None)
        self.counters.release([self.key("fail", "ip", attempt.network)], 1) \
            .addErrback(lambda f: None)

    def _lock(self, kind: str, subject: str) -> Deferred:
        """Lock ``subject`` (longer each time within a day); fires with the seconds."""
        d = self.counters.incr(self.key("level", kind, subject), LEVEL_MEMORY)

        def lock(level: int) -> Deferred:
            seconds = min(self.config.lockout * 2 ** (level - 1), self.config.max_lockout)
            self.stats[f"lockouts.{'user' if kind == 'pair' else kind}"] += 1
            log.warn("auth lockout: {kind} {subject} locked for {seconds:.0f} s after "
                     "{failures} failures (lockout #{count})", kind=kind,
                     subject=printable(subject), seconds=seconds,
                     failures=self.config.max_failures, count=level)
            return gatherResults([
                self.counters.put(self.key("lock", kind, subject), 1, seconds),
                self.counters.delete(self.key("fail", kind, subject)),
            ], consumeErrors=True).addCallback(lambda _: seconds)

        return d.addCallback(lock)

    # ------------------------------------------------------------------ older callers

    def failed(self, ip: str, username: str) -> Deferred:
        """Count one failure after the fact (for callers that do not count attempts)."""
        d = self.attempt(ip, username)
        return d.addCallback(lambda a: None if a.locked else self.attempt_failed(a))

    def succeeded(self, username: str) -> None:
        """A good login clears that login's count (for callers without an Attempt)."""
        if self.enabled:
            key = self.key("fail", "user", username.lower())
            self.counters.delete(key).addErrback(lambda f: None)
