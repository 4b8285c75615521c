"""The accounts tables, as SQLAlchemy Core metadata (the same on SQLite and PostgreSQL).

Times are UNIX seconds (floats), lists are JSON text, so that a backup is plain JSON and
both engines store the same values.  ``generation`` is a single row bumped by every change:
each process polls it (one cheap query a second) and reloads its copy when it moved.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("password_hash", String(100), nullable=False),
    Column("role", String(16), nullable=False),  # admin | user
    Column("enabled", Boolean, nullable=False),
    Column("hourly_quota", Integer),
    Column("daily_quota", Integer),
    Column("allowed_sender_domains", Text, nullable=False),  # JSON list; [] = any
    Column("created", Float, nullable=False),
    Column("last_login", Float),
    # Console sessions made before this time are over (a new password, a disable).
    Column("signed_out", Float, nullable=False, server_default="0"),
    Index("users_username_lower", func.lower(text("username")), unique=True),
    Index("users_email_lower", func.lower(text("email")), unique=True),
    sqlite_autoincrement=True,  # ids are never reused (sessions and logs name them)
)

smtp_credentials = Table(
    "smtp_credentials", metadata,
    Column("username", String(64), primary_key=True),  # relay_<8 hex>_<4 hex>: the SMTP login
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("name", String(128), nullable=False),
    Column("password_hash", String(100), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("hourly_quota", Integer),
    Column("daily_quota", Integer),
    Column("allowed_sender_domains", Text, nullable=False),
    Column("check_header_from", Boolean, nullable=False),
    Column("created", Float, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("digest", String(64), primary_key=True),  # SHA-256 of the bearer token
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False, index=True),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(16), primary_key=True),  # the key's public part
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True),
    # null user_id: a key of the configured admin (web.admin_user)
    Column("name", String(128), nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the secret part
    Column("scopes", Text, nullable=False),  # JSON list
    Column("created", Float, nullable=False),
    Column("last_used", Float),
)

invites = Table(
    "invites", metadata,
    Column("digest", String(64), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("created_by", String(64), nullable=False),
)

generation = Table(
    "generation", metadata,
    Column("id", Integer, primary_key=True),
    Column("value", Integer, nullable=False),
)

# In the order a restore inserts them (parents first).
TABLES = (users, smtp_credentials, tokens, api_keys, invites)
