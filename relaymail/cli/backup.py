"""``relaymail backup FILE`` and ``relaymail restore FILE``: accounts, the credentials file
and the config file (relaymail.accounts.backup says what is kept).  Both work while
relaymail runs: a restore bumps the accounts' generation, so every running process reloads
within a second."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from relaymail.accounts.backup import BackupError, document, dump, load, read_document
from relaymail.accounts.database import Database, DatabaseError, shown
from relaymail.config import load_config
from relaymail.spool.safeio import write_json_atomically


def add_parser(sub: Any) -> None:
    backup = sub.add_parser("backup", help="write accounts, credentials and the config to "
                                           "a JSON file (mode 0600)")
    backup.add_argument("file", help="where to write it (- for standard output)")
    backup.set_defaults(run=cmd_backup)
    restore = sub.add_parser("restore", help="put a backup's accounts and credentials back")
    restore.add_argument("file")
    restore.add_argument("--replace", action="store_true",
                         help="empty the accounts database first (it may hold users)")
    restore.add_argument("--with-config", action="store_true",
                         help="also write the backup's config over the --config file")
    restore.set_defaults(run=cmd_restore)


def open_database(config: Any) -> Database:
    from twisted.internet import reactor

    database = Database(config.accounts.database, reactor)
    try:
        database.open_now()
    except DatabaseError as e:
        raise BackupError(str(e)) from None
    return database


def read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cmd_backup(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    database = open_database(config)
    try:
        tables = database.transaction(dump)
    finally:
        database.stop()
    data = document(tables, read_json(config.credentials_file), read_json(config.path))
    if args.file == "-":
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        print()
    else:
        write_json_atomically(args.file, data)
    counts = ", ".join(f"{len(rows)} {name}" for name, rows in tables.items())
    print(f"backup of {shown(config.accounts.database)}: {counts}", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with open(args.file, "rb") as f:
        data = read_document(f.read())
    database = open_database(config)
    try:
        counts = database.transaction(load, data["accounts"], args.replace)
    finally:
        database.stop()
    if data.get("credentials_file") is not None:
        write_json_atomically(config.credentials_file, data["credentials_file"])
    if args.with_config and data.get("config") is not None:
        write_json_atomically(config.path, data["config"])
    restored = ", ".join(f"{n} {name}" for name, n in counts.items())
    print(f"restored into {shown(config.accounts.database)}: {restored}", file=sys.stderr)
    return 0
