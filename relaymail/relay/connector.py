"""Opening a session to one upstream: endpoint, TLS policy, timeouts.

TLS policies (the upstream's ``tls`` and ``verify``):
- ``starttls``: STARTTLS is required; the certificate is checked (SNI + service-identity,
  against the system roots or ``ca_file``) unless ``verify`` is false.
- ``implicit``: TLS from the first byte (port 465), checked the same way.
- ``opportunistic``: STARTTLS when offered, SNI sent, nothing verified (RFC 7435); the
  default toward MX hosts.  With credentials (only with ``allow_insecure_auth``) STARTTLS
  is required, and a failed handshake is never retried in plaintext.
- ``none``: plaintext.

Config validation lets an upstream with credentials use only ``starttls``/``implicit`` with
``verify`` unless it sets ``allow_insecure_auth`` (relaymail.config.check_auth_security).

TLS versions and suites: the verified client (and the unverified one of an upstream with
credentials) uses the listeners' profile, Mozilla's "intermediate" (relaymail.smtp.tls): TLS
1.2+, AEAD suites only on 1.2.  Opportunistic TLS toward MX hosts without credentials keeps
OpenSSL's broader defaults: a legacy server's CBC suite is still better than the plaintext
RFC 7435 falls back to.

An upstream with ``oauth2`` logs in with SASL XOAUTH2 or OAUTHBEARER: the access token is
fetched from its token source before connecting, and when the server refuses it (535 or
454) the token is dropped, a new one fetched and ONE more session tried.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory
from zope.interface import implementer

from relaymail.common.tls import intermediate_profile
from relaymail.config import OAuth2Config
from relaymail.logs import Logger
from relaymail.relay.client import RelayClient
from relaymail.relay.oauth2 import OAuth2Error, TokenRegistry, TokenSource, problem
from relaymail.relay.outcome import SessionError

log = Logger(namespace="relaymail.relay.connector")
TOKEN_REFUSED = (535, 454)  # AUTH replies after which a fresh token is worth one more try


@dataclass(frozen=True)
class Target:
    """Where and how to connect.  ``address`` (an IP) skips name resolution; ``host`` is
    then only the TLS name (the MX host name)."""

    host: str
    port: int
    tls: str = "starttls"
    verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    helo: str | None = None
    address: str | None = None
    max_connections: int | None = None  # provider throttle, with max_rate (count, seconds)
    max_rate: tuple[int, float] | None = None
    oauth2: OAuth2Config | None = None  # resolved settings (relaymail.relay.oauth2.resolve)

    @property
    def has_credentials(self) -> bool:
        """It logs in: a password or an OAuth2 token must never go out in plaintext."""
        return bool(self.username or self.password or self.oauth2)

    @property
    def requires_tls(self) -> bool:
        """STARTTLS or no session: ``starttls``, and ``opportunistic`` with credentials
        (allowed only with ``allow_insecure_auth``: unverified, but never plaintext)."""
        return self.tls == "starttls" or (self.tls == "opportunistic" and self.has_credentials)

    @property
    def label(self) -> str:
        where = f"{self.host}[{self.address}]" if self.address else self.host
        return f"{where}:{self.port}"

    @property
    def key(self) -> tuple[Any, ...]:
        """Sessions are shared between targets with the same key: a password login and an
        OAuth2 login (or two OAuth2 clients) of one mailbox are different sessions."""
        oauth2 = None if self.oauth2 is None else (self.oauth2.token_url,
                                                   self.oauth2.client_id)
        return (self.host, self.address, self.port, self.tls, self.verify, self.username,
                oauth2)

    def __repr__(self) -> str:  # never show the password
        return f"Target({self.label}, tls={self.tls})"


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientTLS:
    """TLS that sends SNI but checks nothing: opportunistic encryption toward MX hosts.
    ``strict``: the intermediate profile (an upstream with credentials)."""

    def __init__(self, hostname: str, strict: bool = False) -> None:
        options = intermediate_profile() if strict else {}
        self._context = ssl.CertificateOptions(**options).getContext()
        self._sni = None if is_ip(hostname) else hostname.encode("idna")

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tls_protocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def trust_root(ca_file: str | None) -> Any:
    if ca_file is None:
        return ssl.platformTrust()
    with open(ca_file, "rb") as f:
        pem = f.read()
    marker = b"-----END CERTIFICATE-----"
    certs = [ssl.Certificate.loadPEM(part + marker) for part in pem.split(marker)
             if b"-----BEGIN CERTIFICATE-----" in part]
    return ssl.trustRootFromCertificates(certs)


def tls_creator(target: Target) -> Any:
    """The connection creator for ``target``'s TLS, or None for plaintext."""
    if target.tls == "none":
        return None
    if target.tls == "opportunistic" or not target.verify:
        return UnverifiedClientTLS(target.host, strict=target.has_credentials)
    return ssl.optionsForClientTLS(target.host, trustRoot=trust_root(target.ca_file),
                                   extraCertificateOptions=intermediate_profile())


def endpoint_for(reactor: Any, target: Target, connect_timeout: float) -> Any:
    if target.address is None:
        return HostnameEndpoint(reactor, target.host.encode("idna"), target.port,
                                timeout=connect_timeout)
    kind = TCP6ClientEndpoint if ":" in target.address else TCP4ClientEndpoint
    return kind(reactor, target.address, target.port, timeout=connect_timeout)


def open_session(reactor: Any, target: Target, identity: str, connect_timeout: float,
                 command_timeout: float, tokens: TokenRegistry | None = None) -> Deferred:
    """Connect and run the handshake; fires with a ready RelayClient or fails with
    SessionError (the endpoint's own errors are turned into one by the caller).  OAuth2
    targets take their token from ``tokens`` (a memory-only registry when None)."""
    if target.oauth2 is None:
        return connect(reactor, target, identity, connect_timeout, command_timeout)
    registry = tokens if tokens is not None else default_registry(reactor)
    return ensureDeferred(open_oauth2_session(reactor, target, identity, connect_timeout,
                                              command_timeout, registry))


def connect(reactor: Any, target: Target, identity: str, connect_timeout: float,
            command_timeout: float, access_token: str | None = None) -> Deferred:
    """One connection and handshake; with ``access_token``, AUTH is the target's OAuth2
    mechanism with that token."""
    creator = tls_creator(target)
    endpoint = endpoint_for(reactor, target, connect_timeout)
    if target.tls == "implicit":
        endpoint = wrapClientTLS(creator, endpoint)
    mechanism = target.oauth2.mechanism if target.oauth2 is not None else None
    client = RelayClient(
        label=target.label, identity=target.helo or identity, username=target.username,
        password=access_token if mechanism else target.password,
        tls_context=None if target.tls == "implicit" else creator,
        require_tls=target.requires_tls, timeout=command_timeout,
        oauth2_mechanism=mechanism)
    connected = endpoint.connect(Factory.forProtocol(lambda: client))
    connected.addCallback(lambda _: client.ready)
    return connected


async def open_oauth2_session(reactor: Any, target: Target, identity: str,
                              connect_timeout: float, command_timeout: float,
                              tokens: TokenRegistry) -> RelayClient:
    """Token first, then the session; a refused token is replaced once.  Every failure is
    a SessionError (temporary), worded by the token endpoint or the server."""
    assert target.oauth2 is not None
    unusable = problem(target.oauth2, target.username)
    if unusable is not None:
        raise SessionError("oauth2", unusable, 454)
    source = tokens.source(target.oauth2, target.username or "")
    for fresh in (False, True):  # a refused token is replaced once, for one more session
        token = await access_token(source)
        try:
            return await connect(reactor, target, identity, connect_timeout,
                                 command_timeout, token)
        except SessionError as e:
            if e.kind != "auth" or e.code not in TOKEN_REFUSED:
                raise
            source.invalidate(token)
            if fresh:
                raise SessionError("auth", f"{e.text} (a newly issued token too)",
                                   454) from None
            log.info("relay: {upstream} refused the access token for {user} ({reply}); "
                     "fetching a new one", upstream=target.label, user=target.username,
                     reply=e.text)
    raise AssertionError("unreachable: the loop returns or raises")


async def access_token(source: TokenSource) -> str:
    """The source's token, or the token endpoint's trouble as a temporary SessionError."""
    try:
        return await source.token()
    except OAuth2Error as e:
        raise e.session_error() from None
    except CancelledError:
        raise
    except Exception as e:
        raise SessionError("oauth2", f"token request failed: {type(e).__name__}", 454) \
            from None


_DEFAULT_REGISTRIES: dict[int, TokenRegistry] = {}


def default_registry(reactor: Any) -> TokenRegistry:
    """For callers that pass no registry: tokens kept in memory only, one set per reactor."""
    registry = _DEFAULT_REGISTRIES.get(id(reactor))
    if registry is None or registry.reactor is not reactor:
        registry = _DEFAULT_REGISTRIES[id(reactor)] = TokenRegistry(reactor)
    return registry
