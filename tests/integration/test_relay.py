"""The relay against real SMTP peers on loopback: an aiosmtpd provider with STARTTLS and
AUTH (trustme certificates), scripted servers that fail on cue, and MX delivery through a
real DNS server (twisted.names) queried by dnspython."""

from __future__ import annotations

import email
import email.policy
import json
import os
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from relaymail.relay.client import WHOLE_BODY
from tests.dnszone import start_dns
from tests.helpers import free_port, send_mail, start_relay, without_trace
from tests.upstreams import AioUpstream, Script, ScriptedUpstream, ca_file, wait_until

# Lines that are a lone "." (the end-of-data marker if left unstuffed) fill 240 KB, so
# several 16 KiB chunk boundaries fall exactly on a line start; 8-bit text too.
TORTURE = (b"From: app@client.test\r\nTo: user@dest.test\r\nSubject: torture\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
           b"\r\n" + b".\r\n" * 80_000 + "caf\u00e9 \u4e2d\u6587\r\n".encode() + b"..x\r\n" * 999
           + b"last line\r\n")
SIMPLE = b"From: app@client.test\r\nSubject: hi\r\n\r\nhello\r\n"


def smarthost(*upstreams: dict[str, Any], **delivery: Any) -> dict[str, Any]:
    return {
        "routes": [{"domains": ["*"], "transport": "provider"}],
        "transports": {"provider": {"type": "smarthost", "upstreams": list(upstreams)}},
        "delivery": {"retry_schedule": [1], "connect_timeout": 2, "command_timeout": 2,
                     **delivery},
    }


def plain(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "tls": "none", **extra}


class RelayTestCase(TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        # Clients get their own threads: the reactor's pool runs the spool's commits.
        self.clients = ThreadPool(minthreads=0, maxthreads=32, name="smtp-clients")
        self.clients.start()
        self.addCleanup(self.clients.stop)

    async def relay(self, **sections: Any) -> Any:
        relay = await start_relay(self.dir, **sections)
        self.addCleanup(relay.stop)
        return relay

    async def scripted(self, scripts: Any = None) -> ScriptedUpstream:
        upstream = await ScriptedUpstream(scripts).start()
        self.addCleanup(upstream.stop)
        return upstream

    def aio(self, **kw: Any) -> AioUpstream:
        upstream = AioUpstream(**kw).start()
        self.addCleanup(upstream.stop)
        return upstream

    async def send(self, relay: Any, recipients: list[str], body: bytes = SIMPLE,
                   sender: str = "app@client.test") -> None:
        refused = await deferToThreadPool(reactor, self.clients, send_mail, relay.smtp_port,
                                          sender, recipients, body)
        self.assertEqual(refused, {})

    async def drained(self, relay: Any) -> None:
        await wait_until(lambda: not relay.manager.queued and not relay.manager.active,
                         what="the queue to drain")

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) + repr(e) for e in self.events)

    def envelopes(self, relay: Any, state: str) -> list[Any]:
        return list(relay.spool.load_state(state))


class ProviderTests(RelayTestCase):
    """A provider stand-in that requires STARTTLS and AUTH."""

    async def relay_torture(self, tls: str) -> tuple[Any, Any]:
        """Send the torture body through an authenticated upstream; return what it got."""
        upstream = self.aio(implicit=tls == "implicit")
        relay = await self.relay(**smarthost({
            "host": "localhost", "port": upstream.port, "tls": tls,
            "ca_file": ca_file(), "username": "relay", "password": "s3cret-pass"}))
        await self.send(relay, ["user@dest.test"], TORTURE)
        await wait_until(lambda: upstream.messages, what="delivery")
        await self.drained(relay)
        got = upstream.messages[0]
        self.assertEqual(without_trace(got.content), TORTURE)
        self.assertEqual(got.auth_user, "relay")
        return relay, got

    async def test_starttls_auth_delivers_byte_identical(self) -> None:
        relay, got = await self.relay_torture("starttls")
        self.assertEqual((got.mail_from, got.rcpt_tos), ("app@client.test", ["user@dest.test"]))
        self.assertTrue(got.tls)
        self.assertIn("BODY=8BITMIME", got.mail_options)
        self.assertIn(f"SIZE={len(got.content)}", got.mail_options)
        self.assertEqual(os.listdir(relay.spool.path("data")), [])
        self.assertRegex(self.log_text(), r"status=sent \(250 2\.0\.0 OK queued\)")
        self.assertRegex(self.log_text(), r"tls=TLSv1\.[23] ")

    async def test_bodies_around_the_one_write_size_arrive_byte_identical(self) -> None:
        """A stored body up to WHOLE_BODY goes out in one write, a larger one partly
        streamed: bodies of lone-"." lines cut at each offset on both sides of the size
        reach the upstream exactly."""
        upstream = self.aio(username=None)
        relay = await self.relay(**smarthost({
            "host": "127.0.0.1", "port": upstream.port, "tls": "opportunistic"}))

        def body_of(size: int) -> bytes:
            """Exactly ``size`` bytes, ending in lone-"." lines."""
            head = b"From: app@client.test\r\nSubject: %d\r\n\r\n" % size
            lines = (size - len(head) - 2) // 3
            filler = size - len(head) - 2 - 3 * lines
            return head + b"z" * filler + b"\r\n" + b".\r\n" * lines

        await self.send(relay, ["user@dest.test"], body_of(1000))  # to learn the trace size
        await wait_until(lambda: upstream.messages, what="delivery")
        probe = upstream.messages[0].content
        trace = len(probe) - len(without_trace(probe))
        bodies = [body_of(WHOLE_BODY - trace + delta) for delta in range(-3, 4)]
        for body in bodies:
            await self.send(relay, ["user@dest.test"], body)
        await wait_until(lambda: len(upstream.messages) == len(bodies) + 1, what="delivery")
        sizes = sorted(len(m.content) for m in upstream.messages[1:])
        self.assertLess(sizes[0], WHOLE_BODY)  # both sides of the cut were sent
        self.assertGreater(sizes[-1], WHOLE_BODY + 1)
        self.assertEqual([len(b) for b in bodies], [WHOLE_BODY - trace + d for d in range(-3, 4)])
        # Deliveries run concurrently: match each message by its subject, not by order.
        got = {m.content.split(b"Subject: ")[1][:5]: without_trace(m.content)
               for m in upstream.messages[1:]}
        self.assertEqual(got, {b.split(b"Subject: ")[1][:5]: b for b in bodies})

    async def test_implicit_tls_465_style(self) -> None:
        await self.relay_torture("implicit")

    async def test_opportunistic_tls_unverified_and_plaintext_fallback(self) -> None:
        # A certificate for another name is fine for opportunistic TLS (nothing verified).
        upstream = self.aio(username=None, cert_names=("wrong.example",))
        relay = await self.relay(**smarthost({
            "host": "127.0.0.1", "port": upstream.port, "tls": "opportunistic"}))
        await self.send(relay, ["user@dest.test"])
        await wait_until(lambda: upstream.messages, what="delivery")
        self.assertTrue(upstream.messages[0].tls)
        # A server whose TLS handshake fails gets the mail in plaintext (RFC 7435). Its
        # garbage right after "220" must not be read as SMTP replies (stock client does).
        broken = await self.scripted(Script(extensions=("STARTTLS", "PIPELINING")))
        relay2 = await start_relay(tempfile.mkdtemp(), **smarthost(
            {"host": "127.0.0.1", "port": broken.port, "tls": "opportunistic"}))
        try:
            await self.send(relay2, ["user@dest.test"])
            await wait_until(lambda: broken.messages, what="plaintext delivery")
        finally:
            await relay2.stop()
        self.assertIn("STARTTLS", broken.sessions[0].commands)
        self.assertNotIn("STARTTLS", broken.sessions[-1].commands)

    async def test_credentials_never_fall_back_to_plaintext(self) -> None:
        """M5: an opportunistic upstream with a login (allowed only with
        allow_insecure_auth) whose TLS handshake fails is NOT retried in plaintext with the
        password, and one that does not offer STARTTLS gets no AUTH: the mail moves on to
        the next upstream instead."""
        broken = await self.scripted(Script(extensions=("STARTTLS", "AUTH PLAIN LOGIN")))
        stripped = await self.scripted(Script(extensions=("PIPELINING", "AUTH PLAIN LOGIN")))
        good = await self.scripted()
        secret = {"username": "relay", "password": "s3cret-pass", "allow_insecure_auth": True}
        relay = await self.relay(**smarthost(
            {"host": "127.0.0.1", "port": broken.port, "tls": "opportunistic", **secret},
            {"host": "127.0.0.1", "port": stripped.port, "tls": "opportunistic", **secret},
            plain(good.port)))
        await self.send(relay, ["user@dest.test"])
        await wait_until(lambda: good.messages, what="delivery through the third upstream")
        await self.drained(relay)
        self.assertTrue(broken.sessions and stripped.sessions)
        for session in broken.sessions:  # every session tried TLS; none went on in clear
            self.assertIn("STARTTLS", session.commands)
        for session in (*broken.sessions, *stripped.sessions):
            self.assertFalse([c for c in session.commands if c.upper().startswith(
                ("AUTH", "MAIL"))], session.commands)
        self.assertEqual(broken.messages + stripped.messages, [])

    async def test_wrong_password_defers_and_is_never_shown(self) -> None:
        upstream = self.aio(password="the-right-one")
        secret = "Wr0ng-Secret-Value"
        relay = await self.relay(**smarthost({
            "host": "localhost", "port": upstream.port, "tls": "starttls",
            "ca_file": ca_file(), "username": "relay", "password": secret}))
        await self.send(relay, ["user@dest.test"])
        await wait_until(lambda: relay.manager.counters["deferred"], what="a deferral")
        [envelope] = relay.manager.queued.values()
        self.assertIn("auth", envelope.recipients[0].last_reply)
        self.assertIn("535", envelope.recipients[0].last_reply)
        self.assertEqual(upstream.messages, [])
        await wait_until(lambda: self.envelopes(relay, "queue")[0].attempts, what="save")
        stored = json.dumps([e.to_json().decode() for e in self.envelopes(relay, "queue")])
        import base64
        for shown in (self.log_text(), stored, repr(relay.manager.health.snapshot())):
            self.assertNotIn(secret, shown)
            self.assertNotIn(base64.b64encode(f"\0relay\0{secret}".encode()).decode(), shown)

    async def test_certificate_for_another_name_is_refused(self) -> None:
        upstream = self.aio(cert_names=("wrong.example",))
        relay = await self.relay(**smarthost({
            "host": "localhost", "port": upstream.port, "tls": "starttls",
            "ca_file": ca_file(), "username": "relay", "password": "s3cret-pass"}))
        await self.send(relay, ["user@dest.test"])
        await wait_until(lambda: relay.manager.counters["deferred"], what="a deferral")
        [envelope] = relay.manager.queued.values()
        self.assertIn("tls", envelope.recipients[0].last_reply)
        self.assertEqual(upstream.messages, [])

    async def test_failover_from_refused_to_second_upstream(self) -> None:
        upstream = self.aio()
        relay = await self.relay(**smarthost(
            plain(free_port()),
            {"host": "localhost", "port": upstream.port, "tls": "starttls",
             "ca_file": ca_file(), "username": "relay", "password": "s3cret-pass"}))
        await self.send(relay, ["user@dest.test"])
        await wait_until(lambda: upstream.messages, what="delivery")
        await self.drained(relay)
        health = {h["upstream"]: h for h in relay.manager.health.snapshot()}
        first = health[f"127.0.0.1:{relay_first_port(relay)}"]
        self.assertEqual(first["consecutive_failures"], 1)
        self.assertIn("connect", first["last_error"])
        self.assertEqual(health[f"localhost:{upstream.port}"]["messages_relayed"], 1)


def relay_first_port(relay: Any) -> int:
    return relay.manager.transports["provider"].targets[0].port


class ScriptedTests(RelayTestCase):
    """Servers that refuse, throttle, drop and stall."""

    async def test_partial_failure_bounces_only_the_failed_recipient(self) -> None:
        upstream = await self.scripted(Script(rcpt={"bad@dest.test": "550 5.1.1 no such user"}))
        relay = await self.relay(**smarthost(plain(upstream.port)))
        await self.send(relay, ["good@dest.test", "bad@dest.test"])
        await wait_until(lambda: len(upstream.messages) == 2, what="message and bounce")
        await self.drained(relay)
        original, bounce = upstream.messages
        self.assertEqual(original.rcpt_tos, ["good@dest.test"])
        self.assertEqual((bounce.mail_from, bounce.rcpt_tos), ("", ["app@client.test"]))
        report = email.message_from_bytes(bounce.content, policy=email.policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        parts = list(report.iter_parts())
        status = parts[1]
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        blocks = status.get_payload()
        self.assertEqual(blocks[1]["Final-Recipient"], "rfc822; bad@dest.test")
        self.assertEqual(blocks[1]["Status"], "5.1.1")
        self.assertIn("no such user", blocks[1]["Diagnostic-Code"])
        self.assertIn(b"Subject: hi", parts[2].get_payload(decode=True) or
                      parts[2].as_bytes())
        [failed] = self.envelopes(relay, "failed")
        self.assertEqual({r.address: r.state for r in failed.recipients},
                         {"good@dest.test": "delivered", "bad@dest.test": "failed"})

    async def test_temporary_rcpt_failure_retries_only_that_recipient(self) -> None:
        upstream = await self.scripted(
            Script(rcpt_first_time={"slow@dest.test": "451 4.7.1 try later"}))
        relay = await self.relay(**smarthost(plain(upstream.port)))
        await self.send(relay, ["fast@dest.test", "slow@dest.test"])
        await wait_until(lambda: len(upstream.messages) == 2, what="both deliveries")
        await self.drained(relay)
        self.assertEqual([m.rcpt_tos for m in upstream.messages],
                         [["fast@dest.test"], ["slow@dest.test"]])

    async def test_throttling_drop_and_stall_fail_over(self) -> None:
        throttled = await self.scripted(Script(
            mail="454 4.7.0 Throttling failure: Maximum sending rate exceeded."))
        dropping = await self.scripted(Script(drop_in_data=True))
        stalling = await self.scripted(Script(stall_on="END"))
        good = await self.scripted()
        for first in (throttled, dropping, stalling):
            relay = await start_relay(tempfile.mkdtemp(),
                                      **smarthost(plain(first.port), plain(good.port)))
            try:
                before = len(good.messages)
                await self.send(relay, ["user@dest.test"])
                await wait_until(lambda b=before: len(good.messages) == b + 1,
                                 what="failover delivery")
                await self.drained(relay)
            finally:
                await relay.stop()
        self.assertEqual(throttled.messages + dropping.messages, [])
        # The stalled server got the whole message but never said 250: it was "in
        # flight"; the relay rightly re-sent it elsewhere (at-least-once, RFC 1047).
        self.assertEqual(len(good.messages), 3)

    async def test_old_server_helo_only_and_size_limit(self) -> None:
        helo_only = await self.scripted(Script(extensions=None))
        relay = await self.relay(**smarthost(plain(helo_only.port)))
        await self.send(relay, ["a@dest.test", "b@dest.test"], TORTURE)
        await wait_until(lambda: helo_only.messages, what="delivery over HELO")
        self.assertEqual(helo_only.messages[0].rcpt_tos, ["a@dest.test", "b@dest.test"])
        self.assertEqual(without_trace(helo_only.messages[0].content), TORTURE)
        self.assertIn("HELO relay.test", helo_only.sessions[0].commands)
        await relay.stop()
        small = await self.scripted(Script(extensions=("SIZE 1000",)))
        relay = await start_relay(tempfile.mkdtemp(), **smarthost(plain(small.port),
                                                                  bounces=False))
        try:
            await self.send(relay, ["a@dest.test"], TORTURE)
            await wait_until(lambda: relay.manager.counters["failed"], what="a size refusal")
        finally:
            await relay.stop()
        [failed] = self.envelopes(relay, "failed")
        self.assertTrue(failed.recipients[0].last_reply.startswith("552 5.3.4"))
        self.assertFalse(any(c.startswith("MAIL") for c in small.sessions[0].commands))

    async def test_banner_421_then_retry_delivers(self) -> None:
        upstream = await self.scripted(
            lambda n: Script(banner="421 4.3.2 busy") if n == 0 else Script())
        relay = await self.relay(**smarthost(plain(upstream.port)))
        await self.send(relay, ["user@dest.test"])
        await wait_until(lambda: upstream.messages, what="delivery after retry")
        await self.drained(relay)
        self.assertGreaterEqual(len(upstream.sessions), 2)

    async def test_many_messages_reuse_few_connections(self) -> None:
        upstream = await self.scripted()
        relay = await self.relay(**smarthost(plain(upstream.port),
                                             per_destination_concurrency=2))
        await defer.gatherResults([
            defer.ensureDeferred(self.send(relay, [f"user{i}@dest.test"])) for i in range(30)])
        await wait_until(lambda: len(upstream.messages) == 30, what="30 deliveries")
        await self.drained(relay)
        self.assertLessEqual(len(upstream.sessions), 4)
        self.assertEqual(relay.manager.pool.connections_opened, len(upstream.sessions))

    async def test_restart_in_the_middle_of_a_queue_delivers_each_once(self) -> None:
        upstream = await self.scripted()
        port = free_port()
        sections = smarthost(plain(port))
        relay = await start_relay(self.dir, **sections)
        for i in range(5):
            await self.send(relay, [f"a{i}@dest.test", f"b{i}@dest.test"])
        await wait_until(lambda: relay.manager.counters["deferred"] >= 10, what="deferrals")
        await relay.stop()
        sections["transports"]["provider"]["upstreams"] = [plain(upstream.port)]
        relay = await self.relay(**sections)
        await wait_until(lambda: len(upstream.messages) == 5, what="5 deliveries")
        await self.drained(relay)
        delivered = sorted(r for m in upstream.messages for r in m.rcpt_tos)
        self.assertEqual(delivered, sorted([f"a{i}@dest.test" for i in range(5)]
                                           + [f"b{i}@dest.test" for i in range(5)]))


# ---------------------------------------------------------------------- MX delivery


class MXTests(RelayTestCase):
    async def test_mx_preference_null_mx_nxdomain_and_implicit_mx(self) -> None:
        upstream = await self.scripted()
        port = start_dns({
            (b"mx.test", dns.MX): [dns.Record_MX(20, b"mx2.mx.test"),
                                   dns.Record_MX(10, b"mx1.mx.test")],
            (b"mx1.mx.test", dns.A): [dns.Record_A("127.0.0.2")],  # nothing listens there
            (b"mx2.mx.test", dns.A): [dns.Record_A("127.0.0.1")],
            (b"null.test", dns.MX): [dns.Record_MX(0, b"")],
            (b"implicit.test", dns.A): [dns.Record_A("127.0.0.1")],
        })
        self.addCleanup(port.stopListening)
        relay = await self.relay(
            routes=[{"domains": ["*"], "transport": "direct"}],
            transports={"direct": {"type": "mx", "port": upstream.port,
                                   "nameservers": [f"127.0.0.1:{port.getHost().port}"]}},
            delivery={"retry_schedule": [1], "connect_timeout": 2, "command_timeout": 2})
        await self.send(relay, ["a@mx.test", "b@implicit.test", "c@null.test", "d@nx.test"],
                        sender="sender@mx.test")
        await wait_until(lambda: len(upstream.messages) == 3, what="2 deliveries, 1 bounce")
        await self.drained(relay)
        delivered = sorted(r for m in upstream.messages if m.mail_from for r in m.rcpt_tos)
        self.assertEqual(delivered, ["a@mx.test", "b@implicit.test"])
        [bounce] = [m for m in upstream.messages if not m.mail_from]
        self.assertEqual(bounce.rcpt_tos, ["sender@mx.test"])
        self.assertIn(b"Status: 5.1.10", bounce.content)
        self.assertIn(b"Status: 5.1.2", bounce.content)
        [failed] = self.envelopes(relay, "failed")
        replies = {r.address: r.last_reply for r in failed.recipients}
        self.assertTrue(replies["c@null.test"].startswith("556 5.1.10"))
        relays = {r.address: r.transport for r in failed.recipients}
        self.assertIn("mx2.mx.test[127.0.0.1]", relays["a@mx.test"] or "")
        self.assertIn("a@mx.test", self.log_text())
