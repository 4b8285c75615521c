"""The API the console's dashboard and pages read, over real sockets: counters from the
history survive a restart; the relay status lists a saved upstream at once, marks a
refused one down and drops it once the relay is disabled; usage per credential; error
codes."""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.helpers import free_port, start_relay
from tests.integration.test_relay import RelayTestCase
from tests.upstreams import wait_until


class ConsoleAPITests(RelayTestCase):
    async def start(self) -> Any:
        self.web_port = free_port()
        relay = await start_relay(
            self.dir, web={"enabled": True,
                           "endpoint": f"tcp:{self.web_port}:interface=127.0.0.1"},
            transports={"outbox": {"type": "maildir", "path": os.path.join(self.dir, "out")}},
            delivery={"retry_schedule": [3600], "connect_timeout": 2, "command_timeout": 2})
        return relay

    async def api(self, relay: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        token = relay.service.getServiceNamed("spool").control_token
        response = await treq.request(
            method, f"http://127.0.0.1:{self.web_port}{path}",
            pool=HTTPConnectionPool(reactor, persistent=False),
            headers={"Authorization": [f"Bearer {token}"]},
            data=None if body is None else json.dumps(body).encode())
        return response.code, json.loads(await response.content())

    async def test_counters_survive_a_restart_and_status_follows_the_settings(self) -> None:
        relay = await self.start()
        await self.send(relay, ["a@dest.test", "b@dest.test"])
        await self.drained(relay)
        await relay.service.getServiceNamed("history").flush()
        await relay.stop()

        relay = await self.start()
        self.addCleanup(relay.stop)
        code, stats = await self.api(relay, "GET", "/api/mail-logs/stats?hours=24")
        self.assertEqual((code, stats["messages_received"], stats["totals"]["sent"]),
                         (200, 1, 2))
        code, status = await self.api(relay, "GET", "/api/relay/status")
        self.assertEqual((status["upstreams"], status["destination"]["type"]), ([], "maildir"))

        refused = free_port()
        code, view = await self.api(relay, "POST", "/api/relay/config", {
            "enabled": True, "host": "127.0.0.1", "port": refused, "tls": "none"})
        self.assertEqual(code, 200, view)
        code, status = await self.api(relay, "GET", "/api/relay/status")
        [row] = status["upstreams"]
        self.assertEqual((row["upstream"], row["state"]), (f"127.0.0.1:{refused}", "unknown"))
        self.assertEqual(status["destination"]["upstreams"], [f"127.0.0.1:{refused}"])

        await self.send(relay, ["c@dest.test", "d@dest.test", "e@dest.test"])
        await wait_until(lambda: relay.manager.counters["deferred"] >= 3, what="deferrals")
        code, status = await self.api(relay, "GET", "/api/relay/status")
        [row] = status["upstreams"]
        self.assertEqual(row["state"], "down")
        self.assertTrue(row["last_error"])
        code, health = await self.api(relay, "GET", "/health")
        self.assertEqual(health["status"], "degraded")
        self.assertIn("recent_failures",
                      [r["code"] for r in health["details"]["degraded_reasons"]])

        code, view = await self.api(relay, "POST", "/api/relay/config", {"enabled": False})
        code, status = await self.api(relay, "GET", "/api/relay/status")
        self.assertEqual(status["upstreams"], [])  # disabled: not listed any more

    async def test_usage_per_credential_and_error_codes(self) -> None:
        relay = await self.start()
        self.addCleanup(relay.stop)
        code, _ = await self.api(relay, "POST", "/api/smtp-credentials",
                                 {"name": "app1", "hourly_quota": 5})
        self.assertEqual(code, 201)
        code, again = await self.api(relay, "POST", "/api/smtp-credentials", {"name": "app1"})
        self.assertEqual((code, again["code"], again["params"]),
                         (409, "credential_exists", {"name": "app1"}))
        code, usage = await self.api(relay, "GET", "/api/mail-logs/usage")
        self.assertEqual((code, usage["credentials"]), (200, {}))
        code, bad = await self.api(relay, "POST", "/api/send", {"from": "", "to": "x@y.test"})
        self.assertEqual((code, bad["code"]), (400, "field_address"))
