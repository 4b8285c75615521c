"""Alembic migrations of the accounts database (``relaymail.accounts.database.migrate``
runs them at startup; ``versions/`` holds one file per schema version)."""
