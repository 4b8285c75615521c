"""Console login over a real socket: the admin password from ``relaymail hash-password``,
an HttpOnly SameSite session cookie, CSRF required on every change made with the cookie,
logout, and lockout after repeated failures (429 even with the right password)."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from relaymail.credentials import hash_password
from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase

PASSWORD = "console-pass-123"


class ConsoleLoginTests(RelayTestCase):
    async def start(self) -> None:
        web = free_port()
        await self.relay(web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1",
                              "admin_user": "admin",
                              "admin_password_hash": hash_password(PASSWORD, rounds=4)},
                         rate_limits={"auth_failures": {"max_failures": 3, "window": 600,
                                                        "lockout": 60}})
        self.base = f"http://127.0.0.1:{web}"

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, list[str]] | None = None,
                      cookies: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        kwargs: dict[str, Any] = {"pool": pool, "headers": headers or {},
                                  "cookies": cookies or {}}
        if body is not None:
            kwargs["json"] = body
        response = await treq.request(method, self.base + path, **kwargs)
        return response.code, json.loads(await response.content()), response

    async def test_login_session_csrf_logout(self) -> None:
        await self.start()
        code, answer, _ = await self.request("POST", "/login", {"username": "admin",
                                                                "password": "nope"})
        self.assertEqual(code, 401)
        code, answer, response = await self.request("POST", "/login", {
            "username": "admin", "password": PASSWORD})
        self.assertEqual(code, 200)
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)
        token = cookie.split(";")[0].split("=", 1)[1]
        jar = {"relaymail_session": token}
        csrf = answer["csrf"]

        self.assertEqual((await self.request("GET", "/api/queue", cookies=jar))[0], 200)
        self.assertEqual((await self.request("GET", "/api/session", cookies=jar))[1]["csrf"],
                         csrf)
        code, answer, _ = await self.request("POST", "/api/queue/flush", cookies=jar)
        self.assertEqual((code, answer["error"]), (403, "CSRF token missing or wrong"))
        code, _, _ = await self.request("POST", "/api/queue/flush", cookies=jar,
                                        headers={"X-CSRF-Token": ["wrong"]})
        self.assertEqual(code, 403)
        code, _, _ = await self.request("POST", "/api/queue/flush", cookies=jar,
                                        headers={"X-CSRF-Token": [csrf]})
        self.assertEqual(code, 200)

        code, _, _ = await self.request("POST", "/logout", cookies=jar,
                                        headers={"X-CSRF-Token": [csrf]})
        self.assertEqual(code, 200)
        self.assertEqual((await self.request("GET", "/api/queue", cookies=jar))[0], 401)

    async def test_repeated_failures_lock_the_login(self) -> None:
        await self.start()
        for _ in range(3):
            code, _, _ = await self.request("POST", "/login", {"username": "admin",
                                                               "password": "guess"})
            self.assertEqual(code, 401)
        code, answer, _ = await self.request("POST", "/login", {"username": "admin",
                                                                "password": PASSWORD})
        self.assertEqual(code, 429)
        self.assertIn("too many failed logins", answer["error"])
        code, _, _ = await self.request("POST", "/login", {"username": "admin"})
        self.assertEqual(code, 400)
