"""The TLS profile (Mozilla "intermediate"): a relaymail STARTTLS listener and the outbound
client refuse TLS 1.1 and every TLS 1.2 suite that is not forward-secret AEAD (CBC with SHA-1
or SHA-256, static RSA), and take AES-GCM, ChaCha20 and DHE with the RFC 7919 group.  Peers
are Python's ssl module (OpenSSL), on loopback."""

from __future__ import annotations

import smtplib
import socket
import ssl
import tempfile
import threading
from decimal import Decimal, getcontext
from typing import Any

import trustme
from cryptography.hazmat.primitives.serialization import load_pem_parameters
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relaymail.relay.connector import Target, UnverifiedClientTLS, tls_creator
from relaymail.smtp.tls import FFDHE2048
from tests.helpers import base_config, start_server, write_tls_files

RSA, ECDSA = trustme.KeyType.RSA, trustme.KeyType.ECDSA
# Refused on TLS 1.2: CBC with SHA-1 or SHA-2 MACs, and static RSA key exchange.
BAD_SUITES = {
    RSA: ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA", "ECDHE-RSA-AES128-SHA256",
          "ECDHE-RSA-AES256-SHA384", "DHE-RSA-AES128-SHA", "DHE-RSA-AES256-SHA256",
          "AES128-SHA", "AES256-SHA256", "AES128-GCM-SHA256", "AES256-GCM-SHA384"),
    ECDSA: ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256",
            "ECDHE-ECDSA-AES256-SHA384"),
}
GOOD_SUITES = {
    RSA: ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
          "ECDHE-RSA-CHACHA20-POLY1305", "DHE-RSA-AES128-GCM-SHA256",
          "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"),
    ECDSA: ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305"),
}


def client_context(suite: str | None = None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                   ca: str | None = None) -> ssl.SSLContext:
    """A client offering only ``suite`` on ``version`` (TLS 1.1 needs security level 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    elif suite is not None:
        ctx.set_ciphers(suite)
    return ctx


def starttls(port: int, ctx: ssl.SSLContext) -> tuple[str, str]:
    """Blocking: EHLO, STARTTLS with ``ctx``; the negotiated (version, suite)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=ctx)
        tls = s.sock
        assert isinstance(tls, ssl.SSLSocket)
        version, cipher = tls.version(), tls.cipher()
        s.ehlo()
        return version or "", cipher[0] if cipher else ""


def test_ffdhe2048_is_the_rfc7919_group() -> None:
    """p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1, g = 2 (RFC 7919 A.1)."""
    getcontext().prec = 800
    e, term = Decimal(0), Decimal(1)
    for k in range(400):
        if k:
            term /= k
        e += term
    expected = 2**2048 - 2**1984 + (int(Decimal(2) ** 1918 * e) + 560316) * 2**64 - 1
    with open(FFDHE2048, "rb") as f:
        numbers = load_pem_parameters(f.read()).parameter_numbers()  # type: ignore[union-attr]
    assert (numbers.p, numbers.g) == (expected, 2)


class ListenerProfileTests(TestCase):
    async def listener(self, key_type: trustme.KeyType = RSA) -> int:
        directory = tempfile.mkdtemp()
        cert, key, _ = write_tls_files(directory, key_type)
        data = base_config(directory, tls=False)
        data["smtp"]["tls"] = {"certificate": cert, "private_key": key}
        data["smtp"]["listeners"][0]["tls"] = "starttls"
        server = await start_server(data, directory)
        self.addCleanup(server.stop)
        return server.port()

    async def refused(self, port: int, ctx: ssl.SSLContext) -> None:
        try:
            got = await deferToThread(starttls, port, ctx)
        except (ssl.SSLError, OSError, smtplib.SMTPException):
            return
        self.fail(f"handshake succeeded: {got}")

    async def test_cbc_and_static_rsa_suites_on_tls12_are_refused(self) -> None:
        for key_type in (RSA, ECDSA):
            port = await self.listener(key_type)
            for suite in BAD_SUITES[key_type]:
                await self.refused(port, client_context(suite))
            # the same listener takes an AEAD suite: the refusals are the profile's
            good = GOOD_SUITES[key_type][0]
            self.assertEqual(await deferToThread(starttls, port, client_context(good)),
                             ("TLSv1.2", good))

    async def test_tls11_and_tls10_are_refused(self) -> None:
        port = await self.listener()
        await self.refused(port, client_context(version=ssl.TLSVersion.TLSv1_1))
        await self.refused(port, client_context(version=ssl.TLSVersion.TLSv1))

    async def test_aead_suites_on_tls12_and_tls13_work(self) -> None:
        for key_type in (RSA, ECDSA):
            port = await self.listener(key_type)
            for suite in GOOD_SUITES[key_type]:
                self.assertEqual(await deferToThread(starttls, port, client_context(suite)),
                                 ("TLSv1.2", suite))
            version, _ = await deferToThread(starttls, port, client_context(
                version=ssl.TLSVersion.TLSv1_3))
            self.assertEqual(version, "TLSv1.3")


class OneHandshakeServer:
    """A TLS server (Python's ssl) on loopback for one connection, speaking only ``suite``
    on TLS 1.2; says "hello" once the handshake is done."""

    def __init__(self, suite: str) -> None:
        cert, key, self.ca = write_tls_files(tempfile.mkdtemp(), RSA)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.set_ciphers(suite)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError) as e:
            self.error = e
        finally:
            conn.close()
            self.sock.close()


class Hello(Protocol):
    def __init__(self) -> None:
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.done.called:
            self.done.callback(data)
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


class ClientProfileTests(TestCase):
    async def handshake(self, suite: str, creator_for: Any) -> bytes | None:
        """What relaymail's client got from a server offering only ``suite``; None when
        the handshake failed."""
        server = OneHandshakeServer(suite)
        self.addCleanup(server.thread.join, 10)
        protocol = Hello()
        endpoint = wrapClientTLS(creator_for(server.ca),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", server.port))
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        try:
            return await protocol.done
        except Exception:
            return None

    @staticmethod
    def verified(ca: str) -> Any:
        return tls_creator(Target("localhost", 465, tls="implicit", ca_file=ca))

    async def test_verified_client_refuses_cbc_and_takes_gcm(self) -> None:
        for suite in ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256"):
            self.assertIsNone(await self.handshake(suite, self.verified), suite)
        for suite in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"):
            self.assertEqual(await self.handshake(suite, self.verified), b"hello", suite)

    async def test_unverified_client_with_credentials_is_strict_mx_is_not(self) -> None:
        """An upstream with credentials (allow_insecure_auth) gets the same profile; plain
        opportunistic TLS to an MX host still takes a legacy CBC suite, which beats the
        plaintext RFC 7435 would fall back to."""
        with_login = tls_creator(Target("localhost", 587, tls="opportunistic", username="u",
                                        password="p"))
        self.assertIsInstance(with_login, UnverifiedClientTLS)
        self.assertIsNone(await self.handshake("ECDHE-RSA-AES128-SHA", lambda _: with_login))
        mx = tls_creator(Target("mx.test", 25, tls="opportunistic", address="127.0.0.1"))
        self.assertEqual(await self.handshake("ECDHE-RSA-AES128-SHA", lambda _: mx), b"hello")
