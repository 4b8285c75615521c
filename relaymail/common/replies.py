"""SMTP replies with enhanced status codes (RFC 3463, RFC 2034)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

ENHANCED_RE = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3} ")
# Replies that carry no enhanced code: the greeting, EHLO, AUTH challenges, DATA's go-ahead.
NO_ENHANCED = {220, 334, 354}


@dataclass(frozen=True)
class Reply:
    """One reply: ``code`` with an ``enhanced`` status code and human text; ``close``: hang
    up once it is sent; ``then``: what to do once it is on its way (the "queued" log line:
    the client need not wait for it)."""

    code: int
    enhanced: str
    text: str
    close: bool = False
    then: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def encode(self) -> bytes:
        return f"{self.enhanced} {self.text}".encode()

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True)
class Continue:
    """A reply that carries the exchange on (334 for AUTH, 354 for DATA): no enhanced code,
    and the session reads the next lines in ``mode`` ("auth" or "data")."""

    code: int
    text: bytes
    mode: str


def with_enhanced(code: int, message: bytes) -> bytes:
    """Add a class-default enhanced code to a reply that lacks one (for stock code paths)."""
    if code in NO_ENHANCED or ENHANCED_RE.match(message):
        return message
    return b"%d.0.0 " % (code // 100) + message


OK = Reply(250, "2.0.0", "Ok")
BAD_SEQUENCE_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
STORAGE_FAILED = Reply(452, "4.3.1", "Insufficient system storage; try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Error: local error in processing; try again later")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
