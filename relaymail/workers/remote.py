"""Counters across processes: an acceptor's counters are the main process's, over AMP.

``RemoteCounters`` is a relaymail.policy.counters backend for an acceptor; ``Authority``
answers its commands in the main process from the main process's own counters (memory),
so every limit and lockout is counted in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.protocols import amp

from relaymail.events import model
from relaymail.policy.counters import Bucket, Counters
from relaymail.workers import protocol as p


class RemoteCounters:
    """The Counters protocol as AMP calls to the main process."""

    def __init__(self, remote: amp.AMP) -> None:
        self.remote = remote

    def reserve(self, buckets: Sequence[Bucket], amount: int) -> Deferred:
        rows = [{"key": b.key, "limit": b.limit, "ttl": float(b.ttl)} for b in buckets]
        return self.remote.callRemote(p.Reserve, buckets=rows, amount=amount)\
            .addCallback(lambda r: r["index"])

    def release(self, keys: Sequence[str], amount: int) -> Deferred:
        return self.remote.callRemote(p.Release, keys=list(keys), amount=amount)\
            .addCallback(lambda _: None)

    def incr(self, key: str, ttl: float) -> Deferred:
        return self.remote.callRemote(p.Incr, key=key, ttl=float(ttl))\
            .addCallback(lambda r: r["value"])

    def get(self, key: str) -> Deferred:
        return self.remote.callRemote(p.Get, key=key).addCallback(lambda r: r["value"])

    def put(self, key: str, value: int, ttl: float) -> Deferred:
        return self.remote.callRemote(p.Put, key=key, value=int(value), ttl=float(ttl))\
            .addCallback(lambda _: None)

    def ttl(self, key: str) -> Deferred:
        return self.remote.callRemote(p.TimeToLive, key=key)\
            .addCallback(lambda r: r["seconds"])

    def delete(self, key: str) -> Deferred:
        return self.remote.callRemote(p.Delete, key=key).addCallback(lambda _: None)

    def close(self) -> Deferred:
        return succeed(None)


class Authority(amp.CommandLocator):
    """The main process's side: counter commands on ``counters``; ``committed`` is called
    with each message an acceptor committed (its envelope JSON)."""

    def __init__(self, counters: Counters, committed: Callable[[str], None],
                 reported: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.counters = counters
        self.committed = committed
        self.reported = reported
        self.on_serving: Callable[[], None] | None = None  # set by the AcceptorPool

    @p.Serving.responder
    def serving(self) -> dict[str, Any]:
        if self.on_serving is not None:
            self.on_serving()
        return {}

    @p.Report.responder
    def on_report(self, event: str) -> dict[str, Any]:
        if self.reported is not None:
            doc = rebuilt(event)
            if doc is not None:
                self.reported(doc)
        return {}

    @p.Committed.responder
    def on_committed(self, envelope: str) -> dict[str, Any]:
        self.committed(envelope)
        return {}

    @p.Reserve.responder
    def reserve(self, buckets: list[dict[str, Any]], amount: int) -> Deferred:
        wanted = [Bucket(b["key"], b["limit"], b["ttl"]) for b in buckets]
        return self.counters.reserve(wanted, amount).addCallback(lambda i: {"index": i})

    @p.Release.responder
    def release(self, keys: list[str], amount: int) -> Deferred:
        return self.counters.release(keys, amount).addCallback(lambda _: {})

    @p.Incr.responder
    def incr(self, key: str, ttl: float) -> Deferred:
        return self.counters.incr(key, ttl).addCallback(lambda v: {"value": v})

    @p.Get.responder
    def get(self, key: str) -> Deferred:
        return self.counters.get(key).addCallback(lambda v: {"value": v})

    @p.Put.responder
    def put(self, key: str, value: int, ttl: float) -> Deferred:
        return self.counters.put(key, value, ttl).addCallback(lambda _: {})

    @p.TimeToLive.responder
    def time_to_live(self, key: str) -> Deferred:
        return self.counters.ttl(key).addCallback(lambda s: {"seconds": float(s)})

    @p.Delete.responder
    def delete(self, key: str) -> Deferred:
        return self.counters.delete(key).addCallback(lambda _: {})


def rebuilt(text: str) -> dict[str, Any] | None:
    """An acceptor's ``suppressed`` report, made again here from bounded fields: an
    acceptor is the process exposed to SMTP clients, so what it sends is not taken as is."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("event") != "suppressed":
            return None
        fields: dict[str, str] = {}
        for key in ("sender", "recipient", "reply", "queue_id"):
            value = doc.get(key)
            if not isinstance(value, str):
                return None
            fields[key] = value
        credential = doc.get("credential")
        return model.suppressed(float(doc["time"]), fields["sender"][:320],
                                fields["recipient"][:320],
                                credential[:320] if isinstance(credential, str) else None,
                                fields["reply"][:500], fields["queue_id"][:40])
    except (ValueError, KeyError, TypeError):
        return None
