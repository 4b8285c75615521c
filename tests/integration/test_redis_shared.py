"""Two relaymail services share limits and lockouts through a real redis-server; with Redis
gone or silent, sessions get the configured answer within the backend timeout, never a hang."""

from __future__ import annotations

import smtplib
import socket
import tempfile
import threading
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.helpers import base_config, free_port, proxied_session, start_server
from tests.integration.test_policy_smtp import plain_auth
from tests.redisserver import RedisServer

MESSAGE = b"From: a@client.example\r\nSubject: shared\r\n\r\nhello\r\n"


def send(port: int, sender: str = "a@client.example") -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        try:
            return s.sendmail(sender, ["x@dest.example"], MESSAGE)
        except smtplib.SMTPSenderRefused as e:
            return e


class RedisTestCase(TestCase):
    async def instance(self, backend: str, **rate_limits: Any) -> Any:
        directory = tempfile.mkdtemp()
        data = base_config(directory, tls=False)
        data["smtp"]["listeners"] = [
            {"name": "smtp", "endpoint": "tcp:0", "tls": "none"},
            {"name": "proxied", "endpoint": "tcp:0", "tls": "none", "proxy_protocol": True,
             "auth": "plaintext-loopback"},
        ]
        data["smtp"]["proxy_trusted_networks"] = ["127.0.0.0/8"]
        data["rate_limits"] = {"backend": backend, **rate_limits}
        server = await start_server(data, directory)
        self.addCleanup(server.ctx.policy.counters.close)
        self.addCleanup(server.stop)
        return server


class SharedTests(RedisTestCase):
    def setUp(self) -> None:
        try:
            self.redis = RedisServer()
        except FileNotFoundError as e:
            raise SkipTest(str(e)) from None
        self.addCleanup(self.redis.stop)

    async def test_global_limit_holds_across_two_instances(self) -> None:
        limits = {"global": {"hour": 5}}
        a = await self.instance(self.redis.url, **limits)
        b = await self.instance(self.redis.url, **limits)
        results = []
        for i in range(8):  # alternate instances, and run some concurrently
            server = (a, b)[i % 2]
            results.append(deferToThread(send, server.port(), f"s{i}@client.example"))
        answers = [await d for d in results]
        accepted = [x for x in answers if x == {}]
        refused = [x for x in answers if isinstance(x, smtplib.SMTPSenderRefused)]
        self.assertEqual((len(accepted), len(refused)), (5, 3))
        self.assertTrue(all(r.smtp_code == 451 and b"relay-wide limit of 5" in r.smtp_error
                            for r in refused))
        queued = a.ctx.spool.count("queue") + b.ctx.spool.count("queue")
        self.assertEqual(queued, 5)

    async def test_lockout_on_one_instance_applies_on_the_other(self) -> None:
        lockout = {"auth_failures": {"max_failures": 2, "window": 600, "lockout": 60}}
        a = await self.instance(self.redis.url, **lockout)
        b = await self.instance(self.redis.url, **lockout)
        for _ in range(2):
            await deferToThread(proxied_session, a.port("proxied"), "127.0.0.5",
                                b"EHLO c\r\n" + plain_auth("nobody", "x") + b"QUIT\r\n")
        data = await deferToThread(proxied_session, b.port("proxied"), "127.0.0.5",
                                   b"EHLO c\r\n" + plain_auth("nobody", "x") + b"QUIT\r\n")
        self.assertIn(b"454 4.7.0 Too many failed authentication attempts from your address",
                      data)


class SilentServer:
    """Accepts connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class RedisDownTests(RedisTestCase):
    async def timed_send(self, port: int) -> tuple[Any, float]:
        started = time.monotonic()
        answer = await deferToThread(send, port)
        return answer, time.monotonic() - started

    async def test_unreachable_redis_fails_open_when_configured(self) -> None:
        server = await self.instance(f"redis://127.0.0.1:{free_port()}/0",
                                     per_sender={"hour": 1}, on_backend_error="allow",
                                     backend_timeout=0.5)
        for _ in range(2):  # the limit of 1 is not enforced without its backend
            answer, took = await self.timed_send(server.port())
            self.assertEqual(answer, {})
            self.assertLess(took, 5)
        self.assertGreaterEqual(server.ctx.limits.stats["backend_errors"], 2)

    async def test_silent_redis_defers_within_the_timeout(self) -> None:
        silent = SilentServer()
        self.addCleanup(silent.close)
        server = await self.instance(f"redis://127.0.0.1:{silent.port}/0",
                                     per_sender={"hour": 1}, on_backend_error="defer",
                                     backend_timeout=0.5)
        answer, took = await self.timed_send(server.port())
        self.assertIsInstance(answer, smtplib.SMTPSenderRefused)
        self.assertEqual(answer.smtp_code, 451)
        self.assertIn(b"4.3.0 Rate limit service unavailable", answer.smtp_error)
        self.assertLess(took, 5)
        self.assertEqual(server.ctx.spool.count("queue"), 0)
