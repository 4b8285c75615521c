"""Alembic migrations of the accounts database (``relaymail.accounts.database.migrate``
runs them at startup; ``versions/`` holds one file per schema version)."""

# The newest revision: a start whose schema is at it skips Alembic (tests/test_accounts.py
# checks that this is the head of versions/).
HEAD = "0001"
