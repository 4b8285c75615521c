"""Outbound SASL: the authenticators RelayClient registers with Twisted's ESMTPClient.

PLAIN is tried once (the stock one tries twice, which doubles the failed logins a provider
counts against us); XOAUTH2 and OAUTHBEARER (RFC 7628) send an OAuth2 access token as the
initial client response.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.mail import smtp
from zope.interface import implementer


@implementer(smtp.IClientAuthentication)
class PlainAuthenticator:
    """AUTH PLAIN with an empty authorization identity, tried once (the stock one tries
    twice, which doubles the failed logins a provider counts against us)."""

    def __init__(self, user: bytes) -> None:
        self.user = user

    def getName(self) -> bytes:
        return b"PLAIN"

    def challengeResponse(self, secret: bytes, chal: Any = None) -> bytes:
        return b"\0" + self.user + b"\0" + secret


def sasl_name(value: str) -> str:
    """An authzid for a GS2 header (RFC 5801 §4): ``=`` as ``=3D`` and ``,`` as ``=2C``."""
    return value.replace("=", "=3D").replace(",", "=2C")


def xoauth2_response(user: str, token: str) -> bytes:
    """The XOAUTH2 initial client response (before base64), as Google and Microsoft
    document it: ``user=U ^A auth=Bearer T ^A ^A``."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer_response(user: str, token: str) -> bytes:
    """The OAUTHBEARER initial client response (RFC 7628 §3.1): a GS2 header naming the
    user, then the Bearer token, in kvsep-separated pairs."""
    return f"n,a={sasl_name(user)},\x01auth=Bearer {token}\x01\x01".encode()


@implementer(smtp.IClientAuthentication)
class OAuth2Authenticator:
    """SASL XOAUTH2 or OAUTHBEARER with an access token as the secret.

    The first response is the initial client response.  A later challenge can only be the
    server's error report (a base64 JSON object, RFC 7628 §3.2.2); it is kept in
    ``error_status`` for the failure text, and answered so that the server can finish with
    its 535/454: an empty response for XOAUTH2 (Google's documented way), the single
    %x01 of RFC 7628 §3.2.3 for OAUTHBEARER."""

    def __init__(self, mechanism: str, user: str) -> None:
        self.mechanism, self.user = mechanism, user
        self.sent = False
        self.error_status: str | None = None

    def getName(self) -> bytes:
        return self.mechanism.encode()

    def challengeResponse(self, secret: bytes, chal: Any = None) -> bytes:
        if not self.sent:
            self.sent = True
            encode = oauthbearer_response if self.mechanism == "OAUTHBEARER" else \
                xoauth2_response
            return encode(self.user, secret.decode())
        self.error_status = error_status(chal)
        return b"\x01" if self.mechanism == "OAUTHBEARER" else b""


def error_status(challenge: Any) -> str:
    """The ``status`` of a SASL OAuth error challenge (``401``, ``invalid_token``...)."""
    try:
        data = json.loads(challenge)
    except (TypeError, ValueError):
        return "unreadable"
    status = data.get("status") if isinstance(data, dict) else None
    return " ".join(str(status).split())[:40] if status else "unknown"
