"""Acceptor processes (``smtp.workers``): real child processes started by a relaymail main
process running in this test's reactor, real sockets.

Sessions are spread over the acceptors on purpose (connections are opened and held until
every acceptor reports at least one), so that "exact across workers" is tested, not
assumed: a limit of 3 admits exactly 3, a lockout counted on one acceptor applies on the
other, a credential added to the file works on every acceptor without a restart, and a
killed acceptor is restarted while the service goes on.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relaymail.config import load_config
from relaymail.credentials import CredentialStore
from tests.helpers import base_config, free_port, write_config

MESSAGE = b"From: a@client.example\r\nSubject: spread\r\n\r\nhello\r\n"


class Session:
    """A raw, blocking SMTP session held open (run its methods in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.reply()  # banner
        self.command(b"EHLO client.example")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, sender: str) -> bytes:
        """MAIL, RCPT, DATA; the first reply that is not a success, or the final one."""
        for line in (b"MAIL FROM:<%s>" % sender.encode(), b"RCPT TO:<x@dest.example>"):
            answer = self.command(line)
            if not answer.startswith(b"250"):
                return answer
        answer = self.command(b"DATA")
        if not answer.startswith(b"354"):
            return answer
        self.sock.sendall(MESSAGE + b".\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.file.close()
        self.sock.close()


def attempt(session: Session, line: bytes) -> bytes:
    """One command's reply; a closed connection counts as the answer ``closed``."""
    try:
        return session.command(line)
    except OSError:
        return b"closed"
    finally:
        session.close()


class WorkersTestCase(TestCase):
    timeout = 120

    async def start(self, workers: int = 2, slow_start: float = 0, **sections: Any) -> Any:
        """The service with ``workers`` acceptors, once every one serves (``slow_start``:
        each acceptor process waits that many seconds before Python starts, and then
        this returns at once)."""
        from relaymail.service import build_service

        self.directory = tempfile.mkdtemp()
        self.port = free_port()
        data = base_config(self.directory, tls=False, workers=workers)
        data["smtp"]["listeners"] = [{"name": "smtp", "tls": "none",
                                      "auth": "plaintext-loopback",
                                      "endpoint": f"tcp:{self.port}:interface=127.0.0.1"}]
        data["routes"] = [{"domains": ["*"], "transport": "outbox"}]
        data["transports"] = {"outbox": {"type": "maildir",
                                         "path": os.path.join(self.directory, "outbox")}}
        data.update(sections)
        config = load_config(write_config(self.directory, data), environ={})
        service = build_service(config, reactor)
        self.pool = service.acceptors
        if slow_start:
            self.slow_acceptors(slow_start)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        self.service = service
        if slow_start:
            return service
        await self.until(lambda: all(s.serving for s in self.pool.slots))
        await self.until_serving()
        return service

    async def until(self, condition: Any, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            self.assertLess(time.monotonic(), deadline, "timed out")
            await deferLater(reactor, 0.05, lambda: None)

    async def until_serving(self) -> None:
        """Every acceptor has adopted the sockets: a banner comes back."""
        def banner() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    return s.recv(4).startswith(b"220")
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while not await deferToThread(banner):
            self.assertLess(time.monotonic(), deadline, "no banner")

    async def spread_sessions(self, minimum: int) -> list[Session]:
        """At least ``minimum`` open sessions, and at least one on every acceptor."""
        sessions: list[Session] = []
        self.addCleanup(lambda: [s.close() for s in sessions])
        for _ in range(60):
            sessions.append(await deferToThread(Session, self.port))
            await self.pool.poll()
            per_worker = [s.status.get("connections", 0) for s in self.pool.slots]
            if len(sessions) >= minimum and all(n > 0 for n in per_worker):
                return sessions
        self.fail(f"sessions did not spread over the acceptors: {per_worker}")

    def slow_acceptors(self, seconds: float) -> None:
        """Acceptor processes (started or restarted from now on) sleep before Python."""
        wrapper = os.path.join(self.directory, "slow-python")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nsleep {seconds}\nexec "{sys.executable}" "$@"\n')
        os.chmod(wrapper, 0o755)
        self.pool.executable = wrapper

    def delivered(self) -> int:
        new = os.path.join(self.directory, "outbox", "new")
        return len(os.listdir(new)) if os.path.isdir(new) else 0


class AcceptorTests(WorkersTestCase):
    async def test_mail_through_every_acceptor_is_delivered(self) -> None:
        await self.start()
        workers = self.pool.workers()
        self.assertEqual([w["alive"] for w in workers], [True, True])
        self.assertNotIn(os.getpid(), [w["pid"] for w in workers])
        sessions = await self.spread_sessions(4)
        answers = [await deferToThread(s.send, f"s{i}@client.example")
                   for i, s in enumerate(sessions)]
        self.assertTrue(all(a.startswith(b"250 2.0.0 Ok: queued as ") for a in answers),
                        answers)
        await self.until(lambda: self.delivered() == len(sessions))
        self.assertEqual(self.service.context.stats.messages_received, len(sessions))
        await self.pool.poll()
        self.assertEqual(sum(self.service.context.connections.per_listener.values()),
                         len(sessions))

    async def test_acceptors_write_into_spare_files_the_relay_gives_back(self) -> None:
        """The main process stocks spare/ after startup; acceptors take files from it for
        new bodies (one file, one message, across processes) and the relay returns each
        delivered body's file (relaymail.spool.spares)."""
        from relaymail.spool.spares import STOCK

        await self.start()
        spare = os.path.join(self.directory, "spool", "spare")
        await self.until(lambda: len(os.listdir(spare)) == STOCK)
        stocked = set(os.listdir(spare))
        sessions = await self.spread_sessions(6)
        answers = [await deferToThread(s.send, f"s{i}@client.example")
                   for i, s in enumerate(sessions)]
        ids = {a.split()[-1].decode() for a in answers}
        self.assertEqual(len(ids), len(sessions), answers)
        await self.until(lambda: self.delivered() == len(sessions))
        await self.until(lambda: len(os.listdir(spare)) == STOCK)
        now = set(os.listdir(spare))
        self.assertEqual(len(stocked - now), len(sessions))  # each took a stocked file
        self.assertEqual({n.partition("-")[2] for n in now - stocked}, ids)  # given back
        new = os.path.join(self.directory, "outbox", "new")
        for name in os.listdir(new):
            with open(os.path.join(new, name), "rb") as f:
                stored = f.read().replace(b"\r\n", b"\n")
            self.assertIn(b"\nSubject: spread\n", stored)
            self.assertTrue(stored.endswith(b"\n\nhello\n"), stored)

    async def test_rate_limit_is_exact_across_acceptors(self) -> None:
        await self.start(rate_limits={"per_sender": {"hour": 3}})
        sessions = await self.spread_sessions(6)
        answers = [await deferToThread(s.send, "same@client.example") for s in sessions]
        accepted = [a for a in answers if a.startswith(b"250")]
        refused = [a for a in answers if a.startswith(b"451 4.7.1")]
        self.assertEqual((len(accepted), len(refused)), (3, len(sessions) - 3), answers)
        await self.until(lambda: self.delivered() == 3)

    async def test_lockout_counted_on_one_acceptor_applies_on_the_other(self) -> None:
        await self.start(rate_limits={"auth_failures": {"max_failures": 2, "window": 600,
                                                        "lockout": 60}})
        CredentialStore(os.path.join(self.directory, "credentials.json")).add("app", "s3cret")
        wrong = b"AUTH PLAIN " + base64.b64encode(b"\0app\0wrong")
        right = b"AUTH PLAIN " + base64.b64encode(b"\0app\0s3cret")
        for _ in range(3):  # failures, each in a new session (on either acceptor)
            session = await deferToThread(Session, self.port)
            await deferToThread(attempt, session, wrong)
        sessions = await self.spread_sessions(2)
        answers = [await deferToThread(attempt, s, right) for s in sessions]
        self.assertTrue(all(not a.startswith(b"235") for a in answers), answers)

    async def test_new_credential_works_on_every_acceptor_without_restart(self) -> None:
        await self.start()
        sessions = await self.spread_sessions(2)
        CredentialStore(os.path.join(self.directory, "credentials.json")).add("late", "pw123")
        right = b"AUTH PLAIN " + base64.b64encode(b"\0late\0pw123")
        answers = [await deferToThread(attempt, s, right) for s in sessions]
        self.assertTrue(all(a.startswith(b"235") for a in answers), answers)

    async def test_killed_acceptor_is_restarted_and_service_goes_on(self) -> None:
        await self.start()
        victim = self.pool.slots[0]
        pid = victim.process.pid
        os.kill(pid, signal.SIGKILL)
        await self.until(lambda: victim.restarts == 1 and victim.serving)
        self.assertNotEqual(victim.process.pid, pid)
        sessions = await self.spread_sessions(2)
        answers = [await deferToThread(s.send, "after@client.example") for s in sessions]
        self.assertTrue(all(a.startswith(b"250") for a in answers), answers)
        await self.until(lambda: self.delivered() == len(sessions))

    async def test_stop_ends_every_acceptor(self) -> None:
        await self.start()
        pids = [w["pid"] for w in self.pool.workers()]
        await self.service.stopService()
        for pid in pids:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=2)


class MainProcessServesTests(WorkersTestCase):
    """While no acceptor serves, the main process accepts itself: a client is answered
    at once at startup (the acceptors' imports take about a second, and more on a loaded
    machine) and while every acceptor is being restarted."""

    def sessions_here(self) -> int:
        return len(self.service.context.sessions)

    async def test_served_before_any_acceptor_is_ready(self) -> None:
        await self.start(slow_start=4)
        self.assertTrue(self.pool.bridges)
        session = await deferToThread(Session, self.port)
        self.addCleanup(session.close)
        self.assertEqual(self.sessions_here(), 1)  # in this process: no acceptor is up
        answer = await deferToThread(session.send, "early@client.example")
        self.assertTrue(answer.startswith(b"250"), answer)
        self.assertFalse(any(s.serving for s in self.pool.slots))
        await self.until(lambda: self.delivered() == 1)
        await self.until(lambda: any(s.serving for s in self.pool.slots), 60)
        self.assertEqual(self.pool.bridges, {})  # this process no longer accepts
        self.assertEqual(self.sessions_here(), 1)  # the session it had goes on
        self.assertTrue((await deferToThread(session.send, "again@client.example"))
                        .startswith(b"250"))
        later = await deferToThread(Session, self.port)
        self.addCleanup(later.close)
        self.assertEqual(self.sessions_here(), 1)  # the new one is an acceptor's
        await self.pool.poll()
        self.assertEqual(sum(s.status.get("connections", 0) for s in self.pool.slots), 1)

    async def test_served_while_every_acceptor_is_restarted(self) -> None:
        await self.start()
        self.assertEqual(self.pool.bridges, {})
        self.slow_acceptors(4)  # the restarts take a while
        for slot in self.pool.slots:
            os.kill(slot.process.pid, signal.SIGKILL)
        await self.until(lambda: not any(s.serving for s in self.pool.slots))
        self.assertTrue(self.pool.bridges)
        session = await deferToThread(Session, self.port)
        self.addCleanup(session.close)
        self.assertEqual(self.sessions_here(), 1)
        answer = await deferToThread(session.send, "meanwhile@client.example")
        self.assertTrue(answer.startswith(b"250"), answer)
        await self.until(lambda: self.delivered() == 1)
        await self.until(lambda: all(s.serving for s in self.pool.slots), 60)
        self.assertEqual(self.pool.bridges, {})


class AcceptorHealthTests(WorkersTestCase):
    async def test_health_and_metrics_show_each_acceptor(self) -> None:
        import json
        import urllib.request

        web_port = free_port()
        await self.start(web={"endpoint": f"tcp:{web_port}:interface=127.0.0.1"})

        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}",
                                        timeout=10) as r:
                return r.read()

        sessions = await self.spread_sessions(2)
        await deferToThread(sessions[0].command, b"MAIL FROM:<bad address>")  # a refusal
        await self.pool.poll()
        health = json.loads(await deferToThread(get, "/health"))
        workers = health["details"]["workers"]
        self.assertEqual([(w["id"], w["alive"]) for w in workers], [(0, True), (1, True)])
        self.assertEqual(sum(w["connections"] for w in workers), len(sessions))
        metrics = (await deferToThread(get, "/metrics")).decode()
        self.assertIn('relaymail_acceptor_up{acceptor="1"} 1.0', metrics)
        self.assertIn(f'relaymail_smtp_connections{{listener="smtp"}} {len(sessions)}.0',
                      metrics)
        self.assertRegex(metrics, r'relaymail_smtp_refusals_total\{code="5\d\d"')

        os.kill(self.pool.slots[1].process.pid, signal.SIGKILL)
        await self.until(lambda: self.pool.slots[1].process is None)
        health = json.loads(await deferToThread(get, "/health"))
        self.assertEqual(health["status"], "degraded")
        self.assertIn("acceptor_down", [r["code"] for r in health["details"]["degraded_reasons"]])
        await self.until(lambda: self.pool.slots[1].link is not None)


class AcceptorExitTests(WorkersTestCase):
    async def test_acceptor_with_redis_exits_when_the_main_process_goes(self) -> None:
        """Its Redis threads once kept an acceptor alive after the main process died, with
        the listening socket, so that a restart could not bind (seen after a CI run)."""
        from twisted.trial.unittest import SkipTest

        from tests.redisserver import RedisServer

        try:
            redis = RedisServer()
        except FileNotFoundError as e:
            raise SkipTest(str(e)) from None
        self.addCleanup(redis.stop)
        await self.start(rate_limits={"backend": redis.url, "global": {"hour": 100}})
        sessions = await self.spread_sessions(2)  # the Redis threads are in use
        answers = [await deferToThread(s.send, "r@client.example") for s in sessions]
        self.assertTrue(all(a.startswith(b"250") for a in answers), answers)
        victim = self.pool.slots[0]
        pid = victim.process.pid
        victim.process.closeChildFD(3)  # what the main process's death looks like to it
        deadline = time.monotonic() + 15
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            self.assertLess(time.monotonic(), deadline, "the acceptor stayed alive")
            await deferLater(reactor, 0.1, lambda: None)
