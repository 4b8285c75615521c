"""What happened to one recipient on one delivery attempt, and how that steers the next step.

2xx: delivered.  5xx: failed for good.  Anything else (4xx, no connection, TLS or AUTH
trouble, DNS trouble, a timeout) is temporary: try the next upstream, then defer.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaymail.spool.envelope import DELIVERED as RCPT_DELIVERED
from relaymail.spool.envelope import FAILED as RCPT_FAILED
from relaymail.spool.envelope import PENDING as RCPT_PENDING

DELIVERED, TEMPORARY, PERMANENT = "delivered", "temporary", "permanent"


@dataclass(frozen=True)
class Disposition:
    """The one row of the outcome table for one kind of outcome: each name the outcome has
    in each place that records it."""

    kind: str  # Outcome.kind: delivered, temporary, permanent
    recipient_state: str  # the recipient's state in the envelope afterwards
    log_status: str  # ``status=`` in the delivery log, and the observers' ``event``
    counter: str  # the RelayManager.counters key it adds to


# kind -> recipient state -> log status -> counter, the only translation between them.
DISPOSITIONS: dict[str, Disposition] = {d.kind: d for d in (
    Disposition(DELIVERED, RCPT_DELIVERED, "sent", "delivered"),
    Disposition(TEMPORARY, RCPT_PENDING, "deferred", "deferred"),
    Disposition(PERMANENT, RCPT_FAILED, "bounced", "failed"),
)}
COUNTERS: tuple[str, ...] = (*(d.counter for d in DISPOSITIONS.values()), "bounces")


@dataclass(frozen=True)
class Outcome:
    """One recipient's result: the reply (ours or the server's) and where it came from."""

    code: int
    text: str
    upstream: str | None = None
    tls: str | None = None
    transport: str | None = None  # the configured transport's name, set by the manager
    session_error: str | None = None  # the failed step when the session itself broke
    not_before: float | None = None  # not attempted: every upstream down until then

    @property
    def kind(self) -> str:
        if 200 <= self.code < 300:
            return DELIVERED
        if 500 <= self.code < 600:
            return PERMANENT
        return TEMPORARY

    @property
    def disposition(self) -> Disposition:
        """What this outcome means for the recipient, the log and the counters."""
        return DISPOSITIONS[self.kind]

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}"

    def describe(self) -> str:
        where = f" (from {self.upstream})" if self.upstream else ""
        return f"{self.reply}{where}"


def temporary(text: str, upstream: str | None = None, code: int = 451) -> Outcome:
    return Outcome(code, text, upstream)


class SessionError(Exception):
    """A session could not be used (connect, banner, EHLO, STARTTLS, AUTH, lost, timeout).

    ``kind`` names the step; the text never carries the session transcript or a secret.
    """

    def __init__(self, kind: str, text: str, code: int = -1) -> None:
        super().__init__(f"{kind}: {text}")
        self.kind, self.text, self.code = kind, text, code

    def outcome(self, upstream: str) -> Outcome:
        """As a temporary recipient outcome (a session failure never fails mail for good)."""
        code = self.code if 400 <= self.code < 500 else 451
        return Outcome(code, f"4.4.2 {self.kind}: {self.text}", upstream,
                       session_error=self.kind)
