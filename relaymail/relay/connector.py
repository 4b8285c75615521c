"""Opening a session to one upstream: endpoint, TLS policy, timeouts.

TLS policies (the upstream's ``tls`` and ``verify``):
- ``starttls``: STARTTLS is required; the certificate is checked (SNI + service-identity,
  against the system roots or ``ca_file``) unless ``verify`` is false.
- ``implicit``: TLS from the first byte (port 465), checked the same way.
- ``opportunistic``: STARTTLS when offered, SNI sent, nothing verified (RFC 7435); the
  default toward MX hosts.
- ``none``: plaintext.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory
from zope.interface import implementer

from relaymail.relay.client import RelayClient


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

    @property
    def label(self) -> str:
        where = f"{self.host}[{self.address}]" if self.address else self.host
        return f"{where}:{self.port}"

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.host, self.address, self.port, self.tls, self.verify, self.username)

    def __repr__(self) -> str:  # never show the password
        return f"Target({self.label}, tls={self.tls})"


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedClientTLS:
    """TLS that sends SNI but checks nothing: opportunistic encryption toward MX hosts."""

    def __init__(self, hostname: str) -> None:
        self._context = ssl.CertificateOptions().getContext()
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
        return UnverifiedClientTLS(target.host)
    return ssl.optionsForClientTLS(target.host, trustRoot=trust_root(target.ca_file))


def endpoint_for(reactor: Any, target: Target, connect_timeout: float) -> Any:
    if target.address is None:
        return HostnameEndpoint(reactor, target.host.encode("idna"), target.port,
                                timeout=connect_timeout)
    kind = TCP6ClientEndpoint if ":" in target.address else TCP4ClientEndpoint
    return kind(reactor, target.address, target.port, timeout=connect_timeout)


def open_session(reactor: Any, target: Target, identity: str, connect_timeout: float,
                 command_timeout: float) -> Deferred:
    """Connect and run the handshake; fires with a ready RelayClient or fails with
    SessionError (the endpoint's own errors are turned into one by the caller)."""
    creator = tls_creator(target)
    endpoint = endpoint_for(reactor, target, connect_timeout)
    if target.tls == "implicit":
        endpoint = wrapClientTLS(creator, endpoint)
    client = RelayClient(
        label=target.label, identity=target.helo or identity, username=target.username,
        password=target.password, tls_context=None if target.tls == "implicit" else creator,
        require_tls=target.tls == "starttls", timeout=command_timeout)
    connected = endpoint.connect(Factory.forProtocol(lambda: client))
    connected.addCallback(lambda _: client.ready)
    return connected
