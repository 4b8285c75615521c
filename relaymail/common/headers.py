"""Reading one header field from a raw header block, without a MIME parser (the SMTP and
relay hot paths use it for Message-ID)."""

from __future__ import annotations

from collections.abc import Sequence

MAX_VALUE = 998


def header_value(lines: Sequence[bytes], name: bytes) -> str | None:
    """The first ``name`` field of ``lines`` (header lines, CRLF-ended or not), unfolded,
    whitespace collapsed, at most 998 characters; None when absent or empty."""
    prefix = name.lower() + b":"
    for i, line in enumerate(lines):
        if line[:len(prefix)].lower() != prefix:
            continue
        value = [line[len(prefix):]]
        for more in lines[i + 1:]:
            if more[:1] not in (b" ", b"\t"):
                break
            value.append(more)
        text = " ".join(b"".join(value).decode("utf-8", "replace").split())
        return text[:MAX_VALUE] or None
    return None


def header_lines(message: bytes, limit: int = 65536) -> list[bytes]:
    """The header lines of a whole message (up to the blank line, within ``limit`` bytes)."""
    head = message[:limit]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    return (head if end < 0 else head[:end]).splitlines()
