"""The ``maildir`` transport's writer: a local outbox in Maildir layout (tmp/, new/, cur/).

Each message is written once, with ``Return-Path`` and one ``X-Original-To`` per recipient
in front, to ``tmp/``, fsync'd, and renamed into ``new/`` (then ``new/`` is fsync'd), so a
reader never sees a partial file.  Blocking: run it in a thread.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import BinaryIO

_counter = 0
_lock = threading.Lock()


def unique_name(now: float) -> str:
    """Maildir file name: time, a per-process sequence, pid and host (maildir(5) style)."""
    global _counter
    with _lock:
        _counter += 1
        seq = _counter
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now * 1e6) % 1_000_000}Q{seq}P{os.getpid()}.{host}"


COPY_CHUNK = 1 << 20


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def ensure_maildir(path: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def deliver_to_maildir(path: str, sender: str, recipients: Sequence[str],
                       body: bytes | BinaryIO, now: float | None = None) -> str:
    """Store one message (bytes, or an open file copied in chunks so a large body is never
    in memory); returns the file name in ``new/``."""
    ensure_maildir(path)
    name = unique_name(time.time() if now is None else now)
    trace = f"Return-Path: <{sender}>\r\n" + "".join(
        f"X-Original-To: <{r}>\r\n" for r in recipients)
    tmp = os.path.join(path, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, trace.encode("utf-8", "replace"))
        if isinstance(body, bytes):
            write_all(fd, body)
        else:
            while chunk := body.read(COPY_CHUNK):
                write_all(fd, chunk)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, os.path.join(path, "new", name))
    dfd = os.open(os.path.join(path, "new"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return name
