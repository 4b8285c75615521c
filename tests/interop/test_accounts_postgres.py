"""Accounts shared by two relaymail instances through a real PostgreSQL (tests/pgserver.py)
and a real redis-server: a user made on one instance logs in on the other, a login made on
the second authenticates on the first, the account's hourly quota holds across both (3
messages, wherever they land), both show the account's whole log (web.history_database),
and disabling the user on one stops the other at its next AUTH.  Also: migrations run
once for two instances; a wrong password stops startup naming the database without the
password; with the database gone, logins keep working and changes answer 503."""

from __future__ import annotations

import smtplib
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from relaymail.accounts.database import Database, DatabaseError
from tests.accountsclient import Api, send_in_thread
from tests.helpers import free_port, start_relay
from tests.pgserver import PostgresServer, require_postgres
from tests.redisserver import RedisServer

PASSWORD = "correct horse battery"


def redis_or_skip() -> RedisServer:
    try:
        return RedisServer()
    except FileNotFoundError as e:
        if __import__("os").environ.get("CI"):
            raise AssertionError(f"{e} (missing in CI)") from None
        raise SkipTest(str(e)) from None


class SharedAccountsTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        require_postgres()
        self.pg = PostgresServer()
        self.addCleanup(self.pg.stop)
        self.redis = redis_or_skip()
        self.addCleanup(self.redis.stop)

    async def instance(self, workers: int = 0) -> tuple[Api, int]:
        web, smtp = free_port(), free_port()
        relay = await start_relay(
            tempfile.mkdtemp(),
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1",
                 "history_database": self.pg.url},
            smtp={"listeners": [{"name": "smtp", "tls": "none", "auth": "plaintext-loopback",
                                 "endpoint": f"tcp:{smtp}:interface=127.0.0.1"}],
                  "trusted_networks": [], "workers": workers},
            accounts={"database": self.pg.url},
            rate_limits={"backend": self.redis.url},
            routes=[{"domains": ["*"], "transport": "outbox"}],
            transports={"outbox": {"type": "maildir", "path": tempfile.mkdtemp()}})
        self.addCleanup(relay.stop)
        self.relay = relay
        token = relay.service.getServiceNamed("spool").control_token
        return Api(f"http://127.0.0.1:{web}", token), smtp

    async def eventually(self, check: Any, what: str, seconds: float = 5) -> Any:
        """The other instance sees a change at its next poll (one a second)."""
        deadline = time.monotonic() + seconds
        while True:
            result = await check()
            if result is not None or time.monotonic() > deadline:
                self.assertIsNotNone(result, what)
                return result
            await deferLater(reactor, 0.2, lambda: None)

    async def test_two_instances_share_users_logins_and_one_account_quota(self) -> None:
        (admin_a, smtp_a), (admin_b, smtp_b) = await self.instance(), await self.instance()
        code, made = await admin_a.call("POST", "/api/users", {
            "username": "alice", "email": "alice@people.example", "password": PASSWORD,
            "hourly_quota": 3})
        self.assertEqual(code, 201, made)

        async def login_on_b() -> Api | None:
            code, answer = await admin_b.as_(None).call(
                "POST", "/api/auth/login", {"email": "alice@people.example",
                                            "password": PASSWORD})
            return admin_b.as_(answer["token"]) if code == 200 else None

        alice_b = await self.eventually(login_on_b, "alice logs in on the other instance")
        code, cred = await alice_b.call("POST", "/api/smtp-credentials", {"name": "app"})
        self.assertEqual(code, 201, cred)
        login, password = cred["username"], cred["password"]

        async def first_on_a() -> Any:
            answer = await send_in_thread(smtp_a, login, password, "a@shop.example",
                                          "x@dest.test")
            return answer if not isinstance(answer, smtplib.SMTPAuthenticationError) else None

        self.assertEqual(await self.eventually(first_on_a, "the login works on A"), {})
        answers = [await send_in_thread(port, login, password, "a@shop.example", "x@dest.test")
                   for port in (smtp_b, smtp_a, smtp_b)]
        self.assertEqual(answers[:2], [{}, {}])
        self.assertIsInstance(answers[2], smtplib.SMTPSenderRefused)
        self.assertEqual(answers[2].smtp_code, 451)
        self.assertIn(b"account alice", answers[2].smtp_error)

        async def all_three() -> Any:  # one history for both (written every half second)
            stats = (await alice_b.call("GET", "/api/mail-logs/stats"))[1]
            return stats if stats["messages_received"] == 3 else None

        self.assertEqual((await self.eventually(all_three, "B shows A's messages too"))
                         ["user"], "alice")
        logs = (await admin_a.call("GET", "/api/mail-logs?user=alice&status=received"))[1]
        self.assertEqual(logs["total"], 3)

        users = (await admin_b.call("GET", "/api/users"))[1]["users"]
        self.assertEqual([u["smtp_credentials"] for u in users], [1])
        code, _ = await admin_b.call("PATCH", f"/api/users/{users[0]['id']}",
                                     {"enabled": False})
        self.assertEqual(code, 200)

        async def refused_on_a() -> Any:
            answer = await send_in_thread(smtp_a, login, password, "a@shop.example",
                                          "x@dest.test")
            return answer if isinstance(answer, smtplib.SMTPAuthenticationError) else None

        await self.eventually(refused_on_a, "a disabled account stops on the other instance")

    async def test_bad_password_stops_startup_naming_the_database(self) -> None:
        url = self.pg.url_for("relaymail", password="wrong")
        database = Database(url, reactor)
        with self.assertRaises(DatabaseError) as caught:
            database.open_now()
        text = str(caught.exception)
        self.assertIn(f"127.0.0.1:{self.pg.port}/relaymail", text)
        self.assertNotIn("wrong", text.replace("wrong password", ""))
        self.assertIn("password", text)

    async def test_migrations_are_applied_once(self) -> None:
        for _ in range(2):
            database = Database(self.pg.url, reactor)
            database.open_now()
            database.stop()
        versions = self.pg.admin("SELECT version_num FROM alembic_version;")
        self.assertEqual(versions.split(), ["0001"])

    async def test_a_database_gone_keeps_logins_working_and_answers_503(self) -> None:
        admin, smtp = await self.instance()
        code, _ = await admin.call("POST", "/api/users", {
            "username": "alice", "email": "alice@people.example", "password": PASSWORD})
        self.assertEqual(code, 201)
        alice = await admin.as_(None).login("alice@people.example", PASSWORD)
        code, cred = await alice.call("POST", "/api/smtp-credentials", {"name": "app"})
        self.assertEqual(code, 201)
        self.pg.stop()
        code, answer = await admin.call("POST", "/api/users", {
            "username": "bob", "email": "bob@people.example", "password": PASSWORD})
        self.assertEqual(code, 503, answer)
        self.assertEqual(await send_in_thread(smtp, cred["username"], cred["password"],
                                              "a@people.example", "x@dest.test",
                                              data="From: alice@people.example\r\n\r\nhi\r\n"),
                         {})  # from the copy every process keeps
        self.assertEqual((await alice.call("GET", "/api/auth/me"))[0], 200)

        async def degraded() -> Any:
            health = (await admin.call("GET", "/health"))[1]
            codes = [r["code"] for r in health["details"]["degraded_reasons"]]
            return health if "accounts_database" in codes else None

        self.assertEqual((await self.eventually(degraded, "/health says so"))["status"],
                         "degraded")

    async def test_an_acceptor_restarted_while_the_database_is_gone_still_serves(self) -> None:
        import os
        import signal

        admin, smtp = await self.instance(workers=1)
        code, made = await admin.call("POST", "/api/users", {
            "username": "alice", "email": "alice@people.example", "password": PASSWORD})
        self.assertEqual(code, 201, made)
        alice = await admin.as_(None).login("alice@people.example", PASSWORD)
        code, cred = await alice.call("POST", "/api/smtp-credentials", {"name": "app"})
        self.assertEqual(code, 201)
        self.pg.stop()
        pool = self.relay.service.acceptors
        victim = pool.slots[0]
        old_pid = victim.process.pid
        os.kill(old_pid, signal.SIGKILL)

        async def restarted() -> Any:  # serving: the main process no longer takes sessions
            slot = pool.slots[0]
            alive = slot.serving and slot.process is not None
            return True if alive and slot.process.pid != old_pid else None

        await self.eventually(restarted, "the acceptor is back", seconds=30)
        answer = await send_in_thread(smtp, cred["username"], cred["password"],
                                      "a@people.example", "x@dest.test",
                                      data="From: a@people.example\r\n\r\nhi\r\n")
        # the new acceptor could not load the accounts: the login is unknown there
        # (535), but the acceptor answers and serves; it does not crash-loop
        self.assertIsInstance(answer, smtplib.SMTPAuthenticationError)
        self.assertEqual(pool.slots[0].process.pid, victim.process.pid)
