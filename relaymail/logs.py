"""relaymail's loggers: structured twisted.logger events, filtered by the configured level."""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as _Logger

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])


_ORDER = {level: i for i, level in enumerate(LogLevel.iterconstants())}
_threshold = _ORDER[LogLevel.info]


def set_level(name: str) -> None:
    """Apply ``log.level`` (debug, info, warn, error) to every relaymail logger."""
    global _threshold
    _predicate.setLogLevelForNamespace("relaymail", LogLevel.levelWithName(name))
    _predicate.defaultLogLevel = LogLevel.levelWithName(name)
    _threshold = _ORDER[LogLevel.levelWithName(name)]


class _LevelledLogger(_Logger):
    """Drops an event below ``log.level`` before building it: the hot path has debug
    lines for every command, which would otherwise each cost an event dict and a trip
    through the observers only to be filtered out."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if _ORDER[level] < _threshold:
            return
        super().emit(level, format, **kwargs)


def Logger(namespace: str) -> _Logger:
    return _LevelledLogger(namespace=namespace, observer=observer)


_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {ord("\\"): "\\\\"}


def printable(text: object, limit: int = 256) -> str:
    """What a client sent, safe to log: control characters (CR, LF, ESC, ...) escaped as
    ``\\xNN``, so no client can forge a log line or a terminal sequence; cut at ``limit``."""
    value = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    escaped = value[:limit].translate(_ESCAPES)
    return escaped + ("..." if len(value) > limit else "")
