"""The relay manager: takes due messages from the spool, delivers, records, retries, bounces.

Every queued message lives in ``queued`` (memory) and in ``queue/`` (disk).  An attempt
routes the still-pending recipients, delivers each route's share through its transport
(then its fallback for what stayed temporary), records each recipient's outcome in the
envelope, and then either removes the message (all delivered), moves it to ``failed/``
(some failed for good, after bouncing them), or saves it with its next attempt time.
The envelope is saved after every attempt, so a restart never re-sends to a recipient
whose delivery was recorded.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed

from relaymail.common.headers import header_lines, header_value
from relaymail.config import DeliveryConfig
from relaymail.logs import Logger, printable
from relaymail.relay.bounce import build_bounce
from relaymail.relay.control import STATES, QueueControl, QueueError, read_head, read_headers
from relaymail.relay.health import HealthBoard
from relaymail.relay.outcome import COUNTERS, TEMPORARY, Outcome
from relaymail.relay.pool import SessionPool
from relaymail.relay.router import Router
from relaymail.relay.transports import Transport
from relaymail.spool import Spool, SpoolError
from relaymail.spool.envelope import FAILED, PENDING, Envelope, Recipient

log = Logger(namespace="relaymail.relay")

NO_ROUTE = Outcome(550, "5.4.4 no route for this recipient's domain")

__all__ = ["NO_ROUTE", "STATES", "QueueError", "RelayManager", "read_head", "read_headers"]


class RelayManager(Service):
    """Schedules and runs delivery attempts; ``control`` is the queue's control surface."""

    def __init__(self, spool: Spool, router: Router, transports: dict[str, Transport],
                 fallbacks: dict[str, str | None], delivery: DeliveryConfig, hostname: str,
                 reactor: Any, rng: random.Random | None = None, max_active: int = 200,
                 pool: SessionPool | None = None, health: HealthBoard | None = None) -> None:
        self.spool = spool
        self.router = router
        self.transports = transports
        self.fallbacks = fallbacks
        self.delivery = delivery
        self.hostname = hostname
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.max_active = max_active
        self.pool = pool
        self.health = health
        self.queued: dict[str, Envelope] = {}
        self.heap: list[tuple[float, str]] = []
        self.active: dict[str, list[Deferred]] = {}
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        # Awaited before a message whose events were reported is removed or updated: the
        # webhook outbox makes its events durable first (relaymail.events.hub).
        self.barriers: list[Callable[[], Deferred]] = []
        self.suppressed: Callable[[str], bool] = lambda address: False
        self.counters = dict.fromkeys(COUNTERS, 0)  # delivered, deferred, failed, bounces
        self.not_attempted = 0  # retries skipped because every upstream was marked down
        self.editor: Any = None  # relay.rewrite.HeaderEditor, kept for live config changes
        self._timer: Any = None
        self._soon: Any = None
        self.stopping = False
        # Accept and queue, deliver nothing (relaymail.relay.pause); set from the config
        # and the spool's marker at build, changed through control.pause/resume.
        self.paused = False
        self.control = QueueControl(self)

    def now(self) -> float:
        return self.reactor.seconds()

    # ------------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self.spool.commit_listeners.append(self.submit)
        self._dispatch_soon()  # what was submitted before the start

    def take_recovered(self, envelopes: Iterable[Envelope]) -> None:
        """A batch of the queue found at startup (relaymail.spool.recovery); a message
        known already (released or committed meanwhile) keeps the state it has."""
        for envelope in envelopes:
            if envelope.queue_id not in self.queued and envelope.queue_id not in self.active:
                self.submit(envelope)

    def stopService(self) -> Deferred:
        self.stopping = True
        if self.submit in self.spool.commit_listeners:
            self.spool.commit_listeners.remove(self.submit)
        for call in (self._timer, self._soon):
            if call is not None and call.active():
                call.cancel()
        waits = [self.wait_idle(qid) for qid in list(self.active)]
        if self.pool is not None:
            waits.append(self.pool.close())
        super().stopService()
        return DeferredList(waits)

    # ------------------------------------------------------------------ scheduling

    def submit(self, envelope: Envelope) -> None:
        """A message entered ``queue/`` (committed, recovered, released or a bounce)."""
        self.queued[envelope.queue_id] = envelope
        self.schedule(envelope, envelope.next_attempt)

    def schedule(self, envelope: Envelope, when: float) -> None:
        envelope.next_attempt = when
        heapq.heappush(self.heap, (when, envelope.queue_id))
        self._dispatch_soon()

    def _dispatch_soon(self) -> None:
        if self._soon is None and not self.stopping and self.running:
            self._soon = self.reactor.callLater(0, self._dispatch)

    def set_paused(self, paused: bool, by: str) -> None:
        """Stop starting attempts (those running finish), or start again with what is
        due; the schedule is kept either way."""
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            log.info("relay: delivery paused by {by}: mail is accepted and queued, none "
                     "is delivered until delivery is resumed ({queued} queued)",
                     by=printable(by), queued=len(self.queued))
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
        else:
            log.info("relay: delivery resumed by {by} ({queued} queued)", by=printable(by),
                     queued=len(self.queued))
            self._dispatch_soon()

    def start_now(self, envelope: Envelope) -> None:
        """An operator's retry of one message while delivery is paused: attempt it now."""
        if envelope.queue_id in self.queued and envelope.queue_id not in self.active:
            self._start(envelope)

    def _dispatch(self) -> None:
        self._soon = None
        if self.paused:
            return
        now = self.now()
        while self.heap and len(self.active) < self.max_active:
            when, qid = self.heap[0]
            if when > now:
                break
            heapq.heappop(self.heap)
            envelope = self.queued.get(qid)
            if envelope is None or qid in self.active or envelope.next_attempt != when:
                continue  # stale entry: rescheduled, held, deleted or already running
            self._start(envelope)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.heap and len(self.active) < self.max_active and not self.stopping:
            self._timer = self.reactor.callLater(max(0.0, self.heap[0][0] - now),
                                                 self._dispatch)

    def _start(self, envelope: Envelope) -> None:
        qid = envelope.queue_id
        self.active[qid] = []
        d = ensureDeferred(self._attempt(envelope))
        d.addErrback(self._attempt_crashed, envelope)
        d.addBoth(self._attempt_finished, qid)

    def _attempt_crashed(self, failure: Any, envelope: Envelope) -> None:
        """A bug must not lose mail: log it and try again later."""
        log.failure("relay: attempt for {queue_id} failed unexpectedly", failure,
                    queue_id=envelope.queue_id)
        if envelope.queue_id in self.queued:
            self.schedule(envelope, self.now() + self.delivery.retry_schedule[0])

    def _attempt_finished(self, _: Any, qid: str) -> None:
        for waiter in self.active.pop(qid, []):
            waiter.callback(None)
        self._dispatch_soon()

    def wait_idle(self, qid: str) -> Deferred:
        """Fires when no attempt for ``qid`` is running."""
        if qid not in self.active:
            return succeed(None)
        d: Deferred = Deferred()
        self.active[qid].append(d)
        return d

    def backoff(self, attempts: int) -> float:
        schedule = self.delivery.retry_schedule
        base = schedule[min(max(attempts, 1), len(schedule)) - 1]
        return base * self.rng.uniform(0.9, 1.1)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, envelope: Envelope) -> None:
        pending = [r for r in envelope.recipients if r.state == PENDING]
        outcomes = await self.deliver([r.address for r in pending], envelope)
        now = self.now()
        if self._not_attempted(envelope, outcomes, now):
            return
        envelope.attempts += 1
        envelope.last_attempt = now
        newly_failed = self._record(envelope, pending, outcomes, now)
        still = [r for r in envelope.recipients if r.state == PENDING]
        if still and now - self.lifetime_start(envelope) >= self.delivery.max_queue_lifetime:
            newly_failed += self._expire(envelope, still)
            still = []
        if newly_failed:
            await self.send_bounce(envelope, newly_failed)
        await self.events_durable()
        if still:
            envelope.next_attempt = now + self.backoff(envelope.attempts)
            await self._save_or_keep(envelope)
            if envelope.queue_id in self.queued:
                self.schedule(envelope, envelope.next_attempt)
        else:
            await self.finish(envelope)

    def _not_attempted(self, envelope: Envelope, outcomes: dict[str, Outcome],
                       now: float) -> bool:
        """Every upstream for these recipients is marked down: nothing was tried, so no
        attempt is counted and no deferral logged (one line per message per retry would
        flood the log); the message waits for the end of the cool-down instead."""
        waits = [o.not_before for o in outcomes.values()]
        if not waits or None in waits:
            return False
        if now - self.lifetime_start(envelope) >= self.delivery.max_queue_lifetime:
            return False  # let the normal path expire it
        when = max(now, min(w for w in waits if w is not None)) + self.rng.uniform(0, 5)
        log.debug("{queue_id}: upstream down; next try in {wait:.0f} s",
                  queue_id=envelope.queue_id, wait=when - now)
        self.not_attempted += 1
        envelope.next_attempt = when
        if envelope.queue_id in self.queued:
            self.schedule(envelope, when)
        return True

    def lifetime_start(self, envelope: Envelope) -> float:
        return max(envelope.received_at, envelope.extra.get("requeued_at", 0.0))

    async def deliver(self, addresses: list[str], envelope: Envelope) -> dict[str, Outcome]:
        """Route and deliver; temporary outcomes go on to the transport's fallback."""
        body_path = self.spool.path("data", envelope.queue_id + ".eml")
        results: dict[str, Outcome] = {}
        groups = self.router.split(addresses, envelope.sender, envelope.credential)
        waits = []
        for name, rcpts in groups.items():
            if name is None:
                results.update(dict.fromkeys(rcpts, NO_ROUTE))
                continue
            waits.append(ensureDeferred(self._deliver_with_fallback(name, rcpts, envelope,
                                                                    body_path)))
        for _, part in await DeferredList(waits):
            results.update(part)
        return results

    async def _deliver_with_fallback(self, name: str, addresses: list[str],
                                     envelope: Envelope, body_path: str
                                     ) -> dict[str, Outcome]:
        results: dict[str, Outcome] = {}
        seen: set[str] = set()
        current: str | None = name
        while addresses and current is not None and current not in seen:
            seen.add(current)
            part = await self.transports[current].deliver(envelope, addresses, body_path)
            results.update({a: replace(o, transport=current) for a, o in part.items()})
            addresses = [a for a in addresses if part[a].kind == TEMPORARY]
            current = self.fallbacks.get(current)
        return results

    def _record(self, envelope: Envelope, pending: list[Recipient],
                outcomes: dict[str, Outcome], now: float) -> list[Recipient]:
        failed = []
        for recipient in pending:
            outcome = outcomes[recipient.address]
            recipient.attempts += 1
            recipient.last_reply = outcome.reply
            recipient.transport = outcome.upstream
            recipient.state = outcome.disposition.recipient_state
            if recipient.state == FAILED:
                failed.append(recipient)
        self._log_attempt(envelope, pending, outcomes, now)
        return failed

    def _log_attempt(self, envelope: Envelope, pending: list[Recipient],
                     outcomes: dict[str, Outcome], now: float) -> None:
        groups: dict[Outcome, list[str]] = {}
        for recipient in pending:
            outcome = outcomes[recipient.address]
            groups.setdefault(outcome, []).append(recipient.address)
        delay = round(now - envelope.received_at, 3)
        for outcome, rcpts in groups.items():
            disposition = outcome.disposition
            status = disposition.log_status
            self.counters[disposition.counter] += len(rcpts)
            log.info("{queue_id}: to={to} relay={relay} tls={tls} delay={delay} "
                     "status={status} ({reply})", queue_id=envelope.queue_id,
                     to=",".join(f"<{r}>" for r in rcpts), relay=outcome.upstream or "none",
                     tls=outcome.tls or "none", delay=delay, status=status,
                     reply=outcome.reply)
            self._notify({"event": status, "queue_id": envelope.queue_id,
                          "sender": envelope.sender, "recipients": rcpts,
                          "relay": outcome.upstream, "tls": outcome.tls, "code": outcome.code,
                          "transport": outcome.transport,
                          "reply": outcome.reply, "delay": delay, "time": now,
                          "attempt": envelope.attempts,
                          "message_id": envelope.extra.get("message_id"),
                          "credential": envelope.credential, "user": envelope.extra.get("user"),
                          "received_at": envelope.received_at})

    def report_failed(self, envelope: Envelope, recipients: list[Recipient], why: str
                      ) -> None:
        """Recipients given up on without a reply of their own (expired in the queue,
        returned by the operator): one ``failed`` event."""
        now = self.now()
        self._notify({"event": "failed", "queue_id": envelope.queue_id,
                      "sender": envelope.sender, "recipients": [r.address for r in recipients],
                      "relay": None, "tls": None, "code": None, "transport": None,
                      "reply": why, "delay": round(now - envelope.received_at, 3),
                      "time": now, "attempt": envelope.attempts,
                      "message_id": envelope.extra.get("message_id"),
                      "credential": envelope.credential, "user": envelope.extra.get("user"),
                      "received_at": envelope.received_at})

    async def events_durable(self) -> None:
        """Wait until the events reported so far are durable (see ``barriers``)."""
        for barrier in self.barriers:
            try:
                await barrier()
            except Exception:
                log.failure("relay: an event barrier failed")

    def _notify(self, event: dict[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.failure("relay: event observer failed")

    def _expire(self, envelope: Envelope, still: list[Recipient]) -> list[Recipient]:
        days = self.delivery.max_queue_lifetime / 86400
        for recipient in still:
            recipient.state = FAILED
            recipient.last_reply = (f"4.4.7 message expired after {days:g} days in the queue; "
                                    f"last reply: {recipient.last_reply or 'none'}")
        log.info("{queue_id}: expired with {count} recipient(s) undelivered",
                 queue_id=envelope.queue_id, count=len(still))
        self.report_failed(envelope, still, f"4.4.7 message expired after {days:g} days in "
                                            f"the queue")
        return still

    async def _save_or_keep(self, envelope: Envelope) -> None:
        try:
            await self.spool.save_envelope(envelope, "queue")
        except OSError as e:
            log.error("{queue_id}: cannot save the envelope ({error}); keeping it in memory",
                      queue_id=envelope.queue_id, error=e)

    async def finish(self, envelope: Envelope) -> None:
        """No recipient is pending: remove the message, or keep it in failed/."""
        qid = envelope.queue_id
        self.queued.pop(qid, None)
        failed = [r for r in envelope.recipients if r.state == FAILED]
        if not failed:
            await self.spool.remove(qid, "queue")
            return
        envelope.reason = failed[0].last_reply
        await self.spool.save_envelope(envelope, "queue")
        await self.spool.move(qid, "queue", "failed")

    # ------------------------------------------------------------------ bounces

    async def send_bounce(self, envelope: Envelope, failed: list[Recipient]) -> None:
        """Queue an RFC 3464 report to the sender (never for the null sender)."""
        if not self.delivery.bounces or not envelope.sender:
            return
        if self.suppressed(envelope.sender):
            log.info("{queue_id}: no non-delivery notification: <{sender}> is suppressed",
                     queue_id=envelope.queue_id, sender=envelope.sender)
            return
        path = self.spool.path("data", envelope.queue_id + ".eml")
        try:
            head = await self.spool.run_in_thread(read_head, path)
        except OSError:
            head = b""
        report = build_bounce(envelope, failed, head, self.hostname, self.now())
        try:
            qid = await self.inject("", [envelope.sender], report,
                                    extra={"bounce_of": envelope.queue_id})
        except (SpoolError, OSError) as e:
            # The message itself stays in failed/ with its reasons; say so loudly.
            log.error("{queue_id}: could not queue the bounce to <{sender}>: {error}",
                      queue_id=envelope.queue_id, sender=envelope.sender, error=e)
            envelope.extra["bounce_failed"] = str(e)
            return
        self.counters["bounces"] += 1
        log.info("{queue_id}: sender non-delivery notification: {bounce_id}",
                 queue_id=envelope.queue_id, bounce_id=qid)

    async def inject(self, sender: str, recipients: list[str], body: bytes,
                     extra: dict[str, Any] | None = None) -> str:
        """Queue a message we make ourselves (bounces, the console's send form)."""
        writer = self.spool.new_message()
        writer.write(body)
        now = self.now()
        extra = dict(extra or {})
        message_id = header_value(header_lines(body), b"message-id")
        if message_id is not None:
            extra.setdefault("message_id", message_id)
        envelope = Envelope(queue_id=writer.queue_id, sender=sender,
                            recipients=[Recipient(a) for a in recipients], received_at=now,
                            helo=self.hostname, protocol="local", next_attempt=now,
                            body_8bit=any(b > 127 for b in body), extra=extra)
        return await self.spool.commit(writer, envelope)

    # ------------------------------------------------------------------ queue control
    # relaymail.relay.control.QueueControl does it; these stay for the web API's routes.

    def find(self, qid: str) -> tuple[str, Envelope]:
        return self.control.find(qid)

    def list(self, state: str = "queue") -> list[Envelope]:
        return self.control.list(state)

    def retry(self, qid: str) -> Coroutine[Any, Any, str]:
        return self.control.retry(qid)

    def release(self, qid: str) -> Coroutine[Any, Any, str]:
        return self.control.release(qid)

    def hold(self, qid: str) -> Coroutine[Any, Any, str]:
        return self.control.hold(qid)

    def delete(self, qid: str) -> Coroutine[Any, Any, str]:
        return self.control.delete(qid)

    def bounce(self, qid: str) -> Coroutine[Any, Any, str]:
        return self.control.bounce(qid)

    def flush(self) -> int:
        return self.control.flush()

    def flush_offline(self) -> Coroutine[Any, Any, int]:
        return self.control.flush_offline()

    def retry_failed(self) -> Coroutine[Any, Any, int]:
        return self.control.retry_failed()
