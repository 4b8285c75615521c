"""The webhook outbox: every event for every endpoint, in SQLite, until it is delivered or
given up on.  This is what makes webhooks durable.

The ``accepted`` events of a message are written after its 250 (in an acceptor process
the 250 is not ours to hold back), so a crash can lose them while the message itself is
safe in the spool; :meth:`Outbox.missing_accepted` finds such messages among those
recovered at startup, and the hub reports them then (``accepted_seen`` remembers which
messages had theirs written, for as long as a message can stay queued).

Events are buffered in memory for at most ``FLUSH_INTERVAL`` and written in one
transaction, fsync'd (``synchronous=FULL``): one fsync per batch, whatever the number of
events.  :meth:`Outbox.durable` fires once everything added so far is on disk; the relay
manager waits for it before it removes or updates a message whose events it reported, so
that a crash can repeat an event (at least once, each with its ``id``), never lose it.

All SQLite work runs in one thread of its own, one connection, in order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall

from relaymail.common.dbthread import DatabaseThread
from relaymail.logs import Logger

log = Logger(namespace="relaymail.webhooks")

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    body BLOB NOT NULL,            -- the JSON document, exactly as it is POSTed
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL,           -- pending, delivered, failed
    last_error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint, state, next_attempt);
CREATE INDEX IF NOT EXISTS deliveries_updated ON deliveries (state, updated);
CREATE TABLE IF NOT EXISTS accepted_seen (   -- messages whose accepted events are written
    queue_id TEXT PRIMARY KEY,
    time REAL NOT NULL
);
"""
FLUSH_INTERVAL = 0.1
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
KEEP_DELIVERED = 86400.0


@dataclass
class Delivery:
    """One event for one endpoint, as the sender works on it."""

    id: int
    endpoint: str
    event_id: str
    event: str
    body: bytes
    created: float
    attempts: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "event_id": self.event_id,
                "event": self.event, "created": self.created, "attempts": self.attempts}


class Outbox:
    """The SQLite outbox, with a write buffer; every public method is safe on the reactor
    thread (it returns a Deferred)."""

    def __init__(self, path: str, reactor: Any, clock: Callable[[], float],
                 keep_failed_days: float = 30.0, keep_seen: float = 6 * 86400) -> None:
        self.path = path
        self.keep_seen = keep_seen  # longer than a message may stay queued
        self.reactor = reactor
        self.clock = clock
        self.keep_failed = keep_failed_days * 86400
        # synchronous=FULL: an event is durable once its batch is written
        self.store = DatabaseThread(path, reactor, "webhooks", SCHEMA, synchronous="FULL")
        self.buffer: list[tuple[Any, ...]] = []  # new deliveries
        self.outcomes: list[tuple[Any, ...]] = []  # attempts' results, written with them
        self.waiting: list[Deferred] = []  # durable() callers of the buffered rows
        self.flushing: Deferred | None = None
        self.flusher = LoopingCall(self.flush)
        self.flusher.clock = reactor
        self.on_written: list[Callable[[set[str]], None]] = []  # endpoints with new rows
        self.failures = 0
        self.last_complaint = -60.0

    # -- lifecycle

    def open(self) -> None:
        """Open (and create) the file now, on the calling thread: at startup, so that an
        outbox that cannot be used stops startup instead of every delivery later."""
        self.store.open_now()

    def start(self) -> Deferred:
        self.flusher.start(FLUSH_INTERVAL, now=False)
        return self.store.start()

    def stop(self) -> Deferred:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if not self.store.started:
            return
        if self.flusher.running:
            self.flusher.stop()
        try:
            await self.flush()
        finally:
            await self.store.stop()

    def _run(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return self.store.run(f, *args)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (in the outbox's thread only)."""
        return self.store.connection

    # -- adding events

    def add(self, endpoint: str, event_id: str, event: str, queue_id: str, body: bytes,
            state: str = PENDING, error: str | None = None) -> None:
        now = self.clock()
        self.buffer.append((endpoint, event_id, event, queue_id, body, now, now, state, error,
                            now))

    def durable(self) -> Deferred:
        """Fires once every event added so far is on disk."""
        if not self.buffer and not self.outcomes and self.flushing is None:
            return succeed(None)
        d: Deferred = Deferred()
        self.waiting.append(d)
        if self.flushing is None:
            self.flush()
        return d

    def flush(self) -> Deferred:
        """Write the buffer in one transaction (after the one being written, if any)."""
        if self.flushing is not None:
            return self.flushing
        if not self.buffer and not self.outcomes:
            return succeed(None)
        rows, self.buffer = self.buffer, []
        outcomes, self.outcomes = self.outcomes, []
        waiting, self.waiting = self.waiting, []
        d = self._run(self._write, rows, outcomes)
        self.flushing = d

        def written(_: Any) -> None:
            self.flushing = None
            for waiter in waiting:
                waiter.callback(None)
            endpoints = {row[0] for row in rows}
            for listener in self.on_written:
                listener(endpoints)
            if self.waiting and (self.buffer or self.outcomes):
                self.flush()
            elif self.waiting:  # asked for while this batch was written, nothing since:
                for waiter in self.waiting[:]:  # everything before them is on disk now
                    self.waiting.remove(waiter)
                    waiter.callback(None)

        def failed(failure: Any) -> None:
            self.flushing = None
            self.failures += 1
            now = self.clock()
            if now - self.last_complaint >= 60:  # once a minute, not ten times a second
                self.last_complaint = now
                log.error("webhooks: cannot write {count} event(s) to {path}: {error}; "
                          "retrying ({failures} failed writes so far)", count=len(rows),
                          path=self.path, error=failure.getErrorMessage(),
                          failures=self.failures)
            self.buffer[:0] = rows  # kept, in order, for the next flush
            self.outcomes[:0] = outcomes
            self.waiting[:0] = waiting

        d.addCallbacks(written, failed)
        return d

    def _write(self, rows: list[tuple[Any, ...]], outcomes: list[tuple[Any, ...]]) -> None:
        """New deliveries and attempts' results, in one transaction (one fsync)."""
        with self.db:
            self.db.executemany("UPDATE deliveries SET state = ?, attempts = ?, "
                                "next_attempt = ?, last_error = ?, updated = ? WHERE id = ?",
                                outcomes)
            self.db.executemany(
                "INSERT INTO deliveries (endpoint, event_id, event, queue_id, body, created, "
                "next_attempt, state, last_error, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows)
            self.db.executemany("INSERT OR IGNORE INTO accepted_seen VALUES (?, ?)",
                                {(row[3], row[5]) for row in rows if row[2] == "accepted"})

    def missing_accepted(self, queue_ids: list[str]) -> Deferred:
        """Those of ``queue_ids`` whose accepted events were never written."""
        return self._run(self._missing_accepted, queue_ids)

    def _missing_accepted(self, queue_ids: list[str]) -> set[str]:
        missing = set(queue_ids)
        for start in range(0, len(queue_ids), 500):
            chunk = queue_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            missing -= {row[0] for row in self.db.execute(
                f"SELECT queue_id FROM accepted_seen WHERE queue_id IN ({marks})", chunk)}
        return missing

    # -- the senders' side

    def due(self, endpoint: str, now: float, limit: int, exclude: set[int]) -> Deferred:
        """Pending deliveries of ``endpoint`` whose time has come (oldest first), once the
        results recorded so far are written (a delivery just made is not pending)."""
        return self.durable().addCallback(
            lambda _: self._run(self._due, endpoint, now, limit, tuple(exclude)))

    def _due(self, endpoint: str, now: float, limit: int, exclude: tuple[int, ...]
             ) -> list[Delivery]:
        rows = self.db.execute(
            "SELECT id, endpoint, event_id, event, body, created, attempts FROM deliveries "
            "WHERE endpoint = ? AND state = 'pending' AND next_attempt <= ? "
            "ORDER BY next_attempt, id LIMIT ?", (endpoint, now, limit + len(exclude)))
        found = [Delivery(*row) for row in rows if row[0] not in exclude]
        return found[:limit]

    def next_due(self, endpoint: str) -> Deferred:
        """The time of ``endpoint``'s next pending delivery, or None."""
        return self._run(lambda: self._scalar(
            "SELECT min(next_attempt) FROM deliveries WHERE endpoint = ? AND "
            "state = 'pending'", endpoint))

    def backlog(self) -> Deferred:
        """Pending deliveries per endpoint."""
        return self._run(self._counts, PENDING)

    def failed_counts(self) -> Deferred:
        return self._run(self._counts, FAILED)

    def _counts(self, state: str) -> dict[str, int]:
        return dict(self.db.execute("SELECT endpoint, count(*) FROM deliveries WHERE "
                                    "state = ? GROUP BY endpoint", (state,)).fetchall())

    def _scalar(self, sql: str, *args: Any) -> Any:
        return self.db.execute(sql, args).fetchone()[0]

    def record(self, delivery_id: int, state: str, attempts: int, next_attempt: float,
               error: str | None) -> None:
        """The outcome of one attempt: delivered, failed for good, or pending again;
        written with the next batch (lost with a crash, the event is sent again)."""
        self.outcomes.append((state, attempts, next_attempt, error, self.clock(),
                              delivery_id))

    # -- the console's side

    def list(self, state: str | None, endpoint: str | None, limit: int, offset: int
             ) -> Deferred:
        return self._run(self._list, state, endpoint, limit, offset)

    def _list(self, state: str | None, endpoint: str | None, limit: int, offset: int
              ) -> dict[str, Any]:
        where, args = [], []
        for column, value in (("state", state), ("endpoint", endpoint)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self.db.execute(f"SELECT count(*) FROM deliveries {clause}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT id, endpoint, event_id, event, queue_id, created, attempts, next_attempt, "
            f"state, last_error, updated, body FROM deliveries {clause} ORDER BY id DESC "
            f"LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        keys = ("id", "endpoint", "event_id", "event", "queue_id", "created", "attempts",
                "next_attempt", "state", "last_error", "updated", "body")
        items = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in items:
            item["body"] = bytes(item["body"]).decode("utf-8", "replace")
        return {"total": total, "items": items}

    def retry(self, delivery_id: int | None) -> Deferred:
        """Make a failed delivery (or all of them: None) pending and due now; fires with
        how many per endpoint."""
        return self._run(self._retry, delivery_id, self.clock())

    def _retry(self, delivery_id: int | None, now: float) -> dict[str, int]:
        where, args = "state = 'failed'", [now, now]
        if delivery_id is not None:
            where += " AND id = ?"
            args.append(delivery_id)
        with self.db:
            touched = dict(self.db.execute(
                f"SELECT endpoint, count(*) FROM deliveries WHERE {where} GROUP BY endpoint",
                args[2:]).fetchall())
            # created moves too: the retry_for window starts again from the operator's retry
            self.db.execute(f"UPDATE deliveries SET state = 'pending', next_attempt = ?, "
                            f"created = ?, last_error = NULL WHERE {where}", args)
        return touched

    def prune(self) -> Deferred:
        return self._run(self._prune, self.clock())

    def _prune(self, now: float) -> None:
        with self.db:
            self.db.execute("DELETE FROM deliveries WHERE state = 'delivered' AND updated < ?",
                            (now - KEEP_DELIVERED,))
            self.db.execute("DELETE FROM deliveries WHERE state = 'failed' AND updated < ?",
                            (now - self.keep_failed,))
            self.db.execute("DELETE FROM accepted_seen WHERE time < ?", (now - self.keep_seen,))

