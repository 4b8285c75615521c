"""The suppression list: recipients that bounced for good, refused at RCPT from then on.

Stored in SQLite (``<spool_dir>/suppression.db``), written only by the main process (hard
bounces, the API, the command line).  Every process that answers RCPT (the main process
and each acceptor) keeps the addresses in memory, so the check at RCPT costs a dictionary
lookup, and reloads them in a thread when the file changes (looked at once a second), so
a change made in the main process reaches every acceptor within about a second.

Addresses are compared in lower case: mailbox names are case-sensitive in RFC 5321, but no
provider we relay to treats them so, and a bounce for ``Bob@`` should stop ``bob@`` too.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import io
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from relaymail.common.replies import Reply
from relaymail.logs import Logger, printable
from relaymail.spool.safeio import open_private

log = Logger(namespace="relaymail.suppression")

SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressed (
    address TEXT PRIMARY KEY,      -- lower case
    reason TEXT NOT NULL,          -- the bounce's reply, or the operator's note
    source TEXT NOT NULL,          -- bounce, manual, import
    queue_id TEXT,                 -- the message that bounced
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS suppressed_created ON suppressed (created);
"""
SOURCES = ("bounce", "manual", "import")
DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
FORMULA = ("=", "+", "-", "@", "\t", "\r")
MAX_REASON = 500
MAX_ADDRESS = 320
# RFC 3463 codes that say the mailbox itself is wrong: unknown user, bad domain, bad
# syntax, moved, null MX, disabled.  A 5xx about policy or content says nothing about the
# address and must not stop all later mail to it.
HARD_CODES = ("5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1")


class SuppressionError(ValueError):
    """A bad address or entry given to the list (the API answers it as a 4xx)."""


@dataclass(frozen=True)
class Entry:
    address: str
    reason: str
    source: str
    queue_id: str | None
    created: float

    def public(self) -> dict[str, Any]:
        return {"address": self.address, "reason": self.reason, "source": self.source,
                "queue_id": self.queue_id, "created": self.created}


def normalize(address: str) -> str:
    """The lookup key: lower case, without <>, a quoted local part unquoted when it needs
    no quotes (``"bob"@x`` is ``bob@x``)."""
    text = unquoted(address.strip().strip("<>").strip()).lower()
    if not text or len(text) > MAX_ADDRESS or "@" not in text or any(
            c.isspace() or ord(c) < 32 for c in text):
        raise SuppressionError(f"not an address: {address[:80]!r}")
    return text


def unquoted(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if at and len(local) >= 2 and local[0] == local[-1] == '"':
        inner = local[1:-1]
        if DOT_ATOM.fullmatch(inner):
            return f"{inner}@{domain}"
    return address


def is_hard_bounce(event: dict[str, Any]) -> bool:
    """A webhook ``bounced`` document that should suppress its recipient: a mailbox-level
    5xx (HARD_CODES), or a 5xx to a null sender (a bounce of ours that bounced) unless it
    is about policy (5.7.x): a server that refuses bounces as such says nothing about the
    address, and a client could forge MAIL FROM to get someone suppressed that way."""
    if event.get("event") != "bounced":
        return False
    code = event.get("enhanced_code")
    if not event.get("sender"):
        return not (code or "").startswith("5.7.")
    return code in HARD_CODES


class SuppressionStore:
    """The SQLite file; every method blocks (call them in a thread).  A connection per call:
    the calls are rare, and no connection is ever shared between threads."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if not os.path.exists(self.path):
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            os.close(open_private(self.path, os.O_RDWR | os.O_CREAT))  # 0600: addresses
        db = sqlite3.connect(self.path, timeout=5.0)
        try:
            # A rollback journal, not WAL: only a write changes the file, so the watchers'
            # stamp (its mtime and size) changes only with the list (WAL files come and go
            # with every connection, and every process reloaded the list for nothing).
            db.execute("PRAGMA journal_mode=DELETE")
            db.executescript(SCHEMA)
            with db:
                yield db
        finally:
            db.close()

    def add(self, entries: Iterable[Entry]) -> int:
        """Add or refresh entries; returns how many were new."""
        with self._db() as db:
            before = db.total_changes
            rows = [(e.address, printable(e.reason, MAX_REASON), e.source, e.queue_id,
                     e.created) for e in entries]
            db.executemany("INSERT OR IGNORE INTO suppressed VALUES (?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def remove(self, address: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM suppressed WHERE address = ?",
                              (address,)).rowcount > 0

    def entries(self) -> list[Entry]:
        with self._db() as db:
            return [Entry(*row) for row in db.execute(
                "SELECT address, reason, source, queue_id, created FROM suppressed")]

    def search(self, text: str, limit: int, offset: int) -> tuple[int, list[Entry]]:
        pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%")\
            .replace("_", "\\_") + "%"
        where = "WHERE address LIKE ? ESCAPE '\\'"
        with self._db() as db:
            total = db.execute(f"SELECT count(*) FROM suppressed {where}",
                               (pattern,)).fetchone()[0]
            rows = db.execute(f"SELECT address, reason, source, queue_id, created FROM "
                              f"suppressed {where} ORDER BY created DESC LIMIT ? OFFSET ?",
                              (pattern, limit, offset)).fetchall()
        return total, [Entry(*row) for row in rows]

    def stamp(self) -> tuple[int, int]:
        """What changes when the list does: the file's mtime and size."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def addresses(self) -> dict[str, tuple[str, float]]:
        """Every address with its source and time: what a process keeps in memory."""
        with self._db() as db:
            return {row[0]: (row[1], row[2]) for row in db.execute(
                "SELECT address, source, created FROM suppressed")}


class SuppressionList:
    """The list as one process sees it: the addresses in memory, the file behind them."""

    def __init__(self, store: SuppressionStore, run_in_thread: Callable[..., Deferred],
                 reactor: Any, enabled: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.run_in_thread = run_in_thread
        self.enabled = enabled
        self.clock = clock
        self.known: dict[str, tuple[str, float]] = {}  # address -> (source, created)
        self._stamp: tuple[int, int] | None = None
        self._loading: Deferred | None = None
        self._changes = 0  # local writes finished; a load that overlaps one is not used
        self._writing = 0  # local writes in progress
        self.watcher = LoopingCall(self.refresh)
        self.watcher.clock = reactor

    # -- lifecycle

    def start(self, interval: float = 1.0) -> None:
        if self.enabled and not self.watcher.running:
            self.watcher.start(interval, now=True).addErrback(
                lambda f: log.failure("suppression list watcher stopped", failure=f))

    def stop(self) -> None:
        if self.watcher.running:
            self.watcher.stop()

    def refresh(self) -> Deferred:
        """Reload the addresses when the file changed since the last load."""
        if self._loading is not None:
            return self._loading
        d = self.run_in_thread(self._load_if_changed)
        self._loading = d
        changes = self._changes

        def done(result: Any) -> None:
            self._loading = None
            if self._writing or changes != self._changes:
                self._stamp = None  # read while we wrote: maybe without it; read again
            elif result is not None:
                self._stamp, self.known = result

        def failed(failure: Any) -> None:
            self._loading = None
            log.error("cannot read the suppression list {path}: {error}",
                      path=self.store.path, error=failure.getErrorMessage())

        return d.addCallbacks(done, failed)

    def _load_if_changed(self) -> tuple[Any, dict[str, tuple[str, float]]] | None:
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return None
        if stamp == (0, 0):
            return stamp, {}
        return stamp, self.store.addresses()  # stamp first: a change made while reading is
        # seen by the next look

    # -- the check at RCPT

    def refusal(self, address: str) -> Reply | None:
        """``550 5.1.1`` naming the suppression when ``address`` is on the list."""
        if not self.enabled or not self.known:
            return None
        found = self.known.get(address.lower()) or self.known.get(unquoted(address).lower())
        if found is None:
            return None
        source, created = found
        why = "after a hard bounce" if source == "bounce" else "by the administrator"
        day = time.strftime("%Y-%m-%d", time.gmtime(created))
        return Reply(550, "5.1.1", f"<{address}>: Recipient address suppressed {why} on "
                                   f"{day}")

    def __contains__(self, address: str) -> bool:
        return self.enabled and unquoted(address).lower() in self.known

    # -- changes (main process only)

    def add(self, address: str, reason: str, source: str = "manual",
            queue_id: str | None = None) -> Deferred:
        """Add one address; fires with True when it was not on the list."""
        return self.add_many([Entry(normalize(address), reason or source, source, queue_id,
                                    self.clock())])

    def add_many(self, entries: list[Entry]) -> Deferred:
        if not entries:
            return succeed(0)
        for e in entries:
            self.known.setdefault(e.address, (e.source, e.created))
        self._writing += 1
        return self.run_in_thread(self.store.add, entries).addBoth(self._changed)

    def _changed(self, result: Any) -> Any:
        self._writing -= 1
        self._changes += 1  # the write is done: a load from now on sees it
        if isinstance(result, Failure):
            self._stamp = None  # memory went ahead of a write that failed: read the file
        return result

    def remove(self, address: str) -> Deferred:
        key = normalize(address)
        self.known.pop(key, None)
        self._writing += 1
        return self.run_in_thread(self.store.remove, key).addBoth(self._changed)

    def search(self, text: str = "", limit: int = 100, offset: int = 0) -> Deferred:
        return self.run_in_thread(self.store.search, text, limit, offset)

    def export_csv(self) -> Deferred:
        return self.run_in_thread(lambda: to_csv(self.store.entries()))

    def import_csv(self, text: str) -> Deferred:
        """Add every address of a CSV export (or one address per line); fires with the
        number of new entries.  SuppressionError names the first bad line."""
        return self.add_many(from_csv(text, self.clock()))


def to_csv(entries: list[Entry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["address", "reason", "source", "queue_id", "created"])
    for e in sorted(entries, key=lambda e: e.created):
        writer.writerow([cell(e.address), cell(e.reason), e.source, e.queue_id or "",
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.created))])
    return out.getvalue()


def cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run: a leading = + - @ tab or CR gets a quote
    (``from_csv`` takes it off again)."""
    return "'" + text if text.startswith(FORMULA) else text


def uncell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA) else text


def from_csv(text: str, now: float, limit: int = 1_000_000) -> list[Entry]:
    """Parse an export (a header row ``address,...``) or a plain list of addresses."""
    entries: list[Entry] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip() or row[0].strip().lower() == "address":
            continue
        if len(entries) >= limit:
            raise SuppressionError(f"more than {limit} addresses")
        try:
            address = normalize(uncell(row[0].strip()))
        except SuppressionError as e:
            raise SuppressionError(f"line {number}: {e}") from None
        reason = uncell(row[1].strip()) if len(row) > 1 and row[1].strip() else "imported"
        source, queue_id, created = exported_history(row, now)
        entries.append(Entry(address, reason[:MAX_REASON], source, queue_id, created))
    return entries


def exported_history(row: list[str], now: float) -> tuple[str, str | None, float]:
    """An export's source, queue ID and time, kept (a list moved to another instance
    still says why and since when); a plain list is ``import``, now."""
    source = row[2].strip() if len(row) > 2 and row[2].strip() in SOURCES else "import"
    queue_id = row[3].strip()[:40] if len(row) > 3 and row[3].strip().isalnum() else None
    created = now
    if len(row) > 4 and row[4].strip():
        with contextlib.suppress(ValueError):
            created = calendar.timegm(time.strptime(row[4].strip(), "%Y-%m-%dT%H:%M:%SZ"))
    return source, queue_id, float(min(created, now))
