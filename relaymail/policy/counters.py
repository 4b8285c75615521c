"""Expiring counters behind rate limits, quotas and AUTH lockouts; the in-memory backend.

A backend offers a few atomic operations, each answering a Deferred, so the Redis backend
(shared by several instances) is a drop-in replacement:

* ``reserve(buckets, amount)``: add ``amount`` to every bucket if none would pass its limit;
  otherwise change nothing and answer the index of the first full bucket (-1: reserved);
* ``release(keys, amount)``: give back a reservation whose message was not accepted;
* ``incr(key, ttl)``, ``get(key)``, ``put(key, value, ttl)``, ``ttl(key)``, ``delete(key)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed

SWEEP_INTERVAL = 60.0


@dataclass(frozen=True)
class Bucket:
    """One counter with its limit; the key expires ``ttl`` seconds after first use."""

    key: str
    limit: int
    ttl: float


class Counters(Protocol):
    def reserve(self, buckets: Sequence[Bucket], amount: int) -> Deferred: ...
    def release(self, keys: Sequence[str], amount: int) -> Deferred: ...
    def incr(self, key: str, ttl: float) -> Deferred: ...
    def get(self, key: str) -> Deferred: ...
    def put(self, key: str, value: int, ttl: float) -> Deferred: ...
    def ttl(self, key: str) -> Deferred: ...
    def delete(self, key: str) -> Deferred: ...
    def close(self) -> Deferred: ...


class MemoryCounters:
    """Counters in this process.  Expired keys are swept once a minute, so the table holds
    only live windows: it cannot grow without bound however many senders pass."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._values: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._next_sweep = clock() + SWEEP_INTERVAL

    def __len__(self) -> int:
        return len(self._values)

    def _value(self, key: str) -> int:
        item = self._values.get(key)
        if item is None or item[1] <= self.clock():
            return 0
        return item[0]

    def _add(self, key: str, amount: int, ttl: float) -> int:
        now = self.clock()
        item = self._values.get(key)
        if item is None or item[1] <= now:
            item = (0, now + ttl)
        value = item[0] + amount
        self._values[key] = (value, item[1])
        self._maybe_sweep(now)
        return value

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]

    def reserve(self, buckets: Sequence[Bucket], amount: int) -> Deferred:
        for i, bucket in enumerate(buckets):
            if self._value(bucket.key) + amount > bucket.limit:
                return succeed(i)
        for bucket in buckets:
            self._add(bucket.key, amount, bucket.ttl)
        return succeed(-1)

    def release(self, keys: Sequence[str], amount: int) -> Deferred:
        for key in keys:
            item = self._values.get(key)
            if item is not None:
                self._values[key] = (max(0, item[0] - amount), item[1])
        return succeed(None)

    def incr(self, key: str, ttl: float) -> Deferred:
        return succeed(self._add(key, 1, ttl))

    def get(self, key: str) -> Deferred:
        return succeed(self._value(key))

    def put(self, key: str, value: int, ttl: float) -> Deferred:
        self._values[key] = (value, self.clock() + ttl)
        return succeed(None)

    def ttl(self, key: str) -> Deferred:
        """Seconds until ``key`` expires; 0 when it does not exist."""
        item = self._values.get(key)
        return succeed(max(0.0, item[1] - self.clock()) if item else 0.0)

    def delete(self, key: str) -> Deferred:
        self._values.pop(key, None)
        return succeed(None)

    def close(self) -> Deferred:
        return succeed(None)
