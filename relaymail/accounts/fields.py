"""Checks of what people send to the accounts API: every value is typed and bounded, and a
refusal names the field (``AccountError``, answered as 4xx with ``{"error", "field"}``)."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from relaymail.accounts.principal import ROLES, SCOPES

USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,63}")
EMAIL_RE = re.compile(r"[^@\s\"(),:;<>\[\\\]]{1,64}@[A-Za-z0-9.-]{1,253}")
DOMAIN_RE = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further: a longer one would be cut silently
MAX_QUOTA = 10_000_000
MAX_DOMAINS = 100
MAX_NAME = 128

STATUS = {"invalid": 400, "forbidden": 403, "not_found": 404, "exists": 409,
          "closed": 403, "too_many": 429, "unavailable": 503}


class AccountError(Exception):
    """A refused accounts request: ``code`` picks the HTTP status, the text says why."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self)}
        if self.field:
            out["field"] = self.field
        return out


def invalid(field: str, problem: str) -> AccountError:
    return AccountError("invalid", f"{field}: {problem}", field)


def body_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise AccountError("invalid", "expected a JSON object")
    return body


def username(value: Any, field: str = "username") -> str:
    if not isinstance(value, str) or not USERNAME_RE.fullmatch(value):
        raise invalid(field, "3 to 64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit")
    return value


def email(value: Any, field: str = "email") -> str:
    """An address to log in with (not mailed by relaymail): local part kept, domain
    lowercased, so that ``Ann@Example.com`` and ``Ann@example.com`` are one account."""
    if not isinstance(value, str) or len(value) > 254 or not EMAIL_RE.fullmatch(value.strip()) \
            or any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise invalid(field, "expected an email address")
    local, _, domain = value.strip().rpartition("@")
    return f"{local}@{domain.lower()}"


def password(value: Any, min_length: int, field: str = "password") -> str:
    if not isinstance(value, str) or len(value) < min_length:
        raise invalid(field, f"at least {min_length} characters")
    if len(value.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise invalid(field, f"at most {MAX_PASSWORD_BYTES} bytes (bcrypt ignores the rest)")
    return value


def quota(value: Any, field: str) -> int | None:
    """An hourly or daily quota: null (or 0, as on the command line) is none."""
    if value is None or (value == 0 and not isinstance(value, bool)):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_QUOTA:
        raise invalid(field, f"expected an integer from 1 to {MAX_QUOTA}, or null")
    return value


def flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(field, "expected true or false")
    return value


def text(value: Any, field: str, limit: int = MAX_NAME, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit \
            or any(ord(c) < 32 for c in value):
        raise invalid(field, f"expected a single line of at most {limit} characters")
    return value.strip()


def domains(value: Any, field: str = "allowed_sender_domains") -> list[str]:
    """Sender domains or addresses (``example.com``, ``*.example.com``, ``a@example.com``);
    [] allows any (within the account's own list)."""
    if not isinstance(value, list) or len(value) > MAX_DOMAINS:
        raise invalid(field, f"expected a list of at most {MAX_DOMAINS} domains or addresses")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"{field}[{i}]", "expected a domain or an address")
        entry = item.strip().lower().rstrip(".")
        local, at, domain = entry.rpartition("@")
        if not DOMAIN_RE.fullmatch(domain) or len(entry) > 254 or (at and (
                not local or domain.startswith("*") or not EMAIL_RE.fullmatch(entry))):
            raise invalid(f"{field}[{i}]", f"{item!r} is not a domain or an address")
        if entry not in out:
            out.append(entry)
    return out


def role(value: Any, field: str = "role") -> str:
    if value not in ROLES:
        raise invalid(field, f"one of {', '.join(ROLES)}")
    return str(value)


def scopes(value: Any, field: str = "scopes") -> list[str]:
    if not isinstance(value, list) or not value or any(s not in SCOPES for s in value):
        raise invalid(field, f"a non-empty list of: {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in value]


def only(body: dict[str, Any], allowed: set[str]) -> None:
    """Unknown fields are refused, not ignored: a typo must not pass for a change."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(unknown[0], "unknown field")


def limits(body: dict[str, Any]) -> dict[str, Any]:
    """The quota and sender-domain fields present in ``body``, checked."""
    out: dict[str, Any] = {}
    for key in ("hourly_quota", "daily_quota"):
        if key in body:
            out[key] = quota(body[key], key)
    if "allowed_sender_domains" in body:
        out["allowed_sender_domains"] = domains(body["allowed_sender_domains"])
    return out
