"""The ``transports`` section: named transports, their upstreams (with presets, provider
throttles, credentials), and the sender rules upstreams enforce (``sender_rewrite``,
``bounce_sender``, and what a preset's sender rule implies)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check
from relaymail.config.defaults import UPSTREAM, fill, item_defaults
from relaymail.config.oauth2 import OAuth2Config, validate_oauth2
from relaymail.config.presets import PRESETS
from relaymail.config.routes import domain_matches, patterns

TRANSPORT = "transports.*"
SENDER_REWRITE = f"{UPSTREAM}.sender_rewrite"
_TRANSPORT = item_defaults(TRANSPORT)
_UPSTREAM = item_defaults(UPSTREAM)
_SENDER_REWRITE = item_defaults(SENDER_REWRITE)
TRANSPORT_KEYS = {"type", "upstreams", "path", "fallback", "require_tls", "port", "nameservers",
                  "received", "strip_received"}
UPSTREAM_KEYS = {"preset", "host", "port", "tls", "verify", "ca_file", "username", "password",
                 "helo", "max_connections", "max_rate", "oauth2", "sender_rewrite",
                 "bounce_sender", "allow_insecure_auth"}
SENDER_REWRITE_KEYS = {"address", "domains", "header_from", "reply_to"}
TRANSPORT_TYPES = ("smarthost", "mx", "smtp", "maildir")
UPSTREAM_TLS_MODES = ("starttls", "implicit", "opportunistic", "none")
RATE_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400,
              "day": 86400}
ADDRESS_RE = re.compile(r"[^\s@<>()\[\]\\,;:\"]+@[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True)
class SenderRewrite:
    """The sender an upstream insists on (its login mailbox, or a verified domain)."""

    address: str  # the envelope sender and header From to use instead
    # senders already in these domains are left alone
    domains: tuple[str, ...] = tuple(_SENDER_REWRITE["domains"])
    # rewrite the header From too (keeping the display name)
    header_from: bool = _SENDER_REWRITE["header_from"]
    # add Reply-To: the original author, when there was none
    reply_to: bool = _SENDER_REWRITE["reply_to"]

    def keeps(self, sender: str) -> bool:
        """True when ``sender`` may go through this upstream unchanged."""
        if sender.lower() == self.address.lower():
            return True
        domain = sender.rpartition("@")[2].rstrip(".").lower()
        return bool(sender) and any(domain_matches(p, domain) for p in self.domains)


@dataclass(frozen=True)
class UpstreamConfig:
    """One server a smarthost or smtp transport relays through."""

    host: str
    port: int
    tls: str
    verify: bool = _UPSTREAM["verify"]
    ca_file: str | None = _UPSTREAM["ca_file"]
    username: str | None = _UPSTREAM["username"]
    password: str | None = _UPSTREAM["password"]
    helo: str | None = _UPSTREAM["helo"]
    preset: str | None = _UPSTREAM["preset"]
    max_connections: int | None = _UPSTREAM["max_connections"]  # provider throttle: sessions
    max_rate: tuple[int, float] | None = _UPSTREAM["max_rate"]  # messages per seconds
    oauth2: OAuth2Config | None = _UPSTREAM["oauth2"]  # XOAUTH2/OAUTHBEARER, not a password
    sender_rewrite: SenderRewrite | None = _UPSTREAM["sender_rewrite"]  # its sender rule
    bounce_sender: str | None = _UPSTREAM["bounce_sender"]  # MAIL FROM for bounces (163)
    allow_insecure_auth: bool = _UPSTREAM["allow_insecure_auth"]  # creds to unverified server

    def __repr__(self) -> str:
        """Never shows the password (nor the OAuth2 secrets)."""
        return (f"UpstreamConfig(host={self.host!r}, port={self.port!r}, tls={self.tls!r}, "
                f"username={self.username!r}, preset={self.preset!r})")


@dataclass(frozen=True)
class TransportConfig:
    """One named transport: where and how the mail routed to it is delivered."""

    name: str
    type: str  # smarthost | mx | smtp | maildir
    upstreams: tuple[UpstreamConfig, ...] = tuple(_TRANSPORT["upstreams"])
    path: str | None = _TRANSPORT["path"]
    fallback: str | None = _TRANSPORT["fallback"]
    require_tls: bool = _TRANSPORT["require_tls"]
    port: int = _TRANSPORT["port"]
    nameservers: tuple[str, ...] = tuple(_TRANSPORT["nameservers"])
    received: str = _TRANSPORT["received"]  # full | anonymous: without the client part
    strip_received: bool = _TRANSPORT["strip_received"]  # drop the client's Received headers


def validate_transports(c: Check, value: Any) -> dict[str, TransportConfig]:
    """The ``transports`` object; a ``fallback`` names another of them."""
    if not isinstance(value, dict):
        raise c.fail("transports", "expected an object of named transports", value)
    out = {name: validate_transport(c, name, item) for name, item in value.items()}
    for name, transport in out.items():
        if transport.fallback is not None and transport.fallback not in out:
            raise c.fail(f"transports.{name}.fallback", "names no transport", transport.fallback)
    return out


def validate_transport(c: Check, name: str, item: Any) -> TransportConfig:
    """One ``transports.NAME``: smarthost and smtp need upstreams, maildir a path."""
    key = f"transports.{name}"
    given = c.obj(item, key, TRANSPORT_KEYS)
    d = fill(TRANSPORT, given)
    kind = c.choice(d.get("type"), f"{key}.type", TRANSPORT_TYPES)
    upstreams = tuple(
        validate_upstream(c, u, f"{key}.upstreams[{i}]")
        for i, u in enumerate(c.array(d["upstreams"], f"{key}.upstreams"))
    )
    if kind in ("smarthost", "smtp") and not upstreams:
        raise c.fail(f"{key}.upstreams", f"a {kind} transport needs at least one upstream")
    if kind == "maildir" and "path" not in given:
        raise c.fail(f"{key}.path", "a maildir transport needs a path")
    return TransportConfig(
        name=name, type=kind, upstreams=upstreams,
        path=c.path(d["path"], f"{key}.path", allow_none=True),
        fallback=c.string(d["fallback"], f"{key}.fallback", allow_none=True),
        require_tls=c.boolean(d["require_tls"], f"{key}.require_tls"),
        port=c.port(d["port"], f"{key}.port"),
        nameservers=tuple(
            c.string(n, f"{key}.nameservers[{i}]")
            for i, n in enumerate(c.array(d["nameservers"], f"{key}.nameservers"))),
        received=c.choice(d["received"], f"{key}.received", ("full", "anonymous")),
        strip_received=c.boolean(d["strip_received"], f"{key}.strip_received"),
    )


def with_preset(c: Check, d: dict[str, Any], key: str) -> dict[str, Any]:
    """The upstream's keys over its preset's (host, port, tls, throttle, sender rule)."""
    preset_name = d.get("preset")
    if preset_name is None:
        return d
    preset = PRESETS.get(preset_name)
    if preset is None:
        raise c.fail(f"{key}.preset", f"unknown preset; known: {', '.join(PRESETS)}",
                     preset_name)
    return {**preset.as_upstream(), **preset_sender_rule(preset.sender_rule, d), **d}


def validate_upstream(c: Check, item: Any, key: str) -> UpstreamConfig:
    """One ``transports.NAME.upstreams[N]``, its preset applied and its credentials'
    safety checked (see :func:`check_auth_security`)."""
    d = fill(UPSTREAM, with_preset(c, dict(c.obj(item, key, UPSTREAM_KEYS)), key))
    upstream = UpstreamConfig(
        host=c.string(d.get("host"), f"{key}.host"),
        port=c.port(d["port"], f"{key}.port"),
        tls=c.choice(d["tls"], f"{key}.tls", UPSTREAM_TLS_MODES),
        verify=c.boolean(d["verify"], f"{key}.verify"),
        ca_file=c.path(d["ca_file"], f"{key}.ca_file", allow_none=True),
        username=c.string(d["username"], f"{key}.username", allow_none=True),
        password=c.string(d["password"], f"{key}.password", allow_none=True),
        helo=c.string(d["helo"], f"{key}.helo", allow_none=True),
        preset=d["preset"],
        max_connections=None if d["max_connections"] is None else c.integer(
            d["max_connections"], f"{key}.max_connections", 1),
        max_rate=parse_rate(c, d["max_rate"], f"{key}.max_rate"),
        oauth2=validate_oauth2(c, d["oauth2"], f"{key}.oauth2"),
        sender_rewrite=validate_sender_rewrite(c, d, f"{key}.sender_rewrite"),
        bounce_sender=validate_address(c, d["bounce_sender"], f"{key}.bounce_sender"),
        allow_insecure_auth=c.boolean(d["allow_insecure_auth"], f"{key}.allow_insecure_auth"),
    )
    check_auth_security(c, upstream, key)
    return upstream


def check_auth_security(c: Check, upstream: UpstreamConfig, key: str) -> None:
    """Credentials go only to a server whose certificate was checked: ``starttls`` or
    ``implicit`` with ``verify``.  ``opportunistic`` (unverified, and plaintext when STARTTLS
    fails), ``verify: false`` and ``none`` would hand the password or token to whoever
    answers; that takes an explicit ``allow_insecure_auth: true`` on the upstream."""
    if upstream.allow_insecure_auth or not (upstream.username or upstream.password
                                            or upstream.oauth2):
        return
    what = "a password" if upstream.password else \
        "an OAuth2 token" if upstream.oauth2 else "a login"
    fix = 'use "starttls" (or "implicit") with verify, or set allow_insecure_auth'
    if upstream.tls == "none":
        raise c.fail(f"{key}.tls", f'"none" with {what} sends it in plaintext; {fix}')
    if upstream.tls == "opportunistic":
        raise c.fail(f"{key}.tls", f'"opportunistic" with {what} sends it to an unverified '
                     f'server; use "starttls" with verify, or set allow_insecure_auth')
    if not upstream.verify:
        raise c.fail(f"{key}.verify", f"false with {what} sends it to an unverified server; "
                     f"keep verify (give ca_file for a private CA), or set "
                     f"allow_insecure_auth")


def preset_sender_rule(rule: str, upstream: Mapping[str, Any]) -> dict[str, Any]:
    """What a preset's sender rule implies when the upstream says nothing: for "login"
    providers (QQ, 163, Outlook, Gmail, ...) senders are rewritten to the login and bounces
    go from it; for "domain" ones (Mailgun) only senders outside the login's domain are.
    Only with an address as the username; ``"sender_rewrite": false`` turns it off."""
    username = upstream.get("username")
    if not isinstance(username, str) or "@" not in username or rule == "verified":
        return {}
    if rule == "domain":
        return {"sender_rewrite": {"domains": [username.rpartition("@")[2].lower()]}}
    return {"sender_rewrite": {}, "bounce_sender": username}


def validate_address(c: Check, value: Any, key: str) -> str | None:
    """A plain mailbox ``local@domain`` (no display name, no brackets); None when absent."""
    if value is None:
        return None
    text = c.string(value, key)
    if not ADDRESS_RE.fullmatch(text):
        raise c.fail(key, "expected an address like relay@example.com", value)
    return text


def validate_sender_rewrite(c: Check, upstream: Mapping[str, Any], key: str
                            ) -> SenderRewrite | None:
    """``"login"`` as the address means the upstream's username (QQ, 163, Outlook, Gmail)."""
    value = upstream.get("sender_rewrite")
    if value is None or value is False:
        return None
    d = fill(SENDER_REWRITE, c.obj(value, key, SENDER_REWRITE_KEYS))
    address = d["address"]
    if address == "login":
        address = upstream.get("username")
        if not isinstance(address, str) or "@" not in address:
            raise c.fail(f"{key}.address", "\"login\" needs a username that is an address; "
                         "give the address to send as", upstream.get("username"))
    return SenderRewrite(
        address=validate_address(c, address, f"{key}.address") or "",
        domains=patterns(c, d["domains"], f"{key}.domains"),
        header_from=c.boolean(d["header_from"], f"{key}.header_from"),
        reply_to=c.boolean(d["reply_to"], f"{key}.reply_to"),
    )


def parse_rate(c: Check, value: Any, key: str) -> tuple[int, float] | None:
    """``"10/s"``, ``"100/min"``, ``"500/h"``, ``"2000/d"`` -> (count, seconds)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 1 or m.group(2) not in RATE_UNITS:
        raise c.fail(key, "expected a rate like \"10/s\", \"100/min\", \"500/h\" or "
                     "\"2000/d\"", value)
    return int(m.group(1)), float(RATE_UNITS[m.group(2)])
