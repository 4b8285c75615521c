"""The archive: a copy of every accepted message (bounces of ours included), kept for
``archive.retention_days`` and within ``archive.max_bytes``, searchable and readable in the
console and the API (relaymail.web.archive_api).

Where things are (``archive.path``, by default ``<spool_dir>/archive``, 0700):

* ``<queue_id>.eml``: the spool's body file, hard-linked when the message is committed, so
  keeping it costs one ``link()`` on the reactor thread and no bytes until the spool
  removes its own name.  The link is made in the commit listener itself, before the relay
  manager (a later listener of the same commit) can deliver and remove the message.  On
  another filesystem (``EXDEV``) the spool file is opened at once (the open descriptor
  keeps it readable after the spool removes it) and copied in the archive's thread.  The
  file is the spool's format: the body, then the envelope record; read it with
  ``relaymail.spool.record.open_body``.
* ``archive.db``: SQLite (WAL), one row per message (envelope, Subject, From, To,
  Message-ID, status, bytes stored) and one per recipient (its latest status and reply),
  written in batches every half second from a one-thread pool of its own, where the
  headers are read and parsed too; never on the reactor thread.

Retention runs at start and hourly in that thread, in chunks: copies older than the
retention go, then the oldest until the total is under ``max_bytes``.  At start the
directory and the index are reconciled: a copy without a row (a crash before the batch was
written) gets its row from its own envelope record, a row without a copy is dropped.

Privacy: the index keeps the SMTP credential that submitted each message, so that once
accounts exist a user can be shown only their own mail; today only the admin reads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from relaymail.common.dbthread import DatabaseThread
from relaymail.config import Config
from relaymail.events import mailview
from relaymail.history import like_escape
from relaymail.logs import Logger
from relaymail.spool.envelope import DELIVERED, FAILED, QUEUE_ID_RE, Envelope, Recipient
from relaymail.spool.record import open_body, read_record
from relaymail.spool.safeio import open_private

log = Logger(namespace="relaymail.archive")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id TEXT PRIMARY KEY,
    received REAL NOT NULL,
    sender TEXT NOT NULL,
    credential TEXT,               -- the SMTP login that submitted it (per-user views)
    size INTEGER NOT NULL,         -- the message as accepted
    stored INTEGER NOT NULL,       -- bytes of the copy on disk (with its envelope record)
    subject TEXT,
    header_from TEXT,
    header_to TEXT,
    message_id TEXT,               -- without its angle brackets
    bounce_of TEXT,                -- for a bounce of ours: the message it reports
    status TEXT NOT NULL,          -- received, deferred, sent, bounced, failed
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id TEXT NOT NULL,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    reply TEXT,
    time REAL,
    PRIMARY KEY (queue_id, address)
);
"""
MESSAGE_COLUMNS = ("queue_id", "received", "sender", "credential", "size", "stored",
                   "subject", "header_from", "header_to", "message_id", "bounce_of",
                   "status", "updated")
FLUSH_INTERVAL = 0.5
PRUNE_INTERVAL = 3600.0
PRUNE_CHUNK = 500
MAX_PAGE = 500
STATUSES = ("received", "deferred", "sent", "bounced", "failed")
# A message's status from its recipients': any still waiting, else all sent, else the
# worst final one.
SUMMARY = """
UPDATE messages SET updated = ?, status = coalesce((SELECT CASE
    WHEN sum(r.status = 'deferred') > 0 THEN 'deferred'
    WHEN sum(r.status = 'received') > 0 THEN 'received'
    WHEN sum(r.status = 'sent') = count(*) THEN 'sent'
    WHEN sum(r.status = 'bounced') > 0 THEN 'bounced'
    ELSE 'failed' END FROM recipients r WHERE r.queue_id = messages.queue_id), status)
WHERE queue_id = ?
"""


@dataclass
class Accepted:
    """A message to index: its envelope, and the open spool file when it must be copied."""

    envelope: Envelope
    source_fd: int | None = None


@dataclass
class Batch:
    messages: list[Accepted] = field(default_factory=list)
    updates: list[tuple[str, list[str], str, str | None, float]] = field(default_factory=list)


def message_id_key(text: str | None) -> str | None:
    if not text:
        return None
    return text.strip().strip("<>").strip()[:998] or None


def recipient_status(state: str, attempts: int) -> str:
    """An envelope recipient's state in the archive's words (for recovered messages)."""
    if state == DELIVERED:
        return "sent"
    if state == FAILED:
        return "bounced"
    return "deferred" if attempts else "received"


class Archive(Service):
    """Keeps the copies and their index; answers searches.  ``accepted`` is a spool commit
    listener and ``delivery_event`` a relay-manager observer (relaymail.service)."""

    def __init__(self, directory: str, spool_data: str, reactor: Any,
                 clock: Callable[[], float], retention_days: float, max_bytes: int,
                 timer: IReactorTime | None = None) -> None:
        self.directory = directory
        self.spool_data = spool_data  # the spool's data/ directory
        self.reactor = reactor
        self.clock = clock
        self.retention = retention_days * 86400
        self.max_bytes = max_bytes
        self.db_path = os.path.join(directory, "archive.db")
        self.database = DatabaseThread(self.db_path, reactor, "archive", SCHEMA)
        self.batch = Batch()
        self.flusher = LoopingCall(self.flush)
        self.flusher.clock = timer or reactor
        self.pruner = LoopingCall(self.prune)
        self.pruner.clock = timer or reactor
        self.link = os.link  # how the copy is made (tests make it fail as EXDEV would)
        self.started: Deferred = succeed(None)  # fires once opened, reconciled and pruned
        self.copies = 0  # messages copied rather than linked (another filesystem)
        self.failures = 0  # messages that could not be archived

    # ------------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        """Make the directory (at startup, before any commit), then open, reconcile and
        prune in the thread."""
        super().startService()
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        opened = self.database.start()
        self.flusher.start(FLUSH_INTERVAL, now=False)
        self.started = ensureDeferred(self._start(opened))

    async def _start(self, opened: Deferred) -> None:
        try:
            await opened
            await self._run(self._reconcile)
        except Exception as e:
            log.error("archive: cannot open {path}: {error}", path=self.db_path, error=e)
            return
        await self.prune()
        if self.running and not self.pruner.running:
            self.pruner.start(PRUNE_INTERVAL, now=False)

    def stopService(self) -> Deferred:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if not self.database.started:
            return
        await self.started
        for loop in (self.flusher, self.pruner):
            if loop.running:
                loop.stop()
        try:
            await self.flush()
        finally:
            await self.database.stop()

    def _run(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return self.database.run(f, *args)

    def file(self, queue_id: str) -> str:
        if not QUEUE_ID_RE.fullmatch(queue_id):
            raise ValueError(f"not a queue ID: {queue_id[:40]!r}")
        return os.path.join(self.directory, queue_id + ".eml")

    # ------------------------------------------------------------------ recording

    def take_recovered(self, envelopes: Iterable[Envelope]) -> None:
        """A batch of the queue found at startup (relaymail.spool.recovery): linked here
        when not archived yet, before the relay manager gets the batch."""
        for envelope in envelopes:
            self.accepted(envelope)

    def accepted(self, envelope: Envelope) -> None:
        """Spool commit listener: link the body now (one syscall), index it later."""
        qid = envelope.queue_id
        source = os.path.join(self.spool_data, qid + ".eml")
        item = Accepted(envelope)
        try:
            self.link(source, self.file(qid), follow_symlinks=False)
        except FileExistsError:
            return  # announced again (a scan after an acceptor's death, a restart): its
            # row is written or on its way (or made from the copy at the next start)
        except OSError as e:
            try:  # another filesystem: keep it open, copy it in the thread
                item.source_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as e2:
                self.failures += 1
                log.warn("archive: {queue_id} not archived: {error} ({first})",
                         queue_id=qid, error=e2, first=e)
                return
        self.batch.messages.append(item)

    def delivery_event(self, event: dict[str, Any]) -> None:
        """Relay manager observer: the recipients' latest status and reply."""
        if event.get("event") in STATUSES:
            self.batch.updates.append((event["queue_id"], list(event["recipients"]),
                                       event["event"], event.get("reply"),
                                       float(event["time"])))

    def flush(self) -> Deferred:
        if not self.batch.messages and not self.batch.updates:
            return succeed(None)
        batch, self.batch = self.batch, Batch()
        d = self._run(self._write, batch, self.clock())
        d.addErrback(self._not_written, batch)
        return d

    def _not_written(self, failure: Any, batch: Batch) -> None:
        for item in batch.messages:
            if item.source_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(item.source_fd)
        log.error("archive: {n} message(s) and {m} status change(s) not indexed: {error}",
                  n=len(batch.messages), m=len(batch.updates),
                  error=failure.getErrorMessage())

    def _write(self, batch: Batch, now: float) -> None:
        """Thread: copy what could not be linked, read the headers, write one transaction."""
        db = self.database.connection
        rows: list[tuple[Any, ...]] = []
        recipients: list[tuple[Any, ...]] = []
        for item in batch.messages:
            try:
                row, rcpts = self._index(item, now)
            except OSError as e:
                self.failures += 1
                log.warn("archive: {queue_id} not archived: {error}",
                         queue_id=item.envelope.queue_id, error=e)
                continue
            rows.append(row)
            recipients.extend(rcpts)
        with db:
            self._insert(rows, recipients)
            touched = set()
            for qid, addresses, status, reply, when in batch.updates:
                db.executemany(
                    "UPDATE recipients SET status = ?, reply = ?, time = ? "
                    "WHERE queue_id = ? AND address = ?",
                    [(status, (reply or "")[:2000] or None, when, qid, a) for a in addresses])
                touched.add(qid)
            db.executemany(SUMMARY, [(now, qid) for qid in touched])

    def _insert(self, rows: list[tuple[Any, ...]], recipients: list[tuple[Any, ...]]) -> None:
        db = self.database.connection
        db.executemany(
            f"INSERT OR IGNORE INTO messages ({', '.join(MESSAGE_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(MESSAGE_COLUMNS))})", rows)
        db.executemany("INSERT OR IGNORE INTO recipients VALUES (?, ?, ?, ?, ?)",
                            recipients)

    def _index(self, item: Accepted, now: float
               ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """Thread: the copy (when needed) and the rows of one message."""
        envelope = item.envelope
        path = self.file(envelope.queue_id)
        if item.source_fd is not None:
            try:
                self._copy(item.source_fd, path)
                self.copies += 1
            finally:
                os.close(item.source_fd)
        return self._rows(envelope, path, now)

    def _copy(self, source_fd: int, path: str) -> None:
        tmp = path + ".tmp"
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            offset = 0
            while chunk := os.pread(source_fd, 1 << 20, offset):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                offset += len(chunk)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)

    def _rows(self, envelope: Envelope, path: str, now: float
              ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        stored = os.stat(path, follow_symlinks=False).st_size
        try:
            with open_body(path) as f:
                found = mailview.summary(f.read(mailview.HEAD_LIMIT))
        except OSError:
            raise
        except Exception as e:  # a header the email package cannot read: index it anyway
            log.info("archive: {queue_id}: headers not read: {error}",
                     queue_id=envelope.queue_id, error=e)
            found = {"subject": None, "from": None, "to": None}
        statuses = [recipient_status(r.state, r.attempts) for r in envelope.recipients]
        row = (envelope.queue_id, envelope.received_at, envelope.sender, envelope.credential,
               int(envelope.size or 0), stored, found["subject"], found["from"], found["to"],
               message_id_key(envelope.extra.get("message_id")),
               envelope.extra.get("bounce_of"), summary_of(statuses), now)
        rcpts = [(envelope.queue_id, r.address, s, r.last_reply, None)
                 for r, s in zip(envelope.recipients, statuses, strict=True)]
        return row, rcpts

    def _reconcile(self) -> None:
        """Thread, at start: index the copies without a row (from their own envelope
        records), drop the rows without a copy, remove copies cut short."""
        db = self.database.connection
        names = os.listdir(self.directory)
        for name in names:
            if name.endswith(".eml.tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
        files = {n[:-4] for n in names if n.endswith(".eml") and QUEUE_ID_RE.fullmatch(n[:-4])}
        known = {row[0] for row in db.execute("SELECT queue_id FROM messages")}
        gone = sorted(known - files)
        rows, recipients = [], []
        for qid in sorted(files - known):
            envelope = self._envelope_of(qid)
            if envelope is None:
                continue
            try:
                row, rcpts = self._rows(envelope, self.file(qid), self.clock())
            except OSError:
                continue
            rows.append(row)
            recipients.extend(rcpts)
        with db:
            self._insert(rows, recipients)
            self._forget(gone)
        if rows or gone:
            log.info("archive: {added} copy(ies) indexed from their records, {gone} "
                     "row(s) without a copy dropped", added=len(rows), gone=len(gone))

    def _envelope_of(self, qid: str) -> Envelope | None:
        path = self.file(qid)
        try:
            record = read_record(path)
            if record is not None:
                return Envelope.from_json(record)
        except (OSError, ValueError, TypeError):
            pass
        try:  # no record: what the file itself says
            when = os.stat(path).st_mtime
        except OSError:
            return None
        return Envelope(queue_id=qid, sender="", recipients=[Recipient("(unknown)")],
                        received_at=when)

    def _forget(self, queue_ids: list[str]) -> None:
        db = self.database.connection
        for start in range(0, len(queue_ids), PRUNE_CHUNK):
            chunk = [(q,) for q in queue_ids[start:start + PRUNE_CHUNK]]
            db.executemany("DELETE FROM recipients WHERE queue_id = ?", chunk)
            db.executemany("DELETE FROM messages WHERE queue_id = ?", chunk)

    # ------------------------------------------------------------------ retention

    def prune(self) -> Deferred:
        """Remove the copies past the retention, then the oldest past ``max_bytes``; in
        chunks, each its own trip to the thread (searches go on meanwhile)."""
        d = ensureDeferred(self._prune(self.clock() - self.retention))
        return d.addErrback(lambda f: log.error("archive: retention failed: {error}",
                                                error=f.getErrorMessage()))

    async def _prune(self, cutoff: float) -> tuple[int, int]:
        by_age = by_size = 0
        while (n := await self._run(self._prune_chunk, cutoff, None)) > 0:
            by_age += n
        while (n := await self._run(self._prune_chunk, None, self.max_bytes)) > 0:
            by_size += n
        if by_age or by_size:
            log.info("archive: {age} copy(ies) past {days:g} days and {size} past "
                     "{max_bytes} bytes removed", age=by_age, days=self.retention / 86400,
                     size=by_size, max_bytes=self.max_bytes)
        return by_age, by_size

    def _prune_chunk(self, cutoff: float | None, max_bytes: int | None) -> int:
        """Thread: remove one chunk, older than ``cutoff`` or the oldest while the total
        is over ``max_bytes``; how many were removed."""
        if self.database.db is None:  # not open (it failed): nothing to prune
            return 0
        db = self.database.connection
        if cutoff is not None:
            doomed = [r[0] for r in db.execute(
                "SELECT queue_id FROM messages WHERE received < ? ORDER BY received "
                "LIMIT ?", (cutoff, PRUNE_CHUNK))]
        else:
            total = db.execute("SELECT coalesce(sum(stored), 0) FROM messages")\
                .fetchone()[0]
            doomed = []
            for qid, stored in db.execute(
                    "SELECT queue_id, stored FROM messages ORDER BY received, queue_id "
                    "LIMIT ?", (PRUNE_CHUNK,)):
                if total <= (max_bytes or 0):
                    break
                doomed.append(qid)
                total -= stored
        for qid in doomed:
            try:
                os.unlink(self.file(qid))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warn("archive: cannot remove {queue_id}: {error}", queue_id=qid,
                             error=e)
                    continue
        with db:
            self._forget(doomed)
        return len(doomed)

    # ------------------------------------------------------------------ queries

    def search(self, filters: dict[str, Any], limit: int, offset: int) -> Deferred:
        """Fires with {"total", "items"}: newest first, each with its recipients."""
        return self._run(self._search, filters, max(1, min(limit, MAX_PAGE)), max(0, offset))

    def _search(self, filters: dict[str, Any], limit: int, offset: int) -> dict[str, Any]:
        db = self.database.connection
        where, args = conditions(filters)
        total = db.execute(f"SELECT count(*) FROM messages m{where}", args).fetchone()[0]
        rows = db.execute(
            f"SELECT {', '.join('m.' + c for c in MESSAGE_COLUMNS)} FROM messages m{where} "
            "ORDER BY m.received DESC, m.queue_id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset]).fetchall()
        items = [dict(zip(MESSAGE_COLUMNS, row, strict=True)) for row in rows]
        self._add_recipients(items)
        return {"total": total, "items": items}

    def _add_recipients(self, items: list[dict[str, Any]]) -> None:
        db = self.database.connection
        by_id = {item["queue_id"]: item for item in items}
        for item in items:
            item["recipients"] = []
        if not by_id:
            return
        marks = ",".join("?" * len(by_id))
        for qid, address, status, reply, when in db.execute(
                f"SELECT queue_id, address, status, reply, time FROM recipients WHERE "
                f"queue_id IN ({marks}) ORDER BY rowid", list(by_id)):
            by_id[qid]["recipients"].append({"address": address, "status": status,
                                             "reply": reply, "time": when})

    def usage(self) -> Deferred:
        """Fires with the number of messages and bytes kept, and the limits."""
        return self._run(self._usage)

    def _usage(self) -> dict[str, Any]:
        db = self.database.connection
        count, stored = db.execute(
            "SELECT count(*), coalesce(sum(stored), 0) FROM messages").fetchone()
        return {"messages": count, "bytes": stored, "max_bytes": self.max_bytes,
                "retention_days": self.retention / 86400}

    def lookup(self, queue_id: str) -> Deferred:
        """Fires with the index row of one message (with its recipients), or None."""
        return self._run(self._lookup, queue_id)

    def _lookup(self, queue_id: str) -> dict[str, Any] | None:
        found = self._search({"queue_id": queue_id}, 1, 0)["items"]
        return found[0] if found else None


def summary_of(statuses: list[str]) -> str:
    """A message's status from its recipients' (the SUMMARY query, for one new row)."""
    for waiting in ("deferred", "received"):
        if waiting in statuses:
            return waiting
    if all(s == "sent" for s in statuses):
        return "sent"
    return "bounced" if "bounced" in statuses else "failed"


def conditions(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """WHERE clause of a search: substrings for addresses and the subject, exact for the
    rest; values are always bound parameters."""
    parts: list[str] = []
    args: list[Any] = []
    for name, column in (("sender", "m.sender"), ("subject", "m.subject")):
        if filters.get(name):
            parts.append(f"{column} LIKE ? ESCAPE '\\'")
            args.append("%" + like_escape(str(filters[name])) + "%")
    if filters.get("recipient"):
        parts.append("EXISTS (SELECT 1 FROM recipients r WHERE r.queue_id = m.queue_id AND "
                     "r.address LIKE ? ESCAPE '\\')")
        args.append("%" + like_escape(str(filters["recipient"])) + "%")
    if filters.get("message_id"):
        parts.append("m.message_id = ?")
        args.append(message_id_key(str(filters["message_id"])))
    for name in ("queue_id", "credential"):
        if filters.get(name):
            parts.append(f"m.{name} = ?")
            args.append(str(filters[name]))
    if filters.get("status"):
        parts.append("(m.status = ? OR EXISTS (SELECT 1 FROM recipients r WHERE "
                     "r.queue_id = m.queue_id AND r.status = ?))")
        args += [filters["status"]] * 2
    if filters.get("since") is not None:
        parts.append("m.received >= ?")
        args.append(float(filters["since"]))
    if filters.get("until") is not None:
        parts.append("m.received < ?")
        args.append(float(filters["until"]))
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def build_archive(config: Config, reactor: Any, spool_data: str) -> Archive:
    """The ``archive`` section's Archive (its directory beside the spool by default)."""
    settings = config.archive
    directory = settings.path or os.path.join(config.spool_dir, "archive")
    archive = Archive(directory, spool_data, reactor, reactor.seconds,
                      settings.retention_days, settings.max_bytes)
    archive.setName("archive")
    return archive
