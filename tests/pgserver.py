"""A real PostgreSQL server on a free loopback port, for the tests that keep state in it.

Debian's server binaries (/usr/lib/postgresql/<version>/bin, the highest version) run a
throwaway cluster in a temporary directory: ``initdb`` there, the server listening on
127.0.0.1 only, its unix socket in that directory, durability off (fsync, synchronous
commit, full-page writes: a crash loses nothing a test needs). PostgreSQL refuses to run as
root, so as root (CI) every server-side program runs as Debian's ``postgres`` system user
(setpriv) and the directory belongs to it; otherwise as the current user.

Over TCP every role needs its password (scram-sha-256): ``url`` carries the random password
of the role ``relaymail``, which owns the database ``relaymail``. The superuser
``postgres`` has no password and connects only through the socket (trust, in the
directory only its owner can enter): ``admin`` and ``make_database`` use it.

    with postgres_server() as pg:        # skips (fails in CI) when PostgreSQL is missing
        connect(pg.url)
        other = pg.make_database("second")

``PostgresServer()`` is the same without the context manager (``stop`` it, as in a
``tearDown``); an interpreter that exits stops what is still running."""

from __future__ import annotations

import atexit
import functools
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from twisted.trial.unittest import SkipTest

from tests.helpers import free_port

SYSTEM_USER = "postgres"  # created by Debian's postgresql-common
SUPERUSER = "postgres"
ROLE = "relaymail"
DATABASE = "relaymail"
INSTALL = "scripts/system-deps installs it as root with WITH_INTEROP=1"

# Speed over durability, small memory: the cluster is deleted after the test.
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "autovacuum": "off",
    "jit": "off",
    "password_encryption": "scram-sha-256",
    "log_min_messages": "warning",
    "log_connections": "off",
}


def _version_key(bindir: str) -> tuple[int, ...]:
    version = os.path.basename(os.path.dirname(bindir))
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


@functools.cache
def server_bindir() -> str | None:
    """The bin directory of the highest installed PostgreSQL with initdb and postgres."""
    def usable(bindir: str) -> bool:
        return all(os.access(os.path.join(bindir, name), os.X_OK)
                   for name in ("initdb", "postgres", "pg_isready", "psql"))

    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if usable(d)]
    if found:
        return max(found, key=_version_key)
    # an initdb on PATH (e.g. a /usr/local/bin link to Debian's) next to the rest
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = os.path.dirname(os.path.realpath(initdb))
        if usable(bindir):
            return bindir
    return None


def postgres_available() -> str | None:
    """Why a server cannot be started here (for ``pytest.skip``), or None when it can."""
    if server_bindir() is None:
        return ("PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin with "
                "initdb, postgres, pg_isready and psql (Debian packages postgresql and "
                f"postgresql-client; {INSTALL})")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return (f"running as root, and PostgreSQL refuses to: the '{SYSTEM_USER}' "
                    "system user it would run as is missing (Debian package "
                    f"postgresql-common; {INSTALL})")
        if shutil.which("setpriv") is None:
            return ("running as root, and setpriv (Debian package util-linux) that would run "
                    f"PostgreSQL as '{SYSTEM_USER}' is missing")
    return None


def require_postgres() -> None:
    """Skip without PostgreSQL on a developer's machine; in CI (``CI`` set), fail."""
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        raise AssertionError(f"{reason} (missing in CI)")
    raise SkipTest(reason)


class PostgresServer:
    """A fresh cluster with the role and database ``relaymail``; ``stop`` removes it all."""

    def __init__(self, settings: dict[str, str] | None = None, timeout: float = 30) -> None:
        reason = postgres_available()
        if reason is not None:
            raise RuntimeError(reason)
        self.bindir = server_bindir() or ""
        self.host = "127.0.0.1"
        self.user = ROLE
        self.database = DATABASE
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._owner = pwd.getpwnam(SYSTEM_USER) if os.geteuid() == 0 else None
        self.dir = tempfile.mkdtemp(prefix="relaymail-pg-")
        atexit.register(self.stop)
        try:
            if self._owner is not None:
                os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
            self.data = os.path.join(self.dir, "data")
            self.log_path = os.path.join(self.dir, "server.log")
            self._initdb()
            self._start(dict(SETTINGS, **(settings or {})), timeout)
            self.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD {_literal(self.password)};\n"
                       f"CREATE DATABASE {DATABASE} OWNER {ROLE};\n", database="postgres")
        except BaseException:
            self.stop()
            raise

    # -- the URLs

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str, password: str | None = None) -> str:
        """The URL of ``database`` as ``relaymail`` (with another ``password``, say)."""
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{ROLE}:{secret}@{self.host}:{self.port}/{quote(database)}"

    def make_database(self, name: str) -> str:
        """A new empty database ``name`` owned by ``relaymail``, on this server: its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain lower-case identifier: {name!r}")
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE};\n", database="postgres")
        return self.url_for(name)

    def admin(self, sql: str, database: str | None = None) -> str:
        """Runs ``sql`` as the superuser (psql through the socket); its output, unaligned."""
        result = subprocess.run(
            self._as_owner([os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t",
                            "-v", "ON_ERROR_STOP=1", "-h", self.dir, "-p", str(self.port),
                            "-U", SUPERUSER, "-d", database or self.database, "-f", "-"]),
            input=sql.encode(), capture_output=True, cwd=self.dir, env=_env(), timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql as {SUPERUSER} failed ({result.returncode}): "
                               f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode()

    # -- start and stop

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self._owner is None:
            return argv
        return ["setpriv", f"--reuid={self._owner.pw_uid}", f"--regid={self._owner.pw_gid}",
                "--init-groups", "--", *argv]

    def _initdb(self) -> None:
        result = subprocess.run(
            self._as_owner([os.path.join(self.bindir, "initdb"), "-D", self.data,
                            "-U", SUPERUSER, "--auth-local=trust",
                            "--auth-host=scram-sha-256", "--no-locale", "--encoding=UTF8",
                            "--no-sync", "--no-instructions"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.dir, env=_env(),
            timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n"
                               f"{result.stdout.decode(errors='replace')}")

    def _start(self, settings: dict[str, str], timeout: float) -> None:
        # free_port can race with another process: a port taken meanwhile is tried again
        for attempt in range(3):
            self.port = free_port()
            options = dict(settings, listen_addresses=self.host, port=str(self.port),
                           unix_socket_directories=self.dir)
            argv = [os.path.join(self.bindir, "postgres"), "-D", self.data]
            for key, value in options.items():
                argv += ["-c", f"{key}={value}"]
            with open(self.log_path, "ab") as log:
                # setpriv execs: the process is the postmaster itself, for the signals of stop
                self.proc = subprocess.Popen(self._as_owner(argv), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.dir, env=_env())
            if self._wait_ready(timeout):
                return
            log_text = self.server_log()
            if attempt < 2 and "could not bind" in log_text:
                self._end_process()
                continue
            self._end_process()
            raise RuntimeError(f"PostgreSQL did not become ready on port {self.port} within "
                               f"{timeout:g}s (exit status {self.proc.returncode}); "
                               f"server log {self.log_path}:\n{log_text}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        isready = self._as_owner([os.path.join(self.bindir, "pg_isready"), "-q",
                                  "-h", self.dir, "-p", str(self.port), "-U", SUPERUSER,
                                  "-d", "postgres", "-t", "1"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if subprocess.run(isready, cwd=self.dir, env=_env(), timeout=10).returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def server_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return "(no log)"

    def _end_process(self) -> None:
        """Fast shutdown (SIGINT, as ``pg_ctl stop -m fast``), then immediate (SIGQUIT),
        then SIGKILL, each waited for."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                proc.send_signal(sig)
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        self.proc = None

    def stop(self) -> None:
        """Stops the server and removes its directory; again does nothing."""
        atexit.unregister(self.stop)
        self._end_process()
        shutil.rmtree(self.dir, ignore_errors=True)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _env() -> dict[str, str]:
    """The environment without PG* variables (PGPASSWORD, PGHOST, ...) of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


@contextmanager
def postgres_server(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A running ``PostgresServer`` (``settings``: more ``-c`` parameters), stopped and
    removed at the end whether the block fails or not; skips (fails in CI) without one."""
    require_postgres()
    server = PostgresServer(settings)
    try:
        yield server
    finally:
        server.stop()
