"""The ``web`` section: the console and JSON API, its login, Host and proxy rules."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check, IPNetwork
from relaymail.config.defaults import fill
from relaymail.config.smtp import TLSConfig, validate_endpoint

HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


@dataclass(frozen=True)
class WebConfig:
    """The ``web`` section, validated."""

    enabled: bool
    endpoint: str
    admin_user: str
    admin_password_hash: str | None
    open_metrics_to_loopback: bool
    history_file: str | None  # SQLite delivery history; None: <spool_dir>/history.db
    history_database: str | None  # a postgresql:// URL: the history shared by instances
    history_retention_days: float
    # Host header names the console answers to (any port); the endpoint's own address and
    # the address a connection arrived at are accepted too.  "*": any.
    allowed_hosts: tuple[str, ...]
    max_body_size: int  # request bodies; /api/send: see relaymail.web.guard
    tls: TLSConfig  # the console over HTTPS (certificate, private_key)
    behind_tls_proxy: bool  # browsers reach it through a TLS proxy: Secure cookies
    trusted_proxies: tuple[IPNetwork, ...]  # their X-Forwarded-Proto is believed


def validate_web(c: Check, d: dict[str, Any]) -> WebConfig:
    """``d`` is the section merged over its defaults."""
    return WebConfig(
        enabled=c.boolean(d["enabled"], "web.enabled"),
        endpoint=validate_endpoint(c, d["endpoint"], "web.endpoint"),
        admin_user=c.string(d["admin_user"], "web.admin_user"),
        admin_password_hash=c.string(d["admin_password_hash"], "web.admin_password_hash",
                                     allow_none=True),
        open_metrics_to_loopback=c.boolean(d["open_metrics_to_loopback"],
                                           "web.open_metrics_to_loopback"),
        history_file=c.path(d["history_file"], "web.history_file", allow_none=True),
        history_database=validate_history_database(c, d["history_database"]),
        history_retention_days=c.number(d["history_retention_days"],
                                        "web.history_retention_days", 1),
        allowed_hosts=validate_allowed_hosts(c, d["allowed_hosts"]),
        max_body_size=c.integer(d["max_body_size"], "web.max_body_size", 1024),
        tls=validate_web_tls(c, d["tls"]),
        behind_tls_proxy=c.boolean(d["behind_tls_proxy"], "web.behind_tls_proxy"),
        trusted_proxies=c.networks(d["trusted_proxies"], "web.trusted_proxies"),
    )


def validate_history_database(c: Check, value: Any) -> str | None:
    """null (the SQLite file) or a PostgreSQL URL (several instances, one history)."""
    if value is None:
        return None
    text = c.string(value, "web.history_database")
    if not text.startswith(("postgresql://", "postgres://")):
        raise c.fail("web.history_database", "expected null or a URL like "
                     "postgresql://user:password@host/db", "(not shown)")
    return text


def validate_allowed_hosts(c: Check, value: Any) -> tuple[str, ...]:
    """Host names or IP literals (``[::1]`` or ``::1``), without a port; ``*`` for any.
    Kept normalized: lower case, no brackets, no trailing dot."""
    return tuple(allowed_host(c, item, f"web.allowed_hosts[{i}]")
                 for i, item in enumerate(c.array(value, "web.allowed_hosts")))


def allowed_host(c: Check, item: Any, key: str) -> str:
    """One ``web.allowed_hosts[N]``, normalized."""
    text = c.string(item, key).strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if text != "*" and not HOST_NAME.fullmatch(text):
            raise c.fail(key, "expected a host name or IP address without a port, or *",
                         item) from None
    return text


def validate_web_tls(c: Check, value: Any) -> TLSConfig:
    """``web.tls``: the console's certificate and key (both or neither; never self-signed)."""
    tls = fill("web.tls", c.obj(value, "web.tls", {"certificate", "private_key"}))
    conf = TLSConfig(
        certificate=c.path(tls["certificate"], "web.tls.certificate", allow_none=True),
        private_key=c.path(tls["private_key"], "web.tls.private_key", allow_none=True),
        self_signed=False,
    )
    if (conf.certificate is None) != (conf.private_key is None):
        raise c.fail("web.tls", "certificate and private_key must be set together")
    return conf
