"""Users, their SMTP credentials, bearer tokens, API keys, invitations.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("email", sa.String(254), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("hourly_quota", sa.Integer),
        sa.Column("daily_quota", sa.Integer),
        sa.Column("allowed_sender_domains", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("last_login", sa.Float),
        sa.Column("signed_out", sa.Float, nullable=False, server_default="0"),
        sqlite_autoincrement=True)  # an id is never reused: old sessions cannot pass to it
    # one account per name and address whatever their case, even for concurrent sign-ups
    op.create_index("users_username_lower", "users", [sa.text("lower(username)")],
                    unique=True)
    op.create_index("users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    op.create_table(
        "smtp_credentials",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("hourly_quota", sa.Integer),
        sa.Column("daily_quota", sa.Integer),
        sa.Column("allowed_sender_domains", sa.Text, nullable=False),
        sa.Column("check_header_from", sa.Boolean, nullable=False),
        sa.Column("created", sa.Float, nullable=False))
    op.create_table(
        "tokens",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False, index=True))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
                  index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("last_used", sa.Float))
    op.create_table(
        "invites",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False))
    generation = op.create_table(
        "generation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False))
    op.bulk_insert(generation, [{"id": 1, "value": 1}])


def downgrade() -> None:
    for table in ("generation", "invites", "api_keys", "tokens", "smtp_credentials", "users"):
        op.drop_table(table)
