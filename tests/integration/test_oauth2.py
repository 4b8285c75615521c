"""OAuth2 upstream logins end to end, on loopback only: a real token endpoint in this reactor
(tests/oauth2peers.py) and an aiosmtpd upstream that takes only AUTH XOAUTH2 / OAUTHBEARER
with a token that endpoint issued and still honours.  Token caching, expiry, a token the
upstream refuses (one refresh, one retry), a revoked refresh token (deferred, never
bounced, with a clear reason in the status API and the log), refresh token rotation, the
client_credentials grant, OAUTHBEARER, the connection test, the console API's masking, and
`relaymail oauth2 authorize|token` (device flow, code flow with PKCE, and a subprocess)."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import HTTPConnectionPool

from relaymail.cli.oauth2 import authorize
from relaymail.config import load_config
from relaymail.relay.oauth2 import TokenStore, registry_for, resolve, store_path
from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase, smarthost
from tests.oauth2peers import OAuth2Server, OAuthUpstream
from tests.peers import require_browser
from tests.upstreams import ca_file, wait_until

MAILBOX = "mailbox@example.com"
BODY = b"From: mailbox@example.com\r\nSubject: oauth\r\n\r\nhello\r\n"


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class OAuth2TestCase(RelayTestCase):
    async def endpoint(self, **kw: Any) -> OAuth2Server:
        server = await OAuth2Server(**kw).start()
        self.addCleanup(server.stop)
        return server

    def upstream(self, server: OAuth2Server, user: str = MAILBOX) -> OAuthUpstream:
        upstream = OAuthUpstream(server, user).start()
        self.addCleanup(upstream.stop)
        return upstream

    def settings(self, server: OAuth2Server, upstream: OAuthUpstream, user: str = MAILBOX,
                 **oauth2: Any) -> dict[str, Any]:
        return {"host": "localhost", "port": upstream.port, "tls": "starttls",
                "ca_file": ca_file(), "username": user,
                "oauth2": {"token_url": server.token_url, "client_id": "relay-client",
                           **oauth2}}

    async def oauth_relay(self, upstream: dict[str, Any], web: bool = False,
                          clock: list[float] | None = None) -> Any:
        """A relay delivering through ``upstream``; ``clock`` drives its token expiry."""
        sections = smarthost(upstream)
        if web:
            self.web_port = free_port()
            sections["web"] = {"enabled": True,
                               "endpoint": f"tcp:{self.web_port}:interface=127.0.0.1"}
        if clock is not None:
            registry_for(reactor, os.path.join(self.dir, "spool")).clock = lambda: clock[0]
        relay = await self.relay(**sections)
        relay.manager.pool.idle_time = 0.01  # each delivery opens (and AUTHs) a new session
        return relay

    async def api(self, relay: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        token = relay.service.getServiceNamed("spool").control_token
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.request(
            method, f"http://127.0.0.1:{self.web_port}{path}", pool=pool,
            headers={"Authorization": [f"Bearer {token}"]},
            data=None if body is None else json.dumps(body).encode())
        return response.code, json.loads(await response.content())

    async def delivered(self, relay: Any, upstream: OAuthUpstream, count: int) -> None:
        await self.send(relay, ["user@dest.test"], BODY, sender=MAILBOX)
        await wait_until(lambda: len(upstream.messages) >= count, what="delivery")
        await self.drained(relay)
        await wait_until(lambda: not relay.manager.pool.destinations, what="idle sessions "
                                                                           "to close")

    def assert_no_secrets(self, server: OAuth2Server, text: str) -> None:
        issued = [*server.refresh, *list(server.access)]
        issued += [f.get(k, "") for _, f in server.requests
                   for k in ("refresh_token", "client_secret")]
        for secret in filter(None, issued):
            self.assertNotIn(secret, text)


class TokenLifecycleTests(OAuth2TestCase):
    async def test_first_delivery_fetches_a_token_the_second_reuses_it(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        relay = await self.oauth_relay(self.settings(server, upstream,
                                                     refresh_token=server.new_refresh_token()))
        await self.delivered(relay, upstream, 1)
        self.assertEqual(len(server.token_requests("refresh_token")), 1)
        self.assertEqual(upstream.messages[0].auth_user, MAILBOX)
        self.assertTrue(upstream.messages[0].tls)
        await self.delivered(relay, upstream, 2)
        self.assertEqual(len(server.token_requests()), 1, "the cached token was not reused")
        self.assertEqual(len(upstream.attempts), 2, "two sessions, two logins")
        self.assertEqual([(a.mechanism, a.accepted) for a in upstream.attempts],
                         [("XOAUTH2", True)] * len(upstream.attempts))
        self.assertRegex(self.log_text(), r"new access token for mailbox@example\.com")
        self.assert_no_secrets(server, self.log_text())

    async def test_expiry_triggers_a_refresh(self) -> None:
        server = await self.endpoint(expires_in=3600)
        upstream = self.upstream(server)
        clock = [1000.0]
        relay = await self.oauth_relay(self.settings(
            server, upstream, refresh_token=server.new_refresh_token()), clock=clock)
        await self.delivered(relay, upstream, 1)
        clock[0] += 3600 - 61  # 60 s before expiry is still good
        await self.delivered(relay, upstream, 2)
        self.assertEqual(len(server.token_requests()), 1)
        clock[0] += 2  # now inside the last minute: refresh first
        await self.delivered(relay, upstream, 3)
        self.assertEqual(len(server.token_requests()), 2)

    async def test_a_refused_token_is_refreshed_once_and_the_session_retried(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        relay = await self.oauth_relay(self.settings(server, upstream,
                                                     refresh_token=server.new_refresh_token()))
        await self.delivered(relay, upstream, 1)
        server.revoke_access()  # the upstream no longer honours the cached token
        await self.delivered(relay, upstream, 2)
        self.assertEqual(len(server.token_requests()), 2)
        self.assertEqual([a.accepted for a in upstream.attempts], [True, False, True])
        self.assertEqual(upstream.attempts[1].after_challenge, b"")  # XOAUTH2: empty reply
        self.assertRegex(self.log_text(), r"refused the access token for mailbox@example\.com "
                                          r"\(535 5\.7\.8 .*token status 401")

    async def test_a_revoked_refresh_token_defers_the_mail_with_a_clear_reason(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        refresh = server.new_refresh_token()
        server.revoke_refresh(refresh)
        relay = await self.oauth_relay(self.settings(server, upstream, refresh_token=refresh),
                                       web=True)
        await self.send(relay, ["user@dest.test"], BODY, sender=MAILBOX)
        await wait_until(lambda: relay.manager.counters["deferred"] >= 1, what="a deferral")
        expected = (f"oauth2: refresh token rejected by {server.token_url}: invalid_grant: "
                    f"AADSTS70008: The provided refresh token has expired or was revoked; run "
                    f"`relaymail oauth2 authorize` again")
        queued = list(relay.manager.queued.values())
        self.assertEqual(len(queued), 1)
        reply = queued[0].recipients[0].last_reply
        self.assertTrue(reply.startswith("454 "), reply)
        self.assertIn(expected, reply)
        self.assertEqual((relay.manager.counters["failed"], relay.manager.counters["bounces"]),
                         (0, 0))
        self.assertEqual(self.envelopes(relay, "failed"), [])
        self.assertEqual(upstream.messages, [])
        self.assertEqual(upstream.attempts, [], "no session without a token")
        code, status = await self.api(relay, "GET", "/api/relay/status")
        self.assertEqual(code, 200)
        self.assertIn(expected, status["upstreams"][0]["last_error"])
        self.assertIn(expected, self.log_text())
        self.assert_no_secrets(server, self.log_text() + json.dumps(status))

    async def test_a_rotated_refresh_token_is_kept_and_stored(self) -> None:
        server = await self.endpoint(rotate=True)
        upstream = self.upstream(server)
        first = server.new_refresh_token()
        clock = [1000.0]
        relay = await self.oauth_relay(self.settings(server, upstream, refresh_token=first),
                                       clock=clock)
        config_before = read(os.path.join(self.dir, "relay.json"))
        await self.delivered(relay, upstream, 1)
        path = store_path(os.path.join(self.dir, "spool"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        stored = json.loads(read(path))["tokens"]
        (entry,) = stored.values()
        self.assertNotEqual(entry["refresh_token"], first)
        self.assertIn(entry["refresh_token"], server.refresh)
        self.assertNotIn(first, server.refresh)  # the old one is dead at the server
        clock[0] += 7200
        await self.delivered(relay, upstream, 2)  # refreshes with the rotated token
        used = [f["refresh_token"] for f in server.token_requests("refresh_token")]
        self.assertEqual(used, [first, entry["refresh_token"]])
        self.assertEqual(read(os.path.join(self.dir, "relay.json")), config_before)

    async def test_client_credentials_grant_with_a_secret(self) -> None:
        server = await self.endpoint(client_secret="app-secret-123")
        upstream = self.upstream(server)
        relay = await self.oauth_relay(self.settings(
            server, upstream, grant="client_credentials", client_secret="app-secret-123",
            scope="https://outlook.office365.com/.default"))
        await self.delivered(relay, upstream, 1)
        (request,) = server.token_requests()
        self.assertEqual((request["grant_type"], request["client_secret"], request["scope"]),
                         ("client_credentials", "app-secret-123",
                          "https://outlook.office365.com/.default"))

    async def test_client_credentials_with_a_wrong_secret_is_deferred(self) -> None:
        server = await self.endpoint(client_secret="app-secret-123")
        upstream = self.upstream(server)
        relay = await self.oauth_relay(self.settings(
            server, upstream, grant="client_credentials", client_secret="wrong-secret-456"))
        await self.send(relay, ["user@dest.test"], BODY, sender=MAILBOX)
        await wait_until(lambda: relay.manager.counters["deferred"] >= 1, what="a deferral")
        reply = next(iter(relay.manager.queued.values())).recipients[0].last_reply
        self.assertIn(f"client rejected by {server.token_url}: invalid_client: "
                      f"AADSTS7000215: Invalid client secret", reply)
        self.assertNotIn("wrong-secret-456", reply + self.log_text())

    async def test_oauthbearer_with_an_escaped_authzid(self) -> None:
        user = "relay=ops,1@example.com"
        server = await self.endpoint()
        upstream = self.upstream(server, user)
        relay = await self.oauth_relay(self.settings(
            server, upstream, user, mechanism="OAUTHBEARER",
            refresh_token=server.new_refresh_token()))
        await self.delivered(relay, upstream, 1)
        server.revoke_access()
        await self.delivered(relay, upstream, 2)
        self.assertEqual([(a.mechanism, a.user, a.accepted) for a in upstream.attempts],
                         [("OAUTHBEARER", user, True), ("OAUTHBEARER", user, False),
                          ("OAUTHBEARER", user, True)])
        self.assertEqual(upstream.attempts[1].after_challenge, b"\x01")  # RFC 7628 3.2.3


class ConsoleTests(OAuth2TestCase):
    async def test_connection_test_uses_the_token_source(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        relay = await self.oauth_relay(self.settings(
            server, upstream, refresh_token=server.new_refresh_token()), web=True)
        code, result = await self.api(relay, "POST", "/api/relay/test", {})
        self.assertEqual(code, 200)
        self.assertTrue(result["ok"], result)
        self.assertEqual([s["step"] for s in result["steps"]],
                         ["OAuth2 token", "TCP", "banner", "EHLO", "STARTTLS", "EHLO (TLS)",
                          "AUTH", "QUIT"])
        await self.delivered(relay, upstream, 1)  # the delivery reuses the probe's token
        self.assertEqual(len(server.token_requests()), 1)
        server.revoke_access()
        code, result = await self.api(relay, "POST", "/api/relay/test", {})
        self.assertFalse(result["ok"])
        self.assertIn("refused the access token for mailbox@example.com", result["error"])
        self.assert_no_secrets(server, json.dumps(result))

    async def test_config_api_masks_and_keeps_the_oauth2_secrets(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        refresh = server.new_refresh_token()
        relay = await self.oauth_relay(self.settings(
            server, upstream, refresh_token=refresh, client_secret="cs-1", tenant="contoso"),
            web=True)
        code, view = await self.api(relay, "GET", "/api/relay/config")
        self.assertEqual(code, 200)
        shown = view["upstreams"][0]["oauth2"]
        self.assertEqual((shown["client_id"], shown["tenant"], shown["mechanism"]),
                         ("relay-client", "contoso", "XOAUTH2"))
        self.assertEqual((shown["client_secret_set"], shown["refresh_token_set"]), (True, True))
        self.assertNotIn("cs-1", json.dumps(view))
        self.assertNotIn(refresh, json.dumps(view))
        before = json.loads(read(os.path.join(self.dir, "relay.json")))
        saved_ca = before["transports"]["provider"]["upstreams"][0]["ca_file"]
        change = {"host": "localhost", "port": upstream.port, "tls": "starttls",
                  "ca_file": saved_ca, "username": MAILBOX,
                  "oauth2": {"token_url": server.token_url, "client_id": "relay-client",
                             "mechanism": "OAUTHBEARER", "client_secret": ""}}
        code, view = await self.api(relay, "POST", "/api/relay/config", change)
        self.assertEqual(code, 200, view)
        saved = json.loads(read(os.path.join(self.dir, "relay.json")))
        oauth2 = saved["transports"]["provider"]["upstreams"][0]["oauth2"]
        self.assertEqual((oauth2["mechanism"], oauth2["client_secret"],
                          oauth2["refresh_token"]), ("OAUTHBEARER", "cs-1", refresh))
        self.assertNotIn("tenant", oauth2)  # left out by the change: gone


class CommandLineTests(OAuth2TestCase):
    def write_config(self, server: OAuth2Server, upstream: OAuthUpstream,
                     **oauth2: Any) -> str:
        data = {"spool_dir": os.path.join(self.dir, "spool"),
                **smarthost(self.settings(server, upstream, device_url=server.base + "/device",
                                          authorize_url=server.base + "/authorize",
                                          scope="https://mail.test/SMTP.Send offline_access",
                                          **oauth2))}
        path = os.path.join(self.dir, "cli.json")
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def resolved(self, path: str) -> Any:
        config = load_config(path, environ={})
        upstream = config.transports["provider"].upstreams[0]
        return resolve(upstream), TokenStore(store_path(config.spool_dir))

    async def test_device_flow_stores_a_refresh_token_the_relay_then_uses(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        server.pending_polls = 2
        settings, store = self.resolved(self.write_config(server, upstream))
        out, sleeps = io.StringIO(), []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        await authorize(reactor, settings, MAILBOX, store, device=True, out=out,
                        sleep=sleep)
        text = out.getvalue()
        self.assertIn(f"open {server.base}/device-login in any browser and enter the code "
                      f"WDJB-MJHT", text)
        self.assertEqual(sleeps, [1.0, 1.0, 1.0])  # the interval the server asked for
        polls = server.token_requests("urn:ietf:params:oauth:grant-type:device_code")
        self.assertEqual(len(polls), 3)
        (issued,) = server.refresh
        self.assertEqual(store.load(f"{server.token_url} relay-client {MAILBOX}")
                         ["refresh_token"], issued)
        self.assert_no_secrets(server, text)

        # no refresh_token in the config: the relay finds the stored one
        relay = await self.oauth_relay(self.settings(server, upstream))
        await self.delivered(relay, upstream, 1)
        self.assertEqual(server.token_requests("refresh_token")[0]["refresh_token"], issued)

    async def test_device_flow_slows_down_when_asked(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        server.pending_polls = 1
        settings, store = self.resolved(self.write_config(server, upstream))
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            for device in server.devices.values():
                device["slow_down"] = True

        await authorize(reactor, settings, MAILBOX, store, device=True, out=io.StringIO(),
                        sleep=sleep)
        self.assertEqual(sleeps, [1.0, 1.0, 6.0])

    async def test_code_flow_with_pkce_and_a_loopback_listener(self) -> None:
        server = await self.endpoint()
        upstream = self.upstream(server)
        settings, store = self.resolved(self.write_config(server, upstream))
        out = io.StringIO()
        done = ensureDeferred(authorize(reactor, settings, MAILBOX, store, device=False,
                                        out=out, wait=30))
        await wait_until(lambda: "/authorize?" in out.getvalue(), what="the authorize URL")
        url = re.search(r"(http://\S+/authorize\?\S+)", out.getvalue()).group(1)
        pool = HTTPConnectionPool(reactor, persistent=False)
        page = await treq.get(url, pool=pool)  # the "browser": approve, follow the redirect
        self.assertIn(b"You can close this window", await page.content())
        await done
        (asked,) = server.authorize_requests
        self.assertEqual((asked["code_challenge_method"], asked["login_hint"],
                          asked["response_type"]), ("S256", MAILBOX, "code"))
        self.assertRegex(asked["redirect_uri"], r"^http://127\.0\.0\.1:\d+/$")
        (exchange,) = server.token_requests("authorization_code")
        self.assertGreaterEqual(len(exchange["code_verifier"]), 43)
        self.assertIsNotNone(store.load(f"{server.token_url} relay-client {MAILBOX}"))

    async def test_token_command_in_a_subprocess_prints_the_expiry_only(self) -> None:
        server = await self.endpoint(expires_in=3599)
        upstream = self.upstream(server)
        path = self.write_config(server, upstream, refresh_token=server.new_refresh_token())
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "relaymail.cli", "--config", path, "oauth2", "token"],
            env={**os.environ, "PYTHONPATH": os.getcwd()}, path=os.getcwd())
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), rf"Access token for {MAILBOX} from "
                                       rf"{re.escape(server.token_url)}: valid 3599 s")
        self.assert_no_secrets(server, (out + err).decode())

        server.revoke_refresh(server.token_requests()[0]["refresh_token"])
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "relaymail.cli", "oauth2", "token", "--config", path,
                             "--transport", "provider"],
            env={**os.environ, "PYTHONPATH": os.getcwd()}, path=os.getcwd())
        self.assertEqual(code, 1)
        self.assertIn("relaymail: oauth2: refresh token rejected by", err.decode())


class ConsoleBrowserTests(OAuth2TestCase):
    """The relay page in headless chromium: the outlook preset shows the OAuth2 fields and
    hides the password; a save writes them; the secret comes back as "(unchanged)"."""

    def setUp(self) -> None:
        super().setUp()
        require_browser()

    async def test_outlook_preset_shows_and_saves_the_oauth2_fields(self) -> None:
        from relaymail.credentials import hash_password
        from tests.integration.test_console_browser import PASSWORD

        web = free_port()
        await self.relay(web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1",
                              "admin_password_hash": hash_password(PASSWORD, rounds=4)},
                         transports={"outbox": {"type": "maildir",
                                                "path": os.path.join(self.dir, "out")}})
        report = await deferToThread(self.journey, f"http://127.0.0.1:{web}")
        self.assertEqual(report["before"], {"oauth2": False, "password": True})
        self.assertEqual(report["after"], {"oauth2": True, "password": False})
        self.assertIn("relaymail oauth2 authorize", report["note"])
        self.assertIn("Entra ID", report["note"])
        saved = json.loads(read(os.path.join(self.dir, "relay.json")))
        upstream = saved["transports"]["provider"]["upstreams"][0]
        self.assertEqual((upstream["preset"], upstream["username"], upstream["oauth2"]),
                         ("outlook", MAILBOX, {"client_id": "app-id-1",
                                               "tenant": "contoso.onmicrosoft.com",
                                               "client_secret": "browser-secret",
                                               "grant": "refresh_token",
                                               "mechanism": "XOAUTH2"}))
        self.assertNotIn("password", upstream)
        self.assertEqual(report["reloaded"], {"tenant": "contoso.onmicrosoft.com",
                                              "secret": "", "placeholder": "(unchanged)"})
        self.assertEqual(report["errors"], [])

    def journey(self, base: str) -> dict[str, Any]:
        from playwright.sync_api import sync_playwright

        from tests.integration.test_console_browser import CHROMIUM, FLAGS, PASSWORD

        out: dict[str, Any] = {"errors": []}

        def visible(page: Any) -> dict[str, bool]:
            return {"oauth2": page.is_visible("#oauth2-fields"),
                    "password": page.is_visible("#f-password")}

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(15000)
                page.on("pageerror", lambda e: out["errors"].append(str(e)))
                page.goto(base + "/login?lang=en")
                page.fill("#f-password", PASSWORD)
                page.click("#login button[type=submit]")
                page.wait_for_url(base + "/")
                page.goto(base + "/relay")
                page.wait_for_selector("#f-preset")
                out["before"] = visible(page)
                page.select_option("#f-preset", "outlook")
                out["after"] = visible(page)
                out["note"] = page.text_content("#oauth2-note")
                page.fill("#f-username", MAILBOX)
                page.fill("#f-client_id", "app-id-1")
                page.fill("#f-tenant", "contoso.onmicrosoft.com")
                page.fill("#f-client_secret", "browser-secret")
                page.check("#f-enabled")
                page.click("#save")
                page.wait_for_selector("#message.ok")
                page.reload()
                page.wait_for_selector("#f-tenant")
                out["reloaded"] = {
                    "tenant": page.input_value("#f-tenant"),
                    "secret": page.input_value("#f-client_secret"),
                    "placeholder": page.get_attribute("#f-client_secret", "placeholder")}
            finally:
                browser.close()
        return out
