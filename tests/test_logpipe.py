"""The acceptors' log records (relaymail.workers.logpipe): plain events go compact and
come back equal, with their text; anything else goes as Twisted's JSON and keeps its
traceback; a torn or foreign line is refused, never fatal."""

from __future__ import annotations

import io
import json

import pytest
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

from relaymail.workers import logpipe


def caught(log_format: str, **fields: object) -> dict:
    events: list[dict] = []
    Logger(namespace="relaymail.smtp", observer=events.append).info(log_format, **fields)
    return events[0]


def test_a_queued_line_goes_compact_and_reads_back_the_same() -> None:
    event = caught("{queue_id}: queued from=<{sender}> nrcpt={nrcpt} size={size} "
                   "credential={credential} ok={ok!r}", queue_id="ABC", sender="a@b.example",
                   nrcpt=1, size=4389.5, credential=None, ok=True)
    out = io.StringIO()
    logpipe.observer(out)(event)
    line = out.getvalue()
    assert line.startswith("\x1eC{") and line.endswith("\n") and line.count("\n") == 1
    assert "log_logger" not in line and "log_flattened" not in line
    back = logpipe.parse(line.strip("\x1e\n"))
    assert back["log_level"] is LogLevel.info
    assert back["log_namespace"] == "relaymail.smtp"
    assert back["log_time"] == event["log_time"]
    assert formatEvent(back) == formatEvent(event) == (
        "ABC: queued from=<a@b.example> nrcpt=1 size=4389.5 credential=None ok=True")


def test_what_a_client_sent_stays_escaped_and_on_one_line() -> None:
    event = caught("helo={helo}", helo="evil\r\n2026 [relaymail.smtp#info] forged \u2028")
    line = logpipe.record(event)
    assert line.count("\n") == 1
    assert formatEvent(logpipe.parse(line.strip("\x1e\n"))) == formatEvent(event)


def test_a_failure_or_an_object_takes_twisted_json_and_keeps_its_traceback() -> None:
    events: list[dict] = []
    log = Logger(namespace="relaymail.smtp", observer=events.append)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("a handler failed", Failure())
    log.info("peer {peer}", peer=("127.0.0.1", 25))
    failed, tupled = (logpipe.record(e) for e in events)
    assert not failed.startswith("\x1eC") and not tupled.startswith("\x1eC")
    back = logpipe.parse(failed.strip("\x1e\n"))
    assert back["log_level"] is LogLevel.critical
    assert "ZeroDivisionError" in back["log_failure"].getTraceback()
    assert formatEvent(logpipe.parse(tupled.strip("\x1e\n"))) == "peer ('127.0.0.1', 25)"


@pytest.mark.parametrize("text", ["C{\"log_format\": ", "C[1, 2]", "not json", "C"])
def test_a_torn_or_foreign_record_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        logpipe.parse(text)


def test_an_unknown_level_name_reads_as_info() -> None:
    text = "C" + json.dumps({"log_format": "x", "log_level": "loud"})
    assert logpipe.parse(text)["log_level"] is LogLevel.info
