"""testssl.sh (Debian package testssl.sh) against a relaymail STARTTLS listener on loopback:
the protocols (-p), the cipher categories (-s) and every cipher per protocol (-E), read from
its JSON output.  No SSLv2/3, TLS 1.0 or 1.1; on TLS 1.2 only the AEAD suites of Mozilla's
intermediate profile (no CBC, no SHA-1 MAC, no static RSA, nothing NULL, EXPORT, RC4, DES,
3DES or anonymous); TLS 1.3 offered.  Once with an RSA certificate (ECDHE-RSA and DHE-RSA
suites), once with an ECDSA one (ECDHE-ECDSA).

No --fast: with it testssl tries only the suites the local OpenSSL 3 still knows, which are
not the NULL/EXPORT/RC4 ones; without it those are sent from testssl's own list over raw
sockets, and the whole run still takes seconds.  It must stay under SCAN_BUDGET."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import trustme
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relaymail.common.tls import INTERMEDIATE_CIPHERS
from tests.helpers import base_config, start_server, write_tls_files
from tests.peers import require

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
SCAN_BUDGET = 120.0  # seconds for one scan
ALLOWED_TLS12 = set(INTERMEDIATE_CIPHERS.split(":"))
NOT_OFFERED = ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL",
               "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA",
               "cipherlist_AVERAGE")  # AVERAGE: "obsolete CBC ciphers (AES, ARIA etc.)"
FORBIDDEN_WORDS = ("CBC", "NULL", "EXPORT", "RC4", "RC2", "DES", "IDEA", "anon", "MD5")


def scan(port: int, directory: str) -> tuple[list[dict[str, Any]], float, str]:
    """Blocking: run testssl.sh; its JSON findings, the run time and its screen output."""
    assert TESTSSL is not None
    out = os.path.join(directory, "testssl.json")
    started = time.monotonic()
    result = subprocess.run(
        [TESTSSL, "--quiet", "--warnings", "off", "--color", "0", "--nodns", "none",
         "--ip", "127.0.0.1", "--connect-timeout", "10", "--openssl-timeout", "10",
         "--starttls", "smtp", "-p", "-s", "-E", "--jsonfile", out, f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=SCAN_BUDGET * 2, cwd=directory)
    took = time.monotonic() - started
    with open(out) as f:
        return json.load(f), took, result.stdout + result.stderr


def offered_suites(findings: list[dict[str, Any]], protocol: str) -> list[tuple[str, str]]:
    """(OpenSSL name, IANA name) of each suite testssl found for ``protocol`` (tls1_2, ...):
    ``cipher-tls1_2_xc02f`` findings read ``TLS 1.2 xc02f ECDHE-RSA-AES128-GCM-SHA256 ECDH
    253 AESGCM 128 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256``."""
    suites = []
    for item in findings:
        if item["id"].startswith(f"cipher-{protocol}_x"):
            words = item["finding"].split()
            suites.append((words[3], words[-1]))
    return suites


class TestsslTests(TestCase):
    timeout = 600

    async def listener(self, key_type: trustme.KeyType) -> tuple[int, str]:
        directory = tempfile.mkdtemp()
        cert, key, _ = write_tls_files(directory, key_type)
        data = base_config(directory, tls=False)
        data["smtp"]["tls"] = {"certificate": cert, "private_key": key}
        data["smtp"]["listeners"][0]["tls"] = "starttls"
        server = await start_server(data, directory)
        self.addCleanup(server.stop)
        return server.port(), directory

    async def check(self, key_type: trustme.KeyType, expected_kx: tuple[str, ...]) -> None:
        require(TESTSSL is not None, "testssl.sh (Debian package testssl.sh)")
        port, directory = await self.listener(key_type)
        findings, took, screen = await deferToThread(scan, port, directory)
        print(f"testssl.sh --starttls smtp -p -s -E ({key_type.name}): {took:.1f} s")
        by_id = {item["id"]: item for item in findings}
        self.assertLess(took, SCAN_BUDGET, screen)
        self.assertFalse([i for i in findings if i.get("severity") == "FATAL"
                          or i["id"] in ("scanProblem", "service_problem")], screen)
        self.assertEqual(by_id["service"]["finding"], "smtp", screen)
        for key in NOT_OFFERED:
            self.assertTrue(by_id[key]["finding"].startswith("not offered"),
                            f"{key}: {by_id[key]['finding']}")
        self.assertTrue(by_id["TLS1_2"]["finding"].startswith("offered"), screen)
        self.assertTrue(by_id["TLS1_3"]["finding"].startswith("offered"), screen)
        for old in ("ssl2", "ssl3", "tls1", "tls1_1"):
            self.assertEqual(offered_suites(findings, old), [], old)
        tls12 = offered_suites(findings, "tls1_2")
        self.assertTrue(tls12, screen)  # the scan saw suites: the checks below are not empty
        for name, iana in tls12:
            self.assertIn(name, ALLOWED_TLS12, iana)
            self.assertFalse([w for w in FORBIDDEN_WORDS if w in iana], iana)
            self.assertFalse(iana.endswith("_SHA"), f"{iana}: a SHA-1 MAC")
            self.assertTrue(iana.startswith(("TLS_ECDHE_", "TLS_DHE_")), f"{iana}: not PFS")
        self.assertEqual({name.split("-")[0] + "-" + name.split("-")[1] for name, _ in tls12
                          if name.startswith("ECDHE")} | {name.split("-")[0] for name, _ in
                                                          tls12 if name.startswith("DHE")},
                         set(expected_kx))
        self.assertTrue(offered_suites(findings, "tls1_3"), screen)

    async def test_rsa_listener_offers_only_the_intermediate_profile(self) -> None:
        await self.check(trustme.KeyType.RSA, ("ECDHE-RSA", "DHE"))

    async def test_ecdsa_listener_offers_only_the_intermediate_profile(self) -> None:
        await self.check(trustme.KeyType.ECDSA, ("ECDHE-ECDSA",))
