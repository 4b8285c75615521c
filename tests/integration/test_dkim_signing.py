"""DKIM at acceptance, end to end: mail submitted over SMTP is signed once, relayed, and the
copy the upstream receives verifies with dkimpy against keys published by a real DNS server
on loopback, for RSA and Ed25519, small and spilled (> 256 KiB) bodies, 8-bit and CRLF edges."""

from __future__ import annotations

import os
from typing import Any

import dkim
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool

from relaymail.cli import main
from tests.dnszone import dkimpy_dnsfunc, start_dns, txt
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import wait_until

HEADERS = (b"From: \"Caf\xc3\xa9\" <app@example.com>\r\nTo: user@dest.test\r\n"
           b"Subject:  signed   at   acceptance\r\nMessage-ID: <1@example.com>\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n")
# Trailing whitespace, a lone dot, a bare LF (normalized to CRLF before hashing), 8-bit text
# and trailing empty lines: each one a way to get the body hash wrong.
EDGY_BODY = b"caf\xc3\xa9 \t \r\n.\r\nbare\nlf\r\n..dots\r\n\r\n\r\n"


class DkimHelpers(RelayTestCase):
    """Keys made by ``relaymail dkim keygen``, published by a loopback DNS server, and
    dkimpy's verdict on a message."""

    def keygen(self, selector: str, algorithm: str, domain: str = "example.com") -> dict:
        path = os.path.join(self.dir, f"{selector}.key")
        assert main(["dkim", "keygen", "--domain", domain, "--selector", selector,
                     "--algorithm", algorithm, "--output", path]) == 0
        return {"domain": domain, "selector": selector, "private_key": path,
                "algorithm": "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"}

    def publish(self, entries: list[dict]) -> Any:
        """Serve each key's TXT record, as written by keygen, from a loopback DNS server."""
        from relaymail.policy.dkim import build_signer

        signer = build_signer(entries, "relay.json", reactor.seconds)
        assert signer is not None
        zone = {}
        for keys in signer.by_domain.values():
            for key in keys:
                zone[(f"{key.selector}._domainkey.{key.domain}".encode(), 16)] = \
                    [txt(key.dns_record())]
        port = start_dns(zone)
        self.addCleanup(port.stopListening)
        return dkimpy_dnsfunc(port.getHost().port)

    async def relay_signed(self, entries: list[dict], body: bytes,
                           headers: bytes = HEADERS) -> tuple[bytes, Any]:
        upstream = await self.scripted()
        relay = await self.relay(dkim=entries, **smarthost(plain(upstream.port)))
        await self.send(relay, ["user@dest.test"], headers + b"\r\n" + body,
                        sender="app@example.com")
        await wait_until(lambda: upstream.messages, what="delivery")
        await self.drained(relay)
        return upstream.messages[0].content, self.publish(entries) if entries else None

    async def verify(self, message: bytes, dnsfunc: Any, index: int = 0) -> bool:
        def check() -> bool:
            try:
                return bool(dkim.DKIM(message).verify(index, dnsfunc))
            except dkim.DKIMException:
                return False  # dkimpy raises for a body hash mismatch

        return await deferToThreadPool(reactor, self.clients, check)



class DkimSigningTests(DkimHelpers):
    async def test_rsa_signature_verifies_at_the_upstream(self) -> None:
        entries = [self.keygen("rsa1", "rsa")]
        message, dnsfunc = await self.relay_signed(entries, EDGY_BODY)
        self.assertTrue(message.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;"))
        self.assertEqual(message.count(b"DKIM-Signature:"), 1)
        self.assertTrue(await self.verify(message, dnsfunc))
        self.assertIn("dkim=example.com/rsa1", self.log_text())
        tampered = message.replace(b"caf\xc3\xa9 \t", b"cafe \t")
        self.assertFalse(await self.verify(tampered, dnsfunc))

    async def test_dual_rsa_and_ed25519_on_a_spilled_body(self) -> None:
        entries = [self.keygen("rsa2", "rsa"), self.keygen("ed1", "ed25519")]
        big = EDGY_BODY + b"".join(b"line %d \xe4\xb8\xad\xe6\x96\x87  \r\n" % i
                                   for i in range(30_000)) + b".\r\n\r\n"
        self.assertGreater(len(big), 600_000)
        message, dnsfunc = await self.relay_signed(entries, big)
        self.assertEqual(message.count(b"DKIM-Signature:"), 2)
        self.assertTrue(message.endswith(big.replace(b"bare\nlf", b"bare\r\nlf")))
        self.assertTrue(await self.verify(message, dnsfunc, 0))
        self.assertTrue(await self.verify(message, dnsfunc, 1))

    async def test_mail_from_a_domain_without_key_passes_unsigned(self) -> None:
        entries = [self.keygen("rsa3", "rsa")]
        other = HEADERS.replace(b"app@example.com", b"app@other.test")
        message, _ = await self.relay_signed(entries, b"hello\r\n", headers=other)
        self.assertNotIn(b"DKIM-Signature", message)
        self.assertIn("dkim=none", self.log_text())
