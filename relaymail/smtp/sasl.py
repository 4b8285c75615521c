"""AUTH PLAIN and LOGIN (RFC 4954, RFC 4616) as small step machines.

Each step takes the client's base64 line and answers either a challenge to send, or the
final (username, password).  Malformed input raises SASLError with the reply to give; it
never drops the connection as the stock Twisted challengers do.
"""

from __future__ import annotations

import base64
import binascii

from relaymail.common.replies import Reply

CANNOT_DECODE = Reply(501, "5.5.2", "Cannot decode response")
MALFORMED = Reply(501, "5.5.2", "Malformed authentication response")
ABORTED = Reply(501, "5.7.0", "Authentication aborted")
BAD_AUTHZID = Reply(535, "5.7.8", "Authentication credentials invalid")
MECHANISMS = ("PLAIN", "LOGIN")


class SASLError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def decode(line: bytes) -> bytes:
    if line.strip() == b"*":
        raise SASLError(ABORTED)
    if line.strip() == b"=":
        return b""
    try:
        return base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SASLError(CANNOT_DECODE) from None


def text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(MALFORMED) from None


class Exchange:
    """One AUTH exchange: ``start`` then ``step`` until it yields credentials."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.username: str | None = None

    def start(self, initial: bytes | None) -> bytes | tuple[str, str]:
        """Return the first challenge (bytes, to base64-encode) or the credentials."""
        if initial is None:
            return b"" if self.mechanism == "PLAIN" else b"Username:"
        return self.step(initial)

    def step(self, line: bytes) -> bytes | tuple[str, str]:
        raw = decode(line)
        if self.mechanism == "PLAIN":
            return self._plain(raw)
        if self.username is None:
            self.username = text(raw)
            return b"Password:"
        return self.username, text(raw)

    @staticmethod
    def _plain(raw: bytes) -> tuple[str, str]:
        parts = raw.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SASLError(MALFORMED)
        authzid, authcid, password = (text(p) for p in parts)
        if authzid and authzid != authcid:
            raise SASLError(BAD_AUTHZID)
        return authcid, password


def challenge_line(challenge: bytes) -> bytes:
    return base64.b64encode(challenge)
