"""POST /api/relay/test over a real socket against real upstreams on loopback: an aiosmtpd
provider with STARTTLS and AUTH (trustme certificates), the same with a wrong password, a
certificate for another name, implicit TLS, and a closed port."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase, smarthost
from tests.upstreams import Script, ca_file


class RelayProbeTests(RelayTestCase):
    async def api(self, upstream: dict[str, Any]) -> tuple[Any, str, str]:
        port = free_port()
        relay = await self.relay(web={"enabled": True,
                                      "endpoint": f"tcp:{port}:interface=127.0.0.1"},
                                 **smarthost(upstream))
        token = relay.service.getServiceNamed("spool").control_token
        return relay, f"http://127.0.0.1:{port}", token

    async def post(self, base: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.post(base + "/api/relay/test", json=body, pool=pool,
                                   headers={"Authorization": [f"Bearer {token}"]})
        return response.code, json.loads(await response.content())

    def provider(self, **kw: Any) -> dict[str, Any]:
        upstream = self.aio(**kw)
        return {"host": "localhost", "port": upstream.port, "tls": "starttls",
                "ca_file": ca_file(), "username": "relay", "password": "s3cret-pass"}

    async def test_saved_upstream_passes_every_step(self) -> None:
        _, base, token = await self.api(self.provider())
        code, result = await self.post(base, token, {})
        self.assertEqual(code, 200)
        self.assertTrue(result["ok"], result)
        steps = [s["step"] for s in result["steps"]]
        self.assertEqual(steps, ["TCP", "banner", "EHLO", "STARTTLS", "EHLO (TLS)", "AUTH",
                                 "QUIT"])
        self.assertTrue(all(s["ok"] and s["ms"] >= 0 for s in result["steps"]))
        self.assertIn("235", result["steps"][5]["reply"])
        self.assertNotIn("s3cret-pass", json.dumps(result))

    async def test_wrong_password_and_unchanged_password_reuse(self) -> None:
        saved = self.provider()
        _, base, token = await self.api(saved)
        code, result = await self.post(base, token, {**saved, "password": "wrong"})
        self.assertEqual((code, result["ok"]), (200, False))
        self.assertEqual(result["steps"][-1]["step"], "AUTH")
        self.assertIn("authentication failed: the server rejected the username or password",
                      result["error"])
        # the console sends the form without the password it never showed: the saved one
        without = {k: v for k, v in saved.items() if k != "password"}
        code, result = await self.post(base, token, without)
        self.assertEqual(code, 200)
        self.assertTrue(result["ok"], result)

    async def test_certificate_for_another_name(self) -> None:
        _, base, token = await self.api(self.provider(cert_names=("other.test",)))
        code, result = await self.post(base, token, {})
        self.assertEqual((code, result["ok"]), (200, False))
        self.assertEqual(result["steps"][-1]["step"], "EHLO (TLS)")
        self.assertIn("TLS certificate", result["error"])
        self.assertIn("not valid for localhost", result["error"])

    async def test_implicit_tls_and_closed_port_and_bad_request(self) -> None:
        implicit = self.aio(implicit=True)
        _, base, token = await self.api(self.provider())
        code, result = await self.post(base, token, {
            "host": "localhost", "port": implicit.port, "tls": "implicit",
            "ca_file": ca_file(), "username": "relay", "password": "s3cret-pass"})
        self.assertTrue(result["ok"], result)
        self.assertEqual(result["steps"][0]["step"], "TCP + TLS")
        closed = free_port()
        code, result = await self.post(base, token, {"host": "127.0.0.1", "port": closed,
                                                     "use_tls": False})
        self.assertEqual((code, result["ok"]), (200, False))
        self.assertIn("connection refused", result["error"])
        self.assertEqual(result["upstream"]["tls"], "none")
        code, result = await self.post(base, token, {"host": "h", "tls": "ssl3"})
        self.assertEqual(code, 400)
        self.assertIn("upstream.tls", result["error"])

    async def test_credentials_to_an_unverified_server_are_refused(self) -> None:
        """M5: the connection test refuses what the config refuses (400, naming the key),
        so the password is not sent to an unverified server by a test either."""
        _, base, token = await self.api(self.provider())
        probe = {"host": "127.0.0.1", "port": free_port(), "username": "relay",
                 "password": "pw-2"}
        for change, words in (({"tls": "opportunistic"}, 'upstream.tls: "opportunistic" with '
                               'a password sends it to an unverified server'),
                              ({"tls": "starttls", "verify": False}, "upstream.verify: false"),
                              ({"use_tls": False}, 'upstream.tls: "none" with a password')):
            code, result = await self.post(base, token, {**probe, **change})
            self.assertEqual(code, 400, change)
            self.assertIn(words, result["error"])
            self.assertNotIn("pw-2", result["error"])
        code, result = await self.post(base, token, {**probe, "tls": "opportunistic",
                                                     "allow_insecure_auth": True})
        self.assertEqual((code, result["ok"]), (200, False))
        self.assertIn("connection refused", result["error"])
        # allowed, it still never logs in without TLS: no STARTTLS offered, no AUTH sent
        stripped = await self.scripted(Script(extensions=("PIPELINING", "AUTH PLAIN LOGIN")))
        code, result = await self.post(base, token, {**probe, "port": stripped.port,
                                                     "tls": "opportunistic",
                                                     "allow_insecure_auth": True})
        self.assertEqual((code, result["ok"], result["steps"][-1]["step"]),
                         (200, False, "STARTTLS"))
        self.assertIn("does not offer STARTTLS", result["error"])
        self.assertFalse([c for c in stripped.sessions[0].commands if c.startswith("AUTH")])

    async def test_saved_password_goes_only_where_it_was_saved_for(self) -> None:
        """A saved password was reused when only host and username matched: a test pointed
        at another port with TLS off sent it in clear to a local listener.  Now the request
        must carry the password itself to test anything but the saved destination."""
        import base64
        import binascii
        import contextlib

        _, base, token = await self.api(self.provider())
        listener = await self.scripted(Script(extensions=("PIPELINING", "AUTH PLAIN LOGIN")))
        elsewhere = {"host": "localhost", "username": "relay", "port": listener.port}
        for change in ({"tls": "none", "allow_insecure_auth": True},
                       {"tls": "starttls", "verify": False, "allow_insecure_auth": True},
                       {"tls": "starttls"}):
            code, result = await self.post(base, token, {**elsewhere, **change})
            self.assertEqual(code, 400, (change, result))
            self.assertIn("password: the saved password of relay at localhost is used only "
                          "with the same port, TLS mode and certificate check; send the "
                          "password again", result["error"])
        heard = b"".join(line.encode() for s in listener.sessions for line in s.commands)
        for piece in heard.split():
            with contextlib.suppress(binascii.Error, ValueError):
                heard += base64.b64decode(piece + b"==")
        self.assertNotIn(b"s3cret-pass", heard)
        self.assertEqual(listener.sessions, [])  # not even connected to
        # with its own password the request may test anything the config would take
        code, result = await self.post(base, token, {**elsewhere, "tls": "none",
                                                     "allow_insecure_auth": True,
                                                     "password": "typed-again"})
        self.assertEqual(code, 200, result)
        self.assertTrue(any("AUTH" in c for c in listener.sessions[0].commands))
