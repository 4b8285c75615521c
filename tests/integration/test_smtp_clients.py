"""Real clients against a real listener on loopback: smtplib, Twisted's ESMTP client, raw
sockets and swaks; plain, STARTTLS and implicit TLS with trustme certificates; AUTH."""

from __future__ import annotations

import base64
import contextlib
import os
import smtplib
import socket
import ssl
import subprocess
import tempfile
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.mail.smtp import ESMTPSenderFactory
from twisted.trial.unittest import TestCase

from relaymail.credentials import CredentialStore
from relaymail.spool.record import open_body
from relaymail.spool.safeio import FileOps
from tests.helpers import (
    RunningServer,
    base_config,
    proxied_session,
    shared_ca,
    start_server,
)
from tests.peers import require_swaks

BODY = b"From: a@client.example\r\nTo: b@dest.example\r\nSubject: hello\r\n\r\nline one\r\n" \
       b".starts with a dot\r\n8-bit: caf\xc3\xa9\r\n"


def stored_bodies(server: RunningServer) -> list[bytes]:
    spool = server.ctx.spool
    out = []
    for name in sorted(os.listdir(spool.path("data"))):
        with open_body(spool.path("data", name)) as f:
            out.append(f.read())
    return out


def without_received(body: bytes) -> bytes:
    """Strip our own Received header (its first line and continuation lines)."""
    lines = body.split(b"\r\n")
    assert lines[0].startswith(b"Received: ")
    i = 1
    while lines[i][:1] == b"\t":
        i += 1
    return b"\r\n".join(lines[i:])


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    shared_ca().configure_trust(context)
    return context


class ClientTests(TestCase):
    smtp: dict[str, Any] = {}
    listeners: list[dict[str, Any]] = [
        {"name": "smtp", "endpoint": "tcp:0", "tls": "starttls"},
        {"name": "submission", "endpoint": "tcp:0", "tls": "starttls", "auth": "required"},
        {"name": "smtps", "endpoint": "tcp:0", "tls": "implicit", "auth": "required"},
    ]

    async def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        data = base_config(self.dir, **self.smtp)
        data["smtp"]["listeners"] = self.listeners
        self.password = CredentialStore(data["credentials_file"]).add("app1")
        self.server = await start_server(data, self.dir)

    async def tearDown(self) -> None:
        await self.server.stop()

    def in_thread(self, f: Any, *args: Any) -> Deferred:
        return deferToThread(f, *args)


class Plain(ClientTests):
    async def test_smtplib_trusted_multi_recipient(self) -> None:
        port = self.server.port()

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", port) as s:
                return s.sendmail("a@client.example", ["b@dest.example", "c@other.example"],
                                  BODY, mail_options=["BODY=8BITMIME"])

        refused = await self.in_thread(send)
        self.assertEqual(refused, {})
        [body] = stored_bodies(self.server)
        self.assertEqual(without_received(body), BODY)

    async def test_starttls_auth_plain_and_login_on_submission(self) -> None:
        port = self.server.port("submission")

        def send(mechanism: str) -> Any:
            with smtplib.SMTP("localhost", port) as s:
                s.starttls(context=client_tls())
                s.ehlo()
                s.user, s.password = "app1", self.password
                s.auth(mechanism, getattr(s, f"auth_{mechanism.lower()}"))
                return s.sendmail("a@client.example", ["b@dest.example"], BODY)

        self.assertEqual(await self.in_thread(send, "PLAIN"), {})
        self.assertEqual(await self.in_thread(send, "LOGIN"), {})
        queue = list(self.server.ctx.spool.load_state("queue"))
        self.assertEqual([e.credential for e in queue], ["app1", "app1"])
        self.assertEqual({e.protocol for e in queue}, {"ESMTPSA"})

    async def test_credential_limited_to_sender_domains(self) -> None:
        store = CredentialStore(self.server.ctx.credentials.file_store.path)
        password = store.add("shop", allowed_sender_domains=["shop.example", "*.corp.example"])
        port = self.server.port("submission")

        def attempt(sender: str) -> int:
            with smtplib.SMTP("localhost", port) as s:
                s.starttls(context=client_tls())
                s.login("shop", password)
                return s.mail(sender)[0]

        for sender, code in (("orders@shop.example", 250), ("x@eu.corp.example", 250),
                             ("ceo@bank.example", 550), ("a@shop.example.evil", 550)):
            self.assertEqual(await self.in_thread(attempt, sender), code, sender)

    async def test_passwords_never_logged(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port = self.server.port("submission")

        def login(password: str) -> None:
            with smtplib.SMTP("localhost", port) as s:
                s.starttls(context=client_tls())
                with contextlib.suppress(smtplib.SMTPAuthenticationError):
                    s.login("app1", password)

        await self.in_thread(login, self.password)
        await self.in_thread(login, "Wr0ng-S3cret-Value")
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("auth ok", text)
        self.assertIn("auth failed", text)
        for secret in (self.password, "Wr0ng-S3cret-Value"):
            self.assertNotIn(secret, text)
            plain = base64.b64encode(f"\0app1\0{secret}".encode()).decode()
            self.assertNotIn(plain, text)

    async def test_large_message_byte_identical(self) -> None:
        port = self.server.port()
        body = b"Subject: big\r\n\r\n" + b"".join(
            b"%07d " % i + b"x" * 90 + b"\r\n" for i in range(50_000))

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", port) as s:
                return s.sendmail("a@client.example", ["b@dest.example"], body)

        self.assertEqual(await self.in_thread(send), {})
        [stored] = stored_bodies(self.server)
        self.assertEqual(without_received(stored), body)

    async def test_bad_password_refused(self) -> None:
        port = self.server.port("submission")

        def attempt() -> Any:
            with smtplib.SMTP("localhost", port) as s:
                s.starttls(context=client_tls())
                s.login("app1", "wrong-password")

        error = await self.assertFailure(self.in_thread(attempt), smtplib.SMTPAuthenticationError)
        self.assertEqual(error.smtp_code, 535)

    async def test_submission_refuses_unauthenticated_mail(self) -> None:
        port = self.server.port("submission")

        def attempt() -> Any:
            with smtplib.SMTP("localhost", port) as s:
                s.starttls(context=client_tls())
                s.sendmail("a@client.example", ["b@dest.example"], BODY)

        error = await self.assertFailure(self.in_thread(attempt), smtplib.SMTPSenderRefused)
        self.assertEqual(error.smtp_code, 530)

    async def test_auth_over_plaintext_refused(self) -> None:
        port = self.server.port("submission")

        def attempt() -> Any:
            with smtplib.SMTP("localhost", port) as s:
                s.ehlo()
                offered = s.has_extn("auth")
                code, _ = s.docmd("AUTH", "PLAIN AGFwcDEAeA==")
                return offered, code

        self.assertEqual(await self.in_thread(attempt), (False, 538))

    async def test_implicit_tls_smtps(self) -> None:
        port = self.server.port("smtps")

        def send() -> Any:
            with smtplib.SMTP_SSL("localhost", port, context=client_tls()) as s:
                s.ehlo()
                starttls = s.has_extn("starttls")
                s.login("app1", self.password)
                return starttls, s.sendmail("a@client.example", ["b@dest.example"], BODY)

        self.assertEqual(await self.in_thread(send), (False, {}))
        [body] = stored_bodies(self.server)
        self.assertIn(b"with ESMTPSA id", body)
        self.assertIn(b"(using TLSv1.", body)

    async def test_raw_pipelined_transactions_in_one_write(self) -> None:
        port = self.server.port()
        one = (b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@dest.example>\r\nDATA\r\n"
               b"Subject: %d\r\n\r\n.hidden dot\r\n.\r\n")

        def talk() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.recv(1000)
                s.sendall(b"EHLO raw\r\n" + one % 1 + one % 2 + one % 3 + b"QUIT\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data

        data = await self.in_thread(talk)
        finals = [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(finals, [b"250"] + [b"250", b"250", b"354", b"250"] * 3 + [b"221"])
        self.assertEqual(len(stored_bodies(self.server)), 3)

    async def test_twisted_client_starttls_auth(self) -> None:
        port = self.server.port("submission")
        done: Deferred = Deferred()
        ca = Certificate.loadPEM(shared_ca().cert_pem.bytes())
        tls = optionsForClientTLS("localhost", trustRoot=ca)
        factory = ESMTPSenderFactory(
            b"app1", self.password.encode(), "a@client.example", ["b@dest.example"],
            BytesIO(BODY.replace(b"\r\n", b"\n")), done, contextFactory=tls,
            requireAuthentication=True, requireTransportSecurity=True)
        reactor.connectTCP("127.0.0.1", port, factory)
        accepted, _ = await done
        self.assertEqual(accepted, 1)
        [body] = stored_bodies(self.server)
        self.assertEqual(without_received(body), BODY)

    async def test_swaks_auth_pipelining(self) -> None:
        require_swaks("TLS", "Basic AUTH")
        port = self.server.port("submission")
        cmd = ["swaks", "--server", f"127.0.0.1:{port}", "--tls", "--tls-verify",
               "--tls-ca-path", os.path.join(self.dir, "ca.pem"), "--tls-sni", "localhost",
               "--auth", "LOGIN", "--auth-user", "app1", "--auth-password", self.password,
               "--pipeline", "--from", "a@client.example", "--to", "b@dest.example",
               "--h-Subject", "swaks test", "--body", "hello from swaks"]
        result = await self.in_thread(
            lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=60))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(stored_bodies(self.server)), 1)


class UntrustedProxyPeer(ClientTests):
    """H1: a PROXY header is believed only from smtp.proxy_trusted_networks."""

    smtp = {"proxy_trusted_networks": ["127.0.0.2/32"], "trusted_networks": ["10.0.0.0/8"]}
    listeners = [{"name": "smtp", "endpoint": "tcp:0", "tls": "none", "proxy_protocol": True}]

    async def test_a_stranger_claiming_a_trusted_address_is_disconnected(self) -> None:
        commands = (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n"
                    b"hi\r\n.\r\nQUIT\r\n")
        data = await self.in_thread(proxied_session, self.server.port(), "10.1.2.3", commands)
        self.assertEqual(data, b"")  # no banner: refused before a byte was read
        self.assertEqual(stored_bodies(self.server), [])
        trusted = await self.in_thread(proxied_session, self.server.port(), "10.1.2.3",
                                       commands, None, "127.0.0.2")
        self.assertIn(b"250 2.0.0 Ok: queued as", trusted)  # the real proxy is believed


class Untrusted(ClientTests):
    smtp = {"trusted_networks": []}
    listeners = [{"name": "smtp", "endpoint": "tcp:0", "tls": "starttls"}]

    async def test_open_relay_forms_refused_on_the_wire(self) -> None:
        port = self.server.port()
        forms = ["u@ext.example", "u%ext.example@relay.test", "@relay.test:u@ext.example",
                 "ext.example!u@relay.test", '"u@ext.example"@relay.test', "u@[192.0.2.1]",
                 "u@ext.example.", "U@Relay.Test"]

        def attempt() -> list[int]:
            codes = []
            with smtplib.SMTP("127.0.0.1", port) as s:
                s.ehlo()
                s.mail("a@client.example")
                for form in forms:
                    codes.append(s.rcpt(f"<{form}>")[0])
                codes.append(s.docmd("DATA")[0])
            return codes

        self.assertEqual(await self.in_thread(attempt), [530] * len(forms) + [554])
        self.assertEqual(stored_bodies(self.server), [])


class ConnectionLimits(ClientTests):
    smtp = {"max_connections": 2}
    listeners = [{"name": "smtp", "endpoint": "tcp:0", "tls": "none"}]

    async def test_third_connection_gets_421(self) -> None:
        port = self.server.port()

        def attempt() -> bytes:
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            try:
                for s in held:
                    s.recv(100)
                with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                    return third.recv(100)
            finally:
                for s in held:
                    s.close()

        self.assertEqual((await self.in_thread(attempt))[:9], b"421 4.7.0")


class BrokenDisk(ClientTests):
    listeners = [{"name": "smtp", "endpoint": "tcp:0", "tls": "none"}]

    async def test_io_error_gives_452_and_service_continues(self) -> None:
        port = self.server.port()
        real_fsync = FileOps.fsync

        def failing(ops: FileOps, fd: int) -> None:
            raise OSError(5, "Input/output error")

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", port) as s:
                return s.sendmail("a@client.example", ["b@dest.example"], BODY)

        FileOps.fsync = failing  # type: ignore[method-assign]
        try:
            error = await self.assertFailure(self.in_thread(send), smtplib.SMTPDataError)
        finally:
            FileOps.fsync = real_fsync  # type: ignore[method-assign]
        self.assertEqual((error.smtp_code, error.smtp_error[:5]), (452, b"4.3.1"))
        self.assertEqual(stored_bodies(self.server), [])
        self.assertEqual(await self.in_thread(send), {})
        self.assertEqual(len(stored_bodies(self.server)), 1)


class ProxyProtocol(ClientTests):
    smtp = {"blocked_networks": ["198.51.100.0/24"], "proxy_trusted_networks": ["127.0.0.1/32"]}
    listeners = [{"name": "smtp", "endpoint": "tcp:0", "tls": "none", "proxy_protocol": True}]

    def session(self, source: str, commands: bytes) -> bytes:
        return proxied_session(self.server.port(), source, commands)

    async def test_real_client_address_decides_relaying(self) -> None:
        """Behind HAProxy the proxy is on loopback (trusted); the client is not."""
        data = await self.in_thread(self.session, "203.0.113.5",
                                    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n"
                                    b"RCPT TO:<x@y.example>\r\nQUIT\r\n")
        finals = [line[:9] for line in data.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(finals, [b"220 relay", b"250 ENHAN", b"250 2.1.0", b"530 5.7.0",
                                  b"221 2.0.0"])

    async def test_trusted_client_through_proxy_and_received_header(self) -> None:
        data = await self.in_thread(self.session, "127.0.0.9",
                                    b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n"
                                    b"RCPT TO:<x@y.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as", data)
        [body] = stored_bodies(self.server)
        self.assertIn(b"([127.0.0.9])", body)

    async def test_a_header_whose_address_is_not_an_ip_closes_the_connection(self) -> None:
        """H1: the v1 source went byte for byte into the Received header (a bare LF, a
        forged header and <LF>.<LF> in the spooled message)."""
        header = b"PROXY TCP4 10.0.0.1\nX-Injected:via-proxy-header\n.\nRSET 127.0.0.1 4 25\r\n"
        data = await self.in_thread(proxied_session, self.server.port(), "", b"EHLO c\r\n",
                                    header)
        self.assertEqual(data, b"")
        for bad in (b"PROXY TCP4 not-an-ip 127.0.0.1 1 25\r\n",
                    b"PROXY TCP6 10.0.0.1 127.0.0.1 1 25\r\n",  # wrong family
                    b"PROXY TCP4 10.0.0.1 127.0.0.1 99999 25\r\n"):
            self.assertEqual(await self.in_thread(proxied_session, self.server.port(), "",
                                                  b"EHLO c\r\n", bad), b"")
        self.assertEqual(stored_bodies(self.server), [])

    async def test_proxied_connections_count_when_they_open(self) -> None:
        """H1: 55 idle proxied connections from one address were accepted where the plain
        listener refused at the per-IP limit: they counted only after their first line."""
        limit = self.server.ctx.smtp.max_connections_per_ip
        header = b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 25\r\n"

        def open_idle(n: int) -> list[bytes]:
            socks, banners = [], []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", self.server.port()), timeout=10)
                s.sendall(header)
                banners.append(s.recv(1024))
                socks.append(s)
            for s in socks:
                s.close()
            return banners

        banners = await self.in_thread(open_idle, limit + 2)
        self.assertTrue(all(b.startswith(b"220 ") for b in banners[:limit]))
        self.assertTrue(all(b.startswith(b"421 4.7.0") for b in banners[limit:]), banners)

    async def test_blocked_network_through_proxy(self) -> None:
        data = await self.in_thread(self.session, "198.51.100.7", b"EHLO c\r\n")
        self.assertIn(b"554 5.7.1", data)
        self.assertNotIn(b"250", data)
