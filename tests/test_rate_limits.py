"""Rate limits, quotas and AUTH lockouts on task.Clock: exact boundaries, reply texts,
all-or-nothing reservations, release, exemptions, backend failure modes, bounded memory."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relaymail.common.replies import Reply
from relaymail.config import load_config
from relaymail.credentials import Credential
from relaymail.policy.counters import MemoryCounters
from relaymail.policy.limits import RateLimiter, Reservation, Who
from relaymail.policy.lockout import AuthLockout
from relaymail.policy.settings import RateLimitConfig

HOUR_START = 1_795_338_000  # 2026-11-22 09:00:00 UTC, a whole hour


def settings(**section: Any) -> RateLimitConfig:
    d = tempfile.mkdtemp()
    path = os.path.join(d, "relay.json")
    with open(path, "w") as f:
        json.dump({"rate_limits": section}, f)
    return load_config(path, environ={}).rate_limits


def result(d: Deferred) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


class Harness:
    def __init__(self, counters: Any = None, **section: Any) -> None:
        self.clock = Clock()
        self.clock.advance(HOUR_START)
        self.counters = MemoryCounters(self.clock.seconds) if counters is None else counters
        self.limiter = RateLimiter(settings(**section), self.counters, self.clock.seconds,
                                   self.clock)

    def take(self, sender: str = "a@x.test", ip: str = "192.0.2.1",
             credential: Credential | None = None) -> Reservation | Reply:
        return result(self.limiter.reserve(Who(ip, credential, sender)))


class LimitTests(TestCase):
    def test_per_sender_hour_boundary_and_reset_at_the_window_end(self) -> None:
        h = Harness(per_sender={"hour": 3})
        h.clock.advance(59 * 60)
        for _ in range(3):
            self.assertIsInstance(h.take(), Reservation)
        refused = h.take()
        self.assertEqual(str(refused), "451 4.7.1 Hourly limit of 3 messages for sender "
                                       "<a@x.test> reached; try again after 10:00 UTC")
        self.assertIsInstance(h.take("other@x.test"), Reservation)  # per sender
        h.clock.advance(59.999)
        self.assertIsInstance(h.take(), Reply)
        h.clock.advance(0.001)  # 10:00:00 exactly: a new window
        self.assertIsInstance(h.take(), Reservation)

    def test_credential_quota_own_then_default_and_daily_text(self) -> None:
        h = Harness(per_credential={"day": 1})
        own = Credential("shop", "hash", hourly_quota=2)
        self.assertIsInstance(h.take(credential=own), Reservation)
        self.assertIsInstance(h.take(credential=own), Reservation)
        self.assertEqual(str(h.take(credential=own)),
                         "451 4.7.1 Hourly quota of 2 messages for login shop reached; try "
                         "again after 10:00 UTC")
        default = Credential("app", "hash")
        self.assertIsInstance(h.take(credential=default), Reservation)
        self.assertEqual(str(h.take(credential=default)),
                         "451 4.7.1 Daily quota of 1 messages for login app reached; try "
                         "again after 2026-11-23 00:00 UTC")

    def test_reservation_is_all_or_nothing_and_release_gives_back(self) -> None:
        h = Harness(per_sender={"hour": 2}, **{"global": {"hour": 4}})
        first = h.take("a@x.test")
        h.take("a@x.test")
        self.assertIn("for sender <a@x.test>", str(h.take("a@x.test")))
        # the refused attempt did not count against the global limit: b may send 2
        self.assertIsInstance(h.take("b@x.test"), Reservation)
        self.assertIsInstance(h.take("b@x.test"), Reservation)
        self.assertEqual(str(h.take("c@x.test")), "451 4.7.1 Hourly relay-wide limit of 4 "
                                                  "messages reached; try again after 10:00 UTC")
        h.limiter.release(first)
        self.assertIsInstance(h.take("c@x.test"), Reservation)
        self.assertEqual(h.limiter.stats["refused.global"], 1)

    def test_per_ip_counts_recipients_and_exempt_networks_skip_limits(self) -> None:
        h = Harness(per_ip={"hour": 1}, count="recipients", exempt_networks=["10.0.0.0/8"])
        self.assertIsInstance(h.take(ip="192.0.2.7"), Reservation)
        self.assertEqual(str(h.take(ip="192.0.2.7")), "451 4.7.1 Hourly limit of 1 recipients "
                                                      "for client 192.0.2.7 reached; try again "
                                                      "after 10:00 UTC")
        for _ in range(5):
            self.assertIsInstance(h.take(ip="10.1.2.3"), Reservation)

    def test_null_sender_is_not_counted_per_sender(self) -> None:
        h = Harness(per_sender={"hour": 1})
        for _ in range(3):
            self.assertEqual(h.take(sender="").keys, [])

    def test_backend_that_never_answers_times_out_to_the_configured_mode(self) -> None:
        class Silent(MemoryCounters):
            def reserve(self, buckets: Any, amount: int) -> Deferred:
                return Deferred()

        for mode, expected in (("allow", Reservation()),
                               ("defer", "451 4.3.0 Rate limit service unavailable")):
            h = Harness(Silent(lambda: 0), per_sender={"hour": 5}, on_backend_error=mode,
                        backend_timeout=0.5)
            d = h.limiter.reserve(Who("192.0.2.1", None, "a@x.test"))
            self.assertFalse(d.called)
            h.clock.advance(0.5)
            answer = result(d)
            if mode == "allow":
                self.assertEqual(answer, expected)
            else:
                self.assertTrue(str(answer).startswith(expected))
            self.assertEqual(h.limiter.stats["backend_errors"], 1)

    def test_memory_counters_forget_expired_windows(self) -> None:
        h = Harness(per_sender={"hour": 5})
        for i in range(1000):
            h.take(f"s{i}@x.test")
        self.assertEqual(len(h.counters), 1000)
        h.clock.advance(3600 + 61)
        h.take("late@x.test")
        self.assertEqual(len(h.counters), 1)

    def test_may_count_is_false_only_where_a_reservation_takes_nothing(self) -> None:
        """Sessions skip the reservation when ``may_count`` says no: that must never skip
        a quota that would have applied."""
        login = Credential("shop", "hash", hourly_quota=2)
        plain_login = Credential("app", "hash")
        for section in ({}, {"per_ip": {"hour": 9}}, {"global": {"day": 9}},
                        {"per_sender": {"hour": 9}}, {"per_credential": {"hour": 9}}):
            h = Harness(**section)
            for credential in (None, login, plain_login):
                taken = h.take(credential=credential)
                assert isinstance(taken, Reservation)
                if not h.limiter.may_count(credential):
                    self.assertEqual(taken.keys, [], (section, credential))
                self.assertEqual(h.limiter.may_count(credential),
                                 bool(section) or credential is not None)
        self.assertTrue(Harness(per_ip={"hour": 1}).take(ip="192.0.2.9").keys)


class LockoutCase(TestCase):
    """A lockout allowing 3 failures in 10 minutes, 60 s locks up to 150 s, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = MemoryCounters(self.clock.seconds)
        config = settings(auth_failures={"max_failures": 3, "window": 600, "lockout": 60,
                                         "max_lockout": 150}).auth_failures
        self.lockout = AuthLockout(config, self.counters, self.clock, 1.0, fail_open=True)

    def locked(self, kind: str, subject: str) -> float:
        return result(self.lockout.locked_for(kind, subject))

    def fail(self, times: int, ip: str = "192.0.2.1", user: str = "App1") -> None:
        for _ in range(times):
            result(self.lockout.failed(ip, user))


class LockoutTests(LockoutCase):
    def test_lockout_after_max_failures_grows_and_is_capped(self) -> None:
        self.fail(2)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 0)
        self.fail(1)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 60)
        self.assertEqual(self.locked("pair", "app1|192.0.2.1"), 60)  # usernames fold case
        self.clock.advance(60)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 0)
        self.fail(3)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 120)
        self.clock.advance(120)
        self.fail(3)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 150)  # 240 capped at max_lockout
        self.assertEqual(self.lockout.stats["lockouts.ip"], 3)

    def test_failures_outside_the_window_do_not_add_up(self) -> None:
        self.fail(2)
        self.clock.advance(601)
        self.fail(2)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 0)

    def test_success_clears_the_login_count_but_not_the_address(self) -> None:
        self.fail(2)
        self.lockout.succeeded("app1")
        self.fail(1, user="other")
        self.assertEqual(self.locked("ip", "192.0.2.1"), 60)
        self.assertEqual(self.locked("user", "app1"), 0)


class AttemptTests(LockoutCase):
    """M2: attempts are counted before the check, IPv6 counts by /64, and a login is slowed,
    not locked, by failures from elsewhere."""

    def attempt(self, ip: str = "192.0.2.1", user: str = "app1") -> Any:
        return result(self.lockout.attempt(ip, user))

    def test_attempts_racing_each_other_are_refused_past_the_limit(self) -> None:
        attempts = [self.attempt() for _ in range(20)]  # none has failed yet
        allowed = [a for a in attempts if a.locked == 0]
        self.assertEqual(len(allowed), 3)
        self.assertEqual(self.locked("ip", "192.0.2.1"), 60)

    def test_ipv6_addresses_count_by_their_64(self) -> None:
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
            result(self.lockout.attempt_failed(self.attempt(host)))
        self.assertEqual(self.locked("ip", "2001:db8:1:2:abcd::9"), 60)
        self.assertEqual(self.locked("ip", "2001:db8:1:3::1"), 0)  # another /64

    def test_failures_from_elsewhere_delay_the_owner_but_never_lock_them_out(self) -> None:
        for i in range(5):
            result(self.lockout.attempt_failed(self.attempt(f"198.51.100.{i}")))
        owner = self.attempt("192.0.2.9")
        self.assertEqual(owner.locked, 0)
        self.assertEqual(owner.delay, 4.0)  # 6th attempt at a login allowing 3: 1, 2, 4 s
        self.lockout.attempt_succeeded(owner)
        self.assertEqual(self.attempt("192.0.2.9").delay, 0)  # the owner's login cleared it


def test_policy_snapshot_shows_counters_and_never_the_backend_url() -> None:
    from relaymail.policy.build import build_policy

    clock = Clock()
    config = settings(backend="redis://:hunter2@127.0.0.1:1/0", per_ip={"hour": 1})
    policy = build_policy(config, clock)
    try:
        snapshot = policy.snapshot()
        assert snapshot == {"backend": "redis", "rate_limits": {}, "auth_lockouts": {}}
        assert "hunter2" not in repr(snapshot)
    finally:
        policy.counters.close()
    memory = build_policy(settings(per_ip={"hour": 1}), clock)
    for _ in range(2):
        result(memory.limits.reserve(Who("192.0.2.1", None, "a@x.test")))
    assert memory.snapshot()["rate_limits"] == {"refused.per_ip": 1}
