"""tests/pgserver.py starts a real PostgreSQL: Debian's psql reaches it with the URL over TCP
and its password (a wrong password, none, or the password-less superuser is refused, so
the password is really checked), ``make_database`` gives a database of its own, and after
``stop`` (or a failing block) nothing is left: the port is closed, the directory gone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.peers import require
from tests.pgserver import PostgresServer, postgres_server, require_postgres


def psql(url: str, *sql: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """Debian's client (/usr/bin/psql) with ``url``; never asks for a password (-w)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCONNECT_TIMEOUT="10", PGPASSFILE=os.devnull, LC_ALL="C")
    if password is not None:
        env["PGPASSWORD"] = password
    argv = ["psql", "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url]
    for statement in sql:
        argv += ["-c", statement]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    require_postgres()
    require(shutil.which("psql") is not None, "psql (Debian package postgresql-client)")
    with postgres_server() as server:
        yield server


def test_url_reaches_the_server_with_its_password(pg: PostgresServer) -> None:
    parts = urlsplit(pg.url)
    assert (parts.scheme, parts.hostname, parts.port, parts.username, parts.path) == (
        "postgresql", "127.0.0.1", pg.port, "relaymail", "/relaymail")
    assert parts.password == pg.password and len(pg.password) >= 20

    result = psql(pg.url, "CREATE TABLE notes (id int PRIMARY KEY, body text)",
                  "INSERT INTO notes VALUES (1, 'first'), (2, 'zweite')",
                  "SELECT id, body FROM notes ORDER BY id",
                  "SELECT current_user, current_database(), inet_server_addr()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1|first", "2|zweite", "relaymail|relaymail|127.0.0.1"]

    # the password in PGPASSWORD instead of the URL
    bare = f"postgresql://relaymail@127.0.0.1:{pg.port}/relaymail"
    result = psql(bare, "SELECT count(*) FROM notes", password=pg.password)
    assert (result.returncode, result.stdout.strip()) == (0, "2"), result.stderr


def test_a_wrong_or_missing_password_is_refused(pg: PostgresServer) -> None:
    refused = 'password authentication failed for user "relaymail"'
    result = psql(pg.url_for("relaymail", password="not-" + pg.password), "SELECT 1")
    assert result.returncode != 0 and refused in result.stderr, result.stderr
    bare = f"postgresql://relaymail@127.0.0.1:{pg.port}/relaymail"
    result = psql(bare, "SELECT 1", password="wrong")
    assert result.returncode != 0 and refused in result.stderr, result.stderr
    result = psql(bare, "SELECT 1")
    assert result.returncode != 0 and "no password supplied" in result.stderr, result.stderr
    # the superuser has no password: over TCP it cannot log in at all
    result = psql(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", "SELECT 1",
                  password="")
    assert result.returncode != 0, result.stdout
    # scram-sha-256 for every TCP connection, and the password stored as a SCRAM verifier
    methods = pg.admin("SELECT DISTINCT auth_method FROM pg_hba_file_rules "
                       "WHERE type = 'host'", database="postgres")
    assert methods.split() == ["scram-sha-256"]
    stored = pg.admin("SELECT rolpassword FROM pg_authid WHERE rolname = 'relaymail'")
    assert stored.startswith("SCRAM-SHA-256$")


def test_make_database_is_empty_and_separate(pg: PostgresServer) -> None:
    assert psql(pg.url, "CREATE TABLE shared_name (v text)",
                "INSERT INTO shared_name VALUES ('main')").returncode == 0
    other = pg.make_database("second_db")
    assert other == pg.url_for("second_db") and other.endswith(f":{pg.port}/second_db")

    result = psql(other, "SELECT v FROM shared_name")
    assert result.returncode != 0 and "does not exist" in result.stderr, result.stderr
    result = psql(other, "CREATE TABLE shared_name (v text)",
                  "INSERT INTO shared_name VALUES ('other'), ('other 2')",
                  "SELECT pg_get_userbyid(datdba) FROM pg_database "
                  "WHERE datname = current_database()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "relaymail"  # the role owns it: it can make its schema
    assert psql(pg.url, "SELECT string_agg(v, ',') FROM shared_name").stdout.strip() == "main"
    assert psql(other, "SELECT count(*) FROM shared_name").stdout.strip() == "2"

    with pytest.raises(ValueError):
        pg.make_database("x; DROP DATABASE relaymail")


def test_stop_closes_the_port_and_removes_everything() -> None:
    require_postgres()
    server = PostgresServer()
    port, directory, proc = server.port, server.dir, server.proc
    assert proc is not None and port_open(port)
    with open(os.path.join(server.data, "postmaster.pid")) as f:
        assert int(f.readline()) == proc.pid  # what stop signals is the postmaster itself
    server.stop()
    assert proc.poll() is not None
    assert not port_open(port)
    assert not os.path.exists(directory)
    server.stop()  # twice: nothing to do

    # a block that fails still stops its server and removes its directory
    with pytest.raises(ZeroDivisionError), postgres_server() as failing:
        port, directory = failing.port, failing.dir
        assert port_open(port)
        1 / 0  # noqa: B018
    assert not port_open(port)
    assert not os.path.exists(directory)
