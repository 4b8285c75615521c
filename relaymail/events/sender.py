"""Delivers one endpoint's webhook events: signed POSTs with treq, a few at a time, each
bounded by the endpoint's timeout, retried with back-off until ``retry_for`` has passed
since the event, then marked failed (and shown in the console).

A sender works only from the outbox (relaymail.events.outbox): it holds at most a few
hundred deliveries in memory, whatever the backlog, and nothing it does waits on SMTP or
on the relay, so a slow or dead endpoint slows nothing but itself.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

import treq
from hyperlink import EncodedURL
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from relaymail.config.events import WebhookConfig
from relaymail.events.outbox import DELIVERED, FAILED, PENDING, Delivery, Outbox
from relaymail.events.signature import HEADER, sign
from relaymail.logs import Logger

log = Logger(namespace="relaymail.webhooks")

RETRY_SCHEDULE = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
LOAD = 200  # deliveries read from the outbox at once
IDLE_POLL = 30.0  # look for due retries at least this often
MAX_ERROR = 200
USER_AGENT = "relaymail-webhooks/1"


class HTTPError(Exception):
    """The endpoint answered, but not with 2xx."""


class WebhookSender:
    """The delivery loop of one endpoint."""

    def __init__(self, endpoint: WebhookConfig, outbox: Outbox, reactor: Any,
                 http: Any = None, clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None) -> None:
        self.endpoint = endpoint
        self.outbox = outbox
        self.reactor = reactor
        self.http = http if http is not None else treq  # treq's API: post(url, ...)
        self.clock = clock or reactor.seconds
        self.rng = rng or random.Random()
        self.schedule = RETRY_SCHEDULE  # seconds after the 1st, 2nd, ... failed attempt
        self.url = EncodedURL.from_text(endpoint.url)
        self.ready: deque[Delivery] = deque()
        self.inflight: dict[int, Deferred] = {}  # delivery ID -> its request
        self.requests = 0  # POSTs in flight
        self.loading = False
        self.running = False
        self.timer: Any = None
        self.soon: Any = None
        self.backlog = 0  # pending in the outbox (kept in step by the hub and here)
        self.delivered = 0
        self.failed = 0  # given up after retry_for
        self.errors = 0  # attempts that did not get a 2xx
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    # -- lifecycle

    def start(self) -> None:
        self.running = True
        self.kick()

    def stop(self) -> None:
        """Stop sending; requests in flight are cancelled and stay pending in the outbox."""
        self.running = False
        for call in (self.timer, self.soon):
            if call is not None and call.active():
                call.cancel()
        for d in {id(d): d for d in self.inflight.values()}.values():  # a batch shares one
            d.cancel()

    def kick(self, _: Any = None) -> None:
        """Look for work soon (new events were written, or a retry came due)."""
        if self.running and (self.soon is None or not self.soon.active()):
            self.soon = self.reactor.callLater(0, self.pump)

    # -- the loop

    def pump(self) -> None:
        if not self.running:
            return
        size = self.endpoint.batch_size
        while self.ready and self.requests < self.endpoint.concurrency:
            self._send([self.ready.popleft() for _ in range(min(size, len(self.ready)))])
        if not self.ready and not self.loading and self.requests < self.endpoint.concurrency:
            self._load()

    def _load(self) -> None:
        self.loading = True
        exclude = set(self.inflight)
        load = max(LOAD, self.endpoint.batch_size * self.endpoint.concurrency)
        d = self.outbox.due(self.name, self.clock(), load, exclude)

        def loaded(found: list[Delivery]) -> None:
            self.loading = False
            self.ready.extend(x for x in found if x.id not in self.inflight)
            if found:
                self.pump()
            elif not self.inflight:
                self._arm_timer()

        def failed(failure: Failure) -> None:
            self.loading = False
            log.error("webhook {name}: cannot read the outbox: {error}", name=self.name,
                      error=failure.getErrorMessage())
            self._arm_timer(5.0)

        d.addCallbacks(loaded, failed)

    def _arm_timer(self, at_most: float = IDLE_POLL) -> None:
        if not self.running:
            return
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

        def due_at(when: float | None) -> None:
            wait = at_most if when is None else max(0.0, min(at_most, when - self.clock()))
            if self.running:
                self.timer = self.reactor.callLater(wait + 0.01, self.pump)

        self.outbox.next_due(self.name).addCallbacks(
            due_at, lambda f: due_at(None))

    def _send(self, batch: list[Delivery], again: int | None = None) -> None:
        """POST ``batch``.  A kept-alive connection the endpoint had closed is tried again
        at once, ``again`` times (enough to get past every stale connection in the pool),
        before it counts as a failed attempt."""
        if again is None:
            again = self.endpoint.concurrency + 1
        d = ensureDeferred(self._post(batch))
        d.addTimeout(self.endpoint.timeout, self.reactor)
        self.requests += 1
        for delivery in batch:
            self.inflight[delivery.id] = d
        d.addCallbacks(self._succeeded, self._failed_attempt, callbackArgs=(batch,),
                       errbackArgs=(batch, again))
        d.addErrback(lambda f: log.failure("webhook {name}: bookkeeping failed", f,
                                           name=self.name))

    def body_and_headers(self, batch: list[Delivery]) -> tuple[bytes, dict[str, list[str]]]:
        """One document as it is (``batch_size`` 1), or a JSON array of them."""
        headers = {"Content-Type": ["application/json"], "User-Agent": [USER_AGENT]}
        if self.endpoint.batch_size == 1:
            [delivery] = batch
            body = delivery.body
            headers["X-Relaymail-Event-Id"] = [delivery.event_id]
            headers["X-Relaymail-Event"] = [delivery.event]
        else:
            body = b"[" + b",".join(d.body for d in batch) + b"]"
            headers["X-Relaymail-Events"] = [str(len(batch))]
        headers[HEADER] = [sign(self.endpoint.secret, int(self.clock()), body)]
        return body, headers

    async def _post(self, batch: list[Delivery]) -> int:
        body, headers = self.body_and_headers(batch)
        # The whole exchange is bounded by the timeout in _send (addTimeout), not treq's;
        # unbuffered: drain() reads and drops the body instead of treq keeping it; the URL
        # parsed once.
        response = await self.http.post(self.url, data=body, headers=headers,
                                        allow_redirects=False, unbuffered=True)
        await drain(response)  # read to the end: the connection goes back to the pool
        if not 200 <= response.code < 300:
            phrase = (response.phrase or b"").decode("ascii", "replace")[:60]
            raise HTTPError(f"HTTP {response.code} {phrase}".strip())
        return int(response.code)

    # -- outcomes

    def _succeeded(self, code: int, batch: list[Delivery]) -> None:
        self._finish(batch)
        self.delivered += len(batch)
        self.backlog = max(0, self.backlog - len(batch))
        self.last_success = self.clock()
        retried = max(d.attempts for d in batch)
        (log.info if retried else log.debug)(
            "webhook {name}: {count} event(s) delivered (HTTP {code}), first {event_id}"
            "{after}", name=self.name, count=len(batch), event_id=batch[0].event_id,
            code=code, after=f" after {retried + 1} attempts" if retried else "")
        for delivery in batch:
            self.outbox.record(delivery.id, DELIVERED, delivery.attempts + 1, 0.0, None)

    def _failed_attempt(self, failure: Failure, batch: list[Delivery], again: int = 0
                        ) -> None:
        self._finish(batch)
        if not self.running and cancelled(failure):
            return  # stopping: they stay pending, as they are in the outbox
        if again > 0 and self.running and stale_connection(failure):
            self._send(batch, again - 1)
            return
        error = describe(failure, self.endpoint.timeout)
        now = self.clock()
        self.errors += 1
        self.last_error, self.last_error_at = error, now
        given_up = 0
        for delivery in batch:
            attempts = delivery.attempts + 1
            deadline = delivery.created + self.endpoint.retry_for
            if now >= deadline:
                given_up += 1
                self.outbox.record(delivery.id, FAILED, attempts, 0.0, error)
            else:
                wait = self.backoff(attempts)
                self.outbox.record(delivery.id, PENDING, attempts, min(now + wait, deadline),
                                   error)
        self.failed += given_up
        self.backlog = max(0, self.backlog - given_up)
        first = batch[0]
        if given_up:
            log.warn("webhook {name}: {count} event(s) failed for good after {attempts} "
                     "attempt(s), first {event_id}: {error}", name=self.name, count=given_up,
                     attempts=first.attempts + 1, event_id=first.event_id, error=error)
        if given_up < len(batch):
            log.info("webhook {name}: {event_id} attempt {attempts} failed ({error}); "
                     "{count} event(s) tried again later", name=self.name,
                     event_id=first.event_id, attempts=first.attempts + 1, error=error,
                     count=len(batch) - given_up)
        self._arm_timer()

    def _finish(self, batch: list[Delivery]) -> None:
        self.requests -= 1
        for delivery in batch:
            self.inflight.pop(delivery.id, None)
        self.kick()

    def backoff(self, attempts: int) -> float:
        base = self.schedule[min(attempts, len(self.schedule)) - 1]
        return base * self.rng.uniform(0.9, 1.1)

    def public(self) -> dict[str, Any]:
        return {**self.endpoint.public(), "backlog": self.backlog,
                "delivered": self.delivered, "failed": self.failed, "errors": self.errors,
                "in_flight": self.requests, "last_success": self.last_success,
                "last_error": self.last_error, "last_error_at": self.last_error_at}


class _Discard(Protocol):
    """Reads a response body and throws it away; cancelling closes the connection (a
    body that never ends must not keep it, or come back to the pool later)."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred(self._cancel)

    def _cancel(self, _: Deferred) -> None:
        transport: Any = self.transport  # an IPushProducer (TransportProxyProducer)
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


def drain(response: Any) -> Deferred:
    """Fires when ``response``'s body (a treq or Twisted response) has been read."""
    body = _Discard()
    getattr(response, "original", response).deliverBody(body)
    return body.done


def stale_connection(failure: Failure) -> bool:
    """The request went out on a kept-alive connection that the endpoint had closed
    meanwhile (an HTTP/1.0 server, an idle timeout): nothing reached it."""
    if not failure.check(RequestTransmissionFailed, ResponseNeverReceived):
        return False
    reasons = getattr(failure.value, "reasons", [])
    return any(r.check(ConnectionDone, ConnectionLost) for r in reasons)


def cancelled(failure: Failure) -> bool:
    """Cut short by us (the timeout, or stopping): the agent reports a cancelled request as
    ResponseNeverReceived carrying the CancelledError."""
    if failure.check(CancelledError, TimeoutError):
        return True
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = getattr(failure.value, "reasons", [])
        return any(r.check(CancelledError) for r in reasons)
    return False


def describe(failure: Failure, timeout: float) -> str:
    """A short, safe description of what went wrong (no response body, no secret)."""
    if cancelled(failure):
        text = f"no answer within {timeout:g} s"
    elif failure.check(HTTPError):
        text = str(failure.value)
    else:
        text = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
    return "".join(c if c.isprintable() else "?" for c in text)[:MAX_ERROR]
