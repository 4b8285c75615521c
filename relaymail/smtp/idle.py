"""One timer for the idle timeouts of every session of a process.

Twisted's TimeoutMixin gives each connection a DelayedCall of its own, re-armed at every
line: with 50,000 idle connections that is 50,000 objects (about 0.3 KB each, with their
place in the reactor's heap) for timers that almost never fire.  Here a session keeps only
the time its idle timeout runs out (``WireProtocol._idle_deadline``, a slot) and this
sweeper looks at the live sessions a few times per timeout, at most once a second: a
session times out at most one tick late (Postfix's timers are as coarse).  When no session
waits, no timer runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from relaymail.logs import Logger

log = Logger(namespace="relaymail.smtp")

MAX_TICK = 1.0  # seconds between sweeps, at most
MIN_TICK = 0.05


def tick_for(timeout: float) -> float:
    """How often to sweep for sessions whose timeout is ``timeout`` seconds."""
    return min(MAX_TICK, max(MIN_TICK, timeout / 10))


class IdleSweeper:
    """Calls ``timeoutConnection()`` of each session in ``sessions`` whose
    ``_idle_deadline`` has passed (by ``seconds``)."""

    def __init__(self, sessions: Iterable[Any], seconds: Callable[[], float]) -> None:
        self.sessions = sessions
        self.seconds = seconds
        self._call: Any = None
        self._call_later: Callable[..., Any] | None = None
        self._tick = MAX_TICK

    def watch(self, call_later: Callable[..., Any], timeout: float) -> None:
        """A session has a deadline now: make sure a sweep is coming soon enough."""
        tick = tick_for(timeout)
        if self._call is not None and tick >= self._tick:
            return
        if self._call is not None:
            self._call.cancel()
        self._tick, self._call_later = tick, call_later
        self._call = call_later(tick, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.seconds()
        waiting = False
        for session in list(self.sessions):
            deadline = session._idle_deadline
            if deadline is None:
                continue
            if deadline > now:
                waiting = True
                continue
            session._idle_deadline = None
            try:
                session.timeoutConnection()
            except Exception:
                log.failure("smtp: timing out an idle session")
        if waiting and self._call_later is not None:
            self._call = self._call_later(self._tick, self._sweep)

    def session_gone(self) -> None:
        """A session ended (and left ``sessions``): with none left, no timer stays."""
        if not self.sessions:
            self.stop()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
