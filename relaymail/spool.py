"""The durable queue on disk.

Layout under ``spool_dir``::

    incoming/  envelopes being committed or rewritten; wiped at startup
    data/      message bodies (<id>.eml), CRLF line ends, exactly as they will be sent;
               written in place while received, removed at startup if never committed
    queue/     envelopes (<id>.json) of messages ready or deferred
    hold/      envelopes kept back by an operator
    failed/    envelopes of messages that failed for good, kept for inspection and retry

A message exists once its envelope is renamed into ``queue/``; that happens only after the
body and envelope are fsync'd and the body's directory entry is durable (``data/`` fsync).
Commits of concurrent sessions are grouped: one thread commits everything that queued up
while the previous batch was being written, so journal commits and directory fsyncs are
shared.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from relaymail.envelope import Envelope, EnvelopeError
from relaymail.logs import Logger
from relaymail.safeio import FileOps

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
            self._spill_fd = ops.create_exclusive(self.body_path)
        ops.write_all(self._spill_fd, chunk)

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
        fd = self._spill_fd if self._spill_fd is not None else ops.create_exclusive(
            self.body_path)
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


@dataclass
class _Pending:
    writer: MessageWriter
    envelope: Envelope
    deferred: Deferred = field(default_factory=Deferred)


class Spool:
    """The spool directory; every blocking operation runs through ``run_in_thread``."""

    def __init__(self, root: str, run_in_thread: RunInThread,
                 clock: Callable[[], float] = time.time, ops: FileOps | None = None) -> None:
        self.root = root
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.ops = ops or FileOps()
        self._pending: list[_Pending] = []
        self._committing = False
        self.commit_listeners: list[Callable[[Envelope], None]] = []
        self.quarantined: list[str] = []  # malformed envelopes moved to quarantine/

    def path(self, state: str, name: str = "") -> str:
        return os.path.join(self.root, state, name) if name else os.path.join(self.root, state)

    # ------------------------------------------------------------------ startup

    def prepare(self) -> list[Envelope]:
        """Create the directories, drop uncommitted leftovers, return the queued envelopes.

        Runs once at startup, before any listener accepts mail.
        """
        for name in (*DIRS, "quarantine"):
            os.makedirs(self.path(name), mode=0o700, exist_ok=True)
        self.quarantined = sorted(n for n in self.ops.listdir(self.path("quarantine"))
                                  if n.endswith(".json"))
        for name in self.ops.listdir(self.path("incoming")):
            self.ops.unlink(self.path("incoming", name))
        committed = {n[:-5] for s in STATES for n in self.ops.listdir(self.path(s))
                     if n.endswith(".json")}
        for name in self.ops.listdir(self.path("data")):
            if name[:-4] not in committed:
                log.info("spool: removing uncommitted body {name}", name=name)
                self.ops.unlink(self.path("data", name))
        return list(self.load_state("queue"))

    def load_state(self, state: str) -> Iterable[Envelope]:
        """The envelopes in ``state``; a malformed one is quarantined, never fatal."""
        for name in sorted(self.ops.listdir(self.path(state))):
            if not name.endswith(".json"):
                continue
            try:
                envelope = Envelope.from_json(self.ops.read(self.path(state, name)))
                if envelope.queue_id != name[:-5]:
                    raise EnvelopeError("queue_id does not match the file name")
            except OSError as e:
                log.error("spool: unreadable envelope {name}: {error}", name=name, error=e)
                continue
            except (ValueError, TypeError) as e:  # EnvelopeError and bad JSON included
                self.quarantine(state, name, str(e))
                continue
            yield envelope

    def quarantine(self, state: str, name: str, why: str) -> None:
        """Move a malformed envelope, and its body, to ``quarantine/`` for an operator to
        look at; the rest of the spool goes on.  Counted in ``quarantined`` (health)."""
        qid = name[:-5]
        os.makedirs(self.path("quarantine"), mode=0o700, exist_ok=True)
        moved = []
        for source, target in ((self.path(state, name), self.path("quarantine", name)),
                               (self.path("data", qid + ".eml"),
                                self.path("quarantine", qid + ".eml"))):
            try:
                self.ops.rename(source, target)
                moved.append(os.path.basename(target))
            except OSError:
                pass
        self.quarantined.append(name)
        log.error("spool: malformed envelope {state}/{name} quarantined ({why}); moved "
                  "{moved} to {dir}", state=state, name=name, why=why, moved=moved,
                  dir=self.path("quarantine"))

    # ------------------------------------------------------------------ receiving

    def new_message(self) -> MessageWriter:
        return MessageWriter(self, new_queue_id(self.clock()))

    def commit(self, writer: MessageWriter, envelope: Envelope) -> Deferred:
        """Make the message durable and visible in ``queue/``; fires with the queue ID.

        Fails with SpoolError when anything could not be stored; then nothing is visible.
        """
        envelope.size = writer.size
        item = _Pending(writer, envelope)
        writer.flushed().addCallback(lambda _: self._enqueue(item))
        return item.deferred

    def _enqueue(self, item: _Pending) -> None:
        self._pending.append(item)
        self._start_batch()

    def _start_batch(self) -> None:
        if self._committing or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._committing = True
        d = self.run_in_thread(self._commit_batch, batch)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, outcome: Any, batch: list[_Pending]) -> None:
        self._committing = False
        errors = outcome if isinstance(outcome, list) else [outcome] * len(batch)
        for item, error in zip(batch, errors, strict=True):
            if error is None:
                item.deferred.callback(item.envelope.queue_id)
                self._announce(item.envelope)
            else:
                item.writer.closed = True
                item.deferred.errback(SpoolError(str(getattr(error, "value", error))))
        self._start_batch()

    def _announce(self, envelope: Envelope) -> None:
        for listener in self.commit_listeners:
            try:
                listener(envelope)
            except Exception:
                log.failure("spool: commit listener failed")

    def _commit_batch(self, batch: list[_Pending]) -> list[Exception | None]:
        """Thread: write every file of the batch, then fsync them all, then publish.

        Writing all files before the first fsync lets one journal commit cover many of
        them; publishing shares the directory fsyncs.  Each message fails on its own.
        """
        errors: list[Exception | None] = [None] * len(batch)
        written = []
        for i, item in enumerate(batch):
            fds: list[int] = []
            try:
                fds.append(item.writer.open_complete_in_thread())
                fds.append(self._write_envelope(item.envelope))
                written.append((i, item, fds))
            except OSError as e:
                errors[i] = e
                self._close_all(fds)
                self._unstage(item)
        staged = []
        for i, item, fds in written:
            try:
                for fd in fds:
                    self.ops.fsync(fd)
                staged.append(item)
            except OSError as e:
                errors[i] = e
                self._unstage(item)
            finally:
                self._close_all(fds)
        try:
            self._publish(staged)
        except OSError as e:
            for item in staged:
                errors[batch.index(item)] = e
                self._withdraw(item)
        return errors

    def _write_envelope(self, envelope: Envelope) -> int:
        fd = self.ops.create_exclusive(self.path("incoming", envelope.queue_id + ".json"))
        try:
            self.ops.write_all(fd, envelope.to_json())
        except OSError:
            self.ops.close(fd)
            raise
        return fd

    def _close_all(self, fds: list[int]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                self.ops.close(fd)

    def _publish(self, staged: list[_Pending]) -> None:
        if not staged:
            return
        self.ops.fsync_dir(self.path("data"))
        for item in staged:
            qid = item.envelope.queue_id
            self.ops.rename(self.path("incoming", qid + ".json"),
                            self.path("queue", qid + ".json"))
        self.ops.fsync_dir(self.path("queue"))

    def _unstage(self, item: _Pending) -> None:
        qid = item.envelope.queue_id
        for path in (self.path("data", qid + ".eml"), self.path("incoming", qid + ".json")):
            self._remove_quietly(path)

    def _withdraw(self, item: _Pending) -> None:
        """Undo a publish whose durability could not be confirmed: the client got 452."""
        self._remove_quietly(self.path("queue", item.envelope.queue_id + ".json"))
        self._unstage(item)

    def _remove_quietly(self, path: str) -> None:
        try:
            self.ops.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warn("spool: could not remove {path}: {error}", path=path, error=e)

    # ------------------------------------------------------------------ reading and changing

    def read_body(self, queue_id: str) -> Deferred:
        return self.run_in_thread(self.ops.read, self.path("data", queue_id + ".eml"))

    def find_state(self, queue_id: str) -> str | None:
        for state in STATES:
            if os.path.exists(self.path(state, queue_id + ".json")):
                return state
        return None

    def save_envelope(self, envelope: Envelope, state: str = "queue") -> Deferred:
        """Atomically replace the envelope in ``state`` (temp file, fsync, rename, dir fsync)."""
        return self.run_in_thread(self._save_envelope, envelope, state)

    def _save_envelope(self, envelope: Envelope, state: str) -> None:
        qid = envelope.queue_id
        tmp = self.path("incoming", f"{qid}.{secrets.token_hex(4)}.json")
        try:
            self.ops.write_file_durably(tmp, envelope.to_json())
            self.ops.rename(tmp, self.path(state, qid + ".json"))
        except OSError:
            self._remove_quietly(tmp)
            raise
        self.ops.fsync_dir(self.path(state))

    def move(self, queue_id: str, source: str, target: str) -> Deferred:
        return self.run_in_thread(self._move, queue_id, source, target)

    def _move(self, queue_id: str, source: str, target: str) -> None:
        name = queue_id + ".json"
        self.ops.rename(self.path(source, name), self.path(target, name))
        self.ops.fsync_dir(self.path(target))
        self.ops.fsync_dir(self.path(source))

    def remove(self, queue_id: str, state: str) -> Deferred:
        return self.run_in_thread(self._remove, queue_id, state)

    def _remove(self, queue_id: str, state: str) -> None:
        """No directory fsync here (as in Postfix): an unlink lost to a power failure means
        the message is delivered once more, never lost; an fsync per delivered message
        halved the relay's throughput."""
        self.ops.unlink(self.path(state, queue_id + ".json"))
        self._remove_quietly(self.path("data", queue_id + ".eml"))

    def count(self, state: str) -> int:
        return sum(1 for n in os.listdir(self.path(state)) if n.endswith(".json"))
