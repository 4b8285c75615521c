"""Shared vocabulary of addresses and networks: who a client is, and how many sessions it
holds.  The inbound side, the policies and the console all use it (and it imports none of
them)."""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable

from relaymail.common.replies import Reply
from relaymail.config import IPNetwork, SMTPConfig

BLOCKED = Reply(554, "5.7.1", "Access denied: your network is blocked")
TOO_MANY = Reply(421, "4.7.0", "Too many connections; try again later")
TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address; try again later")


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address (an IPv4-mapped IPv6 one as IPv4), or None.  Cached: every session asks
    for its client's up to three times (blocked, exempt, trusted networks)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(ip: str, networks: Iterable[IPNetwork]) -> bool:
    address = parse_ip(ip)
    return address is not None and any(address in n for n in networks)


def is_loopback(ip: str) -> bool:
    address = parse_ip(ip)
    return address is not None and address.is_loopback


class ConnectionTracker:
    """Counts open SMTP sessions overall and per client IP, across all listeners."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.per_listener: Counter[str] = Counter()  # kept by the sessions, for metrics

    def admit(self, ip: str, config: SMTPConfig) -> Reply | None:
        """Register a session, or say why it must be refused."""
        if in_networks(ip, config.blocked_networks):
            return BLOCKED
        if self.total >= config.max_connections:
            return TOO_MANY
        if self.per_ip[ip] >= config.max_connections_per_ip:
            return TOO_MANY_FROM_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
