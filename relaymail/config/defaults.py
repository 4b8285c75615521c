"""Every default of the config, in one table: :data:`TABLE`, key path -> value.

Key paths are written as in error messages, with ``[]`` for "each item of this list" and
``*`` for "each named entry of this object":

- ``smtp.max_recipients``: a key of the file; these paths make :data:`DEFAULTS`, the
  document the file is merged over (so an empty file ``{}`` is a valid config);
- ``transports.*.upstreams[].port``: a key of a list item or a named entry, filled in by the
  section's validator when the item leaves it out (:func:`item_defaults`).

The dataclasses' field defaults are taken from here too.  docs/configuration.md shows each
of them (tests/test_config_defaults.py checks).  Not in the table, because they depend on
other values, are these rules, kept in the validators: a listener's ``name`` (its key path)
and ``tls`` (``starttls`` with a certificate, else ``none``), a route's ``domains`` (``["*"]``
with ``senders`` or ``credentials``), what an upstream's ``preset`` fills in, and
``web.history_file`` (``<spool_dir>/history.db`` when null).
"""

from __future__ import annotations

import copy
from typing import Any

UPSTREAM = "transports.*.upstreams[]"

TABLE: dict[str, Any] = {
    "hostname": "localhost",
    "spool_dir": "var/spool",
    # smtp: listeners, TLS, access, limits of a session and of DATA
    "smtp.listeners": [{"name": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"}],
    "smtp.listeners[].auth": "optional",
    "smtp.listeners[].proxy_protocol": False,
    "smtp.tls.certificate": None,
    "smtp.tls.private_key": None,
    "smtp.tls.self_signed": False,
    "smtp.trusted_networks": ["127.0.0.0/8", "::1/128"],
    "smtp.blocked_networks": [],
    "smtp.max_message_size": 36_700_160,
    "smtp.max_recipients": 100,
    "smtp.max_connections": 1000,
    "smtp.max_connections_per_ip": 50,
    "smtp.max_errors": 20,
    "smtp.idle_timeout": 300,
    "smtp.max_line_length": 16_384,
    "smtp.bare_line_endings": "normalize",
    "smtp.max_header_size": 1_048_576,
    "smtp.fold_line_length": 998,
    "smtp.proxy_trusted_networks": [],
    "smtp.strip_characters": "\u0000",
    "smtp.workers": None,
    "smtp.reject_characters": "",
    "credentials_file": "credentials.json",
    # routes and transports: where accepted mail goes
    "routes": [{"domains": ["*"], "transport": "outbox"}],
    "routes[].senders": [],
    "routes[].credentials": [],
    "transports": {"outbox": {"type": "maildir", "path": "var/outbox"}},
    "transports.*.upstreams": [],
    "transports.*.path": None,
    "transports.*.fallback": None,
    "transports.*.require_tls": False,
    "transports.*.port": 25,
    "transports.*.nameservers": [],
    "transports.*.received": "full",
    "transports.*.strip_received": False,
    f"{UPSTREAM}.preset": None,
    f"{UPSTREAM}.port": 587,
    f"{UPSTREAM}.tls": "starttls",
    f"{UPSTREAM}.verify": True,
    f"{UPSTREAM}.ca_file": None,
    f"{UPSTREAM}.username": None,
    f"{UPSTREAM}.password": None,
    f"{UPSTREAM}.helo": None,
    f"{UPSTREAM}.max_connections": None,
    f"{UPSTREAM}.max_rate": None,
    f"{UPSTREAM}.oauth2": None,
    f"{UPSTREAM}.sender_rewrite": None,
    f"{UPSTREAM}.bounce_sender": None,
    f"{UPSTREAM}.allow_insecure_auth": False,
    f"{UPSTREAM}.oauth2.token_url": None,
    f"{UPSTREAM}.oauth2.grant": "refresh_token",
    f"{UPSTREAM}.oauth2.client_secret": None,
    f"{UPSTREAM}.oauth2.refresh_token": None,
    f"{UPSTREAM}.oauth2.scope": None,
    f"{UPSTREAM}.oauth2.mechanism": "XOAUTH2",
    f"{UPSTREAM}.oauth2.authorize_url": None,
    f"{UPSTREAM}.oauth2.device_url": None,
    f"{UPSTREAM}.oauth2.tenant": None,
    f"{UPSTREAM}.sender_rewrite.address": "login",
    f"{UPSTREAM}.sender_rewrite.domains": [],
    f"{UPSTREAM}.sender_rewrite.header_from": True,
    f"{UPSTREAM}.sender_rewrite.reply_to": True,
    # delivery: the relay's sessions, retries and bounces
    "delivery.concurrency": 20,
    "delivery.per_destination_concurrency": 5,
    "delivery.batch_size": 50,
    "delivery.batch_delay": 0,
    "delivery.retry_schedule": [60, 300, 900, 1800, 3600, 7200, 14400],
    "delivery.max_queue_lifetime": 432_000,
    "delivery.bounces": True,
    "delivery.connect_timeout": 10,
    "delivery.command_timeout": 300,
    "delivery.paused": False,
    "dkim": [],
    "dkim[].algorithm": "rsa-sha256",
    # rate_limits: quotas, their backend, AUTH lockouts
    "rate_limits.backend": "memory",
    "rate_limits.per_sender": None,
    "rate_limits.per_ip": None,
    "rate_limits.per_credential": None,
    "rate_limits.global": None,
    "rate_limits.count": "messages",
    "rate_limits.exempt_networks": [],
    "rate_limits.on_backend_error": "allow",
    "rate_limits.backend_timeout": 1.0,
    "rate_limits.auth_failures.max_failures": 5,
    "rate_limits.auth_failures.window": 900,
    "rate_limits.auth_failures.lockout": 60,
    "rate_limits.auth_failures.max_lockout": 3600,
    # web: the console and JSON API
    "web.enabled": True,
    "web.endpoint": "tcp:8025:interface=127.0.0.1",
    "web.admin_user": "admin",
    "web.admin_password_hash": None,
    "web.open_metrics_to_loopback": True,
    "web.history_file": None,
    "web.history_database": None,
    "web.history_retention_days": 30,
    "web.allowed_hosts": ["localhost", "127.0.0.1", "::1"],
    "web.max_body_size": 65_536,
    "web.tls.certificate": None,
    "web.tls.private_key": None,
    "web.behind_tls_proxy": False,
    "web.trusted_proxies": ["127.0.0.0/8", "::1/128"],
    # webhooks, suppression list, archive (relaymail.events)
    "webhooks": [],
    "webhooks[].name": None,
    "webhooks[].events": ["accepted", "delivered", "deferred", "bounced", "failed",
                          "suppressed"],
    "webhooks[].sender_domains": [],
    "webhooks[].credentials": [],
    "webhooks[].timeout": 10,
    "webhooks[].retry_for": 86400,
    "webhooks[].max_backlog": 100_000,
    "webhooks[].concurrency": 4,
    "webhooks[].batch_size": 1,
    "suppression.enabled": True,
    "suppression.auto": True,
    "archive.enabled": False,
    "archive.path": None,
    "archive.retention_days": 30,
    "archive.max_bytes": 1_073_741_824,
    # users, their SMTP logins, API keys (relaymail.accounts)
    "accounts.database": None,
    "accounts.registration": "off",
    "accounts.token_lifetime": 43_200,
    "accounts.min_password_length": 10,
    "accounts.max_registrations_per_hour": 5,
    "accounts.new_account_hourly_quota": 100,
    "accounts.new_account_daily_quota": 1000,
    "log.level": "info",
}


def is_item_path(path: str) -> bool:
    """True for a key of list items or named entries (``routes[].senders``), which is not a
    key of the file's document itself."""
    return "[]" in path or "*" in path.split(".")


def document() -> dict[str, Any]:
    """The default document (:data:`DEFAULTS`): the table's file keys, nested by section."""
    out: dict[str, Any] = {}
    for path, value in TABLE.items():
        if is_item_path(path):
            continue
        *sections, key = path.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = copy.deepcopy(value)
    return out


def item_defaults(prefix: str) -> dict[str, Any]:
    """The defaults of the keys directly under ``prefix`` (``"transports.*.upstreams[]"``:
    port, tls, verify, ...), as a fresh dictionary."""
    start = prefix + "."
    return {path[len(start):]: copy.deepcopy(value) for path, value in TABLE.items()
            if path.startswith(start) and "." not in path[len(start):]}


def fill(prefix: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (an item the file wrote) over the defaults for ``prefix``."""
    return {**item_defaults(prefix), **given}


DEFAULTS: dict[str, Any] = document()
