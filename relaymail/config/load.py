"""Loading: read the JSON file, merge it over the defaults, apply the environment
overrides, then :func:`validate` the result into a tree of frozen dataclasses
(:class:`Config`), each section by its own module."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relaymail.config.accounts import AccountsConfig, validate_accounts
from relaymail.config.check import Check, ConfigError
from relaymail.config.defaults import DEFAULTS
from relaymail.config.delivery import DeliveryConfig, validate_delivery
from relaymail.config.dkim import validate_dkim
from relaymail.config.events import (
    ArchiveConfig,
    SuppressionConfig,
    WebhookConfig,
    validate_archive,
    validate_suppression,
    validate_webhooks,
)
from relaymail.config.rate_limits import RateLimitConfig, validate_rate_limits
from relaymail.config.routes import RouteConfig, validate_routes
from relaymail.config.smtp import SMTPConfig, validate_smtp
from relaymail.config.transports import TransportConfig, validate_transports
from relaymail.config.web import WebConfig, validate_web

ENV_PREFIX = "RELAYMAIL_"
LOG_LEVELS = ("debug", "info", "warn", "error")


@dataclass(frozen=True)
class LogConfig:
    """The ``log`` section: the level of relaymail's own events."""

    level: str


@dataclass(frozen=True)
class Config:
    """The whole config, validated; ``path`` is the config file's absolute path."""

    path: str
    hostname: str
    spool_dir: str
    smtp: SMTPConfig
    credentials_file: str
    routes: tuple[RouteConfig, ...]
    transports: Mapping[str, TransportConfig]
    delivery: DeliveryConfig
    dkim: tuple[Mapping[str, Any], ...]
    rate_limits: RateLimitConfig
    web: WebConfig
    log: LogConfig
    webhooks: tuple[WebhookConfig, ...]
    suppression: SuppressionConfig
    archive: ArchiveConfig
    accounts: AccountsConfig


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


def validate(merged: dict[str, Any], source: str) -> Config:
    """Turn the merged dictionary into a frozen Config, checking every value."""
    c = Check(source)
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
        webhooks=validate_webhooks(c, merged["webhooks"]),
        suppression=validate_suppression(c, merged["suppression"]),
        archive=validate_archive(c, merged["archive"]),
        accounts=validate_accounts(c, merged["accounts"],
                                   c.path(merged["spool_dir"], "spool_dir")),
    )


def validate_hostname(c: Check, value: Any) -> str:
    """The name in the banner, EHLO reply and Received header."""
    name = c.string(value, "hostname")
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
        raise c.fail("hostname", "expected a host name like relay.example.com", value)
    return name
