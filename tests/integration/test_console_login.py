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


class ConsoleLoginAccountingTests(RelayTestCase):
    """M2 (web): every attempt is counted before its password is checked, and guesses at
    one login from many addresses are held back, not only those from one address."""

    async def start(self, max_failures: int) -> None:
        self.web = free_port()
        await self.relay(web={"enabled": True, "endpoint": f"tcp:{self.web}:interface=127.0.0.1",
                              "admin_user": "admin",
                              "admin_password_hash": hash_password(PASSWORD, rounds=4)},
                         rate_limits={"auth_failures": {"max_failures": max_failures,
                                                        "window": 600, "lockout": 60}})

    def login_from(self, source: str, password: str) -> tuple[int, float]:
        """Blocking (run in a thread): POST /login from ``source``; (status, seconds)."""
        import socket
        import time

        body = json.dumps({"username": "admin", "password": password}).encode()
        head = (f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{self.web}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        start = time.monotonic()
        with socket.socket() as s:
            s.settimeout(30)
            s.bind((source, 0))
            s.connect(("127.0.0.1", self.web))
            s.sendall(head.encode() + body)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1]), time.monotonic() - start

    async def from_(self, source: str, password: str = "guess") -> tuple[int, float]:
        from twisted.internet.threads import deferToThreadPool

        return await deferToThreadPool(reactor, self.clients, self.login_from, source,
                                       password)

    async def test_concurrent_guesses_are_counted_before_their_check(self) -> None:
        from twisted.internet.defer import ensureDeferred, gatherResults

        await self.start(max_failures=3)
        results = await gatherResults([ensureDeferred(self.from_("127.0.0.1"))
                                       for _ in range(10)])
        codes = sorted(code for code, _ in results)
        self.assertEqual(codes, [401] * 3 + [429] * 7)

    async def test_guesses_at_admin_from_many_addresses_are_held_back(self) -> None:
        await self.start(max_failures=2)
        first = [await self.from_(f"127.0.0.{n}") for n in (2, 3)]
        self.assertEqual([code for code, _ in first], [401, 401])
        self.assertTrue(all(seconds < 0.9 for _, seconds in first), first)
        code, seconds = await self.from_("127.0.0.4")
        self.assertEqual(code, 401)
        self.assertGreaterEqual(seconds, 1.0)  # the login's third failure waits 1 s
        code, seconds = await self.from_("127.0.0.5")
        self.assertEqual(code, 401)
        self.assertGreaterEqual(seconds, 2.0)  # then 2 s, 4 s, ... (at most 30 s)
