"""Delivery history in SQLite behind /api/mail-logs and /api/mail-logs/stats, fed by real
traffic on a running relay: search by sender, recipient, queue ID, status and time;
hostile filter text stays data; the history survives a restart; old rows are pruned; the
queue depth is sampled on the clock and served with the stats."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest

from relaymail.accounts.principal import Principal
from relaymail.history import History
from relaymail.spool.envelope import Envelope, Recipient
from relaymail.web.access import PRINCIPAL
from relaymail.web.history_api import MailLogsAPI
from tests.helpers import free_port, start_relay
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import Script, wait_until

BODY = b"From: shop@client.test\r\nSubject: m\r\n\r\nhello\r\n"


class MailLogTests(RelayTestCase):
    async def get(self, path: str) -> tuple[int, Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(self.base + path, pool=pool,
                                  headers={"Authorization": [f"Bearer {self.token}"]})
        return response.code, json.loads(await response.content())

    async def start(self, upstream_port: int) -> Any:
        web = free_port()
        relay = await start_relay(self.dir, web={"enabled": True,
                                                 "endpoint": f"tcp:{web}:interface=127.0.0.1"},
                                  **smarthost(plain(upstream_port), bounces=False))
        self.base = f"http://127.0.0.1:{web}"
        self.token = relay.service.getServiceNamed("spool").control_token
        return relay

    async def test_search_stats_and_restart(self) -> None:
        upstream = await self.scripted(Script(rcpt={"gone@dest.test": "550 5.1.1 no user"}))
        relay = await self.start(upstream.port)
        self.addCleanup(relay.stop)  # a second stop is harmless
        await self.send(relay, ["a@dest.test", "gone@dest.test"], BODY, sender="shop@client.test")
        await self.send(relay, ["b@dest.test"], BODY, sender="news@other.test")
        await wait_until(lambda: relay.manager.counters["delivered"] == 2
                         and relay.manager.counters["failed"] == 1, what="3 outcomes")
        await self.drained(relay)
        await relay.service.getServiceNamed("history").flush()

        code, page = await self.get("/api/mail-logs?sender=shop")
        self.assertEqual(code, 200)
        self.assertEqual(sorted((r["recipient"], r["status"]) for r in page["items"]),
                         [("a@dest.test", "received"), ("a@dest.test", "sent"),
                          ("gone@dest.test", "bounced"), ("gone@dest.test", "received")])
        bounced = next(r for r in page["items"] if r["status"] == "bounced")
        self.assertEqual((bounced["code"], bounced["transport"]), (550, "provider"))
        self.assertTrue(bounced["reply"].startswith("550 5.1.1"))
        self.assertTrue(bounced["time"].endswith("Z"))
        qid = bounced["queue_id"]
        code, page = await self.get(f"/api/mail-logs?queue_id={qid}&status=sent")
        self.assertEqual([r["recipient"] for r in page["items"]], ["a@dest.test"])
        code, page = await self.get("/api/mail-logs?recipient=B@DEST&limit=1")
        self.assertEqual((page["total"], len(page["items"])), (2, 1))
        code, page = await self.get("/api/mail-logs?sender=%25' OR 1=1 --")
        self.assertEqual((code, page["total"]), (200, 0))  # a filter is data, never SQL
        code, page = await self.get("/api/mail-logs?since=2999-01-01T00:00:00Z")
        self.assertEqual(page["total"], 0)
        code, page = await self.get("/api/mail-logs?since=yesterday")
        self.assertEqual(code, 400)

        code, stats = await self.get("/api/mail-logs/stats?hours=24")
        self.assertEqual(stats["totals"], {"received": 3, "sent": 2, "deferred": 0,
                                           "bounced": 1})
        self.assertEqual(len(stats["per_hour"]), 24)
        self.assertEqual(stats["per_hour"][-1]["sent"], 2)
        self.assertAlmostEqual(stats["success_rate"], 66.67)
        self.assertEqual(stats["top_senders"][0], {"sender": "shop@client.test", "messages": 2})

        await relay.stop()
        relay = await self.start(upstream.port)
        self.addCleanup(relay.stop)
        code, page = await self.get("/api/mail-logs")
        self.assertEqual(page["total"], 6)  # 3 received, 2 sent, 1 bounced: kept


class RetentionTests(TestCase):
    async def test_rows_older_than_the_retention_are_pruned(self) -> None:
        clock = Clock()
        clock.advance(100 * 86400)
        path = os.path.join(tempfile.mkdtemp(), "history.db")
        history = History(path, reactor, retention_days=1, clock=clock.seconds)
        history.startService()
        self.addCleanup(history.stopService)
        for age in (3 * 86400, 600):
            history.accepted(Envelope(queue_id=f"Q{age}", sender="a@x.test",
                                      recipients=[Recipient("b@y.test")],
                                      received_at=clock.seconds() - age))
        await history.flush()
        await history.prune()
        total, rows = await history.search({}, 10, 0)
        self.assertEqual((total, [r["queue_id"] for r in rows]), (1, ["Q600"]))


class QueueDepthTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(50 * 86400)  # 1970-02-20T00:00:00Z
        self.history = History(os.path.join(tempfile.mkdtemp(), "history.db"), reactor,
                               retention_days=1, clock=self.clock.seconds)

    async def served(self) -> dict[str, Any]:
        await self.history.flush()
        request = DummyRequest([b""])
        request.args = {b"hours": [b"24"]}
        setattr(request, PRINCIPAL, Principal(name="admin", role="admin"))  # past the gate
        body = await MailLogsAPI(self.history, self.clock.seconds).mail_log_stats(request)
        return dict(json.loads(body))

    async def test_samples_are_taken_on_the_clock_kept_and_served(self) -> None:
        depth = [3]

        def probe() -> int:
            if depth[0] < 0:
                raise RuntimeError("no manager")
            return depth[0]

        self.history.watch_queue(probe, interval=60, clock=self.clock)  # as build_service
        self.history.startService()
        self.addCleanup(self.history.stopService)
        self.assertEqual(self.history.samples, [])  # none at the start (spool not recovered)
        self.clock.advance(60)
        depth[0] = 7
        self.clock.advance(60)
        depth[0] = -1  # a failing probe: no sample, and the sampler goes on
        self.clock.advance(60)
        depth[0] = 2
        for _ in range(3):
            self.clock.advance(60)  # 240, 300 (the next 5 minutes) and 360
        start = 50 * 86400
        self.assertEqual(self.history.samples, [(start + 60, 3), (start + 120, 7),
                                                (start + 240, 2), (start + 300, 2),
                                                (start + 360, 2)])
        body = await self.served()
        self.assertEqual(body["queue_depth_step_s"], 300)
        self.assertEqual(body["queue_depth"], [  # the peak of each 5 minutes
            {"t": "1970-02-20T00:00:00Z", "messages": 7},
            {"t": "1970-02-20T00:05:00Z", "messages": 2}])
        self.assertEqual(len(body["per_hour"]), 24)  # the rest of the stats as before

        # two days on: what is older than the retention (a day) is pruned
        self.clock.advance(2 * 86400)
        await self.history.flush()
        await self.history.prune()
        body = await self.served()
        self.assertEqual(body["queue_depth"], [{"t": "1970-02-22T00:05:00Z", "messages": 2}])

        await self.history.stopService()
        assert self.history.sampler is not None
        self.assertFalse(self.history.sampler.running)
        self.clock.advance(60)
        self.assertEqual(self.history.samples, [])

    async def test_watching_a_running_history_starts_sampling(self) -> None:
        self.history.startService()
        self.addCleanup(self.history.stopService)
        self.assertEqual((await self.served())["queue_depth"], [])  # nothing sampled yet
        self.history.watch_queue(lambda: 5, interval=30, clock=self.clock)
        self.clock.advance(30)
        self.assertEqual(self.history.samples, [(50 * 86400 + 30, 5)])
