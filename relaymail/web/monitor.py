"""``/health`` and ``/metrics``: what a load balancer and Prometheus ask of each instance.

The disk checks (a probe write in the spool, free space, hold/failed counts) run in the
thread pool; everything else is read from in-memory state on the reactor thread.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from twisted.internet.defer import Deferred

from relaymail.common.networks import ConnectionTracker
from relaymail.relay.manager import RelayManager
from relaymail.spool import Spool
from relaymail.stats import LATENCY_BUCKETS, RelayStats
from relaymail.web.shapes import iso
from relaymail.web.upstreams import upstreams_in_use

MIN_FREE_MB = 100  # below this the spool is "low on disk": /health answers 503


@dataclass
class DiskState:
    writable: bool
    free_bytes: int
    hold: int
    failed: int


@dataclass
class Monitor:
    stats: RelayStats
    manager: RelayManager
    connections: ConnectionTracker
    policy: Callable[[], dict[str, Any]]
    run_in_thread: Callable[..., Deferred]
    clock: Callable[[], float]
    acceptors: Any = None  # relaymail.workers.supervisor.AcceptorPool with smtp.workers
    events: Any = None  # relaymail.events.hub.EventHub: webhooks, the suppression list
    accounts: Any = None  # relaymail.accounts.view.AccountsView

    def refusals(self) -> Counter[tuple[int, str]]:
        """SMTP refusals counted here and, with acceptor processes, in each of them."""
        total = Counter(self.stats.refusals)
        if self.acceptors is not None:
            total.update(self.acceptors.refusals())
        return total

    @property
    def spool(self) -> Spool:
        return self.manager.spool

    def disk_state(self) -> DiskState:
        """Thread: can the spool take a file now, how much room is left, what is parked."""
        spool = self.spool
        probe = spool.path("incoming", f".health-{secrets.token_hex(4)}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                os.unlink(probe)
            writable = True
        except OSError:
            writable = False
        try:
            st = os.statvfs(spool.root)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        return DiskState(writable, free, spool.count("hold"), spool.count("failed"))

    def degraded_reasons(self) -> list[dict[str, Any]]:
        """Why /health says "degraded" (empty: it does not), each with a ``code`` for the
        console: an upstream in use whose breaker is open, every delivery of the last 10
        minutes failing, a success rate under 90 %, delivery paused, quarantined spool
        files."""
        reasons: list[dict[str, Any]] = []
        down = [str(u["upstream"]) for u in upstreams_in_use(self.manager) if u.get("down")]
        if down:
            reasons.append({"code": "upstream_down", "upstreams": down,
                            "message": f"upstream marked down: {', '.join(down)}"})
        if self.stats.recent_failing(self.clock()):
            reasons.append({"code": "recent_failures",
                            "message": "every delivery of the last 10 minutes failed"})
        rate = self.stats.success_rate()
        if rate < 90:
            reasons.append({"code": "success_rate", "rate": rate,
                            "message": f"success rate {rate} % (under 90 %)"})
        if self.acceptors is not None:
            for worker in self.acceptors.workers():
                if not worker["alive"]:
                    reasons.append({"code": "acceptor_down", "params": {"id": worker["id"]},
                                    "message": f"acceptor process {worker['id']} is not "
                                               "running (being restarted)"})
        if self.accounts is not None and not self.accounts.healthy:
            reasons.append({"code": "accounts_database",
                            "message": "the accounts database does not answer: logins work "
                                       "from the last copy, account changes fail"})
        if self.manager.paused:
            reasons.append({"code": "delivery_paused", "params": {"n": len(self.manager.queued)},
                            "message": "delivery is paused: mail is accepted and queued, "
                                       "none is delivered until resumed"})
        if self.manager.spool.quarantined:
            reasons.append({"code": "quarantined",
                            "message": "malformed spool files were quarantined"})
        return reasons

    async def health(self) -> tuple[int, dict[str, Any]]:
        disk: DiskState = await self.run_in_thread(self.disk_state)
        free_mb = disk.free_bytes // (1024 * 1024)
        reasons = self.degraded_reasons()
        if not disk.writable or free_mb < MIN_FREE_MB:
            status = "error"
        elif reasons:
            status = "degraded"
        else:
            status = "ok"
        details: dict[str, Any] = {
            "disk_space_available_mb": free_mb,
            "spool_writable": disk.writable,
            "queued_emails": len(self.manager.queued),  # those being delivered included
            "delivery_paused": self.manager.paused,
            "held_emails": disk.hold,
            "failed_emails": disk.failed,
            "total_emails_processed": self.stats.total("sent") + self.stats.total("bounced"),
            "success_rate": self.stats.success_rate(),
            "quarantined_files": list(self.manager.spool.quarantined),
            "degraded_reasons": reasons,
        }
        if self.acceptors is not None:
            details["workers"] = self.acceptors.workers()
        body = {"status": status, "timestamp": iso(self.clock()), "details": details}
        return (503 if status == "error" else 200), body

    def metrics_json(self) -> dict[str, Any]:
        """The simple JSON shape users of similar relays script against."""
        return {
            "total_emails": self.stats.messages_received,
            "successful_emails": self.stats.total("sent"),
            "failed_emails": self.stats.total("bounced"),
            "total_recipients": self.stats.recipients_received,
            "avg_processing_time_ms": self.stats.average_delay_ms(),
        }

    async def metrics_text(self) -> bytes:
        disk: DiskState = await self.run_in_thread(self.disk_state)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, disk))
        return generate_latest(registry)


class _Collector:
    """One scrape's worth of families, built from the current state."""

    def __init__(self, monitor: Monitor, disk: DiskState) -> None:
        self.monitor, self.disk = monitor, disk

    def collect(self) -> Iterator[Any]:
        m, stats = self.monitor, self.monitor.stats
        yield counter("relaymail_messages_received", "Messages accepted and queued.",
                      [((), stats.messages_received)])
        yield counter("relaymail_recipients_received", "Recipients of accepted messages.",
                      [((), stats.recipients_received)])
        yield counter("relaymail_smtp_refusals", "SMTP 4xx/5xx replies, by code and enhanced "
                      "status (the reason).", [((str(c), e), n) for (c, e), n in
                                              sorted(m.refusals().items())],
                      ("code", "status"))
        yield counter("relaymail_deliveries", "Recipients per delivery outcome, by transport "
                      "and result (sent, deferred, bounced).",
                      [(k, n) for k, n in sorted(stats.deliveries.items())],
                      ("transport", "result"))
        yield latency(stats)
        queue = GaugeMetricFamily("relaymail_queue_messages", "Messages in the spool, by state.",
                                  labels=["state"])
        queue.add_metric(["queued"], len(m.manager.queued))
        queue.add_metric(["active"], len(m.manager.active))
        queue.add_metric(["hold"], self.disk.hold)
        queue.add_metric(["failed"], self.disk.failed)
        yield queue
        yield GaugeMetricFamily("relaymail_delivery_paused", "1 while delivery is paused "
                                "(mail accepted and queued, none delivered).",
                                value=int(m.manager.paused))
        conns = GaugeMetricFamily("relaymail_smtp_connections", "Open SMTP sessions, by "
                                  "listener.", labels=["listener"])
        for name, n in sorted(m.connections.per_listener.items()):
            conns.add_metric([name], n)
        yield conns
        yield from upstream_families(m.manager)
        if m.acceptors is not None:
            yield from acceptor_families(m.acceptors.workers())
        yield GaugeMetricFamily("relaymail_spool_free_bytes", "Free bytes on the spool's "
                                "filesystem.", value=self.disk.free_bytes)
        yield GaugeMetricFamily("relaymail_spool_writable", "1 when a probe file could be "
                                "written in the spool.", value=int(self.disk.writable))
        yield from policy_families(m.policy())
        if m.events is not None:
            yield from event_families(m.events)


def counter(name: str, doc: str, samples: list[tuple[tuple[str, ...], float]],
            labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for values, n in samples:
        family.add_metric(list(values), n)
    return family


def latency(stats: RelayStats) -> HistogramMetricFamily:
    buckets, running = [], 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_counts,
                            strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
    family = HistogramMetricFamily("relaymail_delivery_latency_seconds", "From acceptance to "
                                   "delivery, per delivered recipient.")
    family.add_metric([], buckets, sum_value=stats.latency_sum)
    return family


def upstream_families(manager: RelayManager) -> Iterator[Any]:
    snapshot = manager.health.snapshot() if manager.health else []
    up = GaugeMetricFamily("relaymail_upstream_up", "1 when the upstream is usable (its "
                           "circuit breaker is closed).", labels=["upstream"])
    for u in snapshot:
        up.add_metric([str(u["upstream"])], int(not u.get("down")))
    yield up


def policy_families(policy: dict[str, Any]) -> Iterator[Any]:
    refused = CounterMetricFamily("relaymail_rate_limit_events", "Rate-limit refusals by "
                                  "scope, and backend errors.", labels=["event"])
    for event, n in sorted(policy.get("rate_limits", {}).items()):
        refused.add_metric([event], n)
    yield refused
    lockouts = CounterMetricFamily("relaymail_auth_lockout_events", "AUTH lockouts by kind "
                                   "(ip, user), and backend errors.", labels=["event"])
    for event, n in sorted(policy.get("auth_lockouts", {}).items()):
        lockouts.add_metric([event], n)
    yield lockouts


def acceptor_families(workers: list[dict[str, Any]]) -> Iterator[Any]:
    alive = GaugeMetricFamily("relaymail_acceptor_up", "1 while the acceptor process runs.",
                              labels=["acceptor"])
    restarts = CounterMetricFamily("relaymail_acceptor_restarts", "Times the acceptor "
                                   "process was started again after it ended.",
                                   labels=["acceptor"])
    for worker in workers:
        alive.add_metric([str(worker["id"])], int(worker["alive"]))
        restarts.add_metric([str(worker["id"])], worker["restarts"])
    yield alive
    yield restarts


def event_families(hub: Any) -> Iterator[Any]:
    """Webhook backlog and outcomes per endpoint; the suppression list's size."""
    backlog = GaugeMetricFamily("relaymail_webhook_backlog", "Events waiting to be delivered "
                                "to the endpoint (in the outbox).", labels=["endpoint"])
    results = CounterMetricFamily("relaymail_webhook_events", "Events by outcome: delivered "
                                  "(a 2xx), failed (given up after retry_for).",
                                  labels=["endpoint", "result"])
    errors = CounterMetricFamily("relaymail_webhook_attempt_errors", "POSTs that got no 2xx "
                                 "(retried).", labels=["endpoint"])
    for name, sender in sorted(hub.senders.items()):
        backlog.add_metric([name], sender.backlog)
        results.add_metric([name, "delivered"], sender.delivered)
        results.add_metric([name, "failed"], sender.failed)
        errors.add_metric([name], sender.errors)
    yield backlog
    yield results
    yield errors
    yield CounterMetricFamily("relaymail_webhook_backlog_full", "Events stored as failed "
                              "because their endpoint's backlog was full.", value=hub.dropped)
    yield CounterMetricFamily("relaymail_webhook_suppressed_over_limit", "suppressed events "
                              "not sent: over 60 a minute from one submitter.",
                              value=hub.suppressed_dropped)
    if hub.suppression is not None:
        yield GaugeMetricFamily("relaymail_suppressed_addresses", "Addresses on the "
                                "suppression list.", value=len(hub.suppression.known))
