"""The ``accounts`` section: where users, their SMTP logins and API keys are kept, and
who may register.  relaymail.accounts applies it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check

REGISTRATION = ("off", "invite", "open")
DB_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


@dataclass(frozen=True)
class AccountsConfig:
    database: str  # an SQLite file, or a postgresql:// URL (shared by several instances)
    registration: str  # off | invite | open
    token_lifetime: float  # seconds a bearer token from /api/auth/login lives
    min_password_length: int
    max_registrations_per_hour: int  # per client address, for open registration
    new_account_hourly_quota: int | None  # what a registered account starts with
    new_account_daily_quota: int | None

    @property
    def shared(self) -> bool:
        return "://" in self.database


def validate_database(c: Check, value: Any, spool_dir: str) -> str:
    """null: ``<spool_dir>/accounts.db``; a path (SQLite); or a PostgreSQL URL."""
    if value is None:
        return os.path.join(spool_dir, "accounts.db")
    text = c.string(value, "accounts.database")
    if "://" in text:
        if not text.startswith(DB_SCHEMES):
            raise c.fail("accounts.database", "expected a file path or a URL like "
                         "postgresql://user:password@host/db", "(a URL)")
        return text
    return c.path(text, "accounts.database")


def validate_accounts(c: Check, d: dict[str, Any], spool_dir: str) -> AccountsConfig:
    return AccountsConfig(
        database=validate_database(c, d["database"], spool_dir),
        registration=c.choice(d["registration"], "accounts.registration", REGISTRATION),
        token_lifetime=c.number(d["token_lifetime"], "accounts.token_lifetime", 60),
        min_password_length=c.integer(d["min_password_length"],
                                      "accounts.min_password_length", 8),
        max_registrations_per_hour=c.integer(d["max_registrations_per_hour"],
                                             "accounts.max_registrations_per_hour", 1),
        new_account_hourly_quota=optional_quota(c, d, "new_account_hourly_quota"),
        new_account_daily_quota=optional_quota(c, d, "new_account_daily_quota"),
    )


def optional_quota(c: Check, d: dict[str, Any], key: str) -> int | None:
    value = d[key]
    return None if value is None else c.integer(value, f"accounts.{key}", 1)
