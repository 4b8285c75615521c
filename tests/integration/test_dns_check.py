"""``relaymail dns-check`` against a real DNS server on loopback: a domain set up right, and
one whose SPF lacks the provider, whose DKIM key is stale and which has no DMARC."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.trial.unittest import TestCase

from relaymail.cli import main
from tests.dnszone import start_dns, txt
from tests.helpers import write_config


class DnsCheckTests(TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()

    def keygen(self, domain: str, selector: str) -> dict[str, str]:
        path = os.path.join(self.dir, f"{domain}.{selector}.key")
        assert main(["dkim", "keygen", "--domain", domain, "--selector", selector,
                     "--algorithm", "ed25519", "--output", path]) == 0
        return {"domain": domain, "selector": selector, "private_key": path,
                "algorithm": "ed25519-sha256"}

    def config(self, keys: list[dict[str, str]]) -> str:
        return write_config(self.dir, {
            "spool_dir": os.path.join(self.dir, "spool"),
            "routes": [{"domains": ["*"], "transport": "ses"}],
            "transports": {"ses": {"type": "smarthost", "upstreams": [
                {"preset": "tencent-ses", "username": "u", "password": "p"},
                {"preset": "aliyun", "username": "u", "password": "p"}]}},
            "dkim": keys})

    def record_of(self, key: dict[str, str]) -> str:
        from relaymail.policy.dkim import load_key
        return load_key(key, "relay.json", 0).dns_record()

    async def check(self, config: str, port: int, domain: str) -> tuple[int, list[dict]]:
        args = ["--config", config, "dns-check", domain, "--nameserver",
                f"127.0.0.1:{port}", "--json"]
        out = io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out):
                return main(args)

        code = await deferToThread(run)
        return code, json.loads(out.getvalue())

    async def test_good_and_broken_domains(self) -> None:
        good_key, stale_key = self.keygen("good.test", "s1"), self.keygen("bad.test", "s1")
        old_key = self.keygen("other.test", "old")  # what bad.test still publishes
        config = self.config([good_key, stale_key])
        spf = "v=spf1 include:qcloudmail.com include:spf1.dm.aliyun.com -all"
        port = start_dns({
            (b"good.test", dns.MX): [dns.Record_MX(10, b"mx.good.test")],
            (b"good.test", dns.TXT): [txt(spf), txt("google-site-verification=x")],
            (b"s1._domainkey.good.test", dns.TXT): [txt(self.record_of(good_key))],
            (b"_dmarc.good.test", dns.TXT): [txt("v=DMARC1; p=quarantine")],
            (b"bad.test", dns.MX): [dns.Record_MX(10, b"mx.bad.test")],
            (b"bad.test", dns.TXT): [txt("v=spf1 include:qcloudmail.com ~all")],
            (b"s1._domainkey.bad.test", dns.TXT): [txt(self.record_of(old_key))],
        })
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        code, findings = await self.check(config, number, "good.test")
        self.assertEqual(code, 0, findings)
        self.assertEqual([f["check"] for f in findings], ["MX", "SPF", "DKIM", "DMARC"])
        self.assertIn("policy quarantine", findings[3]["detail"])

        code, findings = await self.check(config, number, "bad.test")
        self.assertEqual(code, 1)
        by_check = {f["check"]: f for f in findings}
        self.assertTrue(by_check["MX"]["ok"])
        self.assertIn("lacks include:spf1.dm.aliyun.com", by_check["SPF"]["detail"])
        self.assertEqual(by_check["SPF"]["fix"], 'bad.test. IN TXT "v=spf1 include:'
                         'qcloudmail.com include:spf1.dm.aliyun.com ~all"')
        self.assertIn("not the one in the config", by_check["DKIM"]["detail"])
        self.assertIn(self.record_of(stale_key), by_check["DKIM"]["fix"])
        self.assertFalse(by_check["DMARC"]["ok"])
        self.assertIn("_dmarc.bad.test. IN TXT", by_check["DMARC"]["fix"])

        code, findings = await self.check(config, number, "nowhere.test")
        self.assertEqual(code, 1)
        self.assertEqual([f["ok"] for f in findings], [False] * 4)
        self.assertIn("no signing key configured", findings[2]["detail"])
