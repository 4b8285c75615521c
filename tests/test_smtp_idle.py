"""The shared idle sweeper (relaymail.smtp.idle): each session times out within one tick
of its own deadline, activity postpones it, a disabled timeout never fires, one failing
session does not stop the others, and no timer is left when nobody waits."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relaymail.smtp.idle import MAX_TICK, IdleSweeper, tick_for


class FakeSession:
    def __init__(self, sweeper: IdleSweeper, clock: Clock, timeout: float) -> None:
        self.sweeper, self.clock, self.timeout = sweeper, clock, timeout
        self._idle_deadline: float | None = None
        self.timed_out_at: float | None = None

    def arm(self) -> None:  # as WireProtocol.setTimeout does
        self._idle_deadline = self.clock.seconds() + self.timeout
        self.sweeper.watch(self.clock.callLater, self.timeout)

    def timeoutConnection(self) -> None:
        self.timed_out_at = self.clock.seconds()


class IdleSweeperTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions: set[Any] = set()
        self.sweeper = IdleSweeper(self.sessions, self.clock.seconds)

    def session(self, timeout: float = 30) -> FakeSession:
        s = FakeSession(self.sweeper, self.clock, timeout)
        self.sessions.add(s)
        s.arm()
        return s

    def test_each_session_times_out_within_a_tick_of_its_deadline(self) -> None:
        first = self.session()
        self.clock.advance(10)
        second = self.session()
        self.clock.advance(19.5)
        self.assertIsNone(first.timed_out_at)
        self.clock.advance(MAX_TICK + 0.01)
        self.assertIsNotNone(first.timed_out_at)
        assert first.timed_out_at is not None
        self.assertLessEqual(first.timed_out_at - 30, MAX_TICK)
        self.assertIsNone(second.timed_out_at)
        self.clock.advance(10 + MAX_TICK)
        self.assertIsNotNone(second.timed_out_at)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nobody waits: no timer

    def test_activity_postpones_and_a_disabled_timeout_never_fires(self) -> None:
        busy, waiting = self.session(), self.session()
        waiting._idle_deadline = None  # setTimeout(None): a reply is being waited for
        for _ in range(10):
            self.clock.advance(20)
            busy.arm()  # a line came in (resetTimeout)
        self.assertIsNone(busy.timed_out_at)
        self.assertIsNone(waiting.timed_out_at)
        self.clock.advance(31 + MAX_TICK)
        self.assertIsNotNone(busy.timed_out_at)
        self.assertIsNone(waiting.timed_out_at)

    def test_short_timeouts_are_swept_often_enough(self) -> None:
        self.session(timeout=30)
        short = self.session(timeout=0.5)
        self.assertEqual(tick_for(0.5), 0.05)
        self.clock.advance(0.56)
        self.assertIsNotNone(short.timed_out_at)

    def test_a_failing_session_does_not_stop_the_sweep(self) -> None:
        bad, good = self.session(), self.session()

        def explode() -> None:
            raise RuntimeError("boom")

        bad.timeoutConnection = explode  # type: ignore[method-assign]
        self.clock.advance(31 + MAX_TICK)
        self.assertIsNotNone(good.timed_out_at)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_the_last_session_gone_leaves_no_timer(self) -> None:
        s = self.session()
        self.sessions.discard(s)
        self.sweeper.session_gone()
        self.assertEqual(self.clock.getDelayedCalls(), [])
