"""The event hub of the main process: turns what the spool and the relay manager report
into event documents (relaymail.events.model), adds hard bounces to the suppression list,
and hands each document to the outbox for every endpoint that wants it.

It is a spool commit listener, a relay-manager observer and a relay-manager barrier: the
manager waits on :meth:`EventHub.durable` before it removes or updates a message, so an
event is on disk before the state change it reports is (see relaymail.events.outbox).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.web.client import HTTPConnectionPool

from relaymail.config.events import WebhookConfig
from relaymail.events import model
from relaymail.events.http import QuietPool, capped_client
from relaymail.events.outbox import FAILED, Outbox
from relaymail.events.sender import WebhookSender
from relaymail.events.suppression import Entry, SuppressionList, is_hard_bounce, normalize
from relaymail.logs import Logger
from relaymail.spool.envelope import Envelope

log = Logger(namespace="relaymail.events")
SUPPRESSED_PER_MINUTE = 60


def wanted(endpoint: WebhookConfig, doc: dict[str, Any]) -> bool:
    """The endpoint's event list and filters (sender domain, credential) admit ``doc``."""
    if doc["event"] not in endpoint.events:
        return False
    if endpoint.credentials and doc.get("credential") not in endpoint.credentials:
        return False
    if endpoint.sender_domains:
        domain = doc["sender"].rpartition("@")[2].lower()
        return any(domain == d or (d.startswith("*.") and domain.endswith(d[1:]))
                   for d in endpoint.sender_domains)
    return True


class EventHub(Service):
    """Webhooks and the suppression list's automatic side, for one main process."""

    def __init__(self, endpoints: Sequence[WebhookConfig], outbox: Outbox | None,
                 suppression: SuppressionList | None, reactor: Any, auto_suppress: bool = True,
                 http: Any = None) -> None:
        self.outbox = outbox
        self._recovered: list[Envelope] = []  # found at startup, not checked against the outbox
        self._outbox_started = False
        self.suppression = suppression
        self.auto_suppress = auto_suppress
        self.reactor = reactor
        self.senders: dict[str, WebhookSender] = {}
        self.pool: HTTPConnectionPool | None = None
        if outbox is not None and http is None:
            self.pool = QuietPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = max([e.concurrency for e in endpoints] or [1])
            http = capped_client(reactor, self.pool)
        if outbox is not None:
            for endpoint in endpoints:
                self.senders[endpoint.name] = WebhookSender(endpoint, outbox, reactor, http)
            outbox.on_written.append(self._written)
        self.wants = {e for s in self.senders.values() for e in s.endpoint.events}
        self.dropped = 0
        self.minute = 0
        self.per_submitter: Counter[str] = Counter()
        self.suppressed_dropped = 0  # over SUPPRESSED_PER_MINUTE
        self.pruner = LoopingCall(self._prune)
        self.pruner.clock = reactor

    # -- lifecycle

    def privilegedStartService(self) -> None:
        if self.outbox is not None:
            try:
                self.outbox.open()
            except (OSError, sqlite3.Error) as e:
                sys.stderr.write(f"relaymail: cannot open the webhook outbox "
                                 f"{self.outbox.path}: {e}\n")
                raise SystemExit(1) from None
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.suppression is not None:
            self.suppression.start()
        if self.outbox is None:
            return
        d = self.outbox.start()
        d.addCallback(lambda _: self.outbox.backlog() if self.outbox else {})
        d.addCallback(self._started)
        d.addErrback(lambda f: log.failure("webhooks: cannot open the outbox", f))
        self.pruner.start(3600, now=False)

    def _started(self, backlog: dict[str, int]) -> Deferred | None:
        for name, sender in self.senders.items():
            sender.backlog = backlog.get(name, 0)
            sender.start()
        stale = set(backlog) - set(self.senders)
        if stale:
            log.info("webhooks: events kept for endpoints no longer configured: {names}",
                     names=", ".join(sorted(stale)))
        self._outbox_started = True
        return self._accepted_after_crash()

    def take_recovered(self, envelopes: Iterable[Envelope]) -> None:
        """A batch of the queue found at startup (relaymail.spool.recovery): checked for
        accepted events a crash lost once the outbox is open."""
        if self.outbox is None or "accepted" not in self.wants:
            return
        self._recovered.extend(envelopes)
        if self._outbox_started:
            self._accepted_after_crash()

    def _accepted_after_crash(self) -> Deferred | None:
        """Report the accepted events that a crash lost (see relaymail.events.outbox)."""
        if self.outbox is None or not self._recovered:
            return None
        envelopes = {e.queue_id: e for e in self._recovered}
        self._recovered = []

        def report(missing: set[str]) -> None:
            if missing:
                log.info("webhooks: {count} recovered message(s) get their accepted events now",
                         count=len(missing))
            for qid in sorted(missing):
                self.accepted(envelopes[qid])

        return self.outbox.missing_accepted(list(envelopes)).addCallback(report)

    def stopService(self) -> Deferred:
        super().stopService()
        if self.suppression is not None:
            self.suppression.stop()
        if self.pruner.running:
            self.pruner.stop()
        for sender in self.senders.values():
            sender.stop()
        waits = [self.outbox.stop()] if self.outbox is not None else []
        if self.pool is not None:
            waits.append(self.pool.closeCachedConnections())
        return DeferredList(waits)

    def _prune(self) -> Deferred:
        assert self.outbox is not None
        return self.outbox.prune().addErrback(
            lambda f: log.failure("webhooks: pruning the outbox failed", f))

    def _written(self, endpoints: set[str]) -> None:
        for name in endpoints:
            sender = self.senders.get(name)
            if sender is not None:
                sender.kick()

    # -- sources

    def accepted(self, envelope: Envelope) -> None:
        """Spool commit listener (committed here, in an acceptor, or a bounce of ours)."""
        if "accepted" in self.wants:
            self.dispatch(model.accepted(envelope))

    def delivery_event(self, event: dict[str, Any]) -> None:
        """Relay manager observer: one outcome group."""
        docs = model.from_manager(event)
        if self.auto_suppress and self.suppression is not None:
            self._suppress_hard_bounces(docs)
        if docs and self.wants:
            self.dispatch(docs)

    def suppressed(self, doc: dict[str, Any]) -> None:
        """A recipient refused at RCPT (here or in an acceptor); at most
        SUPPRESSED_PER_MINUTE per submitter (login, else sender), so that a client cannot
        fill the endpoints' backlogs by repeating refused recipients."""
        if "suppressed" not in self.wants:
            return
        minute = int(doc["time"] // 60)
        if minute != self.minute:
            self.minute, self.per_submitter = minute, Counter()
        key = doc.get("credential") or doc.get("sender") or ""
        self.per_submitter[key] += 1
        if self.per_submitter[key] > SUPPRESSED_PER_MINUTE:
            self.suppressed_dropped += 1
            return
        self.dispatch([doc])

    def durable(self) -> Deferred:
        """Relay manager barrier: fires once the events reported so far are on disk."""
        if self.outbox is None:
            return succeed(None)
        return self.outbox.durable()

    # -- the rest

    def _suppress_hard_bounces(self, docs: list[dict[str, Any]]) -> None:
        assert self.suppression is not None
        entries = []
        for doc in docs:
            if not is_hard_bounce(doc):
                continue
            try:
                address = normalize(doc["recipient"])
            except ValueError:
                continue
            if address in self.suppression:
                continue
            entries.append(Entry(address, doc.get("reply") or "hard bounce", "bounce",
                                 doc["queue_id"], doc["time"]))
            log.info("{queue_id}: <{recipient}> added to the suppression list ({reply})",
                     queue_id=doc["queue_id"], recipient=address, reply=doc.get("reply"))
        if entries:
            self.suppression.add_many(entries).addErrback(
                lambda f: log.failure("cannot add to the suppression list", f))

    def dispatch(self, docs: list[dict[str, Any]]) -> None:
        assert self.outbox is not None or not self.senders
        for doc in docs:
            targets = [s for s in self.senders.values() if wanted(s.endpoint, doc)]
            if not targets:
                continue
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            for sender in targets:
                self._add(sender, doc, body)

    def _add(self, sender: WebhookSender, doc: dict[str, Any], body: bytes) -> None:
        assert self.outbox is not None
        if sender.backlog >= sender.endpoint.max_backlog:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warn("webhook {name}: backlog full ({max}); events are kept as failed "
                         "({count} so far)", name=sender.name,
                         max=sender.endpoint.max_backlog, count=self.dropped)
            self.outbox.add(sender.name, doc["id"], doc["event"], doc["queue_id"], body, FAILED,
                            "backlog full: not sent")
            return
        sender.backlog += 1
        self.outbox.add(sender.name, doc["id"], doc["event"], doc["queue_id"], body)

    def retry(self, delivery_id: int | None) -> Deferred:
        """Send failed deliveries again (one, or all with None); fires with how many."""
        assert self.outbox is not None

        def touched(counts: dict[str, int]) -> int:
            for name, count in counts.items():
                sender = self.senders.get(name)
                if sender is not None:
                    sender.backlog += count
                    sender.kick()
            return sum(counts.values())

        return self.outbox.retry(delivery_id).addCallback(touched)

    def public(self) -> list[dict[str, Any]]:
        return [s.public() for s in self.senders.values()]
