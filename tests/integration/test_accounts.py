"""Accounts over real sockets: users register and log in over HTTP, make SMTP credentials
and send through them with smtplib, see their own delivery log and statistics, never
another user's; account quotas bound all of a user's logins; a disabled user stops at the
next MAIL; API keys carry scopes; every admin route refuses a user."""

from __future__ import annotations

import smtplib
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.accountsclient import Api, send_in_thread
from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import wait_until

PASSWORD = "correct horse battery"


class AccountsTestCase(RelayTestCase):
    async def start(self, registration: str = "open", **sections: Any) -> Api:
        self.upstream = await self.scripted()
        web, self.smtp_port = free_port(), free_port()
        accounts = {"registration": registration, **sections.pop("accounts", {})}
        self.relay_ = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1",
                 "open_metrics_to_loopback": False},
            smtp={"listeners": [{"name": "smtp", "tls": "none", "auth": "plaintext-loopback",
                                 "endpoint": f"tcp:{self.smtp_port}:interface=127.0.0.1"}],
                  "trusted_networks": []},
            accounts=accounts, **smarthost(plain(self.upstream.port)), **sections)
        base = f"http://127.0.0.1:{web}"
        self.admin = Api(base, self.relay_.service.getServiceNamed("spool").control_token)
        return Api(base)

    async def user(self, api: Api, name: str, **limits: Any) -> Api:
        """An account made by the admin (with limits), logged in."""
        code, made = await self.admin.call("POST", "/api/users", {
            "username": name, "email": f"{name}@people.example", "password": PASSWORD,
            **limits})
        self.assertEqual(code, 201, made)
        return await api.login(f"{name}@people.example", PASSWORD)

    async def credential(self, api: Api, **body: Any) -> tuple[str, str]:
        code, made = await api.call("POST", "/api/smtp-credentials",
                                    {"name": "app", **body})
        self.assertEqual(code, 201, made)
        return made["username"], made["password"]

    async def logs(self, api: Api, ready: Any, path: str = "/api/mail-logs") -> Any:
        """The caller's log once ``ready(answer)`` (the history is written behind)."""
        for _ in range(50):
            code, answer = await api.call("GET", path)
            self.assertEqual(code, 200, answer)
            if ready(answer):
                return answer
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"the log never showed it: {answer}")

    async def console_login(self, name: str, password: str) -> tuple[str, str]:
        """A console session (the cookie header and the CSRF token)."""
        import treq
        from twisted.web.client import HTTPConnectionPool

        response = await treq.post(self.admin.base + "/login", json={
            "username": name, "password": password},
            pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(response.code, 200)
        cookie = response.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        return cookie, (await response.json())["csrf"]

    async def send(self, login: str, password: str, sender: str = "app@shop.example",
                   rcpt: str = "x@dest.test") -> Any:  # type: ignore[override]
        return await send_in_thread(self.smtp_port, login, password, sender, rcpt)


class UserJourneyTests(AccountsTestCase):
    async def test_register_login_credential_send_and_see_only_own_log(self) -> None:
        api = await self.start()
        self.assertEqual((await api.register("alice", "alice@people.example", PASSWORD))[0],
                         201)
        self.assertEqual((await api.register("bob", "bob@people.example", PASSWORD))[0], 201)
        code, again = await api.register("Alice", "a2@people.example", PASSWORD)
        self.assertEqual((code, again["field"]), (409, "username"))
        code, again = await api.register("Admin", "a3@people.example", PASSWORD)
        self.assertEqual((code, again["field"]), (409, "username"))  # web.admin_user's
        alice = await api.login("alice@people.example", PASSWORD)
        bob = await api.login("bob@people.example", PASSWORD)
        code, me = await alice.call("GET", "/api/auth/me")
        self.assertEqual((me["role"], me["user"]["username"]), ("user", "alice"))
        # a registered account sends only as the address it gave (unverified), within the
        # quota new accounts start with
        self.assertEqual(me["user"]["allowed_sender_domains"], ["alice@people.example"])
        self.assertEqual((me["user"]["hourly_quota"], me["user"]["daily_quota"]), (100, 1000))
        users = (await self.admin.call("GET", "/api/users"))[1]["users"]
        for u in users:
            code, _ = await self.admin.call("PATCH", f"/api/users/{u['id']}",
                                            {"allowed_sender_domains": []})
            self.assertEqual(code, 200)

        login, password = await self.credential(alice, daily_quota=100, hourly_quota=10)
        self.assertRegex(login, r"^relay_[0-9a-f]{8}_[0-9a-f]{4}$")
        self.assertEqual(await self.send(login, password), {})
        await wait_until(lambda: self.upstream.messages, what="the delivery")

        logs = await self.logs(alice, lambda got: {"received", "sent"} <= {
            r["status"] for r in got["items"]})
        self.assertEqual({(r["user"], r["credential"]) for r in logs["items"]},
                         {("alice", login)})  # the sent row too
        self.assertEqual((await bob.call("GET", "/api/mail-logs"))[1]["total"], 0)
        stats = (await alice.call("GET", "/api/mail-logs/stats"))[1]
        self.assertEqual((stats["messages_received"], stats["user"]), (1, "alice"))
        self.assertEqual((await bob.call("GET", "/api/mail-logs/stats"))[1]
                         ["messages_received"], 0)
        everyone = (await self.admin.call("GET", "/api/mail-logs/stats"))[1]
        self.assertEqual(everyone["messages_received"], 1)
        of_bob = (await self.admin.call("GET", "/api/mail-logs/stats?user=bob"))[1]
        self.assertEqual(of_bob["messages_received"], 0)

        # bob can neither see nor touch alice's login: "not found", as if it did not exist
        self.assertEqual((await bob.call("GET", "/api/smtp-credentials"))[1],
                         {"credentials": []})
        for method, path, body in (("PATCH", f"/{login}", {"hourly_quota": 1}),
                                   ("POST", f"/{login}/reset-password", None),
                                   ("DELETE", f"/{login}", None)):
            code, answer = await bob.call(method, "/api/smtp-credentials" + path, body)
            self.assertEqual(code, 404, (method, path, answer))
        self.assertEqual(await self.send(login, password), {})  # still alice's, unchanged
        listing = (await self.admin.call("GET", "/api/smtp-credentials"))[1]["credentials"]
        self.assertEqual([(c["username"], c["user"]) for c in listing], [(login, "alice")])

    async def test_edit_in_place_reset_and_delete_own_credential(self) -> None:
        api = await self.start()
        alice = await self.user(api, "alice", allowed_sender_domains=["shop.example"])
        login, password = await self.credential(alice)
        code, answer = await alice.call("PATCH", f"/api/smtp-credentials/{login}",
                                        {"allowed_sender_domains": ["other.example"]})
        self.assertEqual((code, answer["field"]), (403, "allowed_sender_domains"))
        code, answer = await alice.call("PATCH", f"/api/smtp-credentials/{login}",
                                        {"hourly_quota": 1, "name": "shop app"})
        self.assertEqual((code, answer["credential"]["hourly_quota"]), (200, 1))
        self.assertEqual(await self.send(login, password), {})
        over = await self.send(login, password)
        self.assertEqual(over.smtp_code, 451)  # the login's own quota
        refused = await self.send(login, password, sender="app@elsewhere.example")
        self.assertEqual(refused.smtp_code, 550)  # outside the account's domains
        self.assertIn(b"for this account", refused.smtp_error)
        code, reset = await alice.call("POST", f"/api/smtp-credentials/{login}/reset-password")
        self.assertEqual(code, 200)
        old = await self.send(login, password)
        self.assertIsInstance(old, smtplib.SMTPAuthenticationError)
        self.assertEqual((await alice.call("DELETE", f"/api/smtp-credentials/{login}"))[0],
                         200)
        gone = await self.send(login, reset["password"])
        self.assertIsInstance(gone, smtplib.SMTPAuthenticationError)


class AccountPolicyTests(AccountsTestCase):
    async def test_account_logins_always_have_their_header_from_checked(self) -> None:
        await self.start(registration="off")
        alice = await self.user(self.admin.as_(None), "alice",
                                allowed_sender_domains=["shop.example"])
        login, password = await self.credential(alice, check_header_from=False)
        forged = "From: ceo@bank.example\r\nSubject: pay\r\n\r\nnow\r\n"
        refused = await send_in_thread(self.smtp_port, login, password, "a@shop.example",
                                       "x@dest.test", data=forged)
        self.assertIsInstance(refused, smtplib.SMTPDataError)
        self.assertEqual(refused.smtp_code, 550)
        own = "From: a@shop.example\r\nSubject: ok\r\n\r\nfine\r\n"
        self.assertEqual(await send_in_thread(self.smtp_port, login, password,
                                              "a@shop.example", "x@dest.test", data=own), {})

    async def test_a_user_cannot_raise_a_login_above_the_configured_quota(self) -> None:
        api = await self.start(registration="off",
                               rate_limits={"per_credential": {"hour": 1}})
        alice = await self.user(api, "alice")
        login, password = await self.credential(alice, hourly_quota=1000)
        self.assertEqual(await self.send(login, password), {})
        over = await self.send(login, password)
        self.assertEqual(over.smtp_code, 451)  # the admin's 1 per hour, not alice's 1000

    async def test_a_new_password_ends_console_sessions(self) -> None:
        api = await self.start(registration="off")
        await self.user(api, "alice")
        cookie, csrf = await self.console_login("alice", PASSWORD)
        headers = {"Cookie": cookie, "X-CSRF-Token": csrf}
        self.assertEqual((await api.call("GET", "/api/auth/me", headers=headers))[0], 200)
        users = (await self.admin.call("GET", "/api/users"))[1]["users"]
        self.assertIsNotNone(users[0]["last_login"])  # the console login is recorded
        code, _ = await self.admin.call("POST", f"/api/users/{users[0]['id']}/reset-password")
        self.assertEqual(code, 200)
        self.assertEqual((await api.call("GET", "/api/auth/me", headers=headers))[0], 401)


    async def test_account_quota_spans_its_credentials_and_disabling_stops_at_mail(self
                                                                                   ) -> None:
        api = await self.start(registration="off")
        alice = await self.user(api, "alice", hourly_quota=2)
        first, p1 = await self.credential(alice)
        second, p2 = await self.credential(alice)
        self.assertEqual(await self.send(first, p1), {})
        self.assertEqual(await self.send(second, p2), {})
        over = await self.send(first, p1)
        self.assertEqual(over.smtp_code, 451)
        self.assertIn(b"account alice", over.smtp_error)

        bob = await self.user(api, "bob")
        login, password = await self.credential(bob)
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=20) as s:
            s.login(login, password)
            self.assertEqual(s.sendmail("b@shop.example", ["x@dest.test"],
                                        b"From: b@shop.example\r\nSubject: 1\r\n\r\nx\r\n"), {})
            code, _ = await self.admin.call("PATCH", "/api/users/bob",  # by name, or id
                                            {"enabled": False})
            self.assertEqual(code, 200)
            code, reply = s.mail("b@shop.example")  # the session authenticated before
            self.assertEqual((code, reply[:5]), (530, b"5.7.0"), reply)
        again = await self.send(login, password)
        self.assertIsInstance(again, smtplib.SMTPAuthenticationError)
        self.assertEqual((await bob.call("GET", "/api/auth/me"))[0], 401)  # tokens revoked

    async def test_registration_off_and_by_invitation(self) -> None:
        api = await self.start(registration="invite",
                               accounts={"max_registrations_per_hour": 20})
        code, _ = await api.register("carol", "carol@people.example", PASSWORD)
        self.assertEqual(code, 403)
        code, invite = await self.admin.call("POST", "/api/users/invites",
                                             {"email": "carol@people.example"})
        self.assertEqual(code, 201)
        code, _ = await api.register("mallory", "mallory@people.example", PASSWORD,
                                     invite=invite["invite"])
        self.assertEqual(code, 403)  # the invitation names another address
        code, _ = await api.register("carol", "carol@people.example", PASSWORD,
                                     invite=invite["invite"])
        self.assertEqual(code, 201)
        code, _ = await api.register("carol2", "carol@people.example", PASSWORD,
                                     invite=invite["invite"])
        self.assertEqual(code, 403)  # used once
        code, other = await self.admin.call("POST", "/api/users/invites",
                                            {"email": "dan@people.example"})
        listed = (await self.admin.call("GET", "/api/users/invites"))[1]["invites"]
        self.assertEqual([i["email"] for i in listed], ["dan@people.example"])
        self.assertNotIn(other["invite"], str(listed))
        code, _ = await self.admin.call("DELETE", f"/api/users/invites/{listed[0]['id']}")
        self.assertEqual(code, 200)
        code, _ = await api.register("dan", "dan@people.example", PASSWORD,
                                     invite=other["invite"])
        self.assertEqual(code, 403)  # withdrawn
        code, short = await api.register("dave", "dave@people.example", "short",
                                         invite="x")
        self.assertEqual(code, 400)
        self.assertEqual(short["field"], "password")

    async def test_open_registration_is_counted_per_address(self) -> None:
        api = await self.start(accounts={"max_registrations_per_hour": 2})
        for i in range(2):
            code, _ = await api.register(f"user{i}", f"u{i}@people.example", PASSWORD)
            self.assertEqual(code, 201)
        code, answer = await api.register("user3", "u3@people.example", PASSWORD)
        self.assertEqual(code, 429, answer)

    async def test_login_errors_and_password_change(self) -> None:
        api = await self.start()
        await api.register("erin", "erin@people.example", PASSWORD)
        code, _ = await api.call("POST", "/api/auth/login",
                                 {"email": "erin@people.example", "password": "wrong one!"})
        self.assertEqual(code, 401)
        code, _ = await api.call("POST", "/api/auth/login",
                                 {"email": "nobody@people.example", "password": PASSWORD})
        self.assertEqual(code, 401)
        erin = await api.login("ERIN@People.Example".replace("ERIN", "erin"), PASSWORD)
        other = await api.login("erin@people.example", PASSWORD)
        code, answer = await erin.call("POST", "/api/auth/password",
                                       {"current_password": "nope", "new_password": "x" * 12})
        self.assertEqual((code, answer["field"]), (403, "current_password"))
        code, _ = await erin.call("POST", "/api/auth/password",
                                  {"current_password": PASSWORD, "new_password": "n" * 12})
        self.assertEqual(code, 200)
        self.assertEqual((await other.call("GET", "/api/auth/me"))[0], 401)
        await api.login("erin", "n" * 12)  # by username too
        self.assertEqual((await erin.call("POST", "/api/auth/logout"))[0], 401)


class ApiKeyTests(AccountsTestCase):
    async def test_scopes_revocation_and_last_used(self) -> None:
        api = await self.start()
        alice = await self.user(api, "alice")
        code, made = await alice.call("POST", "/api/api-keys",
                                      {"name": "dashboards", "scopes": ["read-logs"]})
        self.assertEqual(code, 201, made)
        key = api.as_(made["key"])
        self.assertRegex(made["key"], r"^rmk_[0-9a-f]{12}_")
        self.assertEqual((await key.call("GET", "/api/mail-logs"))[0], 200)
        for method, path in (("GET", "/api/smtp-credentials"), ("POST", "/api/send"),
                             ("GET", "/api/users"), ("GET", "/api/queue")):
            code, answer = await key.call(method, path, {})
            self.assertEqual(code, 403, (method, path, answer))
        code, _ = await alice.call("POST", "/api/api-keys",
                                   {"name": "root", "scopes": ["admin"]})
        self.assertEqual(code, 403)  # a user cannot make an admin key
        for method, path in (("GET", "/api/api-keys"), ("POST", "/api/api-keys"),
                             ("DELETE", f"/api/api-keys/{made['api_key']['id']}"),
                             ("POST", "/api/auth/password")):
            code, _ = await key.call(method, path, {"name": "more", "scopes": ["read-logs"],
                                                    "current_password": PASSWORD,
                                                    "new_password": "n" * 12})
            self.assertEqual(code, 403, (method, path))  # not with a key
        me = (await key.call("GET", "/api/auth/me"))[1]
        self.assertEqual(me["scopes"], ["read-logs"])
        self.assertNotIn("admin", (await alice.call("GET", "/api/auth/me"))[1]["scopes"])
        listing = (await alice.call("GET", "/api/api-keys"))[1]["api_keys"]
        self.assertEqual([k["name"] for k in listing], ["dashboards"])
        self.assertIsNotNone(listing[0]["last_used"])
        self.assertNotIn(made["key"], str(listing))
        bob = await self.user(api, "bob")
        self.assertEqual((await bob.call("DELETE", f"/api/api-keys/{made['api_key']['id']}"))
                         [0], 404)
        self.assertEqual((await alice.call("DELETE",
                                           f"/api/api-keys/{made['api_key']['id']}"))[0], 200)
        self.assertEqual((await key.call("GET", "/api/mail-logs"))[0], 401)

    async def test_admin_key_replaces_the_control_token(self) -> None:
        api = await self.start()
        code, made = await self.admin.call("POST", "/api/api-keys",
                                           {"name": "ops", "scopes": ["admin"]})
        self.assertEqual(code, 201, made)
        key = api.as_(made["key"])
        self.assertEqual((await key.call("GET", "/api/queue"))[0], 200)
        self.assertEqual((await key.call("GET", "/api/users"))[0], 200)

    async def test_every_admin_route_refuses_an_account_user(self) -> None:
        from relaymail.web.api import ControlAPI
        from relaymail.web.routing import Access

        api = await self.start()
        alice = await self.user(api, "alice")
        checked = 0
        for r in ControlAPI.routes:
            if r.access not in (Access.ADMIN, Access.LOCAL_OR_ADMIN):
                continue
            path = r.path.replace("{", "").replace("}", "")
            code, answer = await alice.call(r.method.upper(), path, {})
            self.assertEqual(code, 403, (r.method, r.path, answer))
            checked += 1
        self.assertGreater(checked, 30)


class SendAsUserTests(AccountsTestCase):
    async def test_send_api_applies_the_account_policy(self) -> None:
        api = await self.start()
        alice = await self.user(api, "alice", allowed_sender_domains=["shop.example"],
                                hourly_quota=2)
        form = {"from": "Shop <news@shop.example>", "to": "x@dest.test", "subject": "hi",
                "text": "hello"}
        code, answer = await alice.call("POST", "/api/send",
                                        {**form, "from": "ceo@bank.example"})
        self.assertEqual((code, answer["code"]), (403, "sender_not_allowed"), answer)
        code, answer = await alice.call("POST", "/api/send", form)
        self.assertEqual(code, 202, answer)
        login, password = await self.credential(alice)
        self.assertEqual(await self.send(login, password), {})  # the second of two
        code, answer = await alice.call("POST", "/api/send", form)
        self.assertEqual((code, answer["code"]), (429, "over_quota"), answer)  # both ways
        await wait_until(lambda: len(self.upstream.messages) == 2, what="two deliveries")
        logs = await self.logs(alice, lambda got: len(got["items"]) == 2,
                               "/api/mail-logs?status=received")
        self.assertEqual({r["user"] for r in logs["items"]}, {"alice"})


class EveryUserRouteTests(AccountsTestCase):
    async def test_no_user_route_shows_or_changes_another_users_objects(self) -> None:
        """Alice has a login, a key and a message; Bob calls every route an account user
        may call.  The table must name every such route: a new one fails here until it
        says what another user gets."""
        from relaymail.web.api import ControlAPI
        from relaymail.web.routing import Access

        api = await self.start(registration="off")
        alice = await self.user(api, "alice")
        login, password = await self.credential(alice)
        self.assertEqual(await self.send(login, password), {})
        key = (await alice.call("POST", "/api/api-keys", {"name": "k"}))[1]["api_key"]["id"]
        await self.logs(alice, lambda got: got["items"])
        bob = await self.user(api, "bob")

        def nothing_of_alice(answer: Any) -> None:
            self.assertNotIn(login, str(answer))
            self.assertNotIn("alice", str(answer))

        creds = "/api/smtp-credentials"
        table = {
            ("get", creds): (200, nothing_of_alice, None),
            ("post", creds): (201, nothing_of_alice, {"name": "bob's"}),  # bob's own
            ("post", creds + "/{name}/reset-password"): (404, None, None),
            ("patch", creds + "/{name}"): (404, None, {"hourly_quota": 1}),
            ("delete", creds + "/{name}"): (404, None, None),
            ("get", "/api/mail-logs"): (200, nothing_of_alice, None),
            ("get", "/api/mail-logs/stats"): (200, nothing_of_alice, None),
            ("get", "/api/mail-logs/usage"): (200, nothing_of_alice, None),
            ("post", "/api/send"): (202, None, {"from": "bob@people.example",
                                               "to": "x@dest.test", "text": "mine"}),
            ("get", "/api/auth/me"): (200, nothing_of_alice, None),
            ("post", "/api/auth/password"): (403, None, {"current_password": "no",
                                                         "new_password": "x" * 12}),
            ("get", "/api/api-keys"): (200, nothing_of_alice, None),
            ("post", "/api/api-keys"): (201, nothing_of_alice, {"name": "bob's"}),
            ("delete", "/api/api-keys/{key_id}"): (404, None, None),
            ("post", "/logout"): (200, None, None),  # a console logout: no cookie here
            ("post", "/api/auth/logout"): (200, None, None),  # last: ends bob's token
        }
        user_routes = {(r.method, r.path) for r in ControlAPI.routes if r.access is Access.USER}
        self.assertEqual(set(table), user_routes)
        for (method, path), (status, check, body) in table.items():
            url = path.replace("{name}", login).replace("{key_id}", key)
            code, answer = await bob.call(method.upper(), url, body)
            self.assertEqual(code, status, (method, path, answer))
            if check is not None:
                check(answer)
        # and alice's things are all still there and hers
        self.assertEqual(await self.send(login, password), {})
        keys = (await alice.call("GET", "/api/api-keys"))[1]["api_keys"]
        self.assertEqual([k["id"] for k in keys], [key])


class RegisterPageTests(AccountsTestCase):
    async def test_the_register_page_says_the_configured_password_length(self) -> None:
        import html
        import json
        import re

        api = await self.start(accounts={"min_password_length": 14})
        code, page = await api.call("GET", "/register")
        self.assertEqual(code, 200)
        data = re.search(rb'data-console="([^"]*)"', page)
        assert data is not None
        shown = json.loads(html.unescape(data.group(1).decode()))
        self.assertEqual(shown["min_password_length"], 14)
        code, short = await api.register("carol", "carol@people.example", "thirteen-char")
        self.assertEqual((code, short["field"]), (400, "password"))
