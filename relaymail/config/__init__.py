"""Configuration: defaults, then the JSON file, then environment overrides, then validation.

The result is a tree of frozen dataclasses.  Every error names the file, the key path and
the offending value, so that an operator can fix it without reading a traceback.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import serverFromString

from relaymail.config.presets import PRESETS

ENV_PREFIX = "RELAYMAIL_"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, phrased as ``file: key.path: problem (got value)``."""

    def __init__(self, source: str, key: str, problem: str, value: Any = None) -> None:
        self.source, self.key, self.problem, self.value = source, key, problem, value
        shown = "" if value is None else f" (got {json.dumps(value, default=str)})"
        where = f"{key}: " if key else ""
        super().__init__(f"{source}: {where}{problem}{shown}")


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    endpoint: str
    tls: str = "starttls"  # none | starttls | implicit
    auth: str = "optional"  # optional | required | plaintext-loopback
    proxy_protocol: bool = False


@dataclass(frozen=True)
class TLSConfig:
    certificate: str | None
    private_key: str | None
    self_signed: bool = False


@dataclass(frozen=True)
class SMTPConfig:
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
    max_header_size: int = 1_048_576  # the client's header block; more: 552 5.3.4
    proxy_trusted_networks: tuple[IPNetwork, ...] = ()  # who may send a PROXY header
    strip_characters: bytes = b"\x00"  # removed from DATA (Postfix message_strip_characters)
    reject_characters: bytes = b""  # a message containing one is refused, 550 5.6.0
    fold_line_length: int = 998  # DATA lines longer than this are folded at acceptance


@dataclass(frozen=True)
class OAuth2Config:
    """How relaymail gets an access token for SASL XOAUTH2/OAUTHBEARER (RFC 6749, 7628).

    ``token_url`` (and the scope and flow URLs) may be left out with an outlook or gmail
    preset: relaymail.relay.oauth2.resolve fills them from the preset, using ``tenant``."""

    token_url: str | None
    client_id: str
    grant: str = "refresh_token"  # refresh_token | client_credentials
    client_secret: str | None = None
    refresh_token: str | None = None
    scope: str | None = None
    mechanism: str = "XOAUTH2"  # XOAUTH2 | OAUTHBEARER
    authorize_url: str | None = None  # for `relaymail oauth2 authorize` (code flow)
    device_url: str | None = None  # for `relaymail oauth2 authorize --device`
    tenant: str | None = None  # Microsoft: directory (tenant) ID or domain; default "common"

    def __repr__(self) -> str:  # never show the secrets
        return (f"OAuth2Config(token_url={self.token_url!r}, client_id={self.client_id!r}, "
                f"grant={self.grant!r}, mechanism={self.mechanism!r})")


@dataclass(frozen=True)
class SenderRewrite:
    """The sender an upstream insists on (its login mailbox, or a verified domain)."""

    address: str  # the envelope sender and header From to use instead
    domains: tuple[str, ...] = ()  # senders already in these domains are left alone
    header_from: bool = True  # rewrite the header From too (keeping the display name)
    reply_to: bool = True  # add Reply-To: the original author, when there was none

    def keeps(self, sender: str) -> bool:
        """True when ``sender`` may go through this upstream unchanged."""
        if sender.lower() == self.address.lower():
            return True
        domain = sender.rpartition("@")[2].rstrip(".").lower()
        return bool(sender) and any(domain_matches(p, domain) for p in self.domains)


def domain_matches(pattern: str, domain: str) -> bool:
    """``example.com`` (that domain), ``*.example.com`` (its subdomains, not itself), ``*``."""
    if pattern == "*":
        return True
    pattern = pattern.rstrip(".")
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) and domain != pattern[2:]
    return domain == pattern


@dataclass(frozen=True)
class UpstreamConfig:
    host: str
    port: int
    tls: str
    verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    helo: str | None = None
    preset: str | None = None
    max_connections: int | None = None  # provider throttle: sessions at once
    max_rate: tuple[int, float] | None = None  # provider throttle: messages per seconds
    oauth2: OAuth2Config | None = None  # AUTH XOAUTH2/OAUTHBEARER instead of a password
    sender_rewrite: SenderRewrite | None = None  # the sender rule this upstream enforces
    bounce_sender: str | None = None  # MAIL FROM for bounces where <> is refused (163)
    allow_insecure_auth: bool = False  # credentials to an unverified or plaintext server

    def __repr__(self) -> str:  # never show the password
        return (f"UpstreamConfig(host={self.host!r}, port={self.port!r}, tls={self.tls!r}, "
                f"username={self.username!r}, preset={self.preset!r})")


@dataclass(frozen=True)
class TransportConfig:
    name: str
    type: str  # smarthost | mx | smtp | maildir
    upstreams: tuple[UpstreamConfig, ...] = ()
    path: str | None = None
    fallback: str | None = None
    require_tls: bool = False
    port: int = 25
    nameservers: tuple[str, ...] = ()
    received: str = "full"  # full | anonymous: our Received header without the client part
    strip_received: bool = False  # drop the Received headers the client's mail already had


@dataclass(frozen=True)
class RouteConfig:
    """Recipient domains -> transport; optionally only for some senders or logins."""

    domains: tuple[str, ...]
    transport: str
    senders: tuple[str, ...] = ()  # envelope sender address, domain or *.domain; () = any
    credentials: tuple[str, ...] = ()  # authenticated credential names; () = any


@dataclass(frozen=True)
class DeliveryConfig:
    concurrency: int
    per_destination_concurrency: int
    batch_size: int
    batch_delay: float
    retry_schedule: tuple[float, ...]
    max_queue_lifetime: float
    bounces: bool
    connect_timeout: float
    command_timeout: float


@dataclass(frozen=True)
class WebConfig:
    enabled: bool
    endpoint: str
    admin_user: str
    admin_password_hash: str | None
    open_metrics_to_loopback: bool
    history_file: str | None = None  # SQLite delivery history; None: <spool_dir>/history.db
    history_retention_days: float = 30
    # Host header names the console answers to (any port); the endpoint's own address and
    # the address a connection arrived at are accepted too.  "*": any.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    max_body_size: int = 65_536  # request bodies; /api/send: see relaymail.web.guard
    tls: TLSConfig = TLSConfig(None, None)  # the console over HTTPS (certificate, private_key)
    behind_tls_proxy: bool = False  # browsers reach it through a TLS proxy: Secure cookies
    trusted_proxies: tuple[IPNetwork, ...] = (  # their X-Forwarded-Proto is believed
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class LogConfig:
    level: str


@dataclass(frozen=True)
class Config:
    path: str
    hostname: str
    spool_dir: str
    smtp: SMTPConfig
    credentials_file: str
    routes: tuple[RouteConfig, ...]
    transports: Mapping[str, TransportConfig]
    delivery: DeliveryConfig
    dkim: tuple[Mapping[str, Any], ...]
    rate_limits: Any  # relaymail.policy.settings.RateLimitConfig
    web: WebConfig
    log: LogConfig


DEFAULTS: dict[str, Any] = {
    "hostname": "localhost",
    "spool_dir": "var/spool",
    "smtp": {
        "listeners": [{"name": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"}],
        "tls": {"certificate": None, "private_key": None, "self_signed": False},
        "trusted_networks": ["127.0.0.0/8", "::1/128"],
        "blocked_networks": [],
        "max_message_size": 36_700_160,
        "max_recipients": 100,
        "max_connections": 1000,
        "max_connections_per_ip": 50,
        "max_errors": 20,
        "idle_timeout": 300,
        "max_line_length": 16_384,
        "bare_line_endings": "normalize",
        "max_header_size": 1_048_576,
        "fold_line_length": 998,
        "proxy_trusted_networks": [],
        "strip_characters": "\u0000",
        "reject_characters": "",
    },
    "credentials_file": "credentials.json",
    "routes": [{"domains": ["*"], "transport": "outbox"}],
    "transports": {"outbox": {"type": "maildir", "path": "var/outbox"}},
    "delivery": {
        "concurrency": 20,
        "per_destination_concurrency": 5,
        "batch_size": 50,
        "batch_delay": 0,
        "retry_schedule": [60, 300, 900, 1800, 3600, 7200, 14400],
        "max_queue_lifetime": 432_000,
        "bounces": True,
        "connect_timeout": 10,
        "command_timeout": 300,
    },
    "dkim": [],
    "rate_limits": {
        "backend": "memory",
        "per_sender": None,
        "per_ip": None,
        "per_credential": None,
        "global": None,
        "count": "messages",
        "exempt_networks": [],
        "on_backend_error": "allow",
        "backend_timeout": 1.0,
        "auth_failures": {"max_failures": 5, "window": 900, "lockout": 60, "max_lockout": 3600},
    },
    "web": {
        "enabled": True,
        "endpoint": "tcp:8025:interface=127.0.0.1",
        "admin_user": "admin",
        "admin_password_hash": None,
        "open_metrics_to_loopback": True,
        "history_file": None,
        "history_retention_days": 30,
        "allowed_hosts": ["localhost", "127.0.0.1", "::1"],
        "max_body_size": 65_536,
        "tls": {"certificate": None, "private_key": None},
        "behind_tls_proxy": False,
        "trusted_proxies": ["127.0.0.0/8", "::1/128"],
    },
    "log": {"level": "info"},
}

LISTENER_KEYS = {"name", "endpoint", "tls", "auth", "proxy_protocol"}
UPSTREAM_KEYS = {"preset", "host", "port", "tls", "verify", "ca_file", "username", "password",
                 "helo", "max_connections", "max_rate", "oauth2", "sender_rewrite",
                 "bounce_sender", "allow_insecure_auth"}
OAUTH2_KEYS = {"token_url", "client_id", "client_secret", "refresh_token", "grant", "scope",
               "mechanism", "authorize_url", "device_url", "tenant"}
SENDER_REWRITE_KEYS = {"address", "domains", "header_from", "reply_to"}
RATE_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400,
              "day": 86400}
TRANSPORT_KEYS = {"type", "upstreams", "path", "fallback", "require_tls", "port", "nameservers",
                  "received", "strip_received"}
TLS_MODES = ("none", "starttls", "implicit")
UPSTREAM_TLS_MODES = ("starttls", "implicit", "opportunistic", "none")
AUTH_MODES = ("optional", "required", "plaintext-loopback")
TRANSPORT_TYPES = ("smarthost", "mx", "smtp", "maildir")
LOG_LEVELS = ("debug", "info", "warn", "error")
ADDRESS_RE = re.compile(r"[^\s@<>()\[\]\\,;:\"]+@[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
DOMAIN_PATTERN = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)$")


# ---------------------------------------------------------------------------- loading


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the config file at ``path``; raise ConfigError on any problem."""
    return config_from_document(read_json_file(path), path, environ)


def config_from_document(data: dict[str, Any], path: str,
                         environ: Mapping[str, str] | None = None) -> Config:
    """The same checks as loading ``path``, on a document in memory (the API's changes are
    validated this way before they are saved)."""
    environ = os.environ if environ is None else environ
    merged = merge_defaults(DEFAULTS, data, path)
    apply_env_overrides(merged, environ, path)
    return validate(merged, path)


def read_json_file(path: str) -> dict[str, Any]:
    """Parse a JSON object from ``path`` with errors that say where the problem is."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read config file: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(path, "", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")\
            from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the top level must be a JSON object", type(data).__name__)
    return data


def merge_defaults(defaults: dict[str, Any], data: dict[str, Any], source: str,
                   prefix: str = "") -> dict[str, Any]:
    """Overlay ``data`` on ``defaults``; sections merge key by key, unknown keys are errors."""
    merged = copy.deepcopy(defaults)
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(source, where, "unknown key; see docs/configuration.md")
        default = defaults[key]
        if isinstance(default, dict) and key != "transports":
            if not isinstance(value, dict):
                raise ConfigError(source, where, "expected an object", value)
            merged[key] = merge_defaults(default, value, source, where + ".")
        else:
            merged[key] = value
    return merged


def apply_env_overrides(merged: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    """Apply ``RELAYMAIL_<SECTION>_<KEY>`` (or ``RELAYMAIL_<KEY>``) variables to ``merged``."""
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "RELAYMAIL_CONFIG":
            continue
        target, key = find_env_target(merged, name[len(ENV_PREFIX):].lower())
        if target is None:
            raise ConfigError(source, name, "environment override names no config key")
        target[key] = parse_env_value(text)


def find_env_target(merged: dict[str, Any], rest: str) -> tuple[dict[str, Any] | None, str]:
    """Resolve ``smtp_max_recipients`` to (merged["smtp"], "max_recipients")."""
    if rest in merged and not isinstance(merged[rest], dict):
        return merged, rest
    for section, body in merged.items():
        if isinstance(body, dict) and rest.startswith(section + "_"):
            key = rest[len(section) + 1:]
            if key in body:
                return body, key
    return None, rest


def parse_env_value(text: str) -> Any:
    """Environment values are JSON when they parse as JSON, else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ---------------------------------------------------------------------------- validation


class _Check:
    """Small typed accessors that raise ConfigError naming the key path and value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.base = os.path.dirname(os.path.abspath(source))

    def fail(self, key: str, problem: str, value: Any = None) -> ConfigError:
        return ConfigError(self.source, key, problem, value)

    def integer(self, value: Any, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}", value)
        return value

    def number(self, value: Any, key: str, minimum: float = 0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(key, f"expected a number >= {minimum}", value)
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "expected true or false", value)
        return value

    def string(self, value: Any, key: str, allow_none: bool = False) -> str:
        if value is None and allow_none:
            return None  # type: ignore[return-value]
        if not isinstance(value, str) or not value:
            raise self.fail(key, "expected a non-empty string", value)
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}", value)
        return value

    def path(self, value: Any, key: str, allow_none: bool = False) -> str:
        text = self.string(value, key, allow_none)
        if text is None:
            return None  # type: ignore[return-value]
        return os.path.normpath(os.path.join(self.base, os.path.expanduser(text)))

    def obj(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "expected an object", value)
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{name}", "unknown key; see docs/configuration.md")
        return value

    def array(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, "expected a list", value)
        return value

    def networks(self, value: Any, key: str) -> tuple[IPNetwork, ...]:
        out = []
        for i, item in enumerate(self.array(value, key)):
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except (TypeError, ValueError):
                raise self.fail(f"{key}[{i}]", "expected an IP network like 10.0.0.0/8", item)\
                    from None
        return tuple(out)


def validate(merged: dict[str, Any], source: str) -> Config:
    """Turn the merged dictionary into a frozen Config, checking every value."""
    c = _Check(source)
    transports = validate_transports(c, merged["transports"])
    return Config(
        path=os.path.abspath(source),
        hostname=validate_hostname(c, merged["hostname"]),
        spool_dir=c.path(merged["spool_dir"], "spool_dir"),
        smtp=validate_smtp(c, merged["smtp"]),
        credentials_file=c.path(merged["credentials_file"], "credentials_file"),
        routes=validate_routes(c, merged["routes"], transports),
        transports=transports,
        delivery=validate_delivery(c, merged["delivery"]),
        dkim=tuple(validate_dkim(c, merged["dkim"])),
        rate_limits=validate_rate_limits(c, merged["rate_limits"]),
        web=validate_web(c, merged["web"]),
        log=LogConfig(level=c.choice(merged["log"]["level"], "log.level", LOG_LEVELS)),
    )


def validate_rate_limits(c: _Check, value: Any) -> Any:
    from relaymail.policy.settings import validate_rate_limits as validate_section

    return validate_section(c, value)


def validate_hostname(c: _Check, value: Any) -> str:
    name = c.string(value, "hostname")
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
        raise c.fail("hostname", "expected a host name like relay.example.com", value)
    return name


def validate_smtp(c: _Check, s: dict[str, Any]) -> SMTPConfig:
    tls = c.obj(s["tls"], "smtp.tls", {"certificate", "private_key", "self_signed"})
    tls_conf = TLSConfig(
        certificate=c.path(tls.get("certificate"), "smtp.tls.certificate", allow_none=True),
        private_key=c.path(tls.get("private_key"), "smtp.tls.private_key", allow_none=True),
        self_signed=c.boolean(tls.get("self_signed", False), "smtp.tls.self_signed"),
    )
    if (tls_conf.certificate is None) != (tls_conf.private_key is None):
        raise c.fail("smtp.tls", "certificate and private_key must be set together")
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
        max_header_size=c.integer(s["max_header_size"], "smtp.max_header_size", 1024),
        fold_line_length=validate_fold_length(c, s["fold_line_length"]),
        proxy_trusted_networks=validate_proxy_trust(c, s["proxy_trusted_networks"], listeners),
        strip_characters=control_characters(c, s["strip_characters"], "smtp.strip_characters"),
        reject_characters=control_characters(c, s["reject_characters"],
                                             "smtp.reject_characters"),
    )


def control_characters(c: _Check, value: Any, key: str) -> bytes:
    """Characters to strip from or refuse in DATA: C0 controls and DEL only (``"\\u0000"``
    in JSON for NUL); CR and LF are the line ends' business (``bare_line_endings``)."""
    if not isinstance(value, str) or any(not (ord(ch) < 32 or ord(ch) == 127) or ch in "\r\n"
                                         for ch in value):
        raise c.fail(key, "expected control characters other than CR and LF, e.g. "
                     "\"\\u0000\"", value)
    return value.encode("ascii")


def validate_proxy_trust(c: _Check, value: Any, listeners: tuple[ListenerConfig, ...]
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

def validate_fold_length(c: _Check, value: Any) -> int:
    """78..998 (RFC 5322 2.1.1: 998 octets is the hard limit, 78 the recommended one)."""
    n = c.integer(value, "smtp.fold_line_length", 78)
    if n > 998:
        raise c.fail("smtp.fold_line_length", "at most 998 (RFC 5322 2.1.1)", value)
    return n


def validate_listener(c: _Check, item: Any, key: str, tls: TLSConfig) -> ListenerConfig:
    d = c.obj(item, key, LISTENER_KEYS)
    if "endpoint" not in d:
        raise c.fail(f"{key}.endpoint", "missing; e.g. \"tcp:2525:interface=127.0.0.1\"")
    listener = ListenerConfig(
        name=c.string(d.get("name", key), f"{key}.name"),
        endpoint=validate_endpoint(c, d["endpoint"], f"{key}.endpoint"),
        tls=c.choice(d.get("tls", "starttls" if tls.certificate else "none"), f"{key}.tls",
                     TLS_MODES),
        auth=c.choice(d.get("auth", "optional"), f"{key}.auth", AUTH_MODES),
        proxy_protocol=c.boolean(d.get("proxy_protocol", False), f"{key}.proxy_protocol"),
    )
    if listener.tls != "none" and tls.certificate is None:
        raise c.fail(f"{key}.tls", "needs smtp.tls.certificate and smtp.tls.private_key",
                     listener.tls)
    return listener


def check_unique_names(c: _Check, listeners: tuple[ListenerConfig, ...]) -> None:
    seen: dict[str, int] = {}
    for i, listener in enumerate(listeners):
        if listener.name in seen:
            raise c.fail(f"smtp.listeners[{i}].name", "duplicate listener name", listener.name)
        seen[listener.name] = i


ENDPOINT_KINDS = ("tcp", "tcp6", "unix")


def validate_endpoint(c: _Check, value: Any, key: str) -> str:
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
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            raise c.fail(key, "interface must be an IP address", interface) from None
        if (address.version == 6) != (kind == "tcp6"):
            wanted = "tcp6" if address.version == 6 else "tcp"
            raise c.fail(key, f"interface {interface} needs {wanted}:", text)
    return text


def endpoint_problem(e: Exception) -> str:
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


def validate_routes(c: _Check, value: Any, transports: Mapping[str, TransportConfig]
                    ) -> tuple[RouteConfig, ...]:
    routes = []
    for i, item in enumerate(c.array(value, "routes")):
        key = f"routes[{i}]"
        d = c.obj(item, key, {"domains", "transport", "senders", "credentials"})
        senders = patterns(c, d.get("senders", []), f"{key}.senders", allow_address=True)
        credentials = tuple(c.string(x, f"{key}.credentials[{j}]")
                            for j, x in enumerate(c.array(d.get("credentials", []),
                                                          f"{key}.credentials")))
        default_domains = ["*"] if senders or credentials else None
        domains = patterns(c, d.get("domains", default_domains), f"{key}.domains")
        name = c.string(d.get("transport"), f"{key}.transport")
        if name not in transports:
            raise c.fail(f"{key}.transport", "names no transport in transports", name)
        routes.append(RouteConfig(domains=domains, transport=name, senders=senders,
                                  credentials=credentials))
    return tuple(routes)


def patterns(c: _Check, value: Any, key: str, allow_address: bool = False) -> tuple[str, ...]:
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


def validate_transports(c: _Check, value: Any) -> dict[str, TransportConfig]:
    if not isinstance(value, dict):
        raise c.fail("transports", "expected an object of named transports", value)
    out = {}
    for name, item in value.items():
        key = f"transports.{name}"
        d = c.obj(item, key, TRANSPORT_KEYS)
        kind = c.choice(d.get("type"), f"{key}.type", TRANSPORT_TYPES)
        upstreams = tuple(
            validate_upstream(c, u, f"{key}.upstreams[{i}]")
            for i, u in enumerate(c.array(d.get("upstreams", []), f"{key}.upstreams"))
        )
        if kind in ("smarthost", "smtp") and not upstreams:
            raise c.fail(f"{key}.upstreams", f"a {kind} transport needs at least one upstream")
        if kind == "maildir" and "path" not in d:
            raise c.fail(f"{key}.path", "a maildir transport needs a path")
        out[name] = TransportConfig(
            name=name, type=kind, upstreams=upstreams,
            path=c.path(d.get("path"), f"{key}.path", allow_none=True),
            fallback=c.string(d.get("fallback"), f"{key}.fallback", allow_none=True),
            require_tls=c.boolean(d.get("require_tls", False), f"{key}.require_tls"),
            port=c.integer(d.get("port", 25), f"{key}.port", 1),
            nameservers=tuple(
                c.string(n, f"{key}.nameservers[{i}]")
                for i, n in enumerate(c.array(d.get("nameservers", []), f"{key}.nameservers"))),
            received=c.choice(d.get("received", "full"), f"{key}.received",
                              ("full", "anonymous")),
            strip_received=c.boolean(d.get("strip_received", False), f"{key}.strip_received"),
        )
    for name, transport in out.items():
        if transport.fallback is not None and transport.fallback not in out:
            raise c.fail(f"transports.{name}.fallback", "names no transport", transport.fallback)
    return out


def validate_upstream(c: _Check, item: Any, key: str) -> UpstreamConfig:
    d = dict(c.obj(item, key, UPSTREAM_KEYS))
    preset_name = d.get("preset")
    if preset_name is not None:
        preset = PRESETS.get(preset_name)
        if preset is None:
            raise c.fail(f"{key}.preset", f"unknown preset; known: {', '.join(PRESETS)}",
                         preset_name)
        d = {**preset.as_upstream(), **preset_sender_rule(preset.sender_rule, d), **d}
    upstream = UpstreamConfig(
        host=c.string(d.get("host"), f"{key}.host"),
        port=c.integer(d.get("port", 587), f"{key}.port", 1),
        tls=c.choice(d.get("tls", "starttls"), f"{key}.tls", UPSTREAM_TLS_MODES),
        verify=c.boolean(d.get("verify", True), f"{key}.verify"),
        ca_file=c.path(d.get("ca_file"), f"{key}.ca_file", allow_none=True),
        username=c.string(d.get("username"), f"{key}.username", allow_none=True),
        password=c.string(d.get("password"), f"{key}.password", allow_none=True),
        helo=c.string(d.get("helo"), f"{key}.helo", allow_none=True),
        preset=preset_name,
        max_connections=None if d.get("max_connections") is None else c.integer(
            d["max_connections"], f"{key}.max_connections", 1),
        max_rate=parse_rate(c, d.get("max_rate"), f"{key}.max_rate"),
        oauth2=validate_oauth2(c, d.get("oauth2"), f"{key}.oauth2"),
        sender_rewrite=validate_sender_rewrite(c, d, f"{key}.sender_rewrite"),
        bounce_sender=validate_address(c, d.get("bounce_sender"), f"{key}.bounce_sender"),
        allow_insecure_auth=c.boolean(d.get("allow_insecure_auth", False),
                                      f"{key}.allow_insecure_auth"),
    )
    check_auth_security(c, upstream, key)
    return upstream


def check_auth_security(c: _Check, upstream: UpstreamConfig, key: str) -> None:
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


def validate_address(c: _Check, value: Any, key: str) -> str | None:
    """A plain mailbox ``local@domain`` (no display name, no brackets); None when absent."""
    if value is None:
        return None
    text = c.string(value, key)
    if not ADDRESS_RE.fullmatch(text):
        raise c.fail(key, "expected an address like relay@example.com", value)
    return text


def validate_oauth2(c: _Check, value: Any, key: str) -> OAuth2Config | None:
    if value is None:
        return None
    d = c.obj(value, key, OAUTH2_KEYS)
    grant = c.choice(d.get("grant", "refresh_token"), f"{key}.grant",
                     ("refresh_token", "client_credentials"))
    conf = OAuth2Config(
        token_url=None if d.get("token_url") is None else validate_url(
            c, d["token_url"], f"{key}.token_url"),
        client_id=c.string(d.get("client_id"), f"{key}.client_id"),
        grant=grant,
        client_secret=c.string(d.get("client_secret"), f"{key}.client_secret", allow_none=True),
        refresh_token=c.string(d.get("refresh_token"), f"{key}.refresh_token", allow_none=True),
        scope=c.string(d.get("scope"), f"{key}.scope", allow_none=True),
        mechanism=c.choice(d.get("mechanism", "XOAUTH2"), f"{key}.mechanism",
                           ("XOAUTH2", "OAUTHBEARER")),
        authorize_url=None if d.get("authorize_url") is None else validate_url(
            c, d["authorize_url"], f"{key}.authorize_url"),
        device_url=None if d.get("device_url") is None else validate_url(
            c, d["device_url"], f"{key}.device_url"),
        tenant=validate_tenant(c, d.get("tenant"), f"{key}.tenant"),
    )
    if grant == "client_credentials" and not conf.client_secret:
        raise c.fail(f"{key}.client_secret", "the client_credentials grant needs a secret")
    return conf


def validate_tenant(c: _Check, value: Any, key: str) -> str | None:
    """A Microsoft tenant: a GUID, a domain, or common/organizations/consumers (it becomes
    part of the token URL, so nothing else is allowed)."""
    if value is None:
        return None
    text = c.string(value, key)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", text):
        raise c.fail(key, "expected a tenant ID or domain like contoso.onmicrosoft.com", value)
    return text


def validate_url(c: _Check, value: Any, key: str) -> str:
    text = c.string(value, key)
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise c.fail(key, "expected an http(s) URL", value)
    return text


def validate_sender_rewrite(c: _Check, upstream: Mapping[str, Any], key: str
                            ) -> SenderRewrite | None:
    """``"login"`` as the address means the upstream's username (QQ, 163, Outlook, Gmail)."""
    value = upstream.get("sender_rewrite")
    if value is None or value is False:
        return None
    d = c.obj(value, key, SENDER_REWRITE_KEYS)
    address = d.get("address", "login")
    if address == "login":
        address = upstream.get("username")
        if not isinstance(address, str) or "@" not in address:
            raise c.fail(f"{key}.address", "\"login\" needs a username that is an address; "
                         "give the address to send as", upstream.get("username"))
    return SenderRewrite(
        address=validate_address(c, address, f"{key}.address") or "",
        domains=patterns(c, d.get("domains", []), f"{key}.domains"),
        header_from=c.boolean(d.get("header_from", True), f"{key}.header_from"),
        reply_to=c.boolean(d.get("reply_to", True), f"{key}.reply_to"),
    )


def parse_rate(c: _Check, value: Any, key: str) -> tuple[int, float] | None:
    """``"10/s"``, ``"100/min"``, ``"500/h"``, ``"2000/d"`` -> (count, seconds)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 1 or m.group(2) not in RATE_UNITS:
        raise c.fail(key, "expected a rate like \"10/s\", \"100/min\", \"500/h\" or "
                     "\"2000/d\"", value)
    return int(m.group(1)), float(RATE_UNITS[m.group(2)])


def validate_delivery(c: _Check, d: dict[str, Any]) -> DeliveryConfig:
    schedule = c.array(d["retry_schedule"], "delivery.retry_schedule")
    return DeliveryConfig(
        concurrency=c.integer(d["concurrency"], "delivery.concurrency", 1),
        per_destination_concurrency=c.integer(d["per_destination_concurrency"],
                                              "delivery.per_destination_concurrency", 1),
        batch_size=c.integer(d["batch_size"], "delivery.batch_size", 1),
        batch_delay=c.number(d["batch_delay"], "delivery.batch_delay"),
        retry_schedule=tuple(c.number(x, f"delivery.retry_schedule[{i}]", 1)
                             for i, x in enumerate(schedule)) or (300.0,),
        max_queue_lifetime=c.number(d["max_queue_lifetime"], "delivery.max_queue_lifetime", 60),
        bounces=c.boolean(d["bounces"], "delivery.bounces"),
        connect_timeout=c.number(d["connect_timeout"], "delivery.connect_timeout", 1),
        command_timeout=c.number(d["command_timeout"], "delivery.command_timeout", 1),
    )


def validate_dkim(c: _Check, value: Any) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(c.array(value, "dkim")):
        key = f"dkim[{i}]"
        d = c.obj(item, key, {"domain", "selector", "private_key", "algorithm"})
        out.append({
            "domain": c.string(d.get("domain"), f"{key}.domain").lower(),
            "selector": c.string(d.get("selector"), f"{key}.selector"),
            "private_key": c.path(d.get("private_key"), f"{key}.private_key"),
            "algorithm": c.choice(d.get("algorithm", "rsa-sha256"), f"{key}.algorithm",
                                  ("rsa-sha256", "ed25519-sha256")),
        })
    return out


def validate_web(c: _Check, d: dict[str, Any]) -> WebConfig:
    return WebConfig(
        enabled=c.boolean(d["enabled"], "web.enabled"),
        endpoint=validate_endpoint(c, d["endpoint"], "web.endpoint"),
        admin_user=c.string(d["admin_user"], "web.admin_user"),
        admin_password_hash=c.string(d["admin_password_hash"], "web.admin_password_hash",
                                     allow_none=True),
        open_metrics_to_loopback=c.boolean(d["open_metrics_to_loopback"],
                                           "web.open_metrics_to_loopback"),
        history_file=c.path(d["history_file"], "web.history_file", allow_none=True),
        history_retention_days=c.number(d["history_retention_days"],
                                        "web.history_retention_days", 1),
        allowed_hosts=validate_allowed_hosts(c, d["allowed_hosts"]),
        max_body_size=c.integer(d["max_body_size"], "web.max_body_size", 1024),
        tls=validate_web_tls(c, d["tls"]),
        behind_tls_proxy=c.boolean(d["behind_tls_proxy"], "web.behind_tls_proxy"),
        trusted_proxies=c.networks(d["trusted_proxies"], "web.trusted_proxies"),
    )


def validate_allowed_hosts(c: _Check, value: Any) -> tuple[str, ...]:
    """Host names or IP literals (``[::1]`` or ``::1``), without a port; ``*`` for any.
    Kept normalized: lower case, no brackets, no trailing dot."""
    out = []
    for i, item in enumerate(c.array(value, "web.allowed_hosts")):
        key = f"web.allowed_hosts[{i}]"
        text = c.string(item, key).strip().lower().rstrip(".")
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            text = str(ipaddress.ip_address(text))
        except ValueError:
            if text != "*" and not re.fullmatch(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
                                                r"(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", text):
                raise c.fail(key, "expected a host name or IP address without a port, or *",
                             item) from None
        out.append(text)
    return tuple(out)


def validate_web_tls(c: _Check, value: Any) -> TLSConfig:
    tls = c.obj(value, "web.tls", {"certificate", "private_key"})
    conf = TLSConfig(
        certificate=c.path(tls.get("certificate"), "web.tls.certificate", allow_none=True),
        private_key=c.path(tls.get("private_key"), "web.tls.private_key", allow_none=True),
    )
    if (conf.certificate is None) != (conf.private_key is None):
        raise c.fail("web.tls", "certificate and private_key must be set together")
    return conf


# ---------------------------------------------------------------------------- startup checks


def check_runtime(config: Config, readable: Callable[[str], bool] | None = None) -> None:
    """Checks that need the filesystem: TLS files readable, no two listeners on one port."""
    readable = readable or (lambda p: os.access(p, os.R_OK))
    tls = config.smtp.tls
    for key, path in (("smtp.tls.certificate", tls.certificate),
                      ("smtp.tls.private_key", tls.private_key)):
        if path is None or readable(path):
            continue
        if tls.self_signed and not os.path.exists(path):
            continue
        raise ConfigError(config.path, key, "file is missing or unreadable", path)
    check_port_overlap(config)


def check_port_overlap(config: Config) -> None:
    """Two listeners (or a listener and the web console) on the same address and port."""
    seen: dict[tuple[int, str], str] = {}
    endpoints = [(f"smtp.listeners[{i}].endpoint", listener.endpoint)
                 for i, listener in enumerate(config.smtp.listeners)]
    if config.web.enabled:
        endpoints.append(("web.endpoint", config.web.endpoint))
    for key, text in endpoints:
        port, interface, kind = endpoint_address(text)
        if kind == "unix" or not port:
            continue
        for other_iface in {interface, ""} if interface else set():
            if (port, other_iface) in seen:
                raise ConfigError(config.path, key,
                                  f"port {port} is already used by {seen[(port, other_iface)]}",
                                  text)
        if not interface and any(p == port for p, _ in seen):
            other = next(v for (p, _), v in seen.items() if p == port)
            raise ConfigError(config.path, key, f"port {port} is already used by {other}", text)
        seen[(port, interface)] = key
