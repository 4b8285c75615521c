"""What providers enforce about senders, against upstreams scripted with their real rules
(tests/providers.py): a device that sends as ``root@nas.local`` gets its mail through QQ,
163 and Microsoft 365 once the upstream's ``sender_rewrite`` is set; the author stays
reachable; DKIM is signed again for the new From domain (or dropped); bounces reach the
sender through a provider that refuses ``MAIL FROM:<>``; mail is routed by sender and by
login; our Received header can leave the client out."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage
from typing import Any

from tests.integration.test_dkim_signing import DkimHelpers
from tests.integration.test_relay import plain
from tests.providers import provider
from tests.upstreams import ca_file, wait_until

LOGIN = "me@qq.test"


def device_mail(sender: str = "root@nas.local", to: str = "friend@dest.test") -> bytes:
    """What a NAS or a cron job sends: made by Python's email package."""
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr(("NAS Überwachung", sender))
    msg["To"] = to
    msg["Subject"] = "Disk 3 is failing"
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="nas.local")
    msg.set_content("SMART reports 12 reallocated sectors.\n", charset="utf-8", cte="8bit")
    return msg.as_bytes(policy=email.policy.SMTP)


def upstream_entry(upstream: Any, login: str, **extra: Any) -> dict[str, Any]:
    return {"host": "localhost", "port": upstream.port, "tls": "starttls",
            "ca_file": ca_file(), "username": login, "password": "app-password", **extra}


def route_all(*upstreams: dict[str, Any], **delivery: Any) -> dict[str, Any]:
    return {
        "routes": [{"domains": ["*"], "transport": "provider"}],
        "transports": {"provider": {"type": "smarthost", "upstreams": list(upstreams)}},
        "delivery": {"retry_schedule": [1], "connect_timeout": 2, "command_timeout": 2,
                     **delivery},
    }


def parsed(content: bytes) -> Any:
    return email.message_from_bytes(content, policy=email.policy.default)


class SenderRewriteTests(DkimHelpers):
    async def test_qq_refuses_a_foreign_sender_and_the_mail_bounces(self) -> None:
        """The rule is real: without a rewrite the message fails for good (501)."""
        qq = self.aio_provider("qq", LOGIN)
        relay = await self.relay(**route_all(upstream_entry(qq, LOGIN)))
        await self.send(relay, ["friend@dest.test"], device_mail(), sender="root@nas.local")
        await wait_until(lambda: len(self.envelopes(relay, "failed")) == 2,
                         what="the failure, and its bounce's (QQ refuses <> too)")
        for failed in self.envelopes(relay, "failed"):
            self.assertIn("501 mail from address must be same as authorization user",
                          failed.recipients[0].last_reply)
        self.assertEqual(qq.messages, [])

    def aio_provider(self, name: str, login: str) -> Any:
        upstream = provider(name, login).start()
        self.addCleanup(upstream.stop)
        return upstream

    async def test_rewrite_to_the_login_passes_qq_and_163_and_keeps_the_author(self) -> None:
        for name, login in (("qq", LOGIN), ("163", "me@163.test")):
            upstream = self.aio_provider(name, login)
            relay = await self.relay(**route_all(upstream_entry(
                upstream, login, sender_rewrite={"address": "login"})))
            await self.send(relay, ["friend@dest.test"], device_mail(), sender="root@nas.local")
            await wait_until(lambda u=upstream: u.messages, what=f"delivery through {name}")
            got = upstream.messages[0]
            self.assertEqual(got.mail_from, login)
            message = parsed(got.content)
            self.assertEqual(email.utils.parseaddr(str(message["From"])),
                             ("NAS Überwachung", login))
            self.assertEqual(email.utils.parseaddr(str(message["Reply-To"]))[1],
                             "root@nas.local")
            self.assertIn("root@nas.local", str(message["X-Original-From"]))
            self.assertEqual(message.get_content().replace("\r\n", "\n"),
                             "SMART reports 12 reallocated sectors.\n")
            await relay.stop()

    async def test_microsoft_365_checks_the_header_from_too(self) -> None:
        login = "printer@contoso.test"
        m365 = self.aio_provider("m365", login)
        relay = await self.relay(**route_all(upstream_entry(
            m365, login, sender_rewrite={"address": "login", "header_from": False})))
        await self.send(relay, ["a@dest.test"], device_mail(), sender="root@nas.local")
        await wait_until(lambda: self.envelopes(relay, "failed"), what="SendAsDenied")
        self.assertIn("SendAsDeniedException",
                      self.envelopes(relay, "failed")[0].recipients[0].last_reply)
        await relay.stop()
        m365b = self.aio_provider("m365", login)
        relay = await self.relay(**route_all(upstream_entry(
            m365b, login, sender_rewrite={"address": "login"})))
        await self.send(relay, ["a@dest.test"], device_mail(), sender="root@nas.local")
        await wait_until(lambda: m365b.messages, what="delivery through Microsoft 365")
        self.assertEqual(email.utils.parseaddr(str(parsed(m365b.messages[0].content)["From"]))[1],
                         login)

    async def test_senders_in_verified_domains_are_left_alone(self) -> None:
        upstream = self.aio_provider("qq", LOGIN)
        relay = await self.relay(**route_all(upstream_entry(
            upstream, LOGIN, sender_rewrite={"address": "login", "domains": ["qq.test"]})))
        await self.send(relay, ["a@dest.test"], device_mail(LOGIN), sender=LOGIN)
        await wait_until(lambda: upstream.messages, what="delivery")
        message = parsed(upstream.messages[0].content)
        self.assertIsNone(message["X-Original-From"])
        self.assertIsNone(message["Reply-To"])

    async def test_dkim_is_signed_again_for_the_new_from_domain(self) -> None:
        old = self.keygen("nas", "rsa", domain="nas.local")
        new = [self.keygen("qq1", "rsa", domain="qq.test"),
               self.keygen("qq2", "ed25519", domain="qq.test")]
        dnsfunc = self.publish([old, *new])
        upstream = self.aio_provider("qq", LOGIN)
        relay = await self.relay(dkim=[old, *new], **route_all(upstream_entry(
            upstream, LOGIN, sender_rewrite={"address": "login"})))
        await self.send(relay, ["a@dest.test"], device_mail(), sender="root@nas.local")
        await wait_until(lambda: upstream.messages, what="delivery")
        content = upstream.messages[0].content
        signatures = parsed(content).get_all("DKIM-Signature")
        self.assertEqual(len(signatures), 2)  # the nas.local one is gone: it signed From
        self.assertTrue(all("d=qq.test" in " ".join(s.split()) for s in signatures))
        self.assertTrue(await self.verify(content, dnsfunc, 0))
        self.assertTrue(await self.verify(content, dnsfunc, 1))

    async def test_without_a_key_for_the_new_domain_our_signature_is_dropped(self) -> None:
        old = self.keygen("nas", "rsa", domain="nas.local")
        upstream = self.aio_provider("qq", LOGIN)
        relay = await self.relay(dkim=[old], **route_all(upstream_entry(
            upstream, LOGIN, sender_rewrite={"address": "login"})))
        await self.send(relay, ["a@dest.test"], device_mail(), sender="root@nas.local")
        await wait_until(lambda: upstream.messages, what="delivery")
        self.assertIsNone(parsed(upstream.messages[0].content)["DKIM-Signature"])
        self.assertIn("dkim=nas.local/nas", self.log_text())  # it was signed at acceptance


class BounceSenderTests(DkimHelpers):
    async def test_bounces_reach_the_sender_through_a_provider_refusing_null_sender(self
                                                                                   ) -> None:
        login = "me@163.test"
        netease = provider("163", login).start()
        self.addCleanup(netease.stop)
        netease.handler.rcpt_replies["nobody@dest.test"] = "550 User not found"
        relay = await self.relay(**route_all(upstream_entry(
            netease, login, sender_rewrite={"address": "login"}, bounce_sender=login)))
        await self.send(relay, ["nobody@dest.test"], device_mail(login), sender=login)
        await wait_until(lambda: netease.messages, what="the bounce delivered")
        await self.drained(relay)
        [bounce] = netease.messages
        self.assertEqual(bounce.mail_from, login)  # not <>, which 163 refuses
        self.assertEqual(bounce.rcpt_tos, [login])
        self.assertIn(b"multipart/report", bounce.content)
        self.assertIn("MAIL FROM:<>", " ".join(netease.handler.refusals) or "MAIL FROM:<>")

    async def test_a_bounce_that_fails_is_never_bounced_again(self) -> None:
        login = "me@163.test"
        netease = provider("163", login).start()
        self.addCleanup(netease.stop)
        netease.handler.rcpt_replies["gone@dest.test"] = "550 User not found"
        relay = await self.relay(**route_all(upstream_entry(netease, login, bounce_sender=login)))
        # The sender itself is undeliverable: its bounce fails too, and that is the end.
        await self.send(relay, ["gone@dest.test"], device_mail(login), sender="gone@dest.test")
        await wait_until(lambda: len(self.envelopes(relay, "failed")) == 2,
                         what="message and bounce failed")
        await self.drained(relay)
        self.assertEqual(relay.manager.counters["bounces"], 1)
        self.assertEqual(netease.messages, [])


class SenderRoutingTests(DkimHelpers):
    async def test_each_mailbox_goes_through_its_own_provider_login(self) -> None:
        alice_box, bob_box, default = [await self.scripted() for _ in range(3)]
        relay = await self.relay(
            routes=[{"senders": ["alice@home.test"], "transport": "alice"},
                    {"senders": ["*.office.test", "office.test"], "domains": ["*"],
                     "transport": "bob"},
                    {"domains": ["*"], "transport": "default"}],
            transports={"alice": {"type": "smarthost", "upstreams": [plain(alice_box.port)]},
                        "bob": {"type": "smarthost", "upstreams": [plain(bob_box.port)]},
                        "default": {"type": "smarthost",
                                    "upstreams": [plain(default.port)]}},
            delivery={"retry_schedule": [1]})
        await self.send(relay, ["x@dest.test"], device_mail("alice@home.test"),
                        sender="alice@home.test")
        await self.send(relay, ["x@dest.test"], device_mail("bob@mail.office.test"),
                        sender="bob@mail.office.test")
        await self.send(relay, ["x@dest.test"], device_mail("carol@home.test"),
                        sender="carol@home.test")
        await wait_until(lambda: alice_box.messages and bob_box.messages and default.messages,
                         what="three deliveries")
        self.assertEqual([m.mail_from for m in alice_box.messages], ["alice@home.test"])
        self.assertEqual([m.mail_from for m in bob_box.messages], ["bob@mail.office.test"])
        self.assertEqual([m.mail_from for m in default.messages], ["carol@home.test"])


class ReceivedPrivacyTests(DkimHelpers):
    async def test_anonymous_received_and_earlier_received_dropped(self) -> None:
        upstream = await self.scripted()
        relay = await self.relay(
            routes=[{"domains": ["*"], "transport": "out"}],
            transports={"out": {"type": "smarthost", "upstreams": [plain(upstream.port)],
                                "received": "anonymous", "strip_received": True}},
            delivery={"retry_schedule": [1]})
        inner = (b"Received: from laptop.internal (laptop.internal [192.168.7.21])\r\n"
                 b"\tby nas.internal; Mon, 1 Jan 2024 00:00:00 +0000\r\n")
        await self.send(relay, ["x@dest.test"], inner + device_mail())
        await wait_until(lambda: upstream.messages, what="delivery")
        head = upstream.messages[0].content.split(b"\r\n\r\n")[0]
        received = parsed(upstream.messages[0].content).get_all("Received")
        self.assertEqual(len(received), 1)
        self.assertTrue(received[0].startswith("by "), received[0])
        for leak in (b"127.0.0.1", b"192.168.7.21", b"laptop.internal", b"nas.internal"):
            self.assertNotIn(leak, head)

    async def test_full_received_by_default(self) -> None:
        upstream = await self.scripted()
        relay = await self.relay(routes=[{"domains": ["*"], "transport": "out"}],
                                 transports={"out": {"type": "smarthost",
                                                     "upstreams": [plain(upstream.port)]}},
                                 delivery={"retry_schedule": [1]})
        await self.send(relay, ["x@dest.test"], device_mail())
        await wait_until(lambda: upstream.messages, what="delivery")
        self.assertIn(b"[127.0.0.1]", upstream.messages[0].content.split(b"\r\n\r\n")[0])
