"""A real DNS server on loopback (twisted.names) serving a tiny zone, and a dnspython client
for it: the tests' stand-in for the Internet's DNS."""

from __future__ import annotations

from typing import Any

import dns.resolver
from twisted.internet import defer, reactor
from twisted.names import common, server
from twisted.names import dns as tdns
from twisted.python import failure


class Zone(common.ResolverBase):
    """An authoritative zone: (name, type) -> payloads; other names are NXDOMAIN."""

    def __init__(self, records: dict[tuple[bytes, int], list[Any]]) -> None:
        super().__init__()
        self.records = records

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        name = name.lower()
        payloads = self.records.get((name, type), [])
        if not payloads and not any(n == name for n, _ in self.records):
            return defer.fail(failure.Failure(tdns.AuthoritativeDomainError(name)))
        answers = [tdns.RRHeader(name, type, cls, ttl=300, payload=p, auth=True)
                   for p in payloads]
        return defer.succeed((answers, [], []))


def start_dns(records: dict[tuple[bytes, int], list[Any]]) -> Any:
    """Listen on a free UDP port of 127.0.0.1; the caller stops the returned port."""
    factory = server.DNSServerFactory(authorities=[Zone(records)])
    return reactor.listenUDP(0, tdns.DNSDatagramProtocol(factory), interface="127.0.0.1")


def txt(value: str) -> Any:
    """A TXT record payload; long values split into 255-byte strings as DNS requires."""
    data = value.encode()
    return tdns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)])


def dkimpy_dnsfunc(port: int) -> Any:
    """A ``dnsfunc`` for dkimpy that asks the loopback server (blocking: call in a thread)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], port

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup
