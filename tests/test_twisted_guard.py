"""Twisted internals relaymail relies on, checked on the installed Twisted (setup.py bounds it,
"twisted[tls]>=24.7,<27"): an upgrade that renames or drops one fails here, loudly, instead
of in a delivery.

relaymail/relay/client.py (RelayClient, an ESMTPClient) takes over the reply dispatch after
the handshake by setting ``_expected``, ``_okresponse`` and ``_failresponse`` (SMTPClient's
lineReceived routes every reply through them), answers OAuth2 challenges through
``_authinfo``, overrides ``_esmtpState_plainAuth`` (the stock retry of AUTH PLAIN), and reads
``_tlsMode`` for the delivery log and error kinds.  relaymail/smtp/proxy.py keeps its own
``_buffer`` and ``_timer`` on a ProtocolWrapper subclass: Twisted must not start using those
names there, nor the private names RelayClient adds on ESMTPClient."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

import twisted
from relaymail.relay.client import RelayClient
from relaymail.smtp.proxy import ProxyHeaderReceiver

SHARED_WITH_TWISTED = {"_expected", "_okresponse", "_failresponse", "_authinfo", "_tlsMode"}


def connected_client(cls: Any = smtp.ESMTPClient, *args: Any) -> Any:
    client = cls(*args) if args else cls(b"secret", None, b"relay.test")
    client.timeout = None  # no reactor timer
    client.makeConnection(StringTransport())
    return client


def relay_client() -> RelayClient:
    return RelayClient(label="up:25", identity="relay.test", username="u", password="p",
                       tls_context=None, require_tls=False, timeout=5)


def test_version_within_the_bound_in_setup_py() -> None:
    major, minor = twisted.version.major, twisted.version.minor
    assert (24, 7) <= (major, minor) < (27, 0), twisted.version.short()


def test_replies_are_dispatched_through_expected_okresponse_failresponse() -> None:
    client = connected_client()
    for name in ("_expected", "_okresponse", "_failresponse"):
        assert hasattr(client, name), f"SMTPClient no longer sets {name} on connect"
    seen: list[tuple[str, int, bytes]] = []
    client._expected = [250]
    client._okresponse = lambda code, resp: seen.append(("ok", code, resp))
    client._failresponse = lambda code, resp: seen.append(("fail", code, resp))
    client.dataReceived(b"250-first\r\n250 second\r\n554 5.0.0 no\r\n")
    assert seen == [("ok", 250, b"first\nsecond"), ("fail", 554, b"5.0.0 no")]


def test_challenge_answers_use_authinfo() -> None:
    class Mechanism:
        def getName(self) -> bytes:
            return b"X-TEST"

        def challengeResponse(self, secret: bytes, challenge: bytes) -> bytes:
            return secret + b":" + challenge

    client = connected_client()
    client._authinfo = Mechanism()
    client.esmtpState_challenge(334, base64.b64encode(b"hello"))
    assert client.transport.value().endswith(base64.b64encode(b"secret:hello") + b"\r\n")
    assert list(client._expected) == [235, 334]
    assert client._okresponse == client.smtpState_maybeAuthenticated


def test_plain_auth_retry_hook_is_the_one_relaymail_overrides() -> None:
    assert callable(getattr(smtp.ESMTPClient, "_esmtpState_plainAuth", None))
    client = relay_client()
    client.timeout = None
    client.makeConnection(StringTransport())
    client.authenticate(250, b"", {b"AUTH": b"PLAIN LOGIN"})
    assert client.transport.value().startswith(b"AUTH PLAIN ")
    assert client._failresponse.__func__ is RelayClient._esmtpState_plainAuth  # type: ignore[attr-defined]


def test_tls_mode_flag_exists() -> None:
    assert smtp.ESMTPClient._tlsMode is False
    assert connected_client()._tlsMode is False  # a StringTransport is not TLS


def test_public_hooks_relaymail_overrides_or_calls() -> None:
    for name in ("esmtpState_serverConfig", "esmtpState_starttls", "authenticate",
                 "esmtpAUTHDeclined", "smtpState_from", "smtpState_maybeAuthenticated",
                 "esmtpState_challenge", "sendError", "registerAuthenticator",
                 "requireTransportSecurity", "requireAuthentication", "heloFallback",
                 "debug", "secret"):
        assert hasattr(connected_client(), name), name
    assert hasattr(LineReceiver, "clearLineBuffer")


def test_relaymail_private_names_do_not_collide_with_twisted() -> None:
    """The private attributes relaymail adds must stay its own."""
    stock = connected_client()
    ours = {n for n in vars(relay_client()) if n.startswith("_") and not n.startswith("__")}
    added = ours - set(vars(smtp.ESMTPClient(b"s", None, b"id"))) - SHARED_WITH_TWISTED
    assert added, "RelayClient sets private attributes of its own"
    assert not added & (set(dir(smtp.ESMTPClient)) | set(vars(stock))), added

    wrapper = ProtocolWrapper(WrappingFactory(None), LineReceiver())
    for name in ("_buffer", "_timer"):
        assert not hasattr(wrapper, name), f"ProtocolWrapper now has {name}"
    assert issubclass(ProxyHeaderReceiver, ProtocolWrapper)


def test_http_channel_keeps_the_request_line_where_the_web_guard_reads_it() -> None:
    """relaymail.web.guard reads HTTPChannel._command and _path when a body's length is
    known, to apply the route's limit before a byte of the body is read."""
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel, Request

    seen: dict[str, bytes] = {}

    class Probe(Request):
        def gotLength(self, length: int | None) -> None:
            seen["command"] = self.channel._command
            seen["path"] = self.channel._path
            super().gotLength(length)

    channel = HTTPChannel()
    channel.requestFactory = Probe
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /api/send?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
    assert seen == {"command": b"POST", "path": b"/api/send?x=1"}
    channel.connectionLost(None)
