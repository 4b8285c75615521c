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


def set_level(name: str) -> None:
    """Apply ``log.level`` (debug, info, warn, error) to every relaymail logger."""
    _predicate.setLogLevelForNamespace("relaymail", LogLevel.levelWithName(name))
    _predicate.defaultLogLevel = LogLevel.levelWithName(name)


def Logger(namespace: str) -> _Logger:
    return _Logger(namespace=namespace, observer=observer)
