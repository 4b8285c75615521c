"""relaymail.common.lane.ThreadLane on the real reactor: calls run in order in one other
thread, results and errors come back on the reactor thread, the thread ends when idle and
comes back with the next call, and ``stop`` finishes what was asked."""

from __future__ import annotations

import threading
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from relaymail.common.lane import ThreadLane


class ThreadLaneTests(TestCase):
    def lane(self, idle_exit: float = 10.0) -> ThreadLane:
        lane = ThreadLane(reactor, "test-lane", idle_exit=idle_exit)
        self.addCleanup(lane.stop)
        return lane

    async def test_calls_run_in_order_in_one_other_thread(self) -> None:
        lane = self.lane()
        seen: list[tuple[int, str]] = []

        def work(n: int) -> int:
            time.sleep(0.001 * (5 - n))  # earlier calls take longer: order is by asking
            seen.append((n, threading.current_thread().name))
            return n * n

        results = [lane.run(work, n) for n in range(5)]
        fired_on: list[str] = []

        def note_thread(result: int) -> int:
            fired_on.append(threading.current_thread().name)
            return result

        results[-1].addCallback(note_thread)
        self.assertEqual([await d for d in results], [0, 1, 4, 9, 16])
        self.assertEqual([n for n, _ in seen], [0, 1, 2, 3, 4])
        self.assertEqual({name for _, name in seen}, {"test-lane"})
        self.assertEqual(fired_on, [threading.current_thread().name])  # the reactor's

    async def test_an_error_reaches_the_caller_and_the_lane_goes_on(self) -> None:
        lane = self.lane()

        def fail() -> None:
            raise OSError(28, "No space left on device")

        with self.assertRaises(OSError):
            await lane.run(fail)
        self.assertEqual(await lane.run(lambda: "still here"), "still here")

    async def test_the_thread_ends_when_idle_and_comes_back(self) -> None:
        lane = self.lane(idle_exit=0.05)
        self.assertEqual(await lane.run(lambda: 1), 1)
        self.assertTrue(lane.running)
        for _ in range(100):
            if not lane.running:
                break
            await deferLater(reactor, 0.02)
        self.assertFalse(lane.running)
        self.assertEqual(await lane.run(lambda: 2), 2)

    async def test_stop_finishes_what_was_asked(self) -> None:
        lane = self.lane()
        done: list[int] = []
        results = [lane.run(lambda n=n: (time.sleep(0.01), done.append(n))) for n in range(3)]
        lane.stop()
        self.assertEqual(done, [0, 1, 2])
        self.assertFalse(lane.running)
        for d in results:
            await d
        lane.stop()  # stopping a stopped lane is nothing
