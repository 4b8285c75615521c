"""Real OAuth2 peers for tests, on loopback: a token endpoint (RFC 6749 refresh_token,
client_credentials and authorization_code with PKCE; RFC 8628 device flow; an authorize
page that approves at once) in this reactor, and an aiosmtpd upstream that accepts only
AUTH XOAUTH2 / OAUTHBEARER with a token the endpoint issued and still considers valid."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.helpers import free_port, shared_ca
from tests.upstreams import RecordingHandler

SCOPE = "https://mail.test/SMTP.Send offline_access"


@dataclass
class Issued:
    user: str | None
    expires_at: float  # wall clock: the aiosmtpd thread checks it


class TokenEndpoint(Resource):
    """Token, device and authorize endpoints of one authorization server."""

    isLeaf = True

    def __init__(self, server: OAuth2Server) -> None:
        super().__init__()
        self.server = server

    def render_POST(self, request: Any) -> bytes:
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        path = request.path.decode()
        self.server.requests.append((path, form))
        code, body = (self.server.device_start(form) if path == "/device"
                      else self.server.token(form))
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()

    def render_GET(self, request: Any) -> bytes:
        """/authorize: approve at once, redirect to the client with a code (and state)."""
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.server.authorize_requests.append(args)
        code = secrets.token_urlsafe(12)
        self.server.codes[code] = args
        request.redirect(f"{args['redirect_uri']}?"
                         f"{urlencode({'code': code, 'state': args.get('state', '')})}"
                         .encode())
        return b""


class OAuth2Server:
    """An authorization server with switches: revoke a refresh token, revoke the access
    tokens (the upstream then refuses them), rotate refresh tokens, demand a secret."""

    def __init__(self, client_id: str = "relay-client", client_secret: str | None = None,
                 expires_in: int = 3600, rotate: bool = False, user: str | None = None) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.expires_in, self.rotate, self.user = expires_in, rotate, user
        self.lock = threading.Lock()
        self.access: dict[str, Issued] = {}
        self.refresh: set[str] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.codes: dict[str, dict[str, str]] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.pending_polls = 1  # device flow: authorization_pending this often, then ok
        self.listening: Any = None

    async def start(self) -> OAuth2Server:
        site = Site(TokenEndpoint(self))
        self.listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            site)
        return self

    async def stop(self) -> None:
        await self.listening.stopListening()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.listening.getHost().port}"

    @property
    def token_url(self) -> str:
        return self.base + "/token"

    def token_requests(self, grant: str | None = None) -> list[dict[str, str]]:
        return [f for p, f in self.requests if p == "/token"
                and (grant is None or f.get("grant_type") == grant)]

    # ------------------------------------------------------------------ switches

    def new_refresh_token(self) -> str:
        token = "rt-" + secrets.token_urlsafe(16)
        self.refresh.add(token)
        return token

    def revoke_refresh(self, token: str) -> None:
        self.refresh.discard(token)

    def revoke_access(self) -> None:
        """Server-side revocation: every access token issued so far stops working."""
        with self.lock:
            self.access.clear()

    def valid(self, token: str, user: str) -> bool:
        with self.lock:
            issued = self.access.get(token)
        return (issued is not None and issued.expires_at > time.time()
                and issued.user in (None, user))

    # ------------------------------------------------------------------ endpoints

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        if self.client_secret and form.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: Invalid client secret"}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            return self._refresh(form)
        if grant == "client_credentials":
            return 200, self._issue(refresh=None)
        if grant == "authorization_code":
            return self._code(form)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_poll(form)
        return 400, {"error": "unsupported_grant_type"}

    def _issue(self, refresh: str | None) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        with self.lock:
            self.access[access] = Issued(self.user, time.time() + self.expires_in)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": self.expires_in, "scope": SCOPE}
        if refresh:
            body["refresh_token"] = refresh
        return body

    def _refresh(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        token = form.get("refresh_token", "")
        if token not in self.refresh:
            return 400, {"error": "invalid_grant", "error_description":
                         "AADSTS70008: The provided refresh token has expired or was revoked"}
        if self.rotate:
            self.refresh.discard(token)
            return 200, self._issue(self.new_refresh_token())
        return 200, self._issue(None)

    def _code(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        asked = self.codes.pop(form.get("code", ""), None)
        if asked is None or asked.get("redirect_uri") != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant", "error_description": "bad code"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).decode().rstrip("=") != asked["code_challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE check failed"}
        return 200, self._issue(self.new_refresh_token())

    def device_start(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        device_code = "dc-" + secrets.token_urlsafe(16)
        self.devices[device_code] = {"polls": 0, "scope": form.get("scope")}
        return 200, {"device_code": device_code, "user_code": "WDJB-MJHT",
                     "verification_uri": self.base + "/device-login", "expires_in": 900,
                     "interval": 1}

    def _device_poll(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        device = self.devices.get(form.get("device_code", ""))
        if device is None:
            return 400, {"error": "expired_token"}
        device["polls"] += 1
        if device["polls"] <= self.pending_polls:
            return 400, {"error": "authorization_pending"}
        if device["polls"] == self.pending_polls + 1 and device.get("slow_down"):
            return 400, {"error": "slow_down"}
        del self.devices[form["device_code"]]
        return 200, self._issue(self.new_refresh_token())


# ---------------------------------------------------------------------- the SMTP side


@dataclass
class AuthAttempt:
    mechanism: str
    user: str
    accepted: bool
    after_challenge: bytes | None = None  # what the client sent after the error challenge


class OAuthHandler(RecordingHandler):
    """aiosmtpd handler with AUTH XOAUTH2 and OAUTHBEARER checked against the server."""

    def __init__(self, server: OAuth2Server, user: str) -> None:
        super().__init__()
        self.server, self.user = server, user
        self.attempts: list[AuthAttempt] = []

    async def auth_XOAUTH2(self, smtp: Any, args: list[str]) -> AuthResult:
        return await self._check(smtp, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, smtp: Any, args: list[str]) -> AuthResult:
        return await self._check(smtp, args, "OAUTHBEARER")

    async def _check(self, smtp: Any, args: list[str], mechanism: str) -> AuthResult:
        raw = (base64.b64decode(args[1]) if len(args) > 1
               else await smtp.challenge_auth(""))
        if raw is MISSING:
            return AuthResult(success=False, handled=True)
        user, token = parse_initial(mechanism, raw)
        attempt = AuthAttempt(mechanism, user, user == self.user and
                              self.server.valid(token, user))
        with self.lock:
            self.attempts.append(attempt)
        if attempt.accepted:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        error = {"status": "invalid_token" if mechanism == "OAUTHBEARER" else "401",
                 "schemes": "bearer", "scope": SCOPE}
        reply = await smtp.challenge_auth(json.dumps(error))
        attempt.after_challenge = None if reply is MISSING else reply
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")


def parse_initial(mechanism: str, raw: bytes) -> tuple[str, str]:
    """(user, token) from an XOAUTH2 or OAUTHBEARER initial response."""
    text = raw.decode()
    if mechanism == "OAUTHBEARER":
        gs2, _, rest = text.partition("\x01")
        assert gs2.startswith("n,a=") and gs2.endswith(","), gs2
        user = gs2[4:-1].replace("=2C", ",").replace("=3D", "=")
        pairs = dict(p.split("=", 1) for p in rest.split("\x01") if p)
        assert rest.endswith("\x01\x01"), rest
        return user, pairs.get("auth", "").removeprefix("Bearer ")
    assert text.endswith("\x01\x01"), text
    pairs = dict(p.split("=", 1) for p in text.split("\x01") if p)
    return pairs.get("user", ""), pairs.get("auth", "").removeprefix("Bearer ")


class OAuthUpstream:
    """A provider stand-in: STARTTLS required, then only AUTH XOAUTH2 / OAUTHBEARER."""

    def __init__(self, server: OAuth2Server, user: str = "mailbox@example.com") -> None:
        self.port = free_port()
        self.handler = OAuthHandler(server, user)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        shared_ca().issue_cert("localhost", "127.0.0.1").configure_cert(context)
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, tls_context=context,
            require_starttls=True, auth_required=True, auth_require_tls=True,
            auth_exclude_mechanism=["PLAIN", "LOGIN"])

    @property
    def messages(self) -> list[Any]:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def attempts(self) -> list[AuthAttempt]:
        with self.handler.lock:
            return list(self.handler.attempts)

    def start(self) -> OAuthUpstream:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
