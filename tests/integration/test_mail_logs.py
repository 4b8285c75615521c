"""Delivery history in SQLite behind /api/mail-logs and /api/mail-logs/stats, fed by real
traffic on a running relay: search by sender, recipient, queue ID, status and time;
hostile filter text stays data; the history survives a restart; old rows are pruned."""

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

from relaymail.history import History
from relaymail.spool.envelope import Envelope, Recipient
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
