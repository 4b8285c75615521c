"""Real MTAs and tools as clients, end to end through relaymail to an upstream on loopback:
a private Postfix (plain, STARTTLS, SASL AUTH over TLS), swaks (AUTH PLAIN and LOGIN, with
and without pipelining, 8-bit and 1 MB bodies) and msmtp as an application uses it.  Every
message must arrive byte-identical apart from trace headers (compared by SHA-256)."""

from __future__ import annotations

import hashlib
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet.threads import deferToThread

from relaymail.credentials import CredentialStore
from tests.helpers import free_port, write_tls_files
from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.interop.postfix_client import available, postfix_client
from tests.peers import require, require_swaks

USER, PASSWORD = "mta", "interop-pass-42"


def message(tag: str, size: int = 0) -> bytes:
    """Full headers (so no MTA adds any but Received), 8-bit text, optional bulk."""
    head = (f"From: app@interop.test\r\nTo: user@dest.test\r\nSubject: {tag}\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{tag}@interop.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode()
    body = "中文 café ✓\r\n.leading dot\r\n".encode()
    bulk = b"".join(b"line %07d of the bulk with some text to fill it up\r\n" % i
                    for i in range(size // 56))
    return head + body + bulk + b"end\r\n"


def without_trace(content: bytes) -> bytes:
    """The message without the Received fields the MTAs on the way added on top."""
    lines = content.split(b"\r\n")
    i = 0
    while lines[i].lower().startswith(b"received:"):
        i += 1
        while lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\r\n".join(lines[i:])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RealClientTests(RelayTestCase):
    async def setUp(self) -> None:
        super().setUp()
        self.upstream = await self.scripted()
        cert, key, self.ca = write_tls_files(self.dir)
        self.ports = {name: free_port() for name in ("plain", "starttls", "submission")}
        CredentialStore(os.path.join(self.dir, "credentials.json")).add(USER, PASSWORD)
        endpoint = "tcp:{}:interface=127.0.0.1".format
        self.relay_ = await self.relay(
            credentials_file=os.path.join(self.dir, "credentials.json"),
            smtp={"tls": {"certificate": cert, "private_key": key},
                  "listeners": [
                      {"name": "plain", "tls": "none", "endpoint": endpoint(self.ports["plain"])},
                      {"name": "starttls", "tls": "starttls",
                       "endpoint": endpoint(self.ports["starttls"])},
                      {"name": "submission", "tls": "starttls", "auth": "required",
                       "endpoint": endpoint(self.ports["submission"])}]},
            **smarthost(plain(self.upstream.port)))

    def arrived(self, tag: str) -> Any:
        found = [m for m in self.upstream.messages if b"Subject: " + tag.encode() in m.content]
        return found[0] if found else None

    def wait_arrived(self, tags: list[str], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not all(self.arrived(t) for t in tags):
            if time.monotonic() > deadline:
                raise AssertionError(f"not delivered: {[t for t in tags if not self.arrived(t)]}")
            time.sleep(0.1)

    def assert_identical(self, tag: str, sent: bytes, protocol: bytes) -> None:
        got = self.arrived(tag)
        self.assertEqual(digest(without_trace(got.content)), digest(sent), tag)
        self.assertEqual((got.mail_from, got.rcpt_tos), ("app@interop.test", ["user@dest.test"]))
        ours = next(line for line in got.content.split(b"\r\n\tby ")[1:2])
        self.assertIn(b"with " + protocol + b" ", ours, tag)

    async def test_postfix_plain_starttls_and_sasl(self) -> None:
        require(available(), "postfix (and root)")

        def through_postfix(mode: str, port: int, **client: str) -> dict[str, bytes]:
            sent = {}
            with postfix_client(port, **client) as (pport, log):
                for size in (0, 1_000_000):
                    tag = f"postfix-{mode}-{size}"
                    sent[tag] = message(tag, size)
                    with smtplib.SMTP("127.0.0.1", pport, timeout=30) as s:
                        s.sendmail("app@interop.test", ["user@dest.test"], sent[tag])
                try:
                    self.wait_arrived(list(sent))
                except AssertionError:
                    with open(log) as f:
                        raise AssertionError(f.read()[-3000:]) from None
            return sent

        cases = (("plain", self.ports["plain"], {}, b"ESMTP"),
                 ("starttls", self.ports["starttls"], {"tls": "encrypt", "ca": self.ca},
                  b"ESMTPS"),
                 ("sasl", self.ports["submission"], {"tls": "encrypt", "ca": self.ca,
                                                      "user": USER, "password": PASSWORD},
                  b"ESMTPSA"))
        for mode, port, client, protocol in cases:
            sent = await deferToThread(through_postfix, mode, port, **client)
            for tag, data in sent.items():
                self.assert_identical(tag, data, protocol)

    async def test_swaks_plain_and_login_with_and_without_pipelining(self) -> None:
        require_swaks("TLS", "Basic AUTH")
        sent = {}
        for auth, pipeline, size in (("PLAIN", True, 0), ("LOGIN", False, 1_000_000),
                                     ("LOGIN", True, 0), ("PLAIN", False, 200_000)):
            tag = f"swaks-{auth}-{pipeline}-{size}"
            sent[tag] = message(tag, size)
            path = os.path.join(self.dir, tag + ".eml")
            with open(path, "wb") as f:
                f.write(sent[tag][:-2])  # swaks ends the data with its own CRLF . CRLF
            cmd = ["swaks", "--server", f"127.0.0.1:{self.ports['submission']}", "--tls",
                   "--tls-verify", "--tls-ca-path", self.ca, "--tls-sni", "localhost",
                   "--auth", auth, "--auth-user", USER, "--auth-password", PASSWORD,
                   "--from", "app@interop.test", "--to", "user@dest.test", "--data", path,
                   *(["--pipeline"] if pipeline else [])]
            result = await deferToThread(subprocess.run, cmd, capture_output=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stdout[-2000:])
        await deferToThread(self.wait_arrived, list(sent))
        for tag, data in sent.items():
            self.assert_identical(tag, data, b"ESMTPSA")

    async def test_msmtp_as_an_application_uses_it(self) -> None:
        require(shutil.which("msmtp") is not None, "msmtp")
        tag = "msmtp-app"
        data = message(tag, 300_000)
        config = os.path.join(tempfile.mkdtemp(), "msmtprc")
        with open(config, "w") as f:
            f.write(f"account relay\nhost localhost\nport {self.ports['submission']}\n"
                    f"tls on\ntls_starttls on\ntls_trust_file {self.ca}\nauth on\n"
                    f"user {USER}\npassword {PASSWORD}\nfrom app@interop.test\n"
                    "account default : relay\n")
        os.chmod(config, 0o600)
        result = await deferToThread(subprocess.run, ["msmtp", "-C", config, "user@dest.test"],
                                     input=data, capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        await deferToThread(self.wait_arrived, [tag])
        self.assert_identical(tag, data, b"ESMTPSA")
