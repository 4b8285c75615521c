"""Webhooks and the suppression list on a running relay, over real sockets: a real HTTP
receiver (Python's http.server, tests.webhookreceiver) gets signed event documents for
accepted, delivered, bounced and suppressed mail; a 503 and a timeout are retried; a dead
endpoint slows neither SMTP nor delivery; a hard bounce suppresses the recipient at RCPT."""

from __future__ import annotations

import contextlib
import json
import os
import smtplib
import time
from dataclasses import replace
from email.message import EmailMessage
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool

from relaymail.events.signature import HEADER, verify
from tests.accountsclient import Api
from tests.helpers import free_port
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import Script, wait_until
from tests.webhookreceiver import WebhookReceiver, independent_verify

SECRET = "s3cret-webhook-key-0123456789"


def message(subject: str = "order 1") -> bytes:
    msg = EmailMessage()
    msg["From"] = "shop@client.test"
    msg["To"] = "a@dest.test"
    msg["Subject"] = subject
    msg["Message-ID"] = "<order-1.abc@client.test>"
    msg.set_content("Your order shipped.\n")
    msg.add_alternative("<p>Your order <b>shipped</b>.</p>", subtype="html")
    return msg.as_bytes().replace(b"\n", b"\r\n")


class WebhookTests(RelayTestCase):
    def receiver(self, default: Any = 200) -> WebhookReceiver:
        receiver = WebhookReceiver(default).start()
        self.addCleanup(receiver.stop)
        return receiver

    async def start(self, upstream_port: int, *hooks: dict[str, Any], **extra: Any) -> Any:
        web = free_port()
        relay = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1"},
            webhooks=[{"secret": SECRET, "timeout": 1, **h} for h in hooks],
            **smarthost(plain(upstream_port), bounces=False), **extra)
        self.base = f"http://127.0.0.1:{web}"
        self.token = relay.service.getServiceNamed("spool").control_token
        return relay

    def sender_of(self, relay: Any, name: str) -> Any:
        return relay.service.getServiceNamed("events").senders[name]

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await Api(self.base, self.token).call(method, path, body)

    async def submit(self, relay: Any, recipients: list[str], body: bytes) -> dict[str, Any]:
        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
                return s.sendmail("shop@client.test", recipients, body)
        return await deferToThreadPool(reactor, self.clients, send)

    async def test_signed_events_hard_bounce_suppresses(self) -> None:
        receiver = self.receiver()
        upstream = await self.scripted(Script(rcpt={"gone@dest.test": "550 5.1.1 no such user"}))
        relay = await self.start(upstream.port, {"url": receiver.url, "name": "app"})
        refused = await self.submit(relay, ["a@dest.test", "gone@dest.test"], message())
        self.assertEqual(refused, {})
        await wait_until(lambda: len(receiver.events()) >= 4, what="4 events")
        docs = receiver.events()
        self.assertEqual(sorted((d["event"], d["recipient"]) for d in docs),
                         [("accepted", "a@dest.test"), ("accepted", "gone@dest.test"),
                          ("bounced", "gone@dest.test"), ("delivered", "a@dest.test")])
        for r in receiver.received:
            signature = r.headers[HEADER]
            self.assertTrue(verify(SECRET, signature, r.body, time.time()))
            self.assertTrue(independent_verify(SECRET, signature, r.body))
            self.assertFalse(independent_verify(SECRET, signature, r.body + b" "))
            self.assertFalse(verify("another-secret-0123456", signature, r.body, time.time()))
            self.assertEqual(r.headers["Content-Type"], "application/json")
            self.assertEqual(r.headers["X-Relaymail-Event-Id"], r.json()["id"])
        bounced = next(d for d in docs if d["event"] == "bounced")
        qid = bounced["queue_id"]
        self.assertEqual(bounced["reply"], "550 5.1.1 no such user")
        self.assertEqual(bounced["enhanced_code"], "5.1.1")
        self.assertEqual(bounced["code"], 550)
        self.assertEqual(bounced["message_id"], "<order-1.abc@client.test>")
        self.assertEqual(bounced["sender"], "shop@client.test")
        self.assertEqual(bounced["upstream"], f"127.0.0.1:{upstream.port}")
        self.assertEqual(bounced["attempt"], 1)
        self.assertTrue(bounced["timestamp"].endswith("Z"))
        delivered = next(d for d in docs if d["event"] == "delivered")
        self.assertEqual((delivered["queue_id"], delivered["code"], delivered["transport"]),
                         (qid, 250, "provider"))
        self.assertEqual(len({d["id"] for d in docs}), 4)

        # The hard bounce put gone@ on the list: refused at RCPT, with an event.
        await wait_until(lambda: "gone@dest.test" in relay.service.context.suppression,
                         what="the suppression")
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as refusal:
            await self.submit(relay, ["GONE@dest.test"], message("again"))
        code, text = refusal.exception.recipients["GONE@dest.test"]
        self.assertEqual(code, 550)
        self.assertIn(b"5.1.1 <GONE@dest.test>: Recipient address suppressed after a hard "
                      b"bounce", text)
        await wait_until(lambda: any(d["event"] == "suppressed" for d in receiver.events()),
                         what="the suppressed event")
        doc = next(d for d in receiver.events() if d["event"] == "suppressed")
        self.assertEqual((doc["recipient"], doc["code"], doc["enhanced_code"]),
                         ("GONE@dest.test", 550, "5.1.1"))
        code, listed = await self.api("GET", "/api/suppressions?q=gone")
        self.assertEqual(code, 200)
        self.assertEqual([(e["address"], e["source"], e["queue_id"]) for e in listed["items"]],
                         [("gone@dest.test", "bounce", qid)])
        # The send API refuses it the same way, naming it.
        code, answer = await self.api("POST", "/api/send", {
            "from": "shop@client.test", "to": ["ok@dest.test", "gone@dest.test"],
            "subject": "s", "text": "t"})
        self.assertEqual((code, answer["code"], answer["suppressed"]),
                         (422, "recipient_suppressed", ["gone@dest.test"]))
        # Removed, it is accepted again.
        code, _ = await self.api("DELETE", "/api/suppressions/gone@dest.test")
        self.assertEqual(code, 200)
        self.assertEqual(await self.submit(relay, ["gone@dest.test"], message("3")), {})

    async def test_5xx_and_timeout_are_retried_then_delivered(self) -> None:
        receiver = self.receiver()
        receiver.answers = [503, "hang", 500]
        upstream = await self.scripted()
        relay = await self.start(upstream.port, {"url": receiver.url, "name": "app",
                                                 "events": ["delivered"]})
        self.sender_of(relay, "app").schedule = (0.2,)
        await self.submit(relay, ["a@dest.test"], message())
        await wait_until(lambda: len(receiver.received) == 4, what="4 attempts")
        await wait_until(lambda: self.sender_of(relay, "app").delivered == 1,
                         what="the delivery recorded")
        self.assertEqual([r.answered for r in receiver.received], [503, "hang", 500, 200])
        self.assertEqual(len({r.body for r in receiver.received}), 1)  # the same document
        self.assertEqual(len({r.json()["id"] for r in receiver.received}), 1)
        code, page = await self.api("GET", "/api/webhooks/deliveries")
        self.assertEqual(code, 200)
        [row] = page["items"]
        self.assertEqual((row["state"], row["attempts"], row["endpoint"]),
                         ("delivered", 4, "app"))
        code, hooks = await self.api("GET", "/api/webhooks")
        [hook] = hooks["endpoints"]
        self.assertEqual((hook["delivered"], hook["errors"], hook["backlog"]), (1, 3, 0))
        self.assertNotIn("secret", json.dumps(hooks))
        self.assertEqual(hook["last_error"], "HTTP 500 Internal Server Error")
        code, metrics = await self.api("GET", "/metrics")
        self.assertIn(b'relaymail_webhook_events_total{endpoint="app",result="delivered"} 1.0',
                      metrics)
        self.assertIn(b'relaymail_webhook_attempt_errors_total{endpoint="app"} 3.0', metrics)
        self.assertIn(b'relaymail_webhook_backlog{endpoint="app"} 0.0', metrics)
        self.assertIn("attempt 2 failed (no answer within 1 s)", self.log_text())

    async def test_given_up_after_retry_for_then_retried_from_the_api(self) -> None:
        receiver = self.receiver(default=503)
        upstream = await self.scripted()
        relay = await self.start(upstream.port, {"url": receiver.url, "name": "app",
                                                 "events": ["accepted"]})
        sender = self.sender_of(relay, "app")
        sender.schedule = (0.2,)
        sender.endpoint = replace(sender.endpoint, retry_for=0.5)
        await self.submit(relay, ["a@dest.test"], message())
        await wait_until(lambda: sender.failed == 1, what="given up")
        code, page = await self.api("GET", "/api/webhooks/deliveries?state=failed")
        [row] = page["items"]
        self.assertEqual(row["last_error"], "HTTP 503 Service Unavailable")
        self.assertEqual(row["body"]["event"], "accepted")
        receiver.default = 200
        code, answer = await self.api("POST", f"/api/webhooks/deliveries/{row['id']}/retry")
        self.assertEqual(code, 200)
        await wait_until(lambda: sender.delivered == 1, what="sent again")
        code, answer = await self.api("POST", "/api/webhooks/deliveries/999999/retry")
        self.assertEqual((code, answer["code"]), (404, "webhook_no_delivery"))

    async def test_dead_endpoint_slows_nothing_and_backlog_is_bounded(self) -> None:
        dead = self.receiver(default="hang")
        live = self.receiver()
        upstream = await self.scripted()
        relay = await self.start(
            upstream.port,
            {"url": dead.url, "name": "dead", "max_backlog": 10, "concurrency": 2},
            {"url": live.url, "name": "live", "events": ["delivered"]})
        started = time.monotonic()
        for i in range(30):
            await self.submit(relay, [f"r{i}@dest.test"], message(f"m{i}"))
        await wait_until(lambda: relay.manager.counters["delivered"] == 30, what="30 sent")
        took = time.monotonic() - started
        await wait_until(lambda: len(live.events()) == 30, what="the live endpoint's 30")
        dead_sender = self.sender_of(relay, "dead")
        self.assertLessEqual(dead_sender.backlog, 10)
        self.assertLessEqual(dead_sender.requests, 2)
        self.assertGreater(relay.service.getServiceNamed("events").dropped, 0)
        self.assertLess(took, 20, "SMTP and delivery waited for the dead endpoint")
        _code, page = await self.api("GET", "/api/webhooks/deliveries?state=failed&endpoint=dead")
        self.assertGreater(page["total"], 0)
        self.assertEqual(page["items"][0]["last_error"], "backlog full: not sent")

    async def test_filters_by_sender_domain_and_credential(self) -> None:
        receiver = self.receiver()
        upstream = await self.scripted()
        relay = await self.start(upstream.port,
                                 {"url": receiver.url, "name": "other",
                                  "sender_domains": ["other.test"]},
                                 {"url": receiver.url, "name": "mine",
                                  "sender_domains": ["*.client.test", "client.test"],
                                  "events": ["delivered"]})
        await self.submit(relay, ["a@dest.test"], message())
        await wait_until(lambda: len(receiver.received) >= 1, what="an event")
        await self.drained(relay)
        await wait_until(lambda: self.sender_of(relay, "mine").delivered == 1, what="mine")
        self.assertEqual(self.sender_of(relay, "other").delivered, 0)
        self.assertEqual([d["event"] for d in receiver.events()], ["delivered"])

    async def test_a_bounce_that_bounces_suppresses_the_sender(self) -> None:
        """Our bounce to shop@ is refused (a 5xx without an enhanced code): shop@ is
        suppressed, and the next bounce to it is not sent."""
        receiver = self.receiver()
        upstream = await self.scripted(Script(rcpt={
            "gone@dest.test": "550 5.1.1 no such user",
            "other@dest.test": "550 5.1.1 no such user",
            "shop@client.test": "550 mailbox unavailable"}))
        web = free_port()
        relay = await self.relay(
            web={"enabled": True, "endpoint": f"tcp:{web}:interface=127.0.0.1"},
            webhooks=[{"url": receiver.url, "secret": SECRET, "events": ["bounced"]}],
            **smarthost(plain(upstream.port)))
        await self.submit(relay, ["gone@dest.test"], message())
        suppression = relay.service.context.suppression
        await wait_until(lambda: "shop@client.test" in suppression, what="sender suppressed")
        await wait_until(lambda: any(d["sender"] == "" for d in receiver.events()),
                         what="the bounce's own bounced event")
        bounces = [d for d in receiver.events() if d["sender"] == ""]
        self.assertEqual(bounces[0]["recipient"], "shop@client.test")
        self.assertEqual(relay.manager.counters["bounces"], 1)
        # gone@ is suppressed too; a new bounce for shop@ (another address failing) is not
        # queued: the second message's failure makes no bounce.
        await self.submit(relay, ["other@dest.test"], message("2"))
        await wait_until(lambda: "other@dest.test" in suppression, what="other suppressed")
        await self.drained(relay)
        self.assertEqual(relay.manager.counters["bounces"], 1)
        self.assertIn("no non-delivery notification: <shop@client.test> is suppressed",
                      self.log_text())

    async def test_stopping_mid_delivery_keeps_the_last_events(self) -> None:
        """The manager finishes its attempts before the outbox closes: the attempt cut
        short by the stop is recorded as deferred, and the stop ends."""
        import sqlite3

        receiver = self.receiver(default=503)  # nothing leaves the outbox
        upstream = await self.scripted(Script(stall_on="DATA"))
        relay = await self.start(upstream.port, {"url": receiver.url, "name": "app",
                                                 "events": ["deferred"]})
        await self.submit(relay, ["a@dest.test"], message())
        await wait_until(lambda: bool(relay.manager.active), what="an attempt in progress")
        await relay.stop()
        with sqlite3.connect(os.path.join(self.dir, "spool", "webhooks.db")) as db:
            rows = db.execute("SELECT event, state FROM deliveries").fetchall()
        self.assertEqual(rows, [("deferred", "pending")])

    async def test_endless_headers_are_cut_off(self) -> None:
        """An endpoint that answers 200 and then header lines without end: the connection
        is aborted after 1 MiB (Twisted bounds a line, not their number), long before the
        timeout, and the process does not grow with it."""
        import socket
        import threading

        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        sent = [0]

        def serve() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = server.accept()
                    with conn, contextlib.suppress(OSError):
                        conn.recv(65536)
                        conn.sendall(b"HTTP/1.1 200 OK\r\n")
                        line = b"X-Flood: " + b"a" * 8000 + b"\r\n"
                        while sent[0] < 200_000_000:
                            conn.sendall(line)
                            sent[0] += len(line)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(server.close)
        upstream = await self.scripted()
        port = server.getsockname()[1]
        relay = await self.start(upstream.port, {"url": f"http://127.0.0.1:{port}/",
                                                 "name": "flood", "events": ["accepted"],
                                                 "timeout": 30})
        sender = self.sender_of(relay, "flood")
        sender.schedule = (60.0,)
        before = resident_kib()
        started = time.monotonic()
        await self.submit(relay, ["a@dest.test"], message())
        await wait_until(lambda: sender.errors >= 1, seconds=20, what="the attempt cut off")
        self.assertLess(time.monotonic() - started, 10)
        self.assertLess(sent[0], 50_000_000)
        self.assertLess(resident_kib() - before, 50_000)
        self.assertEqual(sender.delivered, 0)

    async def test_batches_are_signed_arrays_retried_whole(self) -> None:
        receiver = self.receiver()
        receiver.answers = [503]
        upstream = await self.scripted()
        relay = await self.start(upstream.port, {"url": receiver.url, "name": "batched",
                                                 "events": ["accepted"], "batch_size": 50,
                                                 "concurrency": 1})
        sender = self.sender_of(relay, "batched")
        sender.schedule = (0.3,)
        recipients = [f"r{i}@dest.test" for i in range(30)]
        await self.submit(relay, recipients, message())
        await wait_until(lambda: sender.delivered == 30, what="30 events delivered")
        posts = [r for r in receiver.received if r.answered == 200]
        arrays = [r.json() for r in posts]
        self.assertTrue(all(isinstance(a, list) for a in arrays))
        self.assertEqual(sorted(d["recipient"] for a in arrays for d in a), sorted(recipients))
        self.assertLess(len(posts), 30)  # batched, not one POST each
        failed_first = receiver.received[0]
        self.assertEqual(failed_first.answered, 503)
        for r in receiver.received:
            self.assertTrue(independent_verify(SECRET, r.headers[HEADER], r.body))
            self.assertEqual(r.headers["X-Relaymail-Events"], str(len(r.json())))
            self.assertNotIn("X-Relaymail-Event-Id", r.headers)
        retried = {d["id"] for d in failed_first.json()}
        self.assertLessEqual(retried, {d["id"] for a in arrays for d in a})

    async def test_a_connection_the_endpoint_closed_is_not_a_failure(self) -> None:
        """An endpoint that closes each kept-alive connection after answering (HTTP/1.1
        without "Connection: close"): the next POST finds it closed and goes again at once
        on a new one, not ten seconds later as a failed attempt."""
        receiver = WebhookReceiver(rude=True).start()
        self.addCleanup(receiver.stop)
        upstream = await self.scripted()
        relay = await self.start(upstream.port, {"url": receiver.url, "name": "rude",
                                                 "events": ["accepted"], "concurrency": 2})
        sender = self.sender_of(relay, "rude")
        for i in range(4):
            await self.submit(relay, [f"a{i}@dest.test", f"b{i}@dest.test"], message())
        await wait_until(lambda: sender.delivered == 8, what="8 events delivered")
        self.assertEqual(sender.errors, 0)
        self.assertNotIn("Starting factory _HTTP11ClientFactory", self.log_text())


def resident_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_recorders_stop_only_after_the_rest_has_stopped() -> None:
    """RelaymailService: the history, events and archive stop once the relay manager's own
    stop is done (a MultiService would stop them at the same time)."""
    from twisted.application.service import Service
    from twisted.internet.defer import Deferred

    from relaymail.service import RelaymailService

    calls: list[str] = []
    manager_done: Deferred = Deferred()

    class Manager(Service):
        def stopService(self) -> Deferred:
            calls.append("manager")
            return manager_done

    class Recorder(Service):
        def stopService(self) -> None:
            calls.append("recorder")

    top = RelaymailService()
    recorder = Recorder()
    recorder.setServiceParent(top)
    top.recorders.append(recorder)
    Manager().setServiceParent(top)
    top.startService()
    stopped = top.stopService()
    assert calls == ["manager"] and not stopped.called
    manager_done.callback(None)
    assert calls == ["manager", "recorder"] and stopped.called
