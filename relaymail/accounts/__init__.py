"""Accounts: users and their roles, their SMTP credentials, bearer tokens and API keys, in
one database (SQLite in the spool directory by default, PostgreSQL when several instances
share accounts).

- :mod:`~relaymail.accounts.schema`: the tables (SQLAlchemy Core), migrated by Alembic
  (:mod:`~relaymail.accounts.migrations`);
- :mod:`~relaymail.accounts.database`: the engine, its thread pool and the migrations;
- :mod:`~relaymail.accounts.store`: every change, as blocking functions run in that pool;
- :mod:`~relaymail.accounts.view`: what every process reads on the reactor: an in-memory
  copy of the tables, reloaded within a second of a change made anywhere;
- :mod:`~relaymail.accounts.service`: the changes the API makes (checked by
  :mod:`~relaymail.accounts.fields`), then the view reloaded everywhere;
- :mod:`~relaymail.accounts.model`: the rows as Python values;
- :mod:`~relaymail.accounts.principal`: who a request or a login is, and what it may do;
- :mod:`~relaymail.accounts.secrets`: tokens, keys, generated logins and their digests;
- :mod:`~relaymail.accounts.backup`: ``relaymail backup`` and ``restore``.
"""
