"""Routing: which transport carries a recipient, from the ordered ``routes`` of the config.

Patterns: ``example.com`` (that domain), ``*.example.com`` (its subdomains, not itself),
``*`` (everything, address literals included).  The first matching route wins.
"""

from __future__ import annotations

from collections.abc import Iterable

from relaymail.config import RouteConfig


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def pattern_matches(pattern: str, domain: str) -> bool:
    if pattern == "*":
        return True
    pattern = pattern.rstrip(".")
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and domain != pattern[2:]
    return domain == pattern


class Router:
    """Maps recipients to transport names; None when no route matches."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes = tuple(routes)

    def transport_for(self, address: str) -> str | None:
        domain = recipient_domain(address)
        for route in self.routes:
            if any(pattern_matches(p, domain) for p in route.domains):
                return route.transport
        return None

    def split(self, recipients: Iterable[str]) -> dict[str | None, list[str]]:
        """Group recipients by transport, keeping their order (None: no route)."""
        groups: dict[str | None, list[str]] = {}
        for address in recipients:
            groups.setdefault(self.transport_for(address), []).append(address)
        return groups
