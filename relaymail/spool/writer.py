"""Receiving one message into the spool: queue IDs, and the writer that holds a body in
memory, spills it to ``data/`` past 256 KiB, and completes it for the commit."""


from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from relaymail.logs import Logger

if TYPE_CHECKING:
    from relaymail.spool.store import Spool

log = Logger(namespace="relaymail.spool")

STATES = ("queue", "hold", "failed")
DIRS = ("incoming", "data", *STATES)
SPILL_THRESHOLD = 256 * 1024
MAX_WAITING_SPILLS = 4  # at most about 1 MB of a message in memory, however fast it comes
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # base 31, no vowels: IDs never spell words

RunInThread = Callable[..., Deferred]


class SpoolError(Exception):
    """The spool could not store or change a message (disk full, read-only, I/O error)."""


def encode_base(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def new_queue_id(now: float) -> str:
    """Short, unique, roughly time-ordered: 11 chars of microseconds plus 4 random chars."""
    return encode_base(int(now * 1_000_000), 11) + encode_base(secrets.randbits(20), 4)


def run_synchronously(f: Callable[..., Any], *args: Any) -> Deferred:
    """A ``run_in_thread`` for tests and tools: run ``f`` now and wrap its result."""
    return maybeDeferred(f, *args)


class MessageWriter:
    """Collects the bytes of one message; large bodies spill to ``incoming/`` as they arrive.

    Spill writes run in ``run_in_thread``, chained one after another on ``_tail`` so they
    stay in order; commit and discard wait for the chain.  The reactor thread never writes.
    """

    def __init__(self, spool: Spool, queue_id: str) -> None:
        self.spool = spool
        self.queue_id = queue_id
        self.size = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._spill_fd: int | None = None
        self._tail: Deferred = succeed(None)
        self._spilled = False
        self.spill_error: BaseException | None = None
        self.closed = False
        self._prefix = b""  # header fields to put before what was already spilled (DKIM)
        self.recycled = False  # the body file is a spare: the commit cuts it at its end
        self._waiting_spills = 0
        # Called with True when MAX_WAITING_SPILLS chunks wait for the disk, False when
        # they drain: the session stops reading meanwhile, so memory stays bounded.
        self.on_pressure: Callable[[bool], None] | None = None

    @property
    def body_path(self) -> str:
        """Bodies are written in place in ``data/``: without an envelope they are invisible,
        and startup removes them; this spares a rename and a journal commit per message."""
        return self.spool.path("data", self.queue_id + ".eml")

    def write(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        self._buffered += len(data)
        if self._buffered >= SPILL_THRESHOLD:
            self._spill()

    def prepend(self, data: bytes) -> None:
        """Put ``data`` before everything written so far (a DKIM-Signature field)."""
        self.size += len(data)
        if self._spilled:
            self._prefix = data + self._prefix
        else:
            self._chunks.insert(0, data)
            self._buffered += len(data)

    def _spill(self) -> None:
        chunk = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        self._spilled = True
        self._waiting_spills += 1
        if self._waiting_spills == MAX_WAITING_SPILLS and self.on_pressure is not None:
            self.on_pressure(True)  # the client sends faster than the disk takes it
        self._tail.addCallback(lambda _: self.spool.run_in_thread(self._append, chunk))
        self._tail.addErrback(self._spill_failed)
        self._tail.addCallback(self._spill_done)

    def _spill_done(self, _: Any) -> None:
        self._waiting_spills -= 1
        if self._waiting_spills == MAX_WAITING_SPILLS - 1 and self.on_pressure is not None:
            self.on_pressure(False)

    def _append(self, chunk: bytes) -> None:
        """Thread: append a chunk to the incoming file (page cache; fsync comes at commit)."""
        if self.spill_error is not None or self.closed:
            return
        ops = self.spool.ops
        if self._spill_fd is None:
            self._spill_fd = self._open_body()
        ops.write_all(self._spill_fd, chunk)

    def _open_body(self) -> int:
        """Thread: the new body file, a spare one when there is one
        (relaymail.spool.spares)."""
        fd, self.recycled = self.spool.spares.open_body(self.body_path)
        return fd

    def _spill_failed(self, failure: Failure) -> None:
        self.spill_error = failure.value

    def flushed(self) -> Deferred:
        """Fires once every spill write so far has finished."""
        d: Deferred = Deferred()
        def passed(result: Any) -> Any:
            d.callback(None)
            return result

        self._tail.addBoth(passed)
        return d

    def open_complete_in_thread(self) -> int:
        """Thread: write what is still buffered; return the open (not yet synced) file."""
        ops = self.spool.ops
        if self.spill_error is not None:
            if self._spill_fd is not None:
                fd, self._spill_fd = self._spill_fd, None
                ops.close(fd)
            raise OSError(f"spilling the message failed: {self.spill_error}")
        fd = self._spill_fd if self._spill_fd is not None else self._open_body()
        self._spill_fd = None
        if self._prefix:
            fd = self._rewrite_with_prefix(fd)
        try:
            ops.write_all(fd, b"".join(self._chunks))
        except OSError:
            ops.close(fd)
            raise
        self._chunks = []
        return fd

    def _rewrite_with_prefix(self, spilled: int) -> int:
        """Thread: a new body file = prefix + the spilled bytes (copied in the kernel), renamed
        over the spilled one; the rename becomes durable with the commit's ``data/`` fsync."""
        ops = self.spool.ops
        fresh_path = self.body_path + ".new"  # not "<id>.eml": startup removes it if left
        ops.close(spilled)
        fresh = ops.create_exclusive(fresh_path)
        try:
            ops.write_all(fresh, self._prefix)
            source = ops.open_read(self.body_path)
            try:
                ops.copy_all(source, fresh)
            finally:
                ops.close(source)
            ops.rename(fresh_path, self.body_path)
            self.recycled = False
        except OSError:
            ops.close(fresh)
            with contextlib.suppress(OSError):
                ops.unlink(fresh_path)
            raise
        self._prefix = b""
        return fresh

    def discard(self) -> None:
        """Forget the message; once pending spills finish, close and remove the spill file."""
        if self.closed:
            return
        self.closed = True
        self._chunks = []
        if not self._spilled:
            return
        self.flushed().addCallback(lambda _: self.spool.run_in_thread(self._remove_spill))\
            .addErrback(lambda f: log.failure("spool: discarding a spill file", failure=f))

    def _remove_spill(self) -> None:
        if self._spill_fd is None:
            return
        fd, self._spill_fd = self._spill_fd, None
        self.spool.ops.close(fd)
        with contextlib.suppress(OSError):
            self.spool.ops.unlink(self.body_path)


