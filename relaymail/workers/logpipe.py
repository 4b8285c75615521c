"""Log events from an acceptor to the main process, one record per line on its stderr.

An event whose fields are all plain JSON values (strings, numbers, booleans, None), which
is every line the SMTP side writes per message, goes as that JSON with the level by
name: ``\\x1eC{...}``.  Anything else (a failure with its traceback, an object in a
field) goes as Twisted's own ``eventAsJSON`` (``\\x1e{...}``), which keeps it whole.
Twisted's form flattens each field of the format string twice and costs about 40 us per
event here and 15 us to read back; the compact one a few, on the path of every accepted
message.  The main process re-publishes each event with the acceptor's number
(relaymail.workers.supervisor), so its log reads as if it were its own.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import FileLogObserver, LogLevel, eventAsJSON, eventFromJSON

RECORD = "\x1e"
COMPACT = "C"
_PLAIN = (str, int, float, bool, type(None))
_DROPPED = frozenset({"log_logger", "log_source", "log_flattened"})  # rebuilt or unused


def compact(event: dict[str, Any]) -> str | None:
    """The event as plain JSON, or None when a field is not a plain value."""
    level = event.get("log_level")
    if not isinstance(level, type(LogLevel.info)):
        return None
    document: dict[str, Any] = {}
    for key, value in event.items():
        if key in _DROPPED or key == "log_level":
            continue
        if not isinstance(value, _PLAIN):
            return None
        document[key] = value
    document["log_level"] = level.name
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def record(event: dict[str, Any]) -> str:
    """One line for the pipe."""
    text = compact(event)
    if text is not None:
        return f"{RECORD}{COMPACT}{text}\n"
    return f"{RECORD}{eventAsJSON(event)}\n"


def observer(out: IO[str]) -> FileLogObserver:
    """A log observer writing each event to ``out`` (an acceptor's stderr), flushed."""
    return FileLogObserver(out, record)


def parse(text: str) -> dict[str, Any]:
    """An event from one record (without its separator); ValueError when it is none."""
    if not text.startswith(COMPACT):
        return dict(eventFromJSON(text))
    event = json.loads(text[1:])
    if not isinstance(event, dict):
        raise ValueError("not an event")
    try:
        event["log_level"] = LogLevel.levelWithName(str(event.get("log_level")))
    except Exception:  # an unknown level name (InvalidLogLevelError)
        event["log_level"] = LogLevel.info
    return event
