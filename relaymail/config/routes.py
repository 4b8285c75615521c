"""The ``routes`` section (recipient domains, and optionally senders or logins, to a
transport) and the domain patterns routes and sender rules are written in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check
from relaymail.config.defaults import fill, item_defaults

ROUTE = "routes[]"
_ROUTE = item_defaults(ROUTE)
ROUTE_KEYS = {"domains", "transport", "senders", "credentials"}
DOMAIN_PATTERN = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)$")


@dataclass(frozen=True)
class RouteConfig:
    """Recipient domains -> transport; optionally only for some senders or logins."""

    domains: tuple[str, ...]
    transport: str
    # envelope sender address, domain or *.domain; () = any
    senders: tuple[str, ...] = tuple(_ROUTE["senders"])
    credentials: tuple[str, ...] = tuple(_ROUTE["credentials"])  # credential names; () = any


def domain_matches(pattern: str, domain: str) -> bool:
    """``example.com`` (that domain), ``*.example.com`` (its subdomains, not itself), ``*``."""
    if pattern == "*":
        return True
    pattern = pattern.rstrip(".")
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and domain != pattern[2:]
    return domain == pattern


def validate_routes(c: Check, value: Any, transports: Mapping[str, object]
                    ) -> tuple[RouteConfig, ...]:
    """The ``routes`` list; every route names one of ``transports``."""
    return tuple(validate_route(c, item, f"routes[{i}]", transports)
                 for i, item in enumerate(c.array(value, "routes")))


def validate_route(c: Check, item: Any, key: str, transports: Mapping[str, object]
                   ) -> RouteConfig:
    """One ``routes[N]``: ``domains`` may be left out when ``senders`` or ``credentials``
    say whose mail it is (it then means every domain)."""
    d = fill(ROUTE, c.obj(item, key, ROUTE_KEYS))
    senders = patterns(c, d["senders"], f"{key}.senders", allow_address=True)
    credentials = tuple(c.string(x, f"{key}.credentials[{j}]")
                        for j, x in enumerate(c.array(d["credentials"], f"{key}.credentials")))
    default_domains = ["*"] if senders or credentials else None
    domains = patterns(c, d.get("domains", default_domains), f"{key}.domains")
    name = c.string(d.get("transport"), f"{key}.transport")
    if name not in transports:
        raise c.fail(f"{key}.transport", "names no transport in transports", name)
    return RouteConfig(domains=domains, transport=name, senders=senders,
                       credentials=credentials)


def patterns(c: Check, value: Any, key: str, allow_address: bool = False) -> tuple[str, ...]:
    """Domain patterns (``example.com``, ``*.example.com``, ``*``), lower case; with
    ``allow_address`` also whole addresses (``alice@example.com``)."""
    out = []
    for j, item in enumerate(c.array(value, key)):
        text = item if isinstance(item, str) else ""
        local, at, domain = text.rpartition("@")
        ok = DOMAIN_PATTERN.match(domain if at else text) is not None
        if at and (not allow_address or not local or "*" in text):
            ok = False  # "*@example.com" is written "example.com"
        if not ok:
            what = "a domain, *.domain, * or an address" if allow_address else \
                "a domain, *.domain or *"
            raise c.fail(f"{key}[{j}]", f"expected {what}", item)
        out.append(text.lower())
    return tuple(out)
