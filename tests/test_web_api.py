"""The queue API in memory (treq's StubTreq over the Klein resource): authentication,
shapes, errors.  The same API is used for real by the queue command in test_twistd."""

from __future__ import annotations

import json
import re
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from relaymail.web.api import ControlAPI
from tests.test_relay_manager import LATER, Harness, ScriptedTransport

TOKEN = "local-control-token"


class ControlAPITests(TestCase):
    def setUp(self) -> None:
        self.h = Harness({"t": ScriptedTransport("t", default=LATER)}, bounces=False)
        self.qid = self.h.queue(["b@y.test"], sender="app@x.test")
        self.h.run()
        self.treq = StubTreq(ControlAPI(self.h.manager, lambda: TOKEN).app.resource())

    async def call(self, method: str, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        response = await self.treq.request(method, "http://relay.test" + path, headers=headers)
        body = await response.content()
        self.h.run()
        return response.code, json.loads(body)

    def test_every_route_needs_the_token(self) -> None:
        async def check() -> None:
            for method, path in (("GET", "/api/queue"), ("GET", f"/api/queue/{self.qid}"),
                                 ("POST", f"/api/queue/{self.qid}/hold"),
                                 ("DELETE", f"/api/queue/{self.qid}"),
                                 ("POST", "/api/queue/flush"), ("POST", "/admin/retry-failed"),
                                 ("POST", "/api/queue/pause"), ("POST", "/api/queue/resume"),
                                 ("GET", "/api/relay/status")):
                for token in (None, "wrong"):
                    code, body = await self.call(method, path, token)
                    self.assertEqual((code, body), (401, {"error": "authentication required"}))
            self.assertEqual(self.h.state(self.qid), "queue")
            self.assertFalse(self.h.manager.paused)
        return ensureDeferred(check())

    def test_pause_and_resume(self) -> None:
        async def check() -> None:
            self.assertFalse((await self.call("GET", "/api/queue"))[1]["paused"])
            self.assertEqual(await self.call("POST", "/api/queue/pause"),
                             (200, {"paused": True, "queued": 1}))
            self.assertTrue(self.h.manager.paused)
            self.assertTrue((await self.call("GET", "/api/queue"))[1]["paused"])
            self.assertEqual(await self.call("POST", "/api/queue/resume"),
                             (200, {"paused": False, "queued": 1}))
            self.assertFalse(self.h.manager.paused)
        return ensureDeferred(check())

    def test_list_show_act_and_errors(self) -> None:
        async def check() -> None:
            code, body = await self.call("GET", "/api/queue?sender=app@")
            self.assertEqual(code, 200)
            self.assertEqual(body["total"], 1)
            row = body["messages"][0]
            self.assertEqual((row["queue_id"], row["sender"]), (self.qid, "app@x.test"))
            self.assertEqual(row["recipients"][0]["last_reply"], "451 4.7.1 try later")
            code, body = await self.call("GET", "/api/queue?recipient=nobody")
            self.assertEqual(body["total"], 0)
            code, body = await self.call("GET", f"/api/queue/{self.qid}")
            self.assertTrue(body["headers"].startswith("From: a@x.test"))
            self.assertEqual(await self.call("POST", f"/api/queue/{self.qid}/hold"),
                             (200, {"queue_id": self.qid, "action": "hold", "state": "hold"}))
            code, body = await self.call("POST", f"/api/queue/{self.qid}/hold")
            self.assertEqual(code, 409)
            code, _ = await self.call("POST", f"/api/queue/{self.qid}/explode")
            self.assertEqual(code, 404)
            for bad in ("NOSUCHMESSAGE", "..", "a%2e%2e"):
                code, body = await self.call("GET", f"/api/queue/{bad}")
                self.assertEqual(code, 404, bad)
            code, body = await self.call("GET", "/api/queue?state=bogus")
            self.assertEqual(code, 400)
            code, body = await self.call("GET", "/api/relay/status")
            self.assertEqual(body["queue"]["hold"], 1)
        return ensureDeferred(check())


class MonitorAccessTests(TestCase):
    """Without ``open_metrics_to_loopback``, /health and /metrics need the token too."""

    def setUp(self) -> None:
        from relaymail.common.networks import ConnectionTracker
        from relaymail.spool import run_synchronously
        from relaymail.stats import RelayStats
        from relaymail.web.monitor import Monitor

        self.h = Harness({"t": ScriptedTransport("t", default=LATER)}, bounces=False)
        monitor = Monitor(RelayStats(), self.h.manager, ConnectionTracker(), dict,
                          run_synchronously, self.h.clock.seconds)
        api = ControlAPI(self.h.manager, lambda: TOKEN, dict, monitor, open_to_loopback=False)
        self.treq = StubTreq(api.app.resource())

    async def status(self, path: str, token: str | None) -> int:
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        response = await self.treq.get("http://relay.test" + path, headers=headers)
        await response.content()
        return response.code

    def test_token_required_when_not_open(self) -> None:
        async def check() -> None:
            for path in ("/health", "/metrics", "/metrics?format=json"):
                self.assertEqual(await self.status(path, None), 401)
                self.assertEqual(await self.status(path, "wrong"), 401)
                self.assertEqual(await self.status(path, TOKEN), 200)
        return ensureDeferred(check())


def klein_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the API serves, with <x> path variables as {x}."""
    out = set()
    for rule in ControlAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                out.add((method.lower(), path))
    return out


def test_openapi_describes_exactly_the_served_routes() -> None:
    from relaymail.web.openapi import document

    spec = document("test")
    described = {(m, path) for path, ops in spec["paths"].items() for m in ops}
    assert described == klein_routes()
    assert spec["openapi"] == "3.1.0"
    for path, ops in spec["paths"].items():
        for op in ops.values():
            names = {x["name"] for x in op["parameters"] if x["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path)), path


class DocsTests(TestCase):
    def test_docs_open_without_token_and_list_every_route(self) -> None:
        h = Harness({"t": ScriptedTransport("t", default=LATER)}, bounces=False)
        treq = StubTreq(ControlAPI(h.manager, lambda: TOKEN).app.resource())

        async def check() -> None:
            response = await treq.get("http://relay.test/api/openapi.json")
            spec = json.loads(await response.content())
            self.assertEqual(response.code, 200)
            response = await treq.get("http://relay.test/api/docs")
            page = (await response.content()).decode()
            self.assertEqual(response.code, 200)
            for path in spec["paths"]:
                self.assertIn(path, page)
        return ensureDeferred(check())


class ConsolePageTests(TestCase):
    """Pages without a browser: language choice, login redirect, security headers."""

    def setUp(self) -> None:
        from relaymail.web.session import Sessions, WebAuth

        h = Harness({"t": ScriptedTransport("t", default=LATER)}, bounces=False)
        self.auth = WebAuth(Sessions(h.clock.seconds), "admin", None, None, None)
        self.treq = StubTreq(ControlAPI(h.manager, lambda: TOKEN, auth=self.auth)
                             .app.resource())

    async def get(self, path: str, **headers: str) -> tuple[int, str, Any]:
        response = await self.treq.get("http://relay.test" + path, allow_redirects=False,
                                       headers={k: [v] for k, v in headers.items()})
        return response.code, (await response.content()).decode(), response.headers

    def test_language_redirect_and_headers(self) -> None:
        async def check() -> None:
            code, page, headers = await self.get("/login", **{"Accept-Language": "zh-CN,zh"})
            self.assertEqual(code, 200)
            self.assertIn("<title>登录 · relaymail</title>", page)
            self.assertIn("script-src 'self'",
                          headers.getRawHeaders("content-security-policy")[0])
            code, page, _ = await self.get("/login?lang=en", **{"Accept-Language": "zh-CN"})
            self.assertIn("<title>Log in · relaymail</title>", page)
            code, page, _ = await self.get("/login", Cookie="lang=zh")
            self.assertIn('lang="zh-CN"', page)
            code, _, headers = await self.get("/queue")
            self.assertEqual((code, headers.getRawHeaders("location")), (302, ["/login"]))
            token, _ = self.auth.sessions.create("admin")
            code, page, _ = await self.get("/queue", Cookie=f"relaymail_session={token}")
            self.assertEqual(code, 200)
            self.assertIn('href="/credentials"', page)
            self.assertEqual((await self.get("/nothing-here",
                                             Cookie=f"relaymail_session={token}"))[0], 404)
            self.assertEqual((await self.get("/static/../../etc/passwd"))[0], 404)
        return ensureDeferred(check())
