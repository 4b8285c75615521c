"""MX lookup for direct delivery (RFC 5321 §5.1, RFC 7505), with dnspython in a thread.

The answer is the list of hosts to try, in preference order (equal preferences shuffled),
each with its IPv4 then IPv6 addresses, all looked up through the same resolver.  No MX
record means the domain itself (the implicit MX); a null MX (``0 .``) means the domain
takes no mail: 556 5.1.10.  Answers are cached for their TTL; failures for a short while.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.resolver
from twisted.internet.defer import Deferred, succeed

from relaymail.relay.outcome import Outcome

NEGATIVE_TTL = 60.0
MAX_ADDRESSES = 10


@dataclass(frozen=True)
class MXHost:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class MXAnswer:
    """Either hosts to try or an outcome for every recipient of the domain."""

    hosts: tuple[MXHost, ...] = ()
    error: Outcome | None = None
    ttl: float = NEGATIVE_TTL


def parse_nameserver(text: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353``."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), int(port or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


def make_resolver(nameservers: Sequence[str] | None, timeout: float = 10.0
                  ) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        parsed = [parse_nameserver(n) for n in nameservers]
        resolver.nameservers = [host for host, _ in parsed]
        resolver.nameserver_ports = dict(parsed)
    resolver.lifetime = timeout
    return resolver


class MXResolver:
    """Looks up where a domain's mail goes; blocking DNS runs through ``run_in_thread``."""

    def __init__(self, resolver: dns.resolver.Resolver, run_in_thread: Callable[..., Deferred],
                 clock: Callable[[], float], rng: random.Random | None = None) -> None:
        self.resolver = resolver
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.rng = rng or random.Random()
        self.cache: dict[str, tuple[float, MXAnswer]] = {}

    def lookup(self, domain: str) -> Deferred:
        domain = domain.lower().rstrip(".")
        cached = self.cache.get(domain)
        if cached is not None and cached[0] > self.clock():
            return succeed(cached[1])
        d = self.run_in_thread(self.lookup_blocking, domain)
        d.addCallback(self._remember, domain)
        return d

    def _remember(self, answer: MXAnswer, domain: str) -> MXAnswer:
        self.cache[domain] = (self.clock() + answer.ttl, answer)
        return answer

    # ------------------------------------------------------------------ in the thread

    def lookup_blocking(self, domain: str) -> MXAnswer:
        try:
            answer = self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return MXAnswer(error=Outcome(550, f"5.1.2 domain {domain} does not exist"))
        except dns.resolver.NoAnswer:
            return self._implicit_mx(domain)
        except (dns.exception.DNSException, OSError) as e:
            return MXAnswer(error=Outcome(451, f"4.4.3 MX lookup for {domain} failed: "
                                               f"{type(e).__name__}"))
        records = [(r.preference, r.exchange) for r in answer]
        if len(records) == 1 and records[0][1] == dns.name.root:
            return MXAnswer(error=Outcome(556, f"5.1.10 {domain} accepts no mail (null MX)"),
                            ttl=answer.rrset.ttl if answer.rrset else NEGATIVE_TTL)
        hosts = self._hosts_in_order(records)
        ttl = float(answer.rrset.ttl) if answer.rrset else NEGATIVE_TTL
        if not any(h.addresses for h in hosts):
            return MXAnswer(error=Outcome(451, f"4.4.4 no address for the MX hosts of {domain}"))
        return MXAnswer(hosts=hosts, ttl=ttl)

    def _implicit_mx(self, domain: str) -> MXAnswer:
        addresses = self.addresses(domain)
        if not addresses:
            return MXAnswer(error=Outcome(550, f"5.1.2 {domain} has no MX and no address"))
        return MXAnswer(hosts=(MXHost(domain, addresses),))

    def _hosts_in_order(self, records: list[tuple[int, Any]]) -> tuple[MXHost, ...]:
        self.rng.shuffle(records)
        records.sort(key=lambda r: r[0])  # stable: equal preferences stay shuffled
        hosts, budget = [], MAX_ADDRESSES
        for _, exchange in records:
            if exchange == dns.name.root or budget <= 0:
                continue
            name = exchange.to_text(omit_final_dot=True)
            addresses = self.addresses(name)[:budget]
            budget -= len(addresses)
            hosts.append(MXHost(name, addresses))
        return tuple(hosts)

    def addresses(self, name: str) -> tuple[str, ...]:
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [r.address for r in self.resolver.resolve(name, rdtype)]
            except (dns.exception.DNSException, OSError):
                continue
        return tuple(found)
