"""Alembic's entry point, run by ``relaymail.accounts.database.migrate`` with the open
connection in ``config.attributes["connection"]`` (relaymail never runs the alembic
command line against a URL of its own)."""

from __future__ import annotations

from alembic import context

from relaymail.accounts.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
