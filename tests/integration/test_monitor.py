"""/health and /metrics over a real socket (treq) on a running relay: counters follow real
SMTP traffic and real deliveries, the Prometheus text parses, a spool that cannot take a file
makes /health answer 503, and scrapes from elsewhere need the token."""

from __future__ import annotations

import json
import os
import smtplib
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool

from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import Script, wait_until

BODY = b"From: app@client.test\r\nSubject: m\r\n\r\nhello\r\n"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class MonitorTests(RelayTestCase):
    async def start(self) -> tuple[Any, str]:
        upstream = await self.scripted(Script(rcpt={"gone@dest.test": "550 5.1.1 no such user"}))
        port = free_port()
        relay = await self.relay(web={"enabled": True,
                                      "endpoint": f"tcp:{port}:interface=127.0.0.1"},
                                 **smarthost(plain(upstream.port), bounces=False))
        return relay, f"http://127.0.0.1:{port}"

    async def get(self, url: str, **kw: Any) -> tuple[int, bytes]:
        pool = HTTPConnectionPool(reactor, persistent=False)  # nothing left open after
        response = await treq.get(url, pool=pool, **kw)
        return response.code, await response.content()

    def bad_command(self, port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.ehlo()
            s.docmd("RCPT TO:<x@y.test>")  # 503 5.5.1: no MAIL first

    async def test_health_and_metrics_follow_traffic(self) -> None:
        relay, base = await self.start()
        code, body = await self.get(base + "/health")
        health = json.loads(body)
        self.assertEqual((code, health["status"]), (200, "ok"))
        self.assertEqual(set(health["details"]) >= {"disk_space_available_mb", "queued_emails",
                                                    "failed_emails", "total_emails_processed",
                                                    "success_rate"}, True)
        self.assertTrue(health["timestamp"].endswith("Z"))

        await self.send(relay, ["a@dest.test", "b@dest.test"], BODY)
        refused = await deferToThread(self.send_partly, relay.smtp_port)
        self.assertIn("gone@dest.test", refused or {"gone@dest.test": None})
        await deferToThread(self.bad_command, relay.smtp_port)
        await wait_until(lambda: relay.manager.counters["failed"] == 1, what="the 550")
        await self.drained(relay)

        code, text = await self.get(base + "/metrics")
        self.assertEqual(code, 200)
        got = samples(text.decode())
        self.assertEqual(got[("relaymail_messages_received_total", ())], 2)
        self.assertEqual(got[("relaymail_recipients_received_total", ())], 4)
        sent = (("result", "sent"), ("transport", "provider"))
        bounced = (("result", "bounced"), ("transport", "provider"))
        self.assertEqual(got[("relaymail_deliveries_total", sent)], 3)
        self.assertEqual(got[("relaymail_deliveries_total", bounced)], 1)
        self.assertEqual(got[("relaymail_smtp_refusals_total",
                              (("code", "503"), ("status", "5.5.1")))], 1)
        self.assertEqual(got[("relaymail_delivery_latency_seconds_count", ())], 3)
        self.assertEqual(got[("relaymail_upstream_up", (("upstream",
                                                         f"127.0.0.1:{self.up_port}"),))], 1)
        self.assertGreater(got[("relaymail_spool_free_bytes", ())], 0)

        code, body = await self.get(base + "/metrics?format=json")
        self.assertEqual(json.loads(body), {"total_emails": 2, "successful_emails": 3,
                                            "failed_emails": 1, "total_recipients": 4,
                                            "avg_processing_time_ms":
                                                json.loads(body)["avg_processing_time_ms"]})
        self.assertGreater(json.loads(body)["avg_processing_time_ms"], 0)
        code, body = await self.get(base + "/health")
        self.assertEqual(json.loads(body)["details"]["success_rate"], 75.0)

    def send_partly(self, port: int) -> dict[str, Any]:
        with smtplib.SMTP("127.0.0.1", port) as s:
            return s.sendmail("app@client.test", ["c@dest.test", "gone@dest.test"], BODY)

    async def scripted(self, scripts: Any = None) -> Any:
        upstream = await super().scripted(scripts)
        self.up_port = upstream.port
        return upstream

    async def test_unwritable_spool_answers_503(self) -> None:
        relay, base = await self.start()
        incoming = relay.spool.path("incoming")
        os.rename(incoming, incoming + ".moved")
        with open(incoming, "w") as f:  # a file where the directory was: no probe can land
            f.write("")
        try:
            code, body = await self.get(base + "/health")
        finally:
            os.unlink(incoming)
            os.rename(incoming + ".moved", incoming)
        health = json.loads(body)
        self.assertEqual((code, health["status"]), (503, "error"))
        self.assertFalse(health["details"]["spool_writable"])
        code, _ = await self.get(base + "/health")
        self.assertEqual(code, 200)
