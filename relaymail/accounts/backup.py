"""``relaymail backup`` and ``restore``: the accounts (users, their SMTP logins, API keys),
the credentials file and the config file in one JSON document.

Rows go out as they are stored: bcrypt hashes and key digests move as they are, so every
password, SMTP login and API key keeps working after a restore, on SQLite or PostgreSQL
alike (a backup of one restores into the other).  Bearer tokens and invitations are not
kept: they are short-lived, and a restore signs everyone out.  The file is written 0600.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete, insert, select, text
from sqlalchemy.engine import Connection

from relaymail.accounts.database import bump
from relaymail.accounts.schema import api_keys, invites, smtp_credentials, tokens, users

FORMAT = "relaymail-backup"
VERSION = 1
KEPT = (users, smtp_credentials, api_keys)  # parents first


class BackupError(Exception):
    """A backup that cannot be read or restored; the text says why."""


def dump(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    return {table.name: [dict(row._mapping) for row in conn.execute(select(table))]
            for table in KEPT}


def load(conn: Connection, tables: dict[str, Any], replace: bool) -> dict[str, int]:
    """Put the rows back (the tables emptied first with ``replace``); the counts restored."""
    present = conn.execute(select(users.c.id).limit(1)).first() is not None
    if present and not replace:
        raise BackupError("the accounts database already has users: restore with --replace "
                          "to empty it first")
    for table in (tokens, invites, *reversed(KEPT)):
        conn.execute(delete(table))
    counts = {}
    for table in KEPT:
        rows = tables.get(table.name, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise BackupError(f"accounts.{table.name}: expected a list of rows")
        names = {c.name for c in table.columns}
        if rows:
            conn.execute(insert(table), [{k: v for k, v in r.items() if k in names}
                                         for r in rows])
        counts[table.name] = len(rows)
    if conn.dialect.name == "postgresql" and tables.get("users"):
        conn.execute(text("SELECT setval(pg_get_serial_sequence('users', 'id'), "
                          "(SELECT max(id) FROM users))"))
    bump(conn)
    return counts


def document(accounts: dict[str, Any], credentials: Any, config: Any) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "created": time.time(),
            "accounts": accounts, "credentials_file": credentials, "config": config}


def read_document(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BackupError(f"not a relaymail backup (not JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupError("not a relaymail backup (no \"format\": \"relaymail-backup\")")
    if data.get("version") != VERSION:
        raise BackupError(f"backup version {data.get('version')!r}: this relaymail reads "
                          f"version {VERSION}")
    if not isinstance(data.get("accounts"), dict):
        raise BackupError("accounts: expected an object of tables")
    return data
