"""/api/smtp-credentials over a real socket, and the credentials it makes used for real:
create (password shown once), AUTH with it over SMTP, a quota set by PATCH answering 451,
reset (the old password stops working), delete; bad requests and the token."""

from __future__ import annotations

import json
import smtplib
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool

from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase

BODY = b"From: app@shop.example\r\nSubject: hi\r\n\r\nhello\r\n"


class CredentialsAPITests(RelayTestCase):
    async def setUp(self) -> None:
        super().setUp()
        web, self.smtp_port = free_port(), free_port()
        self.relay_ = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1"},
            smtp={"listeners": [{"name": "smtp", "tls": "none", "auth": "plaintext-loopback",
                                 "endpoint": f"tcp:{self.smtp_port}:interface=127.0.0.1"}],
                  "trusted_networks": []})
        self.base = f"http://127.0.0.1:{web}/api/smtp-credentials"
        self.token = self.relay_.service.getServiceNamed("spool").control_token

    async def call(self, method: str, path: str = "", body: Any = None,
                   token: str | None = "") -> tuple[int, Any]:
        token = self.token if token == "" else token
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        pool = HTTPConnectionPool(reactor, persistent=False)
        kwargs: dict[str, Any] = {"headers": headers, "pool": pool}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
        response = await treq.request(method, self.base + path, **kwargs)
        return response.code, json.loads(await response.content())

    def send(self, user: str, password: str) -> Any:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as s:
            try:
                s.login(user, password)
                return s.sendmail("app@shop.example", ["x@dest.test"], BODY)
            except smtplib.SMTPException as e:
                return e

    async def test_lifecycle_used_by_a_real_client(self) -> None:
        code, made = await self.call("POST", body={
            "name": "shop", "allowed_sender_domains": ["shop.example"], "hourly_quota": 5})
        self.assertEqual(code, 201)
        password = made["password"]
        self.assertNotIn("password_hash", made["credential"])
        code, listing = await self.call("GET")
        self.assertEqual([c["name"] for c in listing["credentials"]], ["shop"])
        self.assertNotIn(password, json.dumps(listing))
        self.assertNotIn("password_hash", json.dumps(listing))
        self.assertEqual(await deferToThread(self.send, "shop", password), {})

        code, changed = await self.call("PATCH", "/shop", {"hourly_quota": 1})
        self.assertEqual((code, changed["credential"]["hourly_quota"]), (200, 1))
        refused = await deferToThread(self.send, "shop", password)
        self.assertEqual(refused.smtp_code, 451)  # the first message already counted

        code, reset = await self.call("POST", "/shop/reset-password")
        self.assertEqual(code, 200)
        old = await deferToThread(self.send, "shop", password)
        self.assertIsInstance(old, smtplib.SMTPAuthenticationError)
        self.assertNotEqual(reset["password"], password)

        self.assertEqual((await self.call("DELETE", "/shop"))[0], 200)
        self.assertEqual((await self.call("DELETE", "/shop"))[0], 404)
        gone = await deferToThread(self.send, "shop", reset["password"])
        self.assertIsInstance(gone, smtplib.SMTPAuthenticationError)

    async def test_bad_requests_and_token(self) -> None:
        self.assertEqual((await self.call("GET", token=None))[0], 401)
        self.assertEqual((await self.call("POST", body={"name": "x", "token": None}, token="no"
                                          ))[0], 401)
        for body, words in (({"name": "bad name!"}, "invalid credential name"),
                            ({"name": "a", "hourly_quota": 0}, "hourly_quota"),
                            ({"name": "a", "enabled": "yes"}, "enabled"),
                            ({"name": "a", "password_hash": "x"}, "password_hash: unknown"),
                            ([1], "JSON object")):
            code, answer = await self.call("POST", body=body)
            self.assertEqual(code, 400, body)
            self.assertIn(words, answer["error"])
        await self.call("POST", body={"name": "dup"})
        self.assertEqual((await self.call("POST", body={"name": "dup"}))[0], 409)
        self.assertEqual((await self.call("PATCH", "/nobody", {"enabled": False}))[0], 404)
        self.assertEqual((await self.call("PATCH", "/dup", {}))[0], 400)
