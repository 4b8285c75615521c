"""The webhooks' HTTP client: treq over an Agent whose connections read at most
``MAX_RECEIVED`` bytes each.  Twisted's HTTP parser bounds a header line, not how many of
them come, so an endpoint that answers with header lines without end would otherwise grow
the process until the timeout; past the cap the connection is aborted (the attempt fails
and is retried like any other), and a kept-alive connection that reached it is simply
replaced."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

MAX_RECEIVED = 1_048_576


class CappedProtocol(ProtocolWrapper):
    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_RECEIVED:
            transport: Any = self.transport
            transport.abortConnection()
            return
        super().dataReceived(data)


class CappedFactory(WrappingFactory):
    protocol = CappedProtocol


class CappedEndpoint:
    """Connects like ``inner``; the Deferred fires with the HTTP protocol itself (the
    pool calls methods on it), the cap sitting between it and the transport."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def connect(self, factory: Any) -> Deferred:
        d: Deferred = self.inner.connect(CappedFactory(factory))
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)


class CappedEndpoints:
    """An IAgentEndpointFactory: plain TCP or TLS (certificates verified, as browsers do)."""

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self.reactor = reactor
        self.timeout = connect_timeout
        self.tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> CappedEndpoint:
        host = uri.host.decode("ascii")
        endpoint: Any = HostnameEndpoint(self.reactor, host, uri.port, timeout=self.timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return CappedEndpoint(endpoint)


class QuietPool(HTTPConnectionPool):
    """A connection pool whose connections do not log "Starting factory" and "Stopping
    factory" (two lines per connection, most of the log under load)."""

    class _factory(HTTPConnectionPool._factory):  # type: ignore[misc,valid-type]  # noqa: N801
        noisy = False


def capped_client(reactor: Any, pool: HTTPConnectionPool, connect_timeout: float = 10
                  ) -> HTTPClient:
    agent = Agent.usingEndpointFactory(reactor, CappedEndpoints(reactor, connect_timeout),
                                       pool=pool)
    return HTTPClient(agent)
