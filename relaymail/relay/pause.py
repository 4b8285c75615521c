"""Paused delivery: mail is accepted and queued, and nothing is delivered until resumed.

What Exim's ``queue_only`` and Postfix's ``defer_transports`` give an operator, switched
while running: for an upstream's maintenance window, a migration, or to look at what an
application sends before any of it leaves.  The state survives a restart: pausing writes
``<spool_dir>/delivery.paused`` (the time and who paused, as JSON), resuming removes it;
``delivery.paused: true`` in the config starts paused whatever the file says.  A queued
message can still be sent on its own (``queue retry ID``) while delivery is paused.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from relaymail.events.model import iso
from relaymail.spool.safeio import write_atomically

MARKER = "delivery.paused"


def marker_path(spool_dir: str) -> str:
    return os.path.join(spool_dir, MARKER)


def paused_on_disk(spool_dir: str) -> bool:
    """Whether the spool says delivery is paused (blocking: a stat)."""
    return os.path.exists(marker_path(spool_dir))


def write_marker(spool_dir: str, when: float, by: str) -> None:
    """Record the pause durably, so that a restart keeps it (blocking)."""
    document: dict[str, Any] = {"paused_at": iso(when), "by": by}
    write_atomically(marker_path(spool_dir), json.dumps(document).encode() + b"\n")


def remove_marker(spool_dir: str) -> None:
    """Forget the pause (blocking); no file is fine (it was paused by the config)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker_path(spool_dir))
    directory = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
