"""The envelope record at the end of a body file: what makes the commit one durable write.

A committed body file in ``data/`` is ``<body> <envelope JSON> <footer>``; the footer is
fixed-size ASCII, ``\\n%RMENV1 <JSON length, 10 digits> <CRC-32 of the JSON, 8 hex>%\\n``.
The JSON is the envelope as accepted, so the file alone is the message: after a crash,
startup rebuilds a lost or torn ``<state>/<id>.json`` from it.  The footer is the
completion marker (Postfix ends a queue file with an end record and marks it ready by
its mode): a file whose footer is missing, torn, or whose CRC does not match was never
acknowledged, and is removed.

The commit makes the message visible by linking this file into ``queue/`` as
``<id>.json``: until the envelope's first update, its record is the envelope there
(:func:`envelope_json_of` reads either form).

Readers of the body never see the record: :func:`open_body` stops at the body's end.
A body always ends with CRLF, a footer with ``%\\n``, so a file from before this format
(body only) is never mistaken for one with a record.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from typing import BinaryIO

FOOTER_SIZE = 30
_FOOTER = re.compile(rb"\n%RMENV1 ([0-9]{10}) ([0-9a-f]{8})%\n\Z")


def envelope_record(envelope_json: bytes) -> bytes:
    """The bytes to append to a body: the envelope and the footer that closes the file."""
    footer = b"\n%%RMENV1 %010d %08x%%\n" % (len(envelope_json), zlib.crc32(envelope_json))
    assert len(footer) == FOOTER_SIZE
    return envelope_json + footer


def _footer_of(tail: bytes, file_size: int) -> tuple[int, int, int] | None:
    """(body length, JSON length, CRC) from the last FOOTER_SIZE bytes, or None."""
    match = _FOOTER.match(tail)
    if match is None:
        return None
    json_length, crc = int(match.group(1)), int(match.group(2), 16)
    body_length = file_size - FOOTER_SIZE - json_length
    if body_length < 0:
        return None
    return body_length, json_length, crc


def _tail(f: BinaryIO, size: int) -> bytes:
    if size < FOOTER_SIZE:
        return b""
    f.seek(size - FOOTER_SIZE)
    return f.read(FOOTER_SIZE)


def body_length(f: BinaryIO) -> int:
    """Where the body of an open body file ends (its size when it has no record)."""
    size = os.fstat(f.fileno()).st_size
    footer = _footer_of(_tail(f, size), size)
    f.seek(0)
    return size if footer is None else footer[0]


def read_record(path: str) -> bytes | None:
    """The envelope JSON at the end of a body file when the record is whole (the file was
    completely written), else None.  Blocking."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        footer = _footer_of(_tail(f, size), size)
        if footer is None:
            return None
        body, json_length, crc = footer
        f.seek(body)
        data = f.read(json_length)
    if len(data) != json_length or zlib.crc32(data) != crc:
        return None
    return data


TAIL_READ = 8192  # one read from the end takes the footer and any usual envelope


def envelope_json_of(path: str) -> bytes:
    """The envelope JSON that ``<state>/<id>.json`` holds.

    The commit publishes a message by linking its body file into ``queue/`` (one
    directory entry, no new file): then the envelope is the record at the end of the
    file.  An envelope written since (after a delivery attempt, a move) is a JSON file
    of its own, which never ends with a footer.  ValueError for a torn record.  Blocking.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - TAIL_READ)
        tail = os.pread(fd, size - start, start)
        footer = _footer_of(tail[-FOOTER_SIZE:], size)
        if footer is None:  # a JSON file of its own
            return tail if start == 0 else _read_all(fd)
        body, json_length, crc = footer
        data = tail[body - start:body - start + json_length] if body >= start \
            else os.pread(fd, json_length, body)
    finally:
        os.close(fd)
    if len(data) != json_length or zlib.crc32(data) != crc:
        raise ValueError("the envelope record is torn")
    return data


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class BodyReader(io.RawIOBase):
    """A read-only, seekable view of the first ``length`` bytes of a file."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        super().__init__()
        self._f = f
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._length - self._pos)
        if want <= 0:
            return 0
        self._f.seek(self._pos)
        data = self._f.read(want)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(0, base + offset), self._length)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._f.close()
        super().close()


def read_small_body(path: str, limit: int, offset: int = 0) -> bytes | None:
    """The body from ``offset`` on when it is at most ``limit`` bytes, else None (stream
    it with :func:`open_body`).  One read of the whole file for a usual message: four
    system calls, where the buffered reader takes a dozen.  Blocking (page cache)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > offset + limit + TAIL_READ:  # too large even with a large envelope
            return None
        data = os.pread(fd, size, 0)  # committed: the file no longer changes
    finally:
        os.close(fd)
    footer = _footer_of(data[-FOOTER_SIZE:], len(data))
    end = len(data) if footer is None else footer[0]
    if end - offset > limit:
        return None
    return data[offset:end]


def open_body(path: str) -> BinaryIO:
    """Open a stored message for reading: exactly its body, never its envelope record."""
    f = open(path, "rb")  # noqa: SIM115 (owned by the reader returned)
    try:
        length = body_length(f)
    except OSError:
        f.close()
        raise
    return io.BufferedReader(BodyReader(f, length), 1 << 16)  # type: ignore[return-value]
