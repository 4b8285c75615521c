"""What happened to one recipient on one delivery attempt, and how that steers the next step.

2xx: delivered.  5xx: failed for good.  Anything else (4xx, no connection, TLS or AUTH
trouble, DNS trouble, a timeout) is temporary: try the next upstream, then defer.
"""

from __future__ import annotations

from dataclasses import dataclass

DELIVERED, TEMPORARY, PERMANENT = "delivered", "temporary", "permanent"


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
