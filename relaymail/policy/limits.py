"""Rate limits and quotas checked at MAIL/RCPT: per sender, per credential, per client IP and
relay-wide, in fixed UTC hour and day windows.

A transaction reserves its units when MAIL (or each RCPT, when counting recipients) is
accepted, all limits at once and atomically, so concurrent sessions, even on several
instances sharing Redis, never pass a limit.  A transaction that ends without a queued
message gives its reservation back: only accepted mail counts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from relaymail.common.networks import in_networks
from relaymail.common.replies import Reply
from relaymail.credentials import Credential
from relaymail.logs import Logger
from relaymail.policy.counters import Bucket, Counters
from relaymail.policy.settings import WINDOWS, Quota, RateLimitConfig

log = Logger(namespace="relaymail.policy")

BACKEND_UNAVAILABLE = Reply(451, "4.3.0", "Rate limit service unavailable; try again later")
EXPIRY_SLACK = 60.0  # keep a window's counter a minute past its end (clock skew between hosts)


@dataclass
class Reservation:
    """Units taken from some counters; given back if the message is not accepted."""

    keys: list[str] = field(default_factory=list)
    amount: int = 0


@dataclass(frozen=True)
class Who:
    """Whom a transaction is counted against."""

    ip: str
    credential: Credential | None
    sender: str


@dataclass(frozen=True)
class Check:
    bucket: Bucket
    scope: str
    window: str
    subject: str
    start: int  # the window's start (UTC seconds)


def window_start(now: float, window: str) -> int:
    length = WINDOWS[window]
    return int(now // length * length)


def reset_text(start: int, window: str) -> str:
    end = start + WINDOWS[window]
    fmt = "%H:%M UTC" if window == "hour" else "%Y-%m-%d %H:%M UTC"
    return time.strftime(fmt, time.gmtime(end))


class RateLimiter:
    """Decides whether one more message (or recipient) may be accepted."""

    def __init__(self, config: RateLimitConfig, counters: Counters, clock: Callable[[], float],
                 reactor: Any) -> None:
        self.config = config
        self.counters = counters
        self.clock = clock
        self.reactor = reactor
        self.stats: Counter[str] = Counter()

    def may_count(self, credential: Credential | None) -> bool:
        """Whether a transaction could meet any quota: without a login only the configured
        quotas apply (a login may carry its own).  When none can, the session skips the
        reservation (and its backend call) altogether."""
        return credential is not None or bool(self.config.quotas)

    def exempt(self, ip: str) -> bool:
        return in_networks(ip, self.config.exempt_networks)

    def quota_for(self, scope: str, who: Who) -> tuple[Quota | None, str]:
        """The quota of one scope for this transaction and the identity it is counted on."""
        quotas = self.config.quotas
        if scope == "per_credential":
            c = who.credential
            if c is None:
                return None, ""
            own = Quota(c.hourly_quota, c.daily_quota)
            if c.owner is not None:  # an account user set it: never above the admin's
                return tighter(own, quotas.get(scope)), c.name
            return (own if own.items() else quotas.get(scope)), c.name
        if scope == "per_user":  # an account's quota, shared by all its logins
            c = who.credential
            if c is None or c.owner is None:
                return None, ""
            # the id too: a later account with a deleted one's name counts afresh
            return Quota(c.owner_hourly_quota, c.owner_daily_quota), \
                f"{c.owner} (#{c.owner_id})"
        if scope == "per_sender":
            return (quotas.get(scope), who.sender.lower()) if who.sender else (None, "")
        if scope == "per_ip":
            return quotas.get(scope), who.ip
        return quotas.get(scope), "*"

    def checks(self, who: Who) -> list[Check]:
        now = self.clock()
        out = []
        for scope in ("per_credential", "per_user", "per_sender", "per_ip", "global"):
            quota, subject = self.quota_for(scope, who)
            for window, limit in quota.items() if quota else ():
                start = window_start(now, window)
                ttl = start + WINDOWS[window] - now + EXPIRY_SLACK
                key = f"rl:{scope}:{subject}:{window}:{start}"
                out.append(Check(Bucket(key, limit, ttl), scope, window, subject, start))
        return out

    def reserve(self, who: Who, amount: int = 1) -> Deferred:
        """Fires with a Reservation, or with the Reply refusing the message or recipient."""
        checks = [] if self.exempt(who.ip) else self.checks(who)
        if not checks:
            return succeed(Reservation())
        d = self.counters.reserve([c.bucket for c in checks], amount)
        d.addTimeout(self.config.backend_timeout, self.reactor)
        d.addCallbacks(lambda index: self._answer(checks, index, amount),
                       self._backend_failed)
        return d

    def _answer(self, checks: list[Check], index: int, amount: int) -> Reservation | Reply:
        if index < 0:
            return Reservation([c.bucket.key for c in checks], amount)
        check = checks[index]
        self.stats[f"refused.{check.scope}"] += 1
        reply = refusal(check, self.config.count)
        log.info("rate limit: {scope} {window} limit {limit} reached for {subject}",
                 scope=check.scope, window=check.window, limit=check.bucket.limit,
                 subject=check.subject)
        return reply

    def _backend_failed(self, failure: Failure) -> Reservation | Reply:
        self.stats["backend_errors"] += 1
        allow = self.config.on_backend_error == "allow"
        log.warn("rate limit backend failed ({error}); {action}",
                 error=failure.getErrorMessage() or type(failure.value).__name__,
                 action="accepting without limits" if allow else "deferring mail")
        return Reservation() if allow else BACKEND_UNAVAILABLE

    def release(self, reservation: Reservation) -> None:
        """Give back what a transaction that queued nothing had reserved."""
        if not reservation.keys:
            return
        d = self.counters.release(reservation.keys, reservation.amount)
        d.addErrback(lambda f: log.warn("rate limit: releasing a reservation failed: {error}",
                                        error=f.getErrorMessage()))


def tighter(a: Quota, b: Quota | None) -> Quota:
    """Each window's smaller limit (None: no limit)."""
    if b is None:
        return a

    def least(x: int | None, y: int | None) -> int | None:
        return y if x is None else x if y is None else min(x, y)

    return Quota(least(a.hour, b.hour), least(a.day, b.day))


def refusal(check: Check, unit: str) -> Reply:
    """``451 4.7.1`` naming the limit that was reached and when its window resets."""
    limit = check.bucket.limit
    when = reset_text(check.start, check.window)
    period = "Hourly" if check.window == "hour" else "Daily"
    if check.scope == "per_credential":
        what = f"{period} quota of {limit} {unit} for login {check.subject} reached"
    elif check.scope == "per_user":
        what = f"{period} quota of {limit} {unit} for account {check.subject} reached"
    elif check.scope == "per_sender":
        what = f"{period} limit of {limit} {unit} for sender <{check.subject}> reached"
    elif check.scope == "per_ip":
        what = f"{period} limit of {limit} {unit} for client {check.subject} reached"
    else:
        what = f"{period} relay-wide limit of {limit} {unit} reached"
    return Reply(451, "4.7.1", f"{what}; try again after {when}")
