"""``relaymail suppression``: list, add, remove, import and export the suppression list.

The command works on ``<spool_dir>/suppression.db`` itself, running or not: every process
of a running relaymail sees the change within about a second (relaymail.events.suppression
looks at the file once a second).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from relaymail.config import load_config
from relaymail.events.suppression import (
    Entry,
    SuppressionError,
    SuppressionStore,
    from_csv,
    normalize,
    to_csv,
)


class SuppressionCommandError(Exception):
    """A suppression command that could not be done; the message says why."""


def add_parser(sub: Any) -> None:
    top = sub.add_parser("suppression", help="the suppression list (refused at RCPT)")
    ssub = top.add_subparsers(title="suppression commands")
    listing = ssub.add_parser("list", help="show suppressed addresses, newest first")
    listing.add_argument("--search", default="", help="address substring")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_list)
    add = ssub.add_parser("add", help="suppress an address")
    add.add_argument("address")
    add.add_argument("--reason", default="added by the administrator")
    add.set_defaults(run=cmd_add)
    remove = ssub.add_parser("remove", help="stop suppressing an address")
    remove.add_argument("address")
    remove.set_defaults(run=cmd_remove)
    imp = ssub.add_parser("import", help="add the addresses of a CSV export or a list")
    imp.add_argument("file", help="path, or - for standard input")
    imp.set_defaults(run=cmd_import)
    exp = ssub.add_parser("export", help="write the whole list as CSV to standard output")
    exp.set_defaults(run=cmd_export)


def store(args: argparse.Namespace) -> SuppressionStore:
    config = load_config(args.config)
    return SuppressionStore(os.path.join(config.spool_dir, "suppression.db"))


def cmd_list(args: argparse.Namespace) -> int:
    total, entries = store(args).search(args.search, max(1, args.limit), 0)
    if args.json:
        print(json.dumps({"total": total, "items": [e.public() for e in entries]}, indent=2))
        return 0
    print(f"{'ADDRESS':<40} {'SOURCE':<7} {'SINCE':<20} REASON")
    for e in entries:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created))
        print(f"{e.address:<40} {e.source:<7} {since:<20} {e.reason}")
    if total > len(entries):
        print(f"({total - len(entries)} more; --limit or --search)")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    try:
        entry = Entry(normalize(args.address), args.reason, "manual", None, time.time())
    except SuppressionError as e:
        raise SuppressionCommandError(str(e)) from None
    new = store(args).add([entry])
    print(f"{entry.address}: {'suppressed' if new else 'was already suppressed'}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    try:
        address = normalize(args.address)
    except SuppressionError as e:
        raise SuppressionCommandError(str(e)) from None
    if not store(args).remove(address):
        raise SuppressionCommandError(f"{address} is not suppressed")
    print(f"{address}: removed")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        entries = from_csv(text, time.time())
    except OSError as e:
        raise SuppressionCommandError(f"cannot read {args.file}: {e.strerror}") from None
    except (SuppressionError, UnicodeDecodeError) as e:
        raise SuppressionCommandError(f"{args.file}: {e}") from None
    new = store(args).add(entries)
    print(f"{new} address(es) added, {len(entries) - new} already suppressed")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    sys.stdout.write(to_csv(store(args).entries()))
    return 0
