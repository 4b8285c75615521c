"""Provider throttles: at most N messages in any window of S seconds to one upstream.

A sliding log of send times (at most N entries) gives the exact rule providers state
("100 per hour"), so relaymail waits for the window instead of collecting 4xx replies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Pacer:
    """The send times of the last ``count`` messages within ``seconds``."""

    def __init__(self, count: int, seconds: float, clock: Callable[[], float]) -> None:
        self.count = count
        self.seconds = seconds
        self.clock = clock
        self.sent: deque[float] = deque()

    def wait(self) -> float:
        """Seconds until one more message may go (0: now)."""
        now = self.clock()
        while self.sent and self.sent[0] + self.seconds <= now:
            self.sent.popleft()
        if len(self.sent) < self.count:
            return 0.0
        return self.sent[0] + self.seconds - now

    def take(self) -> None:
        self.sent.append(self.clock())
