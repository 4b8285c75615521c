"""GET/POST /api/relay/config on a running relay: a new user's first provider set through
the API takes effect for the next message without a restart; the file is saved atomically
with a backup, passwords stay write-only, bad values are refused naming the key and change
nothing, and a restart from the saved file gives the same settings."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from relaymail.config import load_config
from relaymail.service import build_service
from tests.helpers import RunningRelay, free_port
from tests.integration.test_relay import RelayTestCase
from tests.upstreams import wait_until

BODY = b"From: app@client.test\r\nSubject: live\r\n\r\nhello\r\n"


class RelayConfigTests(RelayTestCase):
    async def start(self) -> Any:
        web = free_port()
        relay = await self.relay(web={"enabled": True,
                                      "endpoint": f"tcp:{web}:interface=127.0.0.1"},
                                 transports={"outbox": {"type": "maildir",
                                                        "path": os.path.join(self.dir, "out")}},
                                 delivery={"retry_schedule": [1]})
        self.base = f"http://127.0.0.1:{web}/api/relay/config"
        self.token = relay.service.getServiceNamed("spool").control_token
        self.path = os.path.join(self.dir, "relay.json")
        return relay

    async def call(self, body: Any = None) -> tuple[int, Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        headers = {"Authorization": [f"Bearer {self.token}"]}
        if body is None:
            response = await treq.get(self.base, headers=headers, pool=pool)
        else:
            response = await treq.post(self.base, data=json.dumps(body).encode(),
                                       headers=headers, pool=pool)
        return response.code, json.loads(await response.content())

    def document(self) -> dict[str, Any]:
        with open(self.path) as f:
            return json.load(f)

    async def test_first_provider_applies_live_and_survives_a_restart(self) -> None:
        relay = await self.start()
        code, view = await self.call()
        self.assertEqual((code, view["enabled"], view["upstreams"]), (200, False, []))

        upstream = await self.scripted()
        code, view = await self.call({"enabled": True, "host": "127.0.0.1",
                                      "port": upstream.port, "use_tls": False})
        self.assertEqual(code, 200, view)
        self.assertEqual((view["enabled"], view["transport"], view["tls"]),
                         (True, "provider", "none"))
        self.assertEqual(view["restart_required"], [])
        self.assertTrue(os.path.exists(self.path + ".bak"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

        await self.send(relay, ["live@dest.test"], BODY)  # no restart in between
        await wait_until(lambda: upstream.messages, what="delivery through the new upstream")
        self.assertEqual(upstream.messages[0].rcpt_tos, ["live@dest.test"])

        # the password is write-only: shown masked, and a change without it keeps it
        # (a password in plaintext needs allow_insecure_auth: this scripted peer has no TLS)
        code, view = await self.call({"host": "127.0.0.1", "port": upstream.port,
                                      "use_tls": False, "username": "relay",
                                      "password": "s3cret-pass", "allow_insecure_auth": True})
        self.assertEqual((code, view["password"]), (200, "********"))
        code, view = await self.call({"host": "127.0.0.1", "port": upstream.port,
                                      "use_tls": False, "username": "relay",
                                      "allow_insecure_auth": True})
        self.assertEqual(code, 200)
        saved = self.document()["transports"]["provider"]["upstreams"][0]
        self.assertEqual(saved["password"], "s3cret-pass")
        code, shown = await self.call()
        self.assertNotIn("s3cret-pass", json.dumps(shown))

        await relay.stop()
        config = load_config(self.path, environ={})
        service = build_service(config, reactor)
        service.privilegedStartService()
        service.startService()
        restarted = RunningRelay(service, relay.smtp_port, self.dir)
        self.addCleanup(restarted.stop)
        self.token = service.getServiceNamed("spool").control_token  # a new one per start
        code, again = await self.call()
        self.assertEqual(code, 200)
        self.assertEqual({k: again[k] for k in ("enabled", "host", "port", "tls", "username")},
                         {"enabled": True, "host": "127.0.0.1", "port": upstream.port,
                          "tls": "none", "username": "relay"})

    async def test_bad_values_change_nothing_and_disable_goes_back_to_the_outbox(self) -> None:
        await self.start()
        before = self.document()
        for body, words in (({"host": "h", "port": "abc"}, "port: expected a port number 1-65535"),
                            ({"host": "h", "tls": "ssl3"}, "tls: expected one of"),
                            ({"preset": "nope"}, "preset: unknown preset"),
                            ({"upstreams": []}, "upstreams: expected a non-empty list"),
                            ([1], "JSON object")):
            code, answer = await self.call(body)
            self.assertEqual(code, 400, body)
            self.assertIn(words, answer["error"])
            self.assertNotIn("abc\"", answer["error"])
        self.assertEqual(self.document(), before)
        self.assertFalse(os.path.exists(self.path + ".bak"))

        code, view = await self.call({"enabled": True, "preset": "tencent-ses",
                                      "username": "u@example.com", "password": "p"})
        self.assertEqual((code, view["host"], view["port"], view["tls"]),
                         (200, "smtp.qcloudmail.com", 465, "implicit"))
        code, view = await self.call({"enabled": False})
        self.assertEqual((code, view["enabled"]), (200, False))
        routes = self.document()["routes"]
        self.assertEqual(routes[0]["transport"], "outbox")

    async def test_credentials_to_an_unverified_server_are_refused(self) -> None:
        """M5: the console/API save path gives the startup error (400) for a password or
        OAuth2 token with tls opportunistic or none, or verify false, and saves nothing;
        allow_insecure_auth: true in the request is the explicit way."""
        await self.start()
        before = self.document()
        login = {"host": "mail.example", "port": 587, "username": "relay", "password": "pw-1"}
        for change, words in (
                ({**login, "tls": "opportunistic"},
                 'transports.provider.upstreams[0].tls: "opportunistic" with a password sends '
                 'it to an unverified server; use "starttls" with verify, or set '
                 'allow_insecure_auth'),
                ({**login, "tls": "starttls", "verify": False},
                 "transports.provider.upstreams[0].verify: false with a password"),
                ({**login, "use_tls": False},
                 'transports.provider.upstreams[0].tls: "none" with a password sends it in '
                 'plaintext'),
                ({"host": "mail.example", "username": "me@example.com", "tls": "opportunistic",
                  "oauth2": {"client_id": "c", "token_url": "https://login.example/token"}},
                 "with an OAuth2 token"),
                ({"upstreams": [{"host": "ok.example", "username": "u", "password": "p"},
                                {**login, "tls": "opportunistic"}]},
                 "transports.provider.upstreams[1].tls")):
            code, answer = await self.call({"enabled": True, **change})
            self.assertEqual(code, 400, change)
            self.assertIn(words, answer["error"])
            self.assertNotIn("pw-1", answer["error"])
        self.assertEqual(self.document(), before)
        self.assertFalse(os.path.exists(self.path + ".bak"))
        # saved with the password first, a later change to opportunistic does not take the
        # saved password along (another TLS mode): refused, asking for it again; sent
        # again, the startup check refuses it
        code, view = await self.call({**login, "tls": "starttls"})
        self.assertEqual(code, 200, view)
        saved_doc = self.document()
        code, answer = await self.call({"host": "mail.example", "port": 587,
                                        "username": "relay", "tls": "opportunistic"})
        self.assertEqual(code, 400)
        self.assertIn("send the password again", answer["error"])
        code, answer = await self.call({**login, "tls": "opportunistic"})
        self.assertEqual(code, 400)
        self.assertIn('"opportunistic" with a password', answer["error"])
        self.assertEqual(self.document(), saved_doc)

        code, view = await self.call({**login, "tls": "opportunistic",
                                      "allow_insecure_auth": True})
        self.assertEqual(code, 200, view)
        self.assertEqual((view["tls"], view["upstreams"][0]["allow_insecure_auth"]),
                         ("opportunistic", True))
        saved = self.document()["transports"]["provider"]["upstreams"][0]
        self.assertIs(saved["allow_insecure_auth"], True)
