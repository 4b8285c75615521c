"""The rows of the accounts tables as Python values (what the view keeps and the API shows)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str
    password_hash: str
    role: str
    enabled: bool
    hourly_quota: int | None
    daily_quota: int | None
    allowed_sender_domains: list[str]
    created: float
    last_login: float | None
    signed_out: float = 0.0  # console sessions older than this are over

    @classmethod
    def from_row(cls, row: Any) -> User:
        data = dict(row._mapping)
        data["allowed_sender_domains"] = json.loads(data["allowed_sender_domains"])
        return cls(**data)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("password_hash")
        data.pop("signed_out")
        return data


@dataclass(frozen=True)
class SmtpLogin:
    """One row of ``smtp_credentials``: an SMTP AUTH login that belongs to a user."""

    username: str
    user_id: int
    name: str
    password_hash: str
    enabled: bool
    hourly_quota: int | None
    daily_quota: int | None
    allowed_sender_domains: list[str]
    check_header_from: bool
    created: float

    @classmethod
    def from_row(cls, row: Any) -> SmtpLogin:
        data = dict(row._mapping)
        data["allowed_sender_domains"] = json.loads(data["allowed_sender_domains"])
        return cls(**data)

    def public(self, owner: str | None = None) -> dict[str, Any]:
        """The shape of ``/api/smtp-credentials``: ``id`` and ``username`` are the login."""
        data = asdict(self)
        data.pop("password_hash")
        data["id"] = self.username
        if owner is not None:
            data["user"] = owner
        return data


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: int | None
    name: str
    digest: str
    scopes: list[str]
    created: float
    last_used: float | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        data = dict(row._mapping)
        data["scopes"] = json.loads(data["scopes"])
        return cls(**data)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("digest")
        data["prefix"] = f"rmk_{self.id}_"
        return data


@dataclass(frozen=True)
class Token:
    digest: str
    user_id: int
    created: float
    expires: float


@dataclass
class Snapshot:
    """Everything a process needs to answer logins and requests without a query."""

    generation: int = 0
    users: dict[int, User] = field(default_factory=dict)
    logins: dict[str, SmtpLogin] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)

    def user_named(self, name: str) -> User | None:
        """By username, or by email (what the login form and the API accept)."""
        wanted = name.strip()
        at_domain = wanted.rpartition("@")
        if at_domain[1]:
            wanted = f"{at_domain[0]}@{at_domain[2].lower()}"
        for user in self.users.values():
            if user.username == wanted or user.email == wanted:
                return user
        return None
