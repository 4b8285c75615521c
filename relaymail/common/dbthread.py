"""One SQLite file worked on by one thread of its own: the house pattern of the stores
that write in batches off the reactor (the archive; the delivery history and the webhook
outbox follow the same steps).  One connection, never shared between threads; every call
runs in that thread, in order, and returns a Deferred."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from relaymail.spool.safeio import open_private


class DatabaseThread:
    def __init__(self, path: str, reactor: Any, name: str, schema: str,
                 synchronous: str = "NORMAL") -> None:
        self.path = path
        self.reactor = reactor
        self.schema = schema
        self.synchronous = synchronous
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self.db: sqlite3.Connection | None = None

    @property
    def started(self) -> bool:
        return bool(self.pool.started)

    def start(self) -> Deferred:
        """Start the thread and open the file (0600, never through a symlink) in it,
        unless ``open_now`` did already."""
        self.pool.start()
        return succeed(None) if self.db is not None else self.run(self._open)

    def open_now(self) -> None:
        """Open the file on the calling thread: at startup, so that a file that cannot be
        used stops startup (sqlite3.Error or OSError) rather than every write later."""
        self._open()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    async def stop(self) -> None:
        """Close the file, then stop the thread (after what was asked before)."""
        if not self.pool.started:
            return
        try:
            await self.run(self._close)
        finally:
            self.pool.stop()

    def _open(self) -> None:
        os.close(open_private(self.path, os.O_RDWR | os.O_CREAT))  # 0600: it names people
        os.chmod(self.path, 0o600)  # a file made before by someone else, too
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={self.synchronous}")
        self.db.executescript(self.schema)

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection (in the thread only)."""
        assert self.db is not None, "the database is not open"
        return self.db
