"""Routing: which transport carries a recipient, from the ordered ``routes`` of the config.

Domain patterns: ``example.com`` (that domain), ``*.example.com`` (its subdomains, not
itself), ``*`` (everything, address literals included).  A route may also name envelope
senders (addresses or domain patterns) and authenticated credentials: it then applies only
to their mail, which is how one personal mailbox maps to one provider login (Postfix's
``sender_dependent_relayhost_maps``).  The first matching route wins.
"""

from __future__ import annotations

from collections.abc import Iterable

from relaymail.config import RouteConfig, domain_matches

pattern_matches = domain_matches  # the name older callers use


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def sender_matches(patterns: Iterable[str], sender: str) -> bool:
    """An address pattern matches that address; a domain pattern the sender's domain."""
    sender = sender.lower()
    domain = recipient_domain(sender) if sender else ""
    for pattern in patterns:
        if "@" in pattern:
            if pattern == sender:
                return True
        elif sender and domain_matches(pattern, domain):
            return True
    return False


class Router:
    """Maps recipients to transport names; None when no route matches."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes = tuple(routes)

    def transport_for(self, address: str, sender: str = "",
                      credential: str | None = None) -> str | None:
        domain = recipient_domain(address)
        for route in self.routes:
            if route.senders and not sender_matches(route.senders, sender):
                continue
            if route.credentials and credential not in route.credentials:
                continue
            if any(domain_matches(p, domain) for p in route.domains):
                return route.transport
        return None

    def split(self, recipients: Iterable[str], sender: str = "",
              credential: str | None = None) -> dict[str | None, list[str]]:
        """Group recipients by transport, keeping their order (None: no route)."""
        groups: dict[str | None, list[str]] = {}
        for address in recipients:
            name = self.transport_for(address, sender, credential)
            groups.setdefault(name, []).append(address)
        return groups
