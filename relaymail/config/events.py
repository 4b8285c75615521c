"""The ``webhooks``, ``suppression`` and ``archive`` sections: where delivery events are
pushed, which recipients are refused because they bounced, and whether a copy of every
accepted message is kept.  relaymail.events applies them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relaymail.config.check import Check
from relaymail.config.defaults import fill, item_defaults

EVENTS = ("accepted", "delivered", "deferred", "bounced", "failed", "suppressed")
WEBHOOK_KEYS = {"url", *item_defaults("webhooks[]"), "secret"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DOMAIN_RE = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
MIN_SECRET = 16
MAX_BATCH = 500


@dataclass(frozen=True)
class WebhookConfig:
    """One ``webhooks[]`` endpoint, validated."""

    name: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)
    sender_domains: tuple[str, ...]  # empty: any sender
    credentials: tuple[str, ...]  # empty: any submitter (credential or none)
    timeout: float
    retry_for: float  # seconds after the event, then it is marked failed
    max_backlog: int  # undelivered events kept for this endpoint; more are dropped
    concurrency: int  # requests in flight at once
    batch_size: int  # 1: a document per POST; more: a JSON array of up to this many

    def public(self) -> dict[str, Any]:
        """The endpoint as the API shows it: everything but the secret."""
        return {"name": self.name, "url": self.url, "events": list(self.events),
                "sender_domains": list(self.sender_domains),
                "credentials": list(self.credentials), "timeout": self.timeout,
                "retry_for": self.retry_for, "max_backlog": self.max_backlog,
                "concurrency": self.concurrency, "batch_size": self.batch_size}


@dataclass(frozen=True)
class SuppressionConfig:
    """The ``suppression`` section: refuse at RCPT what hard-bounced before."""

    enabled: bool
    auto: bool  # hard bounces add their recipient


@dataclass(frozen=True)
class ArchiveConfig:
    """The ``archive`` section: a copy of every accepted message, kept for a while."""

    enabled: bool
    path: str | None  # None: <spool_dir>/archive
    retention_days: float
    max_bytes: int


def validate_webhooks(c: Check, value: Any) -> tuple[WebhookConfig, ...]:
    items = tuple(validate_webhook(c, item, f"webhooks[{i}]")
                  for i, item in enumerate(c.array(value, "webhooks")))
    seen: set[str] = set()
    for i, hook in enumerate(items):
        if hook.name in seen:
            raise c.fail(f"webhooks[{i}].name", "two webhooks have this name (without "
                         "one, the name is the URL's host: give each a name)", hook.name)
        seen.add(hook.name)
    return items


def validate_webhook(c: Check, value: Any, key: str) -> WebhookConfig:
    d = fill("webhooks[]", c.obj(value, key, WEBHOOK_KEYS))
    for required in ("url", "secret"):
        if required not in d:
            raise c.fail(f"{key}.{required}", "required")
    url = webhook_url(c, d["url"], f"{key}.url")
    return WebhookConfig(
        name=webhook_name(c, d["name"], f"{key}.name", url),
        url=url,
        events=webhook_events(c, d["events"], f"{key}.events"),
        secret=webhook_secret(c, d["secret"], f"{key}.secret"),
        sender_domains=tuple(sender_domain(c, x, f"{key}.sender_domains[{i}]") for i, x
                             in enumerate(c.array(d["sender_domains"], f"{key}.sender_domains"))),
        credentials=tuple(c.string(x, f"{key}.credentials[{i}]") for i, x
                          in enumerate(c.array(d["credentials"], f"{key}.credentials"))),
        timeout=c.number(d["timeout"], f"{key}.timeout", 1),
        retry_for=c.number(d["retry_for"], f"{key}.retry_for", 60),
        max_backlog=c.integer(d["max_backlog"], f"{key}.max_backlog", 1),
        concurrency=c.integer(d["concurrency"], f"{key}.concurrency", 1),
        batch_size=batch_size(c, d["batch_size"], f"{key}.batch_size"),
    )


def batch_size(c: Check, value: Any, key: str) -> int:
    size = c.integer(value, key, 1)
    if size > MAX_BATCH:
        raise c.fail(key, f"at most {MAX_BATCH}", value)
    return size


def webhook_url(c: Check, value: Any, key: str) -> str:
    """An http or https URL with a host and no credentials in it (they would be logged)."""
    text = c.string(value, key)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise c.fail(key, "not a URL", value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise c.fail(key, "expected an http:// or https:// URL with a host", value)
    if parts.username or parts.password:
        raise c.fail(key, "put no user or password in the URL; the signature authenticates",
                     value)
    if port == 0 or any(ch in text for ch in " \r\n\t"):
        raise c.fail(key, "not a usable URL", value)
    return text


def webhook_name(c: Check, value: Any, key: str, url: str) -> str:
    """The name in logs, metrics and the console; the URL's host when not given."""
    if value is None:
        return urlsplit(url).hostname or "webhook"
    name = c.string(value, key)
    if not NAME_RE.fullmatch(name):
        raise c.fail(key, "letters, digits, '.', '_' and '-', at most 64", value)
    return name


def webhook_events(c: Check, value: Any, key: str) -> tuple[str, ...]:
    events = tuple(c.choice(x, f"{key}[{i}]", EVENTS) for i, x in enumerate(c.array(value, key)))
    if not events:
        raise c.fail(key, f"name at least one of {', '.join(EVENTS)}", value)
    return events


def webhook_secret(c: Check, value: Any, key: str) -> str:
    secret = c.string(value, key)
    if len(secret) < MIN_SECRET:
        raise c.fail(key, f"at least {MIN_SECRET} characters (openssl rand -hex 32)")
    return secret


def sender_domain(c: Check, value: Any, key: str) -> str:
    domain = c.string(value, key).strip().lower().rstrip(".")
    if not DOMAIN_RE.fullmatch(domain):
        raise c.fail(key, "expected a domain like example.com or *.example.com", value)
    return domain


def validate_suppression(c: Check, d: dict[str, Any]) -> SuppressionConfig:
    return SuppressionConfig(enabled=c.boolean(d["enabled"], "suppression.enabled"),
                             auto=c.boolean(d["auto"], "suppression.auto"))


def validate_archive(c: Check, d: dict[str, Any]) -> ArchiveConfig:
    return ArchiveConfig(
        enabled=c.boolean(d["enabled"], "archive.enabled"),
        path=c.path(d["path"], "archive.path", allow_none=True),
        retention_days=c.number(d["retention_days"], "archive.retention_days", 0.01),
        max_bytes=c.integer(d["max_bytes"], "archive.max_bytes", 1_048_576),
    )
