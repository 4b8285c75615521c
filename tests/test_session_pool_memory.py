"""SessionPool in memory: relaymail.testing.ScriptedOpener joins each session's RelayClient
to a ScriptedPeer (twisted.test.iosim), time is a task.Clock.  Reuse, the per-destination
cap, idle expiry, failover of waiting jobs when a connect fails, the breaker counting only
session trouble, the adaptive slow-down back-off and max_rate pacing, with exact times."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from twisted.internet.task import Clock

from relaymail.relay.client import Job
from relaymail.relay.connector import Target
from relaymail.relay.health import HealthBoard
from relaymail.relay.outcome import DELIVERED, TEMPORARY, Outcome
from relaymail.relay.pool import PACE_HOLD, SessionPool
from relaymail.testing import DROP, ScriptedOpener, ScriptedPeer, connect_refused

BODY = b"From: a@x.test\r\nSubject: s\r\n\r\nhello\r\n"
TARGET = Target(host="up.test", port=25, tls="none")
OTHER = Target(host="other.test", port=25, tls="none")


class Harness:
    def __init__(self, peers: Any = None, hold: bool = False, concurrency: int = 10,
                 per_destination: int = 2, idle_time: float = 2.0) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.health = HealthBoard(self.clock.seconds, threshold=3, base_cooldown=30)
        self.opener = ScriptedOpener(peers, self.clock, hold=hold)
        self.pool = SessionPool(self.clock, "relay.test", self.health, concurrency=concurrency,
                                per_destination=per_destination, connect_timeout=10,
                                command_timeout=300, idle_time=idle_time, opener=self.opener)
        fd, self.body = tempfile.mkstemp(suffix=".eml")
        with os.fdopen(fd, "wb") as f:
            f.write(BODY)
        self.results: list[dict[str, Outcome]] = []

    def submit(self, *recipients: str, target: Target = TARGET) -> list[dict[str, Outcome]]:
        """Queue one job per recipient; returns the list its results are appended to."""
        out: list[dict[str, Outcome]] = []
        for r in recipients:
            job = Job(queue_id="Q", sender="a@x.test", recipients=[r], body_path=self.body,
                      size=len(BODY))
            self.pool.submit(target, job).addCallback(out.append)
        self.opener.flush()
        return out

    def run(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        self.opener.flush()

    def delivered(self) -> list[str]:
        return [r for p in self.opener.peers_made for m in p.messages if m.accepted
                for r in m.recipients]

    def failures(self, target: Target = TARGET) -> int:
        return self.health.get(target.label).consecutive_failures


def kinds(results: list[dict[str, Outcome]]) -> list[str]:
    return [o.kind for r in results for o in r.values()]


def test_sessions_are_reused_for_a_burst() -> None:
    h = Harness(per_destination=1)
    out = h.submit("a@y.test", "b@y.test", "c@y.test")
    assert kinds(out) == [DELIVERED] * 3
    assert h.pool.connections_opened == 1 and len(h.opener.opened) == 1
    assert h.delivered() == ["a@y.test", "b@y.test", "c@y.test"]
    assert h.health.get(TARGET.label).messages_relayed == 3


def test_per_destination_cap_and_the_providers_lower_cap() -> None:
    h = Harness(hold=True, per_destination=2)
    h.submit("a@y.test", "b@y.test", "c@y.test", "d@y.test", "e@y.test")
    assert len(h.opener.attempts) == 2, "at most per_destination sessions"
    h.opener.release()
    assert len(h.delivered()) == 5 and h.pool.connections_opened == 2

    capped = Harness(hold=True, per_destination=5)
    one = dataclasses.replace(TARGET, max_connections=1)
    capped.submit("a@y.test", "b@y.test", "c@y.test", target=one)
    assert len(capped.opener.attempts) == 1, "max_connections is lower"
    capped.opener.release()
    assert len(capped.delivered()) == 3


def test_connecting_is_not_more_than_the_jobs_waiting() -> None:
    h = Harness(hold=True, per_destination=4)
    h.submit("a@y.test")
    assert len(h.opener.attempts) == 1


def test_idle_session_expires_after_idle_time() -> None:
    h = Harness(idle_time=2.0)
    h.submit("a@y.test")
    [peer] = h.opener.peers_made
    h.run(1.999)
    assert "QUIT" not in peer.commands and h.pool.total == 1
    h.run(0.002)
    assert peer.commands[-1] == "QUIT" and peer.closed
    assert h.pool.total == 0 and h.pool.destinations == {}
    h.submit("b@y.test")
    assert h.pool.connections_opened == 2, "a new session after expiry"


def test_idle_session_is_closed_for_another_destination_at_the_total_cap() -> None:
    h = Harness(concurrency=1, per_destination=1, idle_time=60)
    h.submit("a@y.test")
    first = h.opener.peers_made[0]
    out = h.submit("b@z.test", target=OTHER)
    assert first.commands[-1] == "QUIT"
    assert kinds(out) == [DELIVERED] and h.pool.connections_opened == 2


def test_waiting_jobs_fail_over_when_the_connect_fails() -> None:
    h = Harness(hold=True, per_destination=2)
    out = h.submit("a@y.test", "b@y.test", "c@y.test")
    h.opener.release(connect_refused())
    assert kinds(out) == [TEMPORARY] * 3, "every waiting job moves on"
    assert {o.session_error for r in out for o in r.values()} == {"connect"}
    assert {o.upstream for r in out for o in r.values()} == {TARGET.label}
    assert h.failures() == 2, "one failure per connect, not per job"
    assert h.pool.total == 0 and h.pool.destinations == {}


def test_failed_handshake_counts_and_the_breaker_opens() -> None:
    h = Harness(peers=lambda target, n: ScriptedPeer({"banner": "421 4.3.2 shutting down"}),
                per_destination=1)
    for i in range(3):
        out = h.submit(f"r{i}@y.test")
        assert kinds(out) == [TEMPORARY]
    assert h.failures() == 3 and not h.health.available(TARGET.label)
    h.run(30)
    assert h.health.available(TARGET.label), "the cool-down ran out"


def test_recipient_replies_never_count_against_the_upstream() -> None:
    h = Harness(peers=lambda target, n: ScriptedPeer({
        "RCPT": ["451 4.7.1 greylisted", "550 5.1.1 no such user"]}), per_destination=1)
    h.health.failed(TARGET.label, "earlier trouble")
    out = h.submit(*(f"r{i}@y.test" for i in range(6)))
    assert [o.code for r in out for o in r.values()] == [451] + [550] * 5
    assert h.failures() == 0, "an answering server resets the count"
    assert h.health.available(TARGET.label)
    assert h.health.get(TARGET.label).messages_relayed == 0


def test_lost_connection_mid_data_counts_once_and_the_job_is_temporary() -> None:
    h = Harness(peers=lambda target, n: ScriptedPeer({"body": DROP} if n == 0 else None),
                per_destination=1)
    out = h.submit("a@y.test")
    assert kinds(out) == [TEMPORARY] and out[0]["a@y.test"].session_error == "connection"
    assert h.failures() == 1 and h.pool.total == 0
    again = h.submit("a@y.test")
    assert kinds(again) == [DELIVERED] and h.failures() == 0


def test_slow_down_reply_backs_off_then_recovers() -> None:
    busy = "451 4.7.500 Server busy. Please try again later"
    h = Harness(peers=lambda target, n: ScriptedPeer({"RCPT": [busy, "250 2.1.5 Ok"]}),
                per_destination=3)
    out = h.submit("a@y.test")
    assert out[0]["a@y.test"].code == 451
    backoff = h.pool.backoffs[TARGET.key]
    assert backoff.interval == 0.25 and h.failures() == 0, "slow down is not a failure"
    assert h.pool._cap(h.pool.destinations[TARGET.key]) == 1, "one session while slowed"
    later = h.submit("b@y.test")
    assert later == [], "waits for the interval"
    h.run(0.249)
    assert later == []
    h.run(0.001)
    assert kinds(later) == [DELIVERED]
    assert backoff.interval == 0.25 * 0.8, "a delivery narrows the interval"


def test_slow_down_moves_the_other_waiting_jobs_on() -> None:
    busy = "454 4.7.0 Throttling failure: Maximum sending rate exceeded"
    h = Harness(peers=lambda target, n: ScriptedPeer({"RCPT": [busy, "250 2.1.5 Ok"]}),
                per_destination=1)
    h.submit("a@y.test")
    out = h.submit("b@y.test", "c@y.test", "d@y.test")
    moved = [r for r in out if "throttled" in next(iter(r.values())).text]
    assert len(moved) == 2, "one job waits, the others fail over meanwhile"
    assert all(o.kind == TEMPORARY for r in moved for o in r.values())
    h.run(0.25)
    assert len(out) == 3 and h.failures() == 0


def test_max_rate_paces_within_the_hold_and_sheds_beyond_it() -> None:
    h = Harness(per_destination=1)
    paced = dataclasses.replace(TARGET, max_rate=(2, 10.0))
    out = h.submit("a@y.test", "b@y.test", "c@y.test", target=paced)
    assert kinds(out) == [DELIVERED] * 2, "two per 10 s"
    h.run(9.999)
    assert len(out) == 2
    h.run(0.001)
    assert kinds(out) == [DELIVERED] * 3

    slow = Harness(per_destination=1)
    hourly = dataclasses.replace(TARGET, max_rate=(1, 3600.0))
    first = slow.submit("a@y.test", target=hourly)
    rest = slow.submit("b@y.test", target=hourly)
    assert kinds(first) == [DELIVERED]
    [shed] = rest
    assert shed["b@y.test"].kind == TEMPORARY and "4.7.0 throttled" in shed["b@y.test"].text
    assert PACE_HOLD < 3600 and slow.failures() == 0, "pacing is no upstream failure"


def test_close_quits_idle_sessions() -> None:
    h = Harness(idle_time=60)
    h.submit("a@y.test")
    done: list[Any] = []
    h.pool.close().addCallback(done.append)
    h.opener.flush()
    assert done and h.opener.peers_made[0].commands[-1] == "QUIT"


def test_a_connect_that_fails_at_once_moves_the_jobs_on() -> None:
    """The opener's Deferred may have failed already (an OAuth2 setting that cannot work
    raises before any I/O): the pool pumps again from inside its own pump."""
    h = Harness(peers=lambda target, n: connect_refused("unusable oauth2 settings"))
    out = h.submit("a@y.test", "b@y.test")
    assert kinds(out) == [TEMPORARY] * 2
    assert h.pool.destinations == {} and h.pool.total == 0


def test_close_answers_jobs_still_waiting_for_a_session() -> None:
    """At shutdown the jobs queued behind the per-destination cap must get an answer (a
    temporary one), or the relay's stop waits for them forever (seen with a backlog)."""
    h = Harness(hold=True, per_destination=1)
    out = h.submit("a@y.test", "b@y.test", "c@y.test")
    assert out == [] and len(h.opener.attempts) == 1
    done: list[Any] = []
    h.pool.close().addCallback(done.append)
    h.opener.flush()
    assert kinds(out) == [TEMPORARY] * 3, out
    assert all("4.3.2" in o.text for r in out for o in r.values())
    assert done
