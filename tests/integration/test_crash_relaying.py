"""SIGKILL while relaying to a real upstream: everything acknowledged arrives, intact, and only
messages whose delivery was in flight at a kill arrive twice.

Each round starts ``twistd -n relaymail`` relaying to an aiosmtpd sink, loads it from four
smtplib clients, and kills it at a random moment.  Right after the kill the test notes the
messages that are still queued although the sink already has them: their delivery was in
flight (the sink said 250, the relay had not yet recorded it), so they are the only ones
allowed a second copy.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from typing import Any

from aiosmtpd.controller import Controller

from relaymail.spool.record import open_body
from tests.helpers import free_port
from tests.integration.test_twistd import (
    load_and_kill,
    marked,
    stop,
    twistd_logged,
    wait_for_banner,
)
from tests.upstreams import RecordingHandler

ROUNDS = 4


def relaying_config(directory: str, port: int, sink_port: int) -> str:
    path = os.path.join(directory, "relay.json")
    data = {"hostname": "relay.test", "spool_dir": "spool", "web": {"enabled": False},
            "smtp": {"listeners": [{"name": "smtp", "tls": "none",
                                    "endpoint": f"tcp:{port}:interface=127.0.0.1"}]},
            "routes": [{"domains": ["*"], "transport": "sink"}],
            "transports": {"sink": {"type": "smarthost", "upstreams": [
                {"host": "127.0.0.1", "port": sink_port, "tls": "none"}]}}}
    with open(path, "w") as f:
        json.dump(data, f)
    return path


class Sink:
    """A plain aiosmtpd upstream that keeps every message it accepted, in order."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handler = RecordingHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def copies(self) -> dict[bytes, list[bytes]]:
        with self.handler.lock:
            contents = [m.content for m in self.handler.messages]
        out: dict[bytes, list[bytes]] = {}
        for content in contents:
            marker, body = marked(content, "sink copy")
            out.setdefault(marker, []).append(body)
        return out


def queued_markers(spool: str) -> set[bytes]:
    """Markers of the messages committed to ``queue/`` (a killed relay left them there)."""
    out = set()
    for name in os.listdir(os.path.join(spool, "queue")):
        try:
            with open_body(os.path.join(spool, "data", name[:-5] + ".eml")) as f:
                out.add(marked(f.read(), name)[0])
        except FileNotFoundError:
            continue  # a removal cut short (body first): delivered, finished at startup
    return out


def wait_for_empty_queue(spool: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while os.listdir(os.path.join(spool, "queue")):
        assert time.monotonic() < deadline, "the queue did not drain after the last restart"
        time.sleep(0.1)


def test_sigkill_while_relaying_delivers_acknowledged_mail_once(tmp_path: Any) -> None:
    sink = Sink()
    sink.controller.start()
    port = free_port()
    config = relaying_config(str(tmp_path), port, sink.port)
    spool = str(tmp_path / "spool")
    acked: dict[str, bytes] = {}
    maybe: dict[str, bytes] = {}
    second_copy_allowed: Counter[bytes] = Counter()
    rng = random.Random(os.getpid())
    try:
        for round_no in range(ROUNDS):
            for sender in load_and_kill(port, config, round_no, rng):
                acked.update(sender.acked)
                maybe.update(sender.in_flight)
            time.sleep(0.3)  # the sink finishes what the dead relay's last "." started
            in_flight = queued_markers(spool) & set(sink.copies())
            second_copy_allowed.update(in_flight)
        proc = twistd_logged(config)
        try:
            wait_for_banner(port, proc)
            wait_for_empty_queue(spool)
        finally:
            stop(proc)
        copies = sink.copies()
    finally:
        sink.controller.stop()
    check_deliveries(copies, acked, maybe, second_copy_allowed)
    twice = sum(len(c) - 1 for c in copies.values())
    print(f"crash test (relaying): {ROUNDS} kills, {len(acked)} acknowledged, "
          f"{len(maybe)} unacknowledged in flight, {sum(second_copy_allowed.values())} "
          f"deliveries in flight at the kills, {twice} delivered twice")
    assert len(acked) > 20, f"too little load to mean anything: {len(acked)} acknowledged"


def check_deliveries(copies: dict[bytes, list[bytes]], acked: dict[str, bytes],
                     maybe: dict[str, bytes], second_copy_allowed: Counter[bytes]) -> None:
    for marker in acked:
        assert copies.get(marker.encode()), f"acknowledged {marker} never delivered"
    for marker, bodies in copies.items():
        name = marker.decode()
        assert name in acked or name in maybe, f"{name} delivered but never fully sent"
        sent = acked.get(name) or maybe[name]
        assert all(b == sent for b in bodies), f"{name} damaged on the way"
        assert len(bodies) - 1 <= second_copy_allowed[marker], (
            f"{name} delivered {len(bodies)} times; in flight at {second_copy_allowed[marker]} "
            "kills")


def test_check_deliveries_catches_a_duplicate_that_was_not_in_flight() -> None:
    """The checker itself: a second copy of a message not in flight at a kill fails it."""
    body = b"X-Marker: a\r\nSubject: x\r\n\r\nend\r\n"
    copies = {b"a": [body, body]}
    check_deliveries(copies, {"a": body}, {}, Counter({b"a": 1}))
    try:
        check_deliveries(copies, {"a": body}, {}, Counter())
    except AssertionError as e:
        assert "delivered 2 times" in str(e)
    else:
        raise AssertionError("a duplicate passed")
    try:
        check_deliveries({}, {"a": body}, {}, Counter())
    except AssertionError as e:
        assert "never delivered" in str(e)
    else:
        raise AssertionError("a lost message passed")
