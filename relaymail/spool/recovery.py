"""The queue found at startup, read behind the listeners.

With a long queue, reading every envelope takes seconds (100,000 of them: about 2 s of
file reads and JSON), and a relay that waits for that before its first banner looks down
to its clients and its load balancer.  So startup only repairs the spool from directory
listings (:meth:`Spool.repair`, which fixes the list of names), the listeners open, and
this reads the envelopes of those names in batches in a thread.  Each batch goes to the
subscribers in the reactor thread, in the order they subscribed (the archive links a
message before the relay manager may deliver and remove it).

Nothing committed after startup is in the list, so no message is announced twice by
this; a name whose file is gone by the time its batch is read (removed from the console
meanwhile) is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred

from relaymail.logs import Logger
from relaymail.spool.envelope import Envelope
from relaymail.spool.store import Spool

log = Logger(namespace="relaymail.spool")
BATCH = 1000  # envelopes per trip to the thread: ~25 ms of work, so commits queue briefly

Batch = Callable[[list[Envelope]], None]


class Recovery:
    """Reads the queued envelopes of ``names`` and hands them out in batches."""

    def __init__(self, spool: Spool, clock: Callable[[], float] = time.monotonic,
                 batch: int = BATCH) -> None:
        self.spool = spool
        self.clock = clock
        self.batch = batch
        self.subscribers: list[Batch] = []
        self.count = 0  # envelopes handed out so far
        self.seconds: float | None = None  # how long it took, once finished
        self._waiting: list[Deferred] = []

    @property
    def finished(self) -> bool:
        return self.seconds is not None

    def subscribe(self, subscriber: Batch) -> None:
        """Call ``subscriber(envelopes)`` with each batch (before :meth:`start`)."""
        self.subscribers.append(subscriber)

    def when_finished(self) -> Deferred:
        """Fires with the number of envelopes recovered once every batch is handed out."""
        d: Deferred = Deferred()
        if self.finished:
            d.callback(self.count)
        else:
            self._waiting.append(d)
        return d

    def start(self, names: Sequence[str]) -> None:
        """Begin reading (returns at once)."""
        self._next(list(names), 0, self.clock())

    def _next(self, names: list[str], offset: int, started: float) -> None:
        if offset >= len(names):
            self._finish(started)
            return
        chunk = names[offset:offset + self.batch]
        d = self.spool.run_in_thread(lambda: list(self.spool.load_named("queue", chunk)))
        d.addCallback(self._hand_out)
        d.addErrback(lambda f: log.failure("spool: reading the queued envelopes", f))
        d.addCallback(lambda _: self._next(names, offset + self.batch, started))

    def _hand_out(self, envelopes: list[Envelope]) -> None:
        self.count += len(envelopes)
        for subscriber in self.subscribers:
            try:
                subscriber(envelopes)
            except Exception:  # one subscriber's bug must not stop the others or the rest
                log.failure("spool: a subscriber of the recovered queue failed")

    def _finish(self, started: float) -> None:
        self.seconds = self.clock() - started
        log.info("spool {path}: {count} queued message(s) recovered in {seconds:.2f} s",
                 path=self.spool.root, count=self.count, seconds=self.seconds)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.count)
