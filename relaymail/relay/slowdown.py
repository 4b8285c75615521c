"""Replies that mean "slow down", and the adaptive back-off they start for one upstream.

Providers answer a sender that goes too fast with temporary replies: Amazon SES
``454 Throttling failure: Maximum sending rate exceeded``, Microsoft ``451 4.7.500 Server
busy``, NetEase 163 ``421 HL:IFC`` / ``451 MI:SFQ`` / ``450 RP:DRC``, QQ ``421 ... Frequency
limited`` and ``Too many connections``.  Retrying at full speed only collects more of them
(and, at some providers, a longer block).  On one, the upstream's message interval goes to
``first`` seconds and doubles on each further one, up to ``most``; every delivery shrinks
it by a fifth, to nothing once it is small.  So the rate falls while more than about a
quarter of the replies say "slow down" and comes back gradually when fewer do.  While an interval is
set the pool sends over one session only, and messages that would wait longer than its
hold time move on to the next upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable

SLOW_DOWN = re.compile(
    r"throttl|rate.?limit|too many (connections|messages|mails|recipients|sessions)|"
    r"frequen|slow down|sending (quota|rate)|quota exceeded|server busy|"
    r"concurrent connections limit|"  # Microsoft 365: 432 4.3.2, more than 3 per mailbox
    r"\b4\.7\.(?:5\d\d|6\d\d|28)\b|"  # Microsoft 4.7.500-699, Gmail 4.7.28 (rate)
    r"\b(?:HL:(?:ICC|IFC)|MI:(?:DMC|SFQ)|RP:(?:DRC|QRC|TRC))\b",  # NetEase 163/126
    re.IGNORECASE)


def asks_to_slow_down(code: int, text: str) -> bool:
    """A temporary reply whose words say we are sending too fast."""
    return 400 <= code < 500 and SLOW_DOWN.search(text) is not None


class AdaptiveBackoff:
    """The interval one upstream asks for, widened by slow-down replies, narrowed by
    deliveries; ``wait()`` says how long the next message must wait."""

    def __init__(self, clock: Callable[[], float], first: float = 0.25, most: float = 60.0
                 ) -> None:
        self.clock = clock
        self.first = first
        self.most = most
        self.interval = 0.0
        self.next_at = 0.0

    @property
    def active(self) -> bool:
        return self.interval > 0

    def slow_down(self) -> float:
        """A slow-down reply: widen the interval; returns it."""
        self.interval = min(self.most, max(self.first, self.interval * 2))
        self.next_at = self.clock() + self.interval
        return self.interval

    def delivered(self) -> None:
        """A delivery went through: narrow the interval, to nothing after a while."""
        if self.interval:
            self.interval = self.interval * 0.8 if self.interval > self.first / 4 else 0.0

    def wait(self) -> float:
        return max(0.0, self.next_at - self.clock())

    def take(self) -> None:
        """A message goes now: the next one waits one interval."""
        if self.interval:
            self.next_at = self.clock() + self.interval
