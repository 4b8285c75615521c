"""The ``smtp`` section: listeners and their endpoints, TLS files, trusted, blocked and
proxy networks, session limits and what DATA may contain."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import serverFromString

from relaymail.config.check import Check, IPNetwork
from relaymail.config.defaults import fill, item_defaults

LISTENER = "smtp.listeners[]"
_LISTENER = item_defaults(LISTENER)
LISTENER_KEYS = {"name", "endpoint", "tls", "auth", "proxy_protocol"}
TLS_MODES = ("none", "starttls", "implicit")
AUTH_MODES = ("optional", "required", "plaintext-loopback")
ENDPOINT_KINDS = ("tcp", "tcp6", "unix")


@dataclass(frozen=True)
class ListenerConfig:
    """One SMTP listener: its endpoint, TLS mode and AUTH rule."""

    name: str
    endpoint: str
    tls: str = "starttls"  # none | starttls | implicit (default: starttls with a certificate)
    auth: str = _LISTENER["auth"]  # optional | required | plaintext-loopback
    proxy_protocol: bool = _LISTENER["proxy_protocol"]


@dataclass(frozen=True)
class TLSConfig:
    """A PEM certificate chain and private key (both or neither)."""

    certificate: str | None
    private_key: str | None
    self_signed: bool  # generate the pair at first start when the files do not exist


@dataclass(frozen=True)
class SMTPConfig:
    """The ``smtp`` section, validated."""

    listeners: tuple[ListenerConfig, ...]
    tls: TLSConfig
    trusted_networks: tuple[IPNetwork, ...]
    blocked_networks: tuple[IPNetwork, ...]
    max_message_size: int
    max_recipients: int
    max_connections: int
    max_connections_per_ip: int
    max_errors: int
    idle_timeout: float
    max_line_length: int  # command lines; DATA lines may be longer (folded, see below)
    bare_line_endings: str  # normalize | reject
    max_header_size: int  # the client's header block; more: 552 5.3.4
    proxy_trusted_networks: tuple[IPNetwork, ...]  # who may send a PROXY header
    strip_characters: bytes  # removed from DATA (Postfix message_strip_characters)
    reject_characters: bytes  # a message containing one is refused, 550 5.6.0
    fold_line_length: int  # DATA lines longer than this are folded at acceptance
    workers: int = 0  # acceptor processes; 0: sessions run in the main process


def validate_smtp(c: Check, s: dict[str, Any]) -> SMTPConfig:
    """``s`` is the section merged over its defaults."""
    tls_conf = validate_smtp_tls(c, s["tls"])
    listeners = tuple(
        validate_listener(c, item, f"smtp.listeners[{i}]", tls_conf)
        for i, item in enumerate(c.array(s["listeners"], "smtp.listeners"))
    )
    if not listeners:
        raise c.fail("smtp.listeners", "at least one listener is needed", [])
    check_unique_names(c, listeners)
    return SMTPConfig(
        listeners=listeners,
        tls=tls_conf,
        trusted_networks=c.networks(s["trusted_networks"], "smtp.trusted_networks"),
        blocked_networks=c.networks(s["blocked_networks"], "smtp.blocked_networks"),
        max_message_size=c.integer(s["max_message_size"], "smtp.max_message_size", 1024),
        max_recipients=c.integer(s["max_recipients"], "smtp.max_recipients", 1),
        max_connections=c.integer(s["max_connections"], "smtp.max_connections", 1),
        max_connections_per_ip=c.integer(s["max_connections_per_ip"],
                                         "smtp.max_connections_per_ip", 1),
        max_errors=c.integer(s["max_errors"], "smtp.max_errors", 1),
        idle_timeout=c.number(s["idle_timeout"], "smtp.idle_timeout", 1),
        max_line_length=c.integer(s["max_line_length"], "smtp.max_line_length", 1000),
        bare_line_endings=c.choice(s["bare_line_endings"], "smtp.bare_line_endings",
                                   ("normalize", "reject")),
        max_header_size=validate_header_size(c, s["max_header_size"]),
        fold_line_length=validate_fold_length(c, s["fold_line_length"]),
        proxy_trusted_networks=validate_proxy_trust(c, s["proxy_trusted_networks"], listeners),
        strip_characters=control_characters(c, s["strip_characters"], "smtp.strip_characters"),
        reject_characters=control_characters(c, s["reject_characters"],
                                             "smtp.reject_characters"),
        workers=validate_workers(c, s["workers"]),
    )


MAX_WORKERS = 64


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` and cgroup cpusets respected)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def validate_workers(c: Check, value: Any) -> int:
    """``smtp.workers``: acceptor processes; null (the default) = one per usable core,
    0 = the SMTP sessions run in the main process (tests, small installs)."""
    if value is None:
        return usable_cores()
    n = c.integer(value, "smtp.workers", 0)
    if n > MAX_WORKERS:
        raise c.fail("smtp.workers", f"at most {MAX_WORKERS}", value)
    return n


def validate_smtp_tls(c: Check, value: Any) -> TLSConfig:
    """``smtp.tls``, merged over its defaults: the files for STARTTLS and implicit TLS."""
    tls = fill("smtp.tls", c.obj(value, "smtp.tls", {"certificate", "private_key",
                                                    "self_signed"}))
    conf = TLSConfig(
        certificate=c.path(tls["certificate"], "smtp.tls.certificate", allow_none=True),
        private_key=c.path(tls["private_key"], "smtp.tls.private_key", allow_none=True),
        self_signed=c.boolean(tls["self_signed"], "smtp.tls.self_signed"),
    )
    if (conf.certificate is None) != (conf.private_key is None):
        raise c.fail("smtp.tls", "certificate and private_key must be set together")
    return conf


def control_characters(c: Check, value: Any, key: str) -> bytes:
    """Characters to strip from or refuse in DATA: C0 controls and DEL only (``"\\u0000"``
    in JSON for NUL); CR and LF are the line ends' business (``bare_line_endings``)."""
    if not isinstance(value, str) or any(not (ord(ch) < 32 or ord(ch) == 127) or ch in "\r\n"
                                         for ch in value):
        raise c.fail(key, "expected control characters other than CR and LF, e.g. "
                     "\"\\u0000\"", value)
    return value.encode("ascii")


def validate_proxy_trust(c: Check, value: Any, listeners: tuple[ListenerConfig, ...]
                         ) -> tuple[IPNetwork, ...]:
    """A PROXY header is believed only from these networks, so a listener with
    ``proxy_protocol`` needs them (HAProxy's addresses): without, anyone could claim to be
    a trusted client."""
    networks = c.networks(value, "smtp.proxy_trusted_networks")
    proxied = [i for i, listener in enumerate(listeners) if listener.proxy_protocol]
    if proxied and not networks:
        raise c.fail("smtp.proxy_trusted_networks", f"smtp.listeners[{proxied[0]}] has "
                     "proxy_protocol: list the networks your proxies connect from, e.g. "
                     "[\"127.0.0.1/32\"]; a PROXY header from anyone else is refused", [])
    return networks


MAX_HEADER_SIZE = 1_900_000  # below what the relay reads to edit a header block (2 MiB)


def validate_header_size(c: Check, value: Any) -> int:
    """1 KiB to about 1.9 MB: the relay edits header blocks it reads whole (rewrite.py)."""
    n = c.integer(value, "smtp.max_header_size", 1024)
    if n > MAX_HEADER_SIZE:
        raise c.fail("smtp.max_header_size", f"at most {MAX_HEADER_SIZE}", value)
    return n


def validate_fold_length(c: Check, value: Any) -> int:
    """78..998 (RFC 5322 2.1.1: 998 octets is the hard limit, 78 the recommended one)."""
    n = c.integer(value, "smtp.fold_line_length", 78)
    if n > 998:
        raise c.fail("smtp.fold_line_length", "at most 998 (RFC 5322 2.1.1)", value)
    return n


def validate_listener(c: Check, item: Any, key: str, tls: TLSConfig) -> ListenerConfig:
    """One ``smtp.listeners[N]``; its ``tls`` defaults to starttls when there is a
    certificate, and needs one unless it is ``none``."""
    given = c.obj(item, key, LISTENER_KEYS)
    if "endpoint" not in given:
        raise c.fail(f"{key}.endpoint", "missing; e.g. \"tcp:2525:interface=127.0.0.1\"")
    d = fill(LISTENER, {"name": key, "tls": "starttls" if tls.certificate else "none",
                        **given})
    listener = ListenerConfig(
        name=c.string(d["name"], f"{key}.name"),
        endpoint=validate_endpoint(c, d["endpoint"], f"{key}.endpoint"),
        tls=c.choice(d["tls"], f"{key}.tls", TLS_MODES),
        auth=c.choice(d["auth"], f"{key}.auth", AUTH_MODES),
        proxy_protocol=c.boolean(d["proxy_protocol"], f"{key}.proxy_protocol"),
    )
    if listener.tls != "none" and tls.certificate is None:
        raise c.fail(f"{key}.tls", "needs smtp.tls.certificate and smtp.tls.private_key",
                     listener.tls)
    return listener


def check_unique_names(c: Check, listeners: tuple[ListenerConfig, ...]) -> None:
    """No two listeners with one name (it is shown in logs and the Received header)."""
    seen: dict[str, int] = {}
    for i, listener in enumerate(listeners):
        if listener.name in seen:
            raise c.fail(f"smtp.listeners[{i}].name", "duplicate listener name", listener.name)
        seen[listener.name] = i


def validate_endpoint(c: Check, value: Any, key: str) -> str:
    """A Twisted server endpoint string (tcp, tcp6 or unix), in any form Twisted's own
    parser takes (``tcp6:2525:interface=\\:\\:1`` with escaped colons included); checked
    by that parser without listening, then for a port in 0-65535 and a literal interface."""
    text = c.string(value, key)
    parts = split_endpoint(text)
    if parts[0] not in ENDPOINT_KINDS or len(parts) < 2:
        raise c.fail(key, "expected a Twisted endpoint like tcp:2525:interface=127.0.0.1", text)
    try:
        serverFromString(None, text)  # constructs only; nothing listens
    except (TypeError, ValueError) as e:
        raise c.fail(key, f"not a Twisted endpoint: {endpoint_problem(e)}", text) from None
    if parts[0] == "unix":
        return text
    port, interface, kind = endpoint_address(text)
    if port is None or not 0 <= port <= 65535:
        raise c.fail(key, "expected a port number 0-65535 after tcp:", text)
    if interface:
        check_interface(c, interface, kind, key, text)
    return text


def check_interface(c: Check, interface: str, kind: str, key: str, text: str) -> None:
    """A tcp endpoint's interface is an IPv4 address, a tcp6 one's an IPv6 address."""
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        raise c.fail(key, "interface must be an IP address", interface) from None
    if (address.version == 6) != (kind == "tcp6"):
        wanted = "tcp6" if address.version == 6 else "tcp"
        raise c.fail(key, f"interface {interface} needs {wanted}:", text)


def endpoint_problem(e: Exception) -> str:
    """Twisted's complaint about an endpoint string, shortened for an operator."""
    text = str(e)
    m = re.search(r"unexpected keyword argument '(\w+)'", text)
    return f"unknown endpoint option {m.group(1)!r}" if m else text


def split_endpoint(text: str) -> list[str]:
    """Split on unescaped colons, undoing the escapes (Twisted's quoting: ``\\`` takes the
    next character literally)."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def endpoint_address(text: str) -> tuple[int | None, str, str]:
    """Return (port, interface, kind) of a tcp/tcp6 endpoint string; port None if unparsable."""
    parts = split_endpoint(text)
    kind = parts[0]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    port_text = options.get("port", positional[0] if positional else "")
    interface = options.get("interface", positional[1] if len(positional) > 1 else "")
    try:
        port = int(port_text)
    except ValueError:
        port = None
    return port, interface, kind
