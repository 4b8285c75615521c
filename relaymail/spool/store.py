"""The spool directory: startup recovery, the grouped commit, state changes and the
quarantine of malformed envelopes (the layout is in relaymail/spool/__init__.py)."""


from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from relaymail.logs import Logger
from relaymail.spool.envelope import Envelope, EnvelopeError
from relaymail.spool.record import envelope_record, read_record
from relaymail.spool.safeio import FileOps, directory_fsync_needed, filesystem_type
from relaymail.spool.spares import SparePool, remove_quietly
from relaymail.spool.writer import (
    DIRS,
    STATES,
    MessageWriter,
    RunInThread,
    SpoolError,
    new_queue_id,
)

log = Logger(namespace="relaymail.spool")


@dataclass
class _Pending:
    writer: MessageWriter
    envelope: Envelope
    deferred: Deferred = field(default_factory=Deferred)
    envelope_json: bytes = b""  # encoded once, for the record and the envelope file


# What link() fails with where a filesystem has no hard links (FAT, some FUSE and network
# filesystems): the commit then writes the envelope as a file of its own.
NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
                           errno.EXDEV})


class Spool:
    """The spool directory; every blocking operation runs through ``run_in_thread``."""

    def __init__(self, root: str, run_in_thread: RunInThread,
                 clock: Callable[[], float] = time.time, ops: FileOps | None = None,
                 sync_directory: bool | None = None,
                 run_serially: RunInThread | None = None, recycle: bool = True) -> None:
        self.root = root
        # Whether a commit fsyncs data/ after the bodies (None: by the filesystem, see
        # relaymail.spool.safeio.ENTRY_DURABLE_WITH_FILE).
        self.sync_directory = (directory_fsync_needed(root) if sync_directory is None
                               else sync_directory)
        self.run_in_thread = run_in_thread
        # The batches of commits and of removals (one at a time each): a lane of their own
        # in the server (relaymail.common.lane), the thread pool otherwise.
        self.run_serially = run_serially or run_in_thread
        self.clock = clock
        self.ops = ops or FileOps()
        # Delivered bodies' files serve later messages (no inode allocated per message).
        self.spares = SparePool(self.path("spare"), self.ops, clock, enabled=recycle)
        self._pending: list[_Pending] = []
        self._committing = False
        self._removals: list[tuple[str, str, Deferred]] = []
        self._removing = False
        self.commit_listeners: list[Callable[[Envelope], None]] = []
        self.quarantined: list[str] = []  # malformed envelopes moved to quarantine/

    def path(self, state: str, name: str = "") -> str:
        return os.path.join(self.root, state, name) if name else os.path.join(self.root, state)

    # ------------------------------------------------------------------ startup

    def prepare(self) -> list[Envelope]:
        """:meth:`repair`, then every queued envelope (blocking; tests and tools use it,
        the service loads them in batches behind its listeners: relaymail.spool.recovery)."""
        return list(self.load_named("queue", self.repair()))

    def repair(self) -> list[str]:
        """Create the directories, drop uncommitted leftovers; return the names of the
        envelopes in ``queue/``, sorted (the queue as it stands before any session runs).

        Runs once at startup, before any listener accepts mail, and reads only directory
        listings (plus the rare file a crash left half done), so that it is quick with a
        long queue.  A body whose envelope file was lost in a crash (it is written without
        an fsync) gets it back from its own envelope record; a body without a whole record
        was never acknowledged.
        """
        for name in (*DIRS, "quarantine", "spare"):
            os.makedirs(self.path(name), mode=0o700, exist_ok=True)
        self.spares.tidy(self.path("data"))
        log.info("spool {path}: {fs}: {how}", path=self.root,
                 fs=filesystem_type(self.root) or "filesystem unknown",
                 how="data/ fsync'd after each batch of bodies" if self.sync_directory else
                 "a body's fsync makes its directory entry durable")
        self.quarantined = sorted(n for n in self.ops.listdir(self.path("quarantine"))
                                  if n.endswith(".json"))
        for name in self.ops.listdir(self.path("incoming")):
            self.ops.unlink(self.path("incoming", name))
        listed = {s: self.ops.listdir(self.path(s)) for s in STATES}
        committed = {n[:-5] for names in listed.values() for n in names if n.endswith(".json")}
        bodies = set()
        for name in self.ops.listdir(self.path("data")):
            if name.endswith(".eml"):
                bodies.add(name[:-4])
            else:  # a body being rewritten (<id>.eml.new) when the crash came
                log.info("spool: removing uncommitted body {name}", name=name)
                self.ops.unlink(self.path("data", name))
        for qid in committed - bodies:
            self._drop_if_removed(qid)
        restored = []
        for qid in bodies - committed:
            if self._restore("queue", qid):
                restored.append(qid + ".json")
            else:
                log.info("spool: removing uncommitted body {name}", name=qid + ".eml")
                self.ops.unlink(self.path("data", qid + ".eml"))
        return sorted(n for n in {*listed["queue"], *restored} if n.endswith(".json"))

    def _drop_if_removed(self, queue_id: str) -> None:
        """An envelope whose body is gone: a removal was cut short (the body goes first,
        so that no body is left to be restored from its record and sent again).  A
        well-formed envelope is dropped; a malformed one is left for the quarantine."""
        for state in STATES:
            path = self.path(state, queue_id + ".json")
            try:
                Envelope.from_json(self.ops.read_envelope(path))
            except (OSError, ValueError, TypeError):
                continue
            log.info("spool: {queue_id}: removing the envelope of a message already removed",
                     queue_id=queue_id)
            self._remove_quietly(path)

    def load_state(self, state: str) -> Iterable[Envelope]:
        """The envelopes in ``state``; see :meth:`load_named`."""
        return self.load_named(state, sorted(self.ops.listdir(self.path(state))))

    def load_named(self, state: str, names: Iterable[str]) -> Iterable[Envelope]:
        """The envelopes of ``names`` (file names) in ``state``; a malformed one is rebuilt
        from the body's envelope record, or quarantined when that fails too: never fatal.
        A name whose file is gone meanwhile (delivered, moved) is skipped."""
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                envelope = Envelope.from_json(self.ops.read_envelope(self.path(state, name)))
                if envelope.queue_id != name[:-5]:
                    raise EnvelopeError("queue_id does not match the file name")
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("spool: unreadable envelope {name}: {error}", name=name, error=e)
                continue
            except (ValueError, TypeError) as e:  # EnvelopeError and bad JSON included
                restored = self._restore(state, name[:-5])
                if restored is None:
                    self.quarantine(state, name, str(e))
                    continue
                envelope = restored
            yield envelope

    def _restore(self, state: str, queue_id: str) -> Envelope | None:
        """Write ``<state>/<id>.json`` again from the body's envelope record (the envelope
        as accepted); None when the body has no whole, valid record."""
        try:
            data = read_record(self.path("data", queue_id + ".eml"))
            if data is None:
                return None
            envelope = Envelope.from_json(data)
            if envelope.queue_id != queue_id:
                return None
            self._save_envelope(envelope, state)
        except (OSError, ValueError, TypeError) as e:
            log.error("spool: cannot restore the envelope of {queue_id}: {error}",
                      queue_id=queue_id, error=e)
            return None
        log.warn("spool: {queue_id}: envelope restored from the body's record into {state}/",
                 queue_id=queue_id, state=state)
        return envelope

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
        d = self.run_serially(self._commit_batch, batch)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, outcome: Any, batch: list[_Pending]) -> None:
        self._committing = False
        errors = outcome if isinstance(outcome, list) else [outcome] * len(batch)
        for item, error in zip(batch, errors, strict=True):
            if error is None:
                item.deferred.callback(item.envelope.queue_id)
                self.announce(item.envelope)
            else:
                item.writer.closed = True
                item.deferred.errback(SpoolError(str(getattr(error, "value", error))))
        self._start_batch()

    def announce(self, envelope: Envelope) -> None:
        for listener in self.commit_listeners:
            try:
                listener(envelope)
            except Exception:
                log.failure("spool: commit listener failed")

    def _commit_batch(self, batch: list[_Pending]) -> list[Exception | None]:
        """Thread: write every body with its envelope record, fsync each, fsync ``data/``
        once where the filesystem needs it (``sync_directory``), then publish the envelopes.

        That is one durable write per message (the record makes the body file the whole
        message); writing all files before the first fsync lets one journal commit cover
        many.  Publishing links each body into ``queue/`` without an fsync: startup
        rebuilds a lost name from the record.  Each message fails alone.
        """
        errors: list[Exception | None] = [None] * len(batch)
        written = []
        for i, item in enumerate(batch):
            try:
                fd = item.writer.open_complete_in_thread()
            except OSError as e:
                errors[i] = e
                self._unstage(item)
                continue
            try:
                item.envelope_json = item.envelope.to_json()
                self.ops.write_all(fd, envelope_record(item.envelope_json))
                if item.writer.recycled:
                    self.ops.truncate_here(fd)
                written.append((i, item, fd))
            except OSError as e:
                errors[i] = e
                self._close_all([fd])
                self._unstage(item)
        staged = []
        for i, item, fd in written:
            try:
                self.ops.fsync(fd)
                staged.append((i, item))
            except OSError as e:
                errors[i] = e
                self._unstage(item)
            finally:
                self._close_all([fd])
        if staged and self.sync_directory:
            try:
                self.ops.fsync_dir(self.path("data"))
            except OSError as e:
                for i, item in staged:
                    errors[i] = e
                    self._unstage(item)
                staged = []
        for i, item in staged:
            try:
                self._publish(item.envelope.queue_id, item.envelope_json)
            except OSError as e:
                errors[i] = e
                self._withdraw(item)
        return errors

    def _publish(self, qid: str, envelope_json: bytes) -> None:
        """Make the message visible in ``queue/``: ``queue/<id>.json`` becomes a second name
        of the body file, whose record is the envelope (one link: no new file, whose
        creation was a third of the commit's file-system time, and on a busy ext4 far
        more).  No fsync: the body's fsync made the record durable, and startup gives a
        body whose name in ``queue/`` was lost it back.  Where the filesystem has no hard
        links, a JSON file is written and renamed in (readers never see half of it)."""
        try:
            self.ops.link(self.path("data", qid + ".eml"), self.path("queue", qid + ".json"))
            return
        except OSError as e:
            if e.errno not in NO_HARD_LINKS:
                raise
        tmp = self.path("incoming", qid + ".json")
        fd = self.ops.create_exclusive(tmp)
        try:
            self.ops.write_all(fd, envelope_json)
        finally:
            self.ops.close(fd)
        self.ops.rename(tmp, self.path("queue", qid + ".json"))

    def _close_all(self, fds: list[int]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                self.ops.close(fd)

    def _unstage(self, item: _Pending) -> None:
        qid = item.envelope.queue_id
        for path in (self.path("data", qid + ".eml"), self.path("incoming", qid + ".json")):
            self._remove_quietly(path)

    def _withdraw(self, item: _Pending) -> None:
        """Undo a publish whose durability could not be confirmed: the client got 452."""
        self._remove_quietly(self.path("queue", item.envelope.queue_id + ".json"))
        self._unstage(item)

    def _remove_quietly(self, path: str) -> None:
        remove_quietly(self.ops, path)

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
        """The envelope was perhaps written without an fsync (at commit): sync it first,
        so the renamed file is never a torn one."""
        name = queue_id + ".json"
        fd = self.ops.open_read(self.path(source, name))
        try:
            self.ops.fsync(fd)
        finally:
            self.ops.close(fd)
        self.ops.rename(self.path(source, name), self.path(target, name))
        self.ops.fsync_dir(self.path(target))
        self.ops.fsync_dir(self.path(source))

    def remove(self, queue_id: str, state: str) -> Deferred:
        """Remove a delivered (or deleted) message.  Removals are grouped like commits:
        one trip to the thread pool takes every removal asked for meanwhile (a trip per
        message was a fifth of the relay's CPU)."""
        d: Deferred = Deferred()
        self._removals.append((queue_id, state, d))
        self._start_removals()
        return d

    def _start_removals(self) -> None:
        if self._removing or not self._removals:
            return
        batch, self._removals = self._removals, []
        self._removing = True
        self.run_serially(self._remove_batch, [(q, s) for q, s, _ in batch])\
            .addBoth(self._removals_done, batch)

    def _remove_batch(self, batch: list[tuple[str, str]]) -> list[OSError | None]:
        errors: list[OSError | None] = []
        for queue_id, state in batch:
            try:
                self._remove(queue_id, state)
                errors.append(None)
            except OSError as e:
                errors.append(e)
        return errors

    def _removals_done(self, outcome: Any, batch: list[tuple[str, str, Deferred]]) -> None:
        self._removing = False
        errors = outcome if isinstance(outcome, list) else [outcome] * len(batch)
        for (_, _, d), error in zip(batch, errors, strict=True):
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
        self._start_removals()

    def _remove(self, queue_id: str, state: str) -> None:
        """No directory fsync here (as in Postfix): an unlink lost to a power failure means
        the message is delivered once more, never lost; an fsync per delivered message
        halved the relay's throughput.  The body goes first: a body left without its
        envelope would be restored from its record at startup and sent again, an
        envelope left without its body is dropped (see prepare).  The body's file is kept
        as a spare for a later message where it may be (relaymail.spool.spares)."""
        self.spares.remove_body(self.path("data", queue_id + ".eml"),
                                self.path(state, queue_id + ".json"), queue_id)

    def count(self, state: str) -> int:
        return sum(1 for n in os.listdir(self.path(state)) if n.endswith(".json"))
