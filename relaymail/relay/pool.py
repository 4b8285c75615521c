"""Sessions to upstreams, shared by all deliveries: connection reuse and concurrency caps.

Jobs queue per destination (one upstream target).  A session that finishes a job takes
the next one for the same destination, so a burst of messages to one provider goes over a
few long sessions instead of one connection each.  At most ``per_destination`` sessions
per destination and ``concurrency`` in all; an idle session is kept ``idle_time`` seconds,
and closed early when another destination needs the slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from relaymail.logs import Logger
from relaymail.relay.client import Job, RelayClient
from relaymail.relay.connector import Target, open_session
from relaymail.relay.health import HealthBoard
from relaymail.relay.outcome import DELIVERED, Outcome, SessionError, temporary
from relaymail.relay.pacer import Pacer
from relaymail.relay.slowdown import AdaptiveBackoff, asks_to_slow_down

log = Logger(namespace="relaymail.relay.pool")
SHUTTING_DOWN = temporary("4.3.2 relaymail is stopping; will try again after the restart")

Opener = Callable[..., Deferred]
PACE_HOLD = 30.0  # jobs wait this long at most for a provider's rate; then they move on


@dataclass
class Destination:
    target: Target
    jobs: deque[Job] = field(default_factory=deque)
    sessions: set[RelayClient] = field(default_factory=set)
    idle: dict[RelayClient, Any] = field(default_factory=dict)  # client -> expiry call
    connecting: int = 0
    opening: set[Deferred] = field(default_factory=set)


def session_error(failure: Failure) -> SessionError:
    if isinstance(failure.value, SessionError):
        return failure.value
    return SessionError("connect", failure.getErrorMessage() or type(failure.value).__name__)


class SessionPool:
    """Runs jobs on reused sessions within the concurrency caps."""

    def __init__(self, reactor: Any, identity: str, health: HealthBoard, *, concurrency: int,
                 per_destination: int, connect_timeout: float, command_timeout: float,
                 idle_time: float = 2.0, opener: Opener = open_session) -> None:
        self.reactor = reactor
        self.identity = identity
        self.health = health
        self.concurrency = concurrency
        self.per_destination = per_destination
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.idle_time = idle_time
        self.opener = opener
        self.destinations: dict[tuple[Any, ...], Destination] = {}
        self.total = 0
        self.connections_opened = 0
        self.stopping = False
        self.pacers: dict[tuple[Any, ...], Pacer] = {}  # outlive their Destination
        self.backoffs: dict[tuple[Any, ...], AdaptiveBackoff] = {}  # slow-down replies
        self.wakeups: dict[tuple[Any, ...], Any] = {}

    def submit(self, target: Target, job: Job) -> Deferred:
        """Queue ``job`` for ``target``; fires with {recipient: Outcome}, never fails."""
        dest = self.destinations.get(target.key)
        if dest is None:
            dest = self.destinations[target.key] = Destination(target)
        job.deferred.addCallback(self._job_done, target, job)
        dest.jobs.append(job)
        self._pump()
        return job.deferred

    def _job_done(self, results: dict[str, Outcome], target: Target, job: Job
                  ) -> dict[str, Outcome]:
        """Only session trouble (connect, greeting, TLS, AUTH, a lost connection) counts
        against the upstream, as Postfix counts a dead site; a recipient's 4xx or 5xx is an
        answer from a working server, never a reason to mark it down."""
        if not job.health_counted:  # our own "throttled" outcomes are no server's reply
            self._note_slow_down(target, results)
        broken = next((o for o in results.values() if o.session_error), None)
        if broken is not None:
            if not job.health_counted:
                self.health.failed(target.label, broken.reply)
        elif any(o.kind == DELIVERED for o in results.values()):
            self.health.succeeded(target.label, messages=1)
        else:
            self.health.answered(target.label)
        return results

    def _note_slow_down(self, target: Target, results: dict[str, Outcome]) -> None:
        """Widen the upstream's interval on a slow-down reply; narrow it on a delivery."""
        slow = next((o for o in results.values() if asks_to_slow_down(o.code, o.text)), None)
        if slow is None:
            backoff = self.backoffs.get(target.key)
            if backoff is not None and any(o.kind == DELIVERED for o in results.values()):
                backoff.delivered()
            return
        backoff = self.backoffs.setdefault(target.key, AdaptiveBackoff(self.reactor.seconds))
        interval = backoff.slow_down()
        log.info("relay: {upstream} asks us to slow down ({reply}); one message every "
                 "{interval:.0f} s for now", upstream=target.label, reply=slow.reply,
                 interval=interval)

    # ------------------------------------------------------------------ scheduling

    def _pump(self) -> None:
        if self.stopping:
            return
        for dest in list(self.destinations.values()):
            while dest.jobs and dest.idle and self._may_send(dest):
                client, expiry = dest.idle.popitem()
                expiry.cancel()
                self._run(dest, client)
            while (dest.jobs and len(dest.sessions) + dest.connecting < self._cap(dest)
                   and dest.connecting < len(dest.jobs) and self._may_send(dest)):
                if self.total >= self.concurrency and not self._evict_idle(dest):
                    break
                self._connect(dest)
            if not dest.jobs and not dest.sessions and not dest.connecting:
                # pop: a connect that failed at once (an unusable OAuth2 setting) pumped
                # again from _connect_failed and may have removed it already
                self.destinations.pop(dest.target.key, None)

    def _run(self, dest: Destination, client: RelayClient) -> None:
        job = dest.jobs.popleft()
        pacer = self.pacers.get(dest.target.key)
        if pacer is not None:
            pacer.take()
        backoff = self.backoffs.get(dest.target.key)
        if backoff is not None:
            backoff.take()
        client.send(job)

    def _cap(self, dest: Destination) -> int:
        """Sessions allowed to this destination: the provider's cap when it is lower, one
        while it asks us to slow down."""
        backoff = self.backoffs.get(dest.target.key)
        if backoff is not None and backoff.active:
            return 1
        return min(self.per_destination, dest.target.max_connections or self.per_destination)

    def _may_send(self, dest: Destination) -> bool:
        """The provider's rate (and its slow-down replies) allow a message now; else wake
        the pool when they will, or move the waiting jobs on when that is too far off."""
        key = dest.target.key
        rate_wait, backoff_wait = self._rate_wait(dest), self._backoff_wait(dest)
        wait = max(rate_wait, backoff_wait)
        if wait <= 0:
            return True
        if wait > PACE_HOLD:
            self._shed(dest, wait, by_rate=rate_wait >= backoff_wait)
        elif backoff_wait > 0 and len(dest.jobs) > 1:
            self._shed(dest, wait, by_rate=False, keep=1)  # fail over meanwhile
        elif key not in self.wakeups:
            log.debug("relay: pacing {upstream}: next message in {wait:.1f} s",
                      upstream=dest.target.label, wait=wait)
            self.wakeups[key] = self.reactor.callLater(wait, self._wake, key)
        return False

    def _rate_wait(self, dest: Destination) -> float:
        rate = dest.target.max_rate
        if rate is None:
            return 0.0
        pacer = self.pacers.get(dest.target.key)
        if pacer is None:
            pacer = self.pacers[dest.target.key] = Pacer(rate[0], rate[1], self.reactor.seconds)
        return pacer.wait()

    def _backoff_wait(self, dest: Destination) -> float:
        backoff = self.backoffs.get(dest.target.key)
        return backoff.wait() if backoff is not None else 0.0

    def _shed(self, dest: Destination, wait: float, by_rate: bool, keep: int = 0) -> None:
        """The provider's window is full, or it asked us to slow down, for a while: waiting
        jobs go back as temporary failures, so they fail over to the next upstream or are
        retried later."""
        jobs = list(dest.jobs)
        dest.jobs = deque(jobs[:keep])
        jobs = jobs[keep:]
        rate = dest.target.max_rate
        if rate is not None and by_rate:
            why = f"at most {rate[0]} messages per {rate[1]:.0f} s to this upstream"
            event = f"throttle {rate[0]}/{rate[1]:.0f}s reached"
        else:
            why = event = "the upstream asked us to slow down"
        emit = log.debug if keep else log.info  # moving a few on at a time is routine
        if jobs:
            emit("relay: {upstream} {event}; {n} message(s) move on (next slot in "
                     "{wait:.0f} s)", upstream=dest.target.label, event=event, n=len(jobs),
                     wait=wait)
        text = f"4.7.0 throttled: {why}; next slot in {wait:.0f} s"
        for job in jobs:
            job.health_counted = True  # pacing is not a failure of the upstream
            job.deferred.callback(dict.fromkeys(job.recipients,
                                                temporary(text, dest.target.label)))

    def _wake(self, key: tuple[Any, ...]) -> None:
        self.wakeups.pop(key, None)
        self._pump()

    def _evict_idle(self, wanting: Destination) -> bool:
        for dest in self.destinations.values():
            if dest is not wanting and dest.idle:
                client, expiry = dest.idle.popitem()
                expiry.cancel()
                self._forget(dest, client)
                client.quit()
                return True
        return False

    def _connect(self, dest: Destination) -> None:
        dest.connecting += 1
        self.total += 1
        self.connections_opened += 1
        d = self.opener(self.reactor, dest.target, self.identity, self.connect_timeout,
                        self.command_timeout)
        dest.opening.add(d)

        def opened(result: Any) -> Any:
            dest.opening.discard(d)
            return result

        d.addBoth(opened)
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(dest,),
                       errbackArgs=(dest,))

    def _connected(self, client: RelayClient, dest: Destination) -> None:
        dest.connecting -= 1
        dest.sessions.add(client)
        self.health.get(dest.target.label).sessions_opened += 1
        client.on_idle = lambda c: self._idle(dest, c)
        client.lost.addCallback(self._lost, dest)
        log.debug("relay: session to {upstream} ready (tls {tls})", upstream=client.label,
                  tls=client.tls)
        self._idle(dest, client)

    def _connect_failed(self, failure: Failure, dest: Destination) -> None:
        dest.connecting -= 1
        self.total -= 1
        error = session_error(failure)
        if asks_to_slow_down(error.code, error.text):  # "421 Too many connections": alive
            self._note_slow_down(dest.target, {"": error.outcome(dest.target.label)})
        else:
            self.health.failed(dest.target.label, str(error))
        log.warn("relay: cannot use {upstream}: {error}", upstream=dest.target.label,
                 error=str(error))
        if not dest.sessions:
            # Nothing live serves this destination: its waiting jobs go on to the next
            # upstream now rather than waiting on (or starting) more attempts.
            jobs, dest.jobs = list(dest.jobs), deque()
            for job in jobs:
                job.health_counted = True
                outcome = error.outcome(dest.target.label)
                job.deferred.callback(dict.fromkeys(job.recipients, outcome))
        self._pump()

    def _idle(self, dest: Destination, client: RelayClient) -> None:
        if client not in dest.sessions:
            return
        if dest.jobs and not self.stopping and self._may_send(dest):
            self._run(dest, client)
            return
        starving = any(d.jobs for d in self.destinations.values() if d is not dest)
        if self.stopping or (starving and self.total >= self.concurrency):
            self._forget(dest, client)
            client.quit()
            self._pump()
            return
        dest.idle[client] = self.reactor.callLater(self.idle_time, self._expire, dest, client)

    def _expire(self, dest: Destination, client: RelayClient) -> None:
        dest.idle.pop(client, None)
        self._forget(dest, client)
        client.quit()
        self._pump()

    def _forget(self, dest: Destination, client: RelayClient) -> None:
        if client in dest.sessions:
            dest.sessions.discard(client)
            self.total -= 1

    def _lost(self, client: RelayClient, dest: Destination) -> None:
        expiry = dest.idle.pop(client, None)
        if expiry is not None and expiry.active():
            expiry.cancel()
        self._forget(dest, client)
        self._pump()

    # ------------------------------------------------------------------ shutdown

    def close(self) -> Deferred:
        """Close every session (QUIT when idle, abort when busy) and answer the jobs still
        waiting for one (temporary failure); fires when all sessions are gone."""
        self.stopping = True
        for wakeup in self.wakeups.values():
            wakeup.cancel()
        self.wakeups.clear()
        waits = []
        for dest in list(self.destinations.values()):
            jobs, dest.jobs = list(dest.jobs), deque()
            for job in jobs:  # waiting for a session that will not come: try again later
                job.deferred.callback(dict.fromkeys(job.recipients, SHUTTING_DOWN))
            for opening in list(dest.opening):
                opening.cancel()
            for expiry in dest.idle.values():
                expiry.cancel()
            dest.idle.clear()
            for client in list(dest.sessions):
                waits.append(client.lost)
                if client.job is None:
                    client.quit()
                else:
                    client.wire.abortConnection()
        return DeferredList(waits)
