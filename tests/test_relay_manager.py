"""The relay manager in memory: task.Clock for time, a real spool in a temp dir (synchronous
I/O), and transports that answer from a script.  Back-off, expiry, fallback, bounces,
queue control and the circuit breaker, with exact times."""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import tempfile
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from relaymail.config import DeliveryConfig, RouteConfig
from relaymail.relay.health import HealthBoard
from relaymail.relay.manager import QueueError, RelayManager
from relaymail.relay.outcome import Outcome
from relaymail.relay.pause import paused_on_disk
from relaymail.relay.router import Router
from relaymail.spool import Spool, run_synchronously
from relaymail.spool.envelope import Envelope
from relaymail.spool.record import open_body
from relaymail.testing import ScriptedTransport

OK = Outcome(250, "2.0.0 ok", "up")
LATER = Outcome(451, "4.7.1 try later", "up")
NO_USER = Outcome(550, "5.1.1 no such user", "up")
MESSAGE = b"From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n"


def delivery(**kw: Any) -> DeliveryConfig:
    values: dict[str, Any] = dict(
        concurrency=5, per_destination_concurrency=2, batch_size=50, batch_delay=0,
        retry_schedule=(60.0, 300.0, 900.0), max_queue_lifetime=3600.0, bounces=True,
        connect_timeout=10, command_timeout=300)
    values.update(kw)
    return DeliveryConfig(**values)


class Harness:
    def __init__(self, transports: dict[str, Any], routes: list[RouteConfig] | None = None,
                 fallbacks: dict[str, str | None] | None = None, **kw: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.spool = Spool(tempfile.mkdtemp(), run_synchronously, clock=self.clock.seconds)
        self.spool.prepare()
        routes = routes or [RouteConfig(("*",), next(iter(transports)))]
        self.manager = RelayManager(self.spool, Router(routes), transports, fallbacks or {},
                                    delivery(**kw), "relay.test", self.clock,
                                    rng=random.Random(1))
        self.manager.startService()

    def queue(self, recipients: list[str], sender: str = "a@x.test") -> str:
        result: list[str] = []
        ensureDeferred(self.manager.inject(sender, recipients, MESSAGE)).addCallback(
            result.append)
        assert result, "inject did not complete synchronously"
        return result[0]

    def run(self, seconds: float = 0) -> None:
        self.clock.advance(0)
        if seconds:
            self.clock.advance(seconds)
        self.clock.advance(0)

    def state(self, qid: str) -> str | None:
        return self.spool.find_state(qid)

    def envelope(self, qid: str) -> Envelope:
        return self.manager.find(qid)[1]


def test_delivered_message_leaves_the_spool() -> None:
    h = Harness({"t": ScriptedTransport("t")})
    qid = h.queue(["b@y.test"])
    h.run()
    assert h.state(qid) is None
    assert h.manager.counters["delivered"] == 1


def test_back_off_follows_the_schedule_with_jitter() -> None:
    t = ScriptedTransport("t", {"b@y.test": [LATER, LATER, LATER, OK]})
    h = Harness({"t": t})
    qid = h.queue(["b@y.test"])
    h.run()
    times = [h.clock.seconds()]
    for expected in (60, 300, 900):
        due = h.envelope(qid).next_attempt - h.clock.seconds()
        assert expected * 0.9 <= due <= expected * 1.1
        h.run(due - 0.001)
        assert len(t.calls) == len(times), "attempted before it was due"
        h.run(0.002)
        times.append(h.clock.seconds())
        assert len(t.calls) == len(times)
    assert h.state(qid) is None
    assert h.manager.counters == {"delivered": 1, "deferred": 3, "failed": 0, "bounces": 0}


def test_expiry_fails_and_bounces_with_the_last_reply() -> None:
    t = ScriptedTransport("t", {"b@y.test": [LATER]})
    h = Harness({"t": t}, retry_schedule=(600.0,), max_queue_lifetime=1800.0)
    qid = h.queue(["b@y.test"], sender="sender@x.test")
    h.run()
    for _ in range(4):
        h.run(700)
    assert h.state(qid) == "failed"
    envelope = h.envelope(qid)
    assert envelope.recipients[0].state == "failed"
    assert envelope.reason is not None and envelope.reason.startswith("4.4.7 message expired")
    bounces = [e for e in h.manager.queued.values() if e.sender == ""] or \
        [e for e in h.spool.load_state("queue") if e.sender == ""]
    # The bounce was delivered by the same transport (everything routes to "t").
    bounce_calls = [c for c in t.calls if c[1] == ["sender@x.test"]]
    assert bounce_calls and not bounces
    assert h.manager.counters["bounces"] == 1


def test_permanent_failure_bounce_content() -> None:
    t = ScriptedTransport("t", {"bad@y.test": [NO_USER]})
    t.script["a@x.test"] = [LATER]  # the bounce stays queued, so we can read it
    h = Harness({"t": t})
    qid = h.queue(["good@y.test", "bad@y.test"])
    h.run()
    [bounce] = [e for e in h.manager.queued.values() if e.sender == ""]
    with open_body(h.spool.path("data", bounce.queue_id + ".eml")) as f:
        report = email.message_from_bytes(f.read(), policy=email.policy.default)
    assert report["To"].addresses[0].addr_spec == "a@x.test"
    assert report.get_content_type() == "multipart/report"
    status = list(report.iter_parts())[1].get_payload()
    assert [b["Final-Recipient"] for b in status[1:]] == ["rfc822; bad@y.test"]
    assert status[1]["Status"] == "5.1.1"
    assert h.state(qid) == "failed"
    assert bounce.extra["bounce_of"] == qid


def test_null_sender_and_disabled_bounces_send_nothing() -> None:
    for sender, bounces in (("", True), ("a@x.test", False)):
        t = ScriptedTransport("t", {"bad@y.test": [NO_USER]})
        h = Harness({"t": t}, bounces=bounces)
        qid = h.queue(["bad@y.test"], sender=sender)
        h.run()
        assert h.state(qid) == "failed"
        assert h.manager.counters["bounces"] == 0
        assert len(t.calls) == 1


def test_no_route_fails_for_good() -> None:
    t = ScriptedTransport("t")
    h = Harness({"t": t}, routes=[RouteConfig(("y.test",), "t")], bounces=False)
    qid = h.queue(["b@elsewhere.test"])
    h.run()
    assert h.envelope(qid).recipients[0].last_reply.startswith("550 5.4.4")


def test_fallback_takes_only_the_temporary_recipients() -> None:
    mx = ScriptedTransport("mx", {"slow@y.test": [LATER]})
    hub = ScriptedTransport("hub")
    h = Harness({"mx": mx, "hub": hub}, fallbacks={"mx": "hub"})
    h.queue(["fast@y.test", "slow@y.test"])
    h.run()
    assert [c[1] for c in mx.calls] == [["fast@y.test", "slow@y.test"]]
    assert [c[1] for c in hub.calls] == [["slow@y.test"]]
    assert h.manager.counters["delivered"] == 2


def test_queue_control_hold_release_retry_delete_bounce_flush() -> None:
    def do(coro: Any) -> Any:
        out: list[Any] = []
        ensureDeferred(coro).addBoth(out.append)
        h.run()
        if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    t = ScriptedTransport("t", default=LATER)
    h = Harness({"t": t}, bounces=False)
    qid = h.queue(["b@y.test"])
    h.run()
    assert do(h.manager.hold(qid)) == "hold" and h.state(qid) == "hold"
    h.run(1000)
    assert len(t.calls) == 1, "a held message is not attempted"
    with pytest.raises(QueueError):
        do(h.manager.hold(qid))
    assert do(h.manager.release(qid)) == "queue"
    assert len(t.calls) == 2, "release makes it due now"
    assert h.manager.flush() == 1
    h.run()
    assert len(t.calls) == 3
    assert do(h.manager.bounce(qid)) == "failed" and h.state(qid) == "failed"
    t.default = OK
    assert do(h.manager.retry(qid)) == "queue"
    assert h.state(qid) is None, "retried from failed/ and delivered"
    other = h.queue(["c@y.test"])
    t.default = LATER
    h.run()
    assert do(h.manager.delete(other)) == "deleted" and h.state(other) is None
    with pytest.raises(QueueError):
        do(h.manager.delete(other))


def test_circuit_breaker_opens_after_threshold_and_doubles() -> None:
    clock = Clock()
    board = HealthBoard(clock.seconds, threshold=3, base_cooldown=30, max_cooldown=100)
    assert not board.failed("up", "x") and not board.failed("up", "x")
    assert board.failed("up", "x")
    assert not board.available("up")
    clock.advance(30)
    assert board.available("up"), "probe allowed after the cool-down"
    board.failed("up", "x")
    clock.advance(59)
    assert not board.available("up")
    clock.advance(1)
    board.failed("up", "x")
    clock.advance(99)
    assert not board.available("up"), "capped at max_cooldown"
    board.succeeded("up", messages=1)
    assert board.available("up")
    assert board.snapshot()[0]["messages_relayed"] == 1


def test_bounce_that_cannot_be_queued_keeps_the_message_in_failed() -> None:
    from relaymail.spool import SpoolError

    t = ScriptedTransport("t", {"bad@y.test": [NO_USER]})
    h = Harness({"t": t})
    qid = h.queue(["bad@y.test"])

    async def disk_full(*args: Any, **kw: Any) -> str:
        raise SpoolError("No space left on device")

    h.manager.inject = disk_full  # type: ignore[method-assign]
    h.run()
    assert h.state(qid) == "failed"
    assert "No space left" in h.envelope(qid).extra["bounce_failed"]


def test_paused_delivery_keeps_the_schedule_and_retry_sends_one() -> None:
    """While paused: accepted mail waits (nothing attempted, flush included), a deferred
    message's retry time passes unattempted, ``retry ID`` sends that one only; resume
    sends what is due.  The pause is a file in the spool, so a restart keeps it."""
    def do(coro: Any) -> Any:
        out: list[Any] = []
        ensureDeferred(coro).addBoth(out.append)
        h.run()
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    t = ScriptedTransport("t", script={"late@y.test": [LATER, OK]})
    h = Harness({"t": t})
    deferred = h.queue(["late@y.test"])
    h.run()
    assert len(t.calls) == 1
    assert do(h.manager.control.pause("the test")) is True
    assert paused_on_disk(h.spool.root)
    first, second = h.queue(["b@y.test"]), h.queue(["c@y.test"])
    assert h.manager.flush() == 3
    h.run(3600)  # past the deferred message's retry time
    assert len(t.calls) == 1 and h.manager.paused
    assert {h.state(q) for q in (deferred, first, second)} == {"queue"}
    assert do(h.manager.retry(first)) == "queue"
    assert [c[0] for c in t.calls[1:]] == [first] and h.state(first) is None
    held = h.queue(["held@y.test"])
    assert do(h.manager.hold(held)) == "hold"
    assert do(h.manager.retry(held)) == "queue"  # from hold/ (or failed/) by name: sent too
    assert [c[0] for c in t.calls[2:]] == [held] and h.state(held) is None
    assert do(h.manager.control.resume("the test")) is False
    assert not paused_on_disk(h.spool.root)
    h.run()
    assert sorted(c[0] for c in t.calls[3:]) == sorted([deferred, second])
    assert h.state(deferred) is None and h.state(second) is None


def test_a_pause_marker_or_the_config_key_starts_the_relay_paused(tmp_path: Any) -> None:
    from relaymail.config import load_config
    from relaymail.relay.build import build_manager
    from relaymail.relay.pause import write_marker
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({"hostname": "relay.test", "spool_dir": "spool",
                                "web": {"enabled": False}}))
    spool = Spool(str(tmp_path / "spool"), run_synchronously)
    spool.prepare()
    clock = Clock()
    assert not build_manager(load_config(str(path)), clock, spool).paused
    write_marker(spool.root, clock.seconds(), "the test")
    assert build_manager(load_config(str(path)), clock, spool).paused
    os.unlink(os.path.join(spool.root, "delivery.paused"))
    path.write_text(json.dumps({"hostname": "relay.test", "spool_dir": "spool",
                                "web": {"enabled": False}, "delivery": {"paused": True}}))
    assert build_manager(load_config(str(path)), clock, spool).paused
