"""The accounts database: an SQLAlchemy engine for SQLite (the default, one file in the
spool directory) or PostgreSQL (``postgresql://user:password@host/db``, through psycopg),
a thread pool of its own for the blocking calls, and the migrations.

Every call runs in the pool (``run``) and fires a Deferred on the reactor: the drivers
block, the reactor never does.  ``migrate`` brings the schema to the newest Alembic
revision at startup; on PostgreSQL it holds an advisory lock, so several instances
starting at once migrate one after the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, event, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from relaymail.accounts.migrations import HEAD
from relaymail.accounts.schema import generation
from relaymail.spool.safeio import open_private

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")
MIGRATION_LOCK = 0x72656C61  # "rela": the advisory lock key of migrations on PostgreSQL


class DatabaseError(Exception):
    """The database cannot be opened or migrated; the text names it (without password)."""


def engine_url(database: str) -> str:
    """SQLAlchemy's URL for a ``accounts.database`` value: a path (SQLite) or a
    ``postgresql://`` URL (the psycopg driver)."""
    if database.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + database.split("://", 1)[1]
    if database.startswith("postgresql+psycopg://"):
        return database
    return "sqlite:///" + database


def shown(database: str) -> str:
    """The database as logs and errors name it: a URL loses its password."""
    if "://" not in database:
        return database
    parts = urlsplit(database)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")  # the main process and acceptors share it
    cursor.close()


def make_engine(database: str) -> Engine:
    """An engine; for SQLite the file is created 0600 (it holds password hashes)."""
    url = engine_url(database)
    if url.startswith("sqlite:"):
        os.makedirs(os.path.dirname(database) or ".", mode=0o700, exist_ok=True)
        os.close(open_private(database, os.O_RDWR | os.O_CREAT))
        os.chmod(database, 0o600)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=2)


class Database:
    """One accounts database and the threads that talk to it."""

    def __init__(self, database: str, reactor: Any, threads: int = 2) -> None:
        self.database = database
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=threads, name="accounts")
        self.engine: Engine | None = None

    def open_now(self) -> None:
        """Connect and migrate on the calling thread, at startup: an unusable database
        stops startup with DatabaseError naming it."""
        try:
            self.engine = make_engine(self.database)
            migrate(self.engine)
        except Exception as e:  # any driver's error: connection refused, bad password, ...
            raise DatabaseError(f"accounts database {shown(self.database)}: "
                                f"{type(e).__name__}: {str(e).strip()[:300]}") from None

    def start(self) -> None:
        if not self.pool.started:
            self.pool.start()

    def stop(self) -> None:
        if self.pool.started:
            self.pool.stop()
        if self.engine is not None:
            self.engine.dispose()

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """``f(connection, *args, **kwargs)`` in one transaction, in the pool."""
        return deferToThreadPool(self.reactor, self.pool, self.transaction, f, *args,
                                 **kwargs)

    def transaction(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Blocking: ``f(connection, *args, **kwargs)`` in one transaction (for the CLI and
        tests)."""
        assert self.engine is not None, "the accounts database is not open"
        with self.engine.begin() as conn:
            return f(conn, *args, **kwargs)


def at_head(conn: Connection) -> bool:
    """Is the schema at the newest revision already (the usual start, and every acceptor's:
    Alembic is then not even imported)?"""
    if not inspect(conn).has_table("alembic_version"):
        return False
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision (one advisory lock on PostgreSQL)."""
    with engine.connect() as conn:
        if at_head(conn):
            return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        alembic = AlembicConfig()
        alembic.set_main_option("script_location", MIGRATIONS)
        alembic.attributes["connection"] = conn
        command.upgrade(alembic, "head")


def bump(conn: Connection) -> None:
    """Say that something changed: every process reloads its copy (relaymail.accounts.view)."""
    conn.execute(update(generation).where(generation.c.id == 1)
                 .values(value=generation.c.value + 1))


def current_generation(conn: Connection) -> int:
    return int(conn.execute(select(generation.c.value).where(generation.c.id == 1))
               .scalar_one())
