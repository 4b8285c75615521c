"""Counters in Redis, shared by several relaymail instances (redis-py, off the reactor).

redis-py blocks, so every call runs in a small thread pool of its own: a slow or absent
Redis can then never take the threads the spool's commits need.  Each call has a socket
timeout, and the caller adds its own deadline on top, so no SMTP session waits long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from relaymail.policy.counters import Bucket

# KEYS: the buckets; ARGV: amount, then limit and ttl for each bucket.  All or nothing.
RESERVE = """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value + amount > tonumber(ARGV[2 * i]) then return i - 1 end
end
for i = 1, #KEYS do
  if redis.call('INCRBY', KEYS[i], amount) == amount then
    redis.call('PEXPIRE', KEYS[i], math.ceil(tonumber(ARGV[2 * i + 1]) * 1000))
  end
end
return -1
"""
INCR = """
local value = redis.call('INCR', KEYS[1])
if value == 1 then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000)) end
return value
"""
RELEASE = """
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value > 0 then redis.call('DECRBY', KEYS[i], math.min(value, tonumber(ARGV[1]))) end
end
return 0
"""


class RedisCounters:
    """The counter operations as Lua scripts (atomic on the server)."""

    def __init__(self, url: str, reactor: Any, timeout: float, prefix: str = "relaymail:",
                 threads: int = 4) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           health_check_interval=30)
        self.prefix = prefix
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="redis")
        self.pool.start()
        self._reserve = self.client.register_script(RESERVE)
        self._incr = self.client.register_script(INCR)
        self._release = self.client.register_script(RELEASE)

    def _run(self, f: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def _keys(self, keys: Sequence[str]) -> list[str]:
        return [self.prefix + k for k in keys]

    def reserve(self, buckets: Sequence[Bucket], amount: int) -> Deferred:
        args: list[Any] = [amount]
        for b in buckets:
            args += [b.limit, b.ttl]
        keys = self._keys([b.key for b in buckets])
        return self._run(lambda: int(self._reserve(keys=keys, args=args)))

    def release(self, keys: Sequence[str], amount: int) -> Deferred:
        names = self._keys(keys)
        return self._run(lambda: self._release(keys=names, args=[amount]))

    def incr(self, key: str, ttl: float) -> Deferred:
        return self._run(lambda: int(self._incr(keys=self._keys([key]), args=[ttl])))

    def get(self, key: str) -> Deferred:
        return self._run(lambda: int(self.client.get(self.prefix + key) or 0))

    def put(self, key: str, value: int, ttl: float) -> Deferred:
        return self._run(lambda: self.client.set(self.prefix + key, value,
                                                 px=max(1, int(ttl * 1000))))

    def ttl(self, key: str) -> Deferred:
        def remaining() -> float:
            ms = self.client.pttl(self.prefix + key)
            return max(0.0, ms / 1000) if ms and ms > 0 else 0.0
        return self._run(remaining)

    def delete(self, key: str) -> Deferred:
        return self._run(self.client.delete, self.prefix + key)

    def close(self) -> Deferred:
        """Stop the threads (each waits at most one socket timeout), then disconnect."""
        self.pool.stop()
        self.client.close()
        return succeed(None)
