"""Delivery history in SQLite (or in PostgreSQL, shared by several instances): every
accepted message and every delivery outcome, one row per recipient, for the mail log
search, its statistics and the dashboard.

The database runs in a one-thread pool of its own (one connection, never shared across
threads).
Events are buffered and written in one transaction every half second, so a busy relay pays
one commit per batch, not per message.  Rows older than the retention are deleted hourly.

``watch_queue`` samples the queue depth (messages in the spool's queue) every minute into
``queue_depth``, written with the events and pruned like them, for the dashboard's chart.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from relaymail.logs import Logger
from relaymail.spool.envelope import Envelope
from relaymail.spool.safeio import open_private

log = Logger(namespace="relaymail.history")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    queue_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,          -- received, sent, deferred, bounced
    transport TEXT,
    relay TEXT,
    code INTEGER,
    reply TEXT,
    delay REAL,
    attempt INTEGER,
    credential TEXT,               -- the SMTP login that submitted it (received rows)
    account TEXT                   -- the id of the account it was sent for (received rows)
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_queue_id ON events (queue_id);
CREATE INDEX IF NOT EXISTS events_sender ON events (sender);
CREATE INDEX IF NOT EXISTS events_recipient ON events (recipient);
CREATE INDEX IF NOT EXISTS events_account ON events (account);
CREATE TABLE IF NOT EXISTS queue_depth (
    time REAL NOT NULL,
    messages INTEGER NOT NULL      -- queued and being delivered, when sampled
);
CREATE INDEX IF NOT EXISTS queue_depth_time ON queue_depth (time);
"""
COLUMNS = ("time", "queue_id", "sender", "recipient", "status", "transport", "relay", "code",
           "reply", "delay", "attempt", "credential", "account")
ADDED_COLUMNS = ("credential", "account")  # absent from files made by older versions
# A user's rows: every row of the messages the account submitted.
OWN_ROWS = ("queue_id IN (SELECT queue_id FROM events WHERE status = 'received' AND "
            "account = ?)")
# What a search answers: every row of a message names its login and account (only the
# received rows store them).
SEARCHED = ", ".join(
    f"COALESCE({c}, (SELECT m.{c} FROM events m WHERE m.queue_id = events.queue_id AND "
    f"m.status = 'received' LIMIT 1))" if c in ADDED_COLUMNS else c for c in COLUMNS)
FLUSH_INTERVAL = 0.5
MAX_PAGE = 1000


class History(Service):
    """Records events from the spool and the relay manager; answers searches."""

    def __init__(self, path: str, reactor: Any, retention_days: float,
                 clock: Callable[[], float]) -> None:
        self.path = path
        self.reactor = reactor
        self.retention = retention_days * 86400
        self.clock = clock
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="history")
        self.db: sqlite3.Connection | None = None
        self.pending: list[tuple[Any, ...]] = []
        self.flusher = LoopingCall(self.flush)
        self.flusher.clock = reactor
        self.pruner = LoopingCall(self.prune)
        self.pruner.clock = reactor
        self.samples: list[tuple[float, int]] = []  # (time, queue depth), not yet written
        self.depth: Callable[[], int] | None = None
        self.sampler: LoopingCall | None = None
        self.sample_interval = 60.0

    # ------------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        self._run(self._open)
        self.flusher.start(FLUSH_INTERVAL, now=False)
        self.pruner.start(3600, now=True)
        if self.sampler is not None and not self.sampler.running:
            self.sampler.start(self.sample_interval, now=False)

    def stopService(self) -> Deferred:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if not self.pool.started:  # stopped already (a second stopService)
            return
        for loop in (self.flusher, self.pruner, self.sampler):
            if loop is not None and loop.running:
                loop.stop()
        try:
            await self.flush()
            await self._run(self._close)
        finally:
            self.pool.stop()

    def _run(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def _open(self) -> None:
        if self.path.startswith(PG_SCHEMES):
            self.db = PostgresHistory(self.path)  # type: ignore[assignment]
            return
        os.close(open_private(self.path, os.O_RDWR | os.O_CREAT))  # 0600: it names senders
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # history, not mail: no fsync per batch
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
        for column in ADDED_COLUMNS if columns else ():  # a file from before the column
            if column not in columns:
                self.db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
        self.db.executescript(SCHEMA)

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ------------------------------------------------------------------ recording

    def accepted(self, envelope: Envelope) -> None:
        """Spool commit listener."""
        for r in envelope.recipients:
            self.pending.append((envelope.received_at, envelope.queue_id, envelope.sender,
                                 r.address, "received", None, None, 250, None, 0.0, 0,
                                 envelope.credential, account_of(envelope)))

    def delivery_event(self, event: dict[str, Any]) -> None:
        """Relay manager observer: one row per recipient of the outcome group."""
        for rcpt in event["recipients"]:
            self.pending.append((event["time"], event["queue_id"], event["sender"], rcpt,
                                 event["event"], event.get("transport"), event.get("relay"),
                                 event.get("code"), event.get("reply"), event.get("delay"),
                                 event.get("attempt"), None, None))

    def watch_queue(self, depth: Callable[[], int], interval: float = 60.0,
                    clock: IReactorTime | None = None) -> None:
        """Sample ``depth()`` every ``interval`` seconds (the first one interval after the
        start, once the spool is recovered) on ``clock`` (the reactor by default); the
        samples are written with the next batch of events."""
        if self.sampler is not None and self.sampler.running:
            self.sampler.stop()
        self.depth = depth
        self.sample_interval = interval
        self.sampler = LoopingCall(self.sample_queue)
        self.sampler.clock = clock if clock is not None else self.reactor
        if self.running:
            self.sampler.start(interval, now=False)

    def sample_queue(self) -> None:
        """Record the queue depth now (the sampler's tick)."""
        if self.depth is None:
            return
        try:
            messages = int(self.depth())
        except Exception as e:  # a broken probe must not stop the sampler (or the relay)
            log.warn("history: queue depth not sampled: {error}", error=e)
            return
        self.samples.append((self.clock(), messages))

    def flush(self) -> Deferred:
        if not self.pending and not self.samples:
            return succeed(None)
        rows, self.pending = self.pending, []
        samples, self.samples = self.samples, []
        d = self._run(self._insert, rows, samples)
        d.addErrback(lambda f: log.warn("history: {n} event(s) and {m} queue sample(s) not "
                                        "recorded: {error}", n=len(rows), m=len(samples),
                                        error=f.getErrorMessage()))
        return d

    def _insert(self, rows: list[tuple[Any, ...]],
                samples: list[tuple[float, int]] | None = None) -> None:
        assert self.db is not None
        with self.db:
            if rows:
                self.db.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
                                    f"({', '.join('?' * len(COLUMNS))})", rows)
            if samples:
                self.db.executemany("INSERT INTO queue_depth (time, messages) VALUES (?, ?)",
                                    samples)

    def prune(self) -> Deferred:
        cutoff = self.clock() - self.retention
        return self._run(self._prune, cutoff).addErrback(
            lambda f: log.warn("history: pruning failed: {error}", error=f.getErrorMessage()))

    def _prune(self, cutoff: float) -> None:
        assert self.db is not None
        with self.db:
            self.db.execute("DELETE FROM events WHERE time < ?", (cutoff,))
            self.db.execute("DELETE FROM queue_depth WHERE time < ?", (cutoff,))

    # ------------------------------------------------------------------ queries

    def search(self, filters: dict[str, Any], limit: int, offset: int) -> Deferred:
        """Fires with (total, rows as dicts), newest first."""
        return self._run(self._search, filters, max(1, min(limit, MAX_PAGE)), max(0, offset))

    def _search(self, filters: dict[str, Any], limit: int, offset: int
                ) -> tuple[int, list[dict[str, Any]]]:
        assert self.db is not None
        where, args = conditions(filters)
        total = self.db.execute(f"SELECT count(*) FROM events{where}", args).fetchone()[0]
        cursor = self.db.execute(f"SELECT {SEARCHED} FROM events{where} "
                                 "ORDER BY time DESC, id DESC LIMIT ? OFFSET ?",
                                 [*args, limit, offset])
        return total, [dict(zip(COLUMNS, row, strict=True)) for row in cursor]

    def stats(self, since: float, bucket: float = 3600, account: str | None = None
              ) -> Deferred:
        """Counts since ``since``; of one account's messages only when ``account``."""
        return self._run(self._stats, since, bucket, account)

    def _stats(self, since: float, bucket: float, account: str | None = None
               ) -> dict[str, Any]:
        assert self.db is not None
        own, mine = ("", ()) if account is None else (" AND " + OWN_ROWS, (account,))
        totals = dict(self.db.execute("SELECT status, count(*) FROM events WHERE time >= ?"
                                      f"{own} GROUP BY status", (since, *mine)).fetchall())
        per_bucket: dict[int, dict[str, int]] = {}
        for start, status, n in self.db.execute(
                "SELECT CAST(time / ? AS INTEGER) * ?, status, count(*) FROM events "
                f"WHERE time >= ?{own} GROUP BY 1, 2", (bucket, bucket, since, *mine)):
            per_bucket.setdefault(int(start), {})[status] = n
        senders = self.db.execute("SELECT sender, count(*) FROM events WHERE time >= ? AND "
                                  f"status = 'received'{own} GROUP BY sender ORDER BY 2 DESC "
                                  "LIMIT 10", (since, *mine)).fetchall()
        messages = self.db.execute("SELECT count(DISTINCT queue_id) FROM events WHERE "
                                   f"time >= ? AND status = 'received'{own}",
                                   (since, *mine)).fetchone()[0]
        latency: dict[int, float] = {
            int(start): avg for start, avg in self.db.execute(
                "SELECT CAST(time / ? AS INTEGER) * ?, avg(delay) FROM events WHERE "
                f"time >= ? AND status = 'sent'{own} GROUP BY 1", (bucket, bucket, since, *mine))}
        relays = self.db.execute(
            "SELECT relay, status, count(*) FROM events WHERE time >= ? AND relay IS NOT NULL "
            f"AND status != 'received'{own} GROUP BY 1, 2", (since, *mine)).fetchall()
        logins = self.db.execute(
            "SELECT credential, count(DISTINCT queue_id) FROM events WHERE time >= ? AND "
            f"status = 'received' AND credential IS NOT NULL{own} GROUP BY 1 ORDER BY 2 "
            "DESC LIMIT 20", (since, *mine)).fetchall()
        return {"totals": totals, "buckets": per_bucket, "top_senders": senders,
                "messages": messages, "latency": latency, "relays": relays,
                "credentials": logins}

    def queue_depth(self, since: float, bucket: float = 300) -> Deferred:
        """Fires with [(bucket start, highest depth sampled in it)] since ``since``, oldest
        first; buckets without a sample (the relay was not running) are left out."""
        return self._run(self._queue_depth, since, bucket)

    def _queue_depth(self, since: float, bucket: float) -> list[tuple[float, int]]:
        assert self.db is not None
        return [(float(start), int(n)) for start, n in self.db.execute(
            "SELECT CAST(time / ? AS INTEGER) * ?, max(messages) FROM queue_depth "
            "WHERE time >= ? GROUP BY 1 ORDER BY 1", (bucket, bucket, since))]

    def usage(self, starts: dict[str, float]) -> Deferred:
        """Fires with {credential: {window: messages accepted since starts[window]}}: what
        the quotas count (one per message), from the recorded history."""
        return self._run(self._usage, starts)

    def _usage(self, starts: dict[str, float]) -> dict[str, dict[str, int]]:
        assert self.db is not None
        out: dict[str, dict[str, int]] = {}
        for window, start in starts.items():
            for name, n in self.db.execute(
                    "SELECT credential, count(DISTINCT queue_id) FROM events WHERE time >= ? "
                    "AND status = 'received' AND credential IS NOT NULL GROUP BY 1", (start,)):
                out.setdefault(name, {})[window] = n
        return out


PG_SCHEMES = ("postgresql://", "postgres://")
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY, time DOUBLE PRECISION NOT NULL, queue_id TEXT NOT NULL,
    sender TEXT NOT NULL, recipient TEXT NOT NULL, status TEXT NOT NULL, transport TEXT,
    relay TEXT, code INTEGER, reply TEXT, delay DOUBLE PRECISION, attempt INTEGER,
    credential TEXT, account TEXT);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE INDEX IF NOT EXISTS events_queue_id ON events (queue_id);
CREATE INDEX IF NOT EXISTS events_sender ON events (sender);
CREATE INDEX IF NOT EXISTS events_recipient ON events (recipient);
CREATE INDEX IF NOT EXISTS events_account ON events (account);
CREATE TABLE IF NOT EXISTS queue_depth (time DOUBLE PRECISION NOT NULL,
                                        messages INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS queue_depth_time ON queue_depth (time)
"""
SCHEMA_LOCK = 0x68697374  # "hist": two instances starting at once create the tables once


def for_postgres(sql: str) -> str:
    """History's SQL (SQLite's) as PostgreSQL takes it: ``%s`` parameters, and buckets by
    FLOOR (PostgreSQL's CAST rounds where SQLite's truncates)."""
    return sql.replace("CAST(time / ? AS INTEGER)", "FLOOR(time / ?)").replace("?", "%s")


class PostgresHistory:
    """The few calls History makes on an sqlite3 connection, on a psycopg one: execute,
    executemany, ``with db:`` as one transaction (autocommit otherwise), close."""

    def __init__(self, url: str) -> None:
        import psycopg  # only with a shared history

        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in PG_SCHEMA.split(";"):
                self.conn.execute(statement)  # type: ignore[call-overload]
        self._transactions: list[Any] = []

    def execute(self, sql: str, args: Any = ()) -> Any:
        return self.conn.execute(for_postgres(sql), args)  # type: ignore[call-overload]

    def executemany(self, sql: str, rows: Any) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(for_postgres(sql), rows)  # type: ignore[call-overload]

    def __enter__(self) -> PostgresHistory:
        transaction = self.conn.transaction()
        transaction.__enter__()
        self._transactions.append(transaction)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._transactions.pop().__exit__(*exc)

    def close(self) -> None:
        self.conn.close()


def account_of(envelope: Envelope) -> str | None:
    """The account a message was sent for, by id (ids are never reused; names may be)."""
    user_id = envelope.extra.get("user_id")
    return None if user_id is None else str(user_id)


def conditions(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """WHERE clause for the search filters (substring match on addresses, exact on the
    rest); values are always bound parameters."""
    parts: list[str] = []
    args: list[Any] = []
    for name in ("sender", "recipient"):
        if filters.get(name):
            parts.append(f"{name} LIKE ? ESCAPE '\\'")
            args.append("%" + like_escape(str(filters[name]).lower()) + "%")
    for name in ("queue_id", "status"):
        if filters.get(name):
            parts.append(f"{name} = ?")
            args.append(filters[name])
    if filters.get("account"):
        parts.append(OWN_ROWS)
        args.append(filters["account"])
    if filters.get("since") is not None:
        parts.append("time >= ?")
        args.append(float(filters["since"]))
    if filters.get("until") is not None:
        parts.append("time < ?")
        args.append(float(filters["until"]))
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
