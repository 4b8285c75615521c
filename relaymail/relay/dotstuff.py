"""Dot-stuffing for the DATA phase (RFC 5321 §4.5.2), correct across chunk boundaries.

Twisted's client stuffs each 16 KiB chunk on its own, so a line that starts with "." at a
chunk boundary goes out unstuffed: the receiver ends the message there and reads the rest
as commands.  This stuffer remembers whether the previous chunk ended a line.  Bodies in
our spool already have CRLF line ends (the listener normalizes them), so only CRLF ends a
line here.
"""

from __future__ import annotations


class DotStuffer:
    """Feed chunks of a CRLF body; get them back stuffed; ``end()`` gives the terminator.

    It keeps the last two input bytes: the stuffing pattern is CRLF followed by ".", at
    most three bytes, so two bytes of context make any chunking give the same output.
    """

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the body starts at a line start

    def stuff(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        combined = self._tail + chunk
        stuffed = combined.replace(b"\r\n.", b"\r\n..")
        # Insertions land after a "." at index >= 2, never inside the carried tail.
        out = stuffed[len(self._tail):]
        self._tail = combined[-2:]
        return out

    def end(self) -> bytes:
        """The end-of-data marker, with a CRLF first if the body did not end with one."""
        return b".\r\n" if self._tail == b"\r\n" else b"\r\n.\r\n"


def unstuff(data: bytes) -> bytes:
    """The inverse, for tests and for servers' view of a stuffed body (without ".\\r\\n")."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines)
