"""The accounts layer on a real SQLite file: migrations (idempotent, 0600), the store's
refusals, the view's lookups (a disabled user's logins, expired tokens, a key with a wrong
secret, both sender-domain lists), the file's credentials taking precedence, the backup
round trip through the command line, and the field checks naming the field."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock

from relaymail.accounts import fields, store
from relaymail.accounts.database import Database, DatabaseError, engine_url, shown
from relaymail.accounts.fields import AccountError
from relaymail.accounts.model import SmtpLogin
from relaymail.accounts.secrets import digest, new_api_key, new_token
from relaymail.accounts.view import AccountsView, CombinedCredentials
from relaymail.cli.main import main as cli
from relaymail.credentials import CredentialStore
from relaymail.policy.senders import sender_allowed


@pytest.fixture
def db() -> Any:
    path = os.path.join(tempfile.mkdtemp(), "spool", "accounts.db")
    database = Database(path, reactor)
    database.open_now()
    yield database
    database.stop()


def user(db: Database, name: str = "alice", **limits: Any) -> Any:
    return db.transaction(store.create_user, name, f"{name}@people.example", "$2b$hash",
                          "user", 1000.0, **limits)


def login(db: Database, user_id: int, username: str = "relay_0123abcd_ef01",
          domains: list[str] | None = None) -> SmtpLogin:
    made = SmtpLogin(username, user_id, "app", "$2b$login", True, None, None, domains or [],
                     False, 1000.0)
    return db.transaction(store.add_login, made)


def view_of(db: Database, clock: Clock | None = None) -> AccountsView:
    view = AccountsView(db, (clock or Clock()).seconds, reactor)
    view.load_now()
    return view


def test_migrations_create_a_private_file_and_run_once(db: Database) -> None:
    assert stat.S_IMODE(os.stat(db.database).st_mode) == 0o600
    again = Database(db.database, reactor)
    again.open_now()  # at head already: nothing to do, no error
    assert again.transaction(store.count_users) == 0
    again.stop()


def test_an_unusable_database_is_named_without_its_password() -> None:
    database = Database("postgresql://relaymail:s3cret@127.0.0.1:1/accounts", reactor)
    with pytest.raises(DatabaseError) as caught:
        database.open_now()
    assert "postgresql://relaymail@127.0.0.1:1/accounts" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert engine_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert shown("/var/spool/accounts.db") == "/var/spool/accounts.db"


def test_usernames_and_emails_are_unique_ignoring_case(db: Database) -> None:
    user(db)
    with pytest.raises(AccountError) as caught:
        db.transaction(store.create_user, "ALICE", "other@people.example", "h", "user", 1.0)
    assert (caught.value.code, caught.value.field) == ("exists", "username")
    with pytest.raises(AccountError) as caught:
        db.transaction(store.create_user, "alice2", "alice@people.example", "h", "user", 1.0)
    assert caught.value.field == "email"


def test_a_disabled_user_disables_every_login(db: Database) -> None:
    alice = user(db)
    login(db, alice.id)
    view = view_of(db)
    assert view.credential("relay_0123abcd_ef01").enabled  # type: ignore[union-attr]
    db.transaction(store.update_user, alice.id, enabled=False)
    view.load_now()
    found = view.credential("relay_0123abcd_ef01")
    assert found is not None and not found.enabled
    assert view.credential("relay_ffffffff_ffff") is None


def test_both_sender_lists_bound_a_login(db: Database) -> None:
    alice = user(db, allowed_sender_domains=["shop.example", "*.corp.example"])
    login(db, alice.id, domains=["news.corp.example"])
    found = view_of(db).credential("relay_0123abcd_ef01")
    assert sender_allowed(found, "a@news.corp.example")
    assert not sender_allowed(found, "a@shop.example")  # the login's own list is narrower
    assert not sender_allowed(found, "a@elsewhere.example")
    assert found is not None and found.owner == "alice"


def test_tokens_expire_and_go_with_a_new_password(db: Database) -> None:
    alice = user(db)
    token = new_token()
    db.transaction(store.add_token, digest(token), alice.id, 1000.0, 1060.0)
    clock = Clock()
    clock.advance(1000)
    view = view_of(db, clock)
    principal = view.by_token(token)
    assert principal is not None and principal.user_id == alice.id and not principal.is_admin
    assert view.by_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    clock.advance(61)
    assert view.by_token(token) is None
    db.transaction(store.set_password, alice.id, "$2b$new")
    assert db.transaction(store.snapshot, 0.0).tokens == {}


def test_api_keys_need_the_whole_secret_and_carry_their_scopes(db: Database) -> None:
    alice = user(db)
    key_id, key = new_api_key()
    db.transaction(store.add_api_key, key_id, alice.id, "ci", digest(key), ["read-logs"], 1.0)
    view = view_of(db)
    principal = view.by_api_key(key, "admin")
    assert principal is not None and principal.may("read-logs") and not principal.may("send")
    assert view.by_api_key(key[:-2] + "xx", "admin") is None
    assert view.by_api_key("rmk_" + key_id + "_short", "admin") is None
    view.flush_used()


def test_the_credentials_file_comes_first(db: Database) -> None:
    alice = user(db)
    login(db, alice.id)
    path = os.path.join(os.path.dirname(db.database), "credentials.json")
    file_store = CredentialStore(path)
    file_store.add("relay_0123abcd_ef01", "from-the-file")
    combined = CombinedCredentials(file_store, view_of(db))
    found = combined.get("relay_0123abcd_ef01")
    assert found is not None and found.owner is None  # the file's, not alice's
    assert combined.get("nobody") is None
    with open(path) as f:
        assert "owner" not in f.read()  # account fields never reach the file


def test_backup_and_restore_keep_every_row(tmp_path: Any) -> None:
    spool = tmp_path / "spool"
    config = tmp_path / "relay.json"
    config.write_text(json.dumps({"spool_dir": str(spool)}))
    database = Database(str(spool / "accounts.db"), reactor)
    database.open_now()
    alice = user(database)
    login(database, alice.id)
    database.stop()
    backup = tmp_path / "backup.json"
    assert cli(["--config", str(config), "backup", str(backup)]) == 0
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert cli(["--config", str(config), "restore", str(backup)]) == 2  # has users
    os.remove(spool / "accounts.db")
    assert cli(["--config", str(config), "restore", str(backup)]) == 0
    again = Database(str(spool / "accounts.db"), reactor)
    again.open_now()
    restored = again.transaction(store.snapshot, 0.0)
    again.stop()
    assert [u.username for u in restored.users.values()] == ["alice"]
    assert restored.logins["relay_0123abcd_ef01"].password_hash == "$2b$login"
    (tmp_path / "bad.json").write_text("{}")
    assert cli(["--config", str(config), "restore", str(tmp_path / "bad.json")]) == 2


@pytest.mark.parametrize(("check", "value", "field"), [
    (lambda v: fields.username(v), "ab", "username"),
    (lambda v: fields.username(v), "-lead", "username"),
    (lambda v: fields.email(v), "no-at-sign", "email"),
    (lambda v: fields.password(v, 10), "short", "password"),
    (lambda v: fields.password(v, 10), "é" * 40, "password"),  # 80 bytes: over bcrypt's 72
    (lambda v: fields.quota(v, "hourly_quota"), -1, "hourly_quota"),
    (lambda v: fields.quota(v, "hourly_quota"), True, "hourly_quota"),
    (lambda v: fields.domains(v), ["ok.example", "bad domain"], "allowed_sender_domains[1]"),
    (lambda v: fields.domains(v), "shop.example", "allowed_sender_domains"),
    (lambda v: fields.scopes(v), ["send", "root"], "scopes"),
    (lambda v: fields.text(v, "name"), "two\nlines", "name"),
])
def test_bad_fields_are_named(check: Any, value: Any, field: str) -> None:
    with pytest.raises(AccountError) as caught:
        check(value)
    assert caught.value.field == field and caught.value.status == 400


def test_good_fields_are_normalized() -> None:
    assert fields.email("Ann@Example.COM") == "Ann@example.com"
    assert fields.domains(["Shop.Example.", "*.corp.example", "a@b.example", "shop.example"]
                          ) == ["shop.example", "*.corp.example", "a@b.example"]
    assert fields.quota(0, "daily_quota") is None
    assert fields.scopes(["read-logs", "send"]) == ["send", "read-logs"]


def test_a_deleted_users_id_is_never_given_again(db: Database) -> None:
    """Console sessions and the history name accounts by id: SQLite must not reuse one."""
    user(db, "alice")
    bob = user(db, "bob")
    db.transaction(store.delete_user, bob.id)
    carol = user(db, "carol")
    assert carol.id > bob.id


def test_a_session_from_before_a_new_password_is_over(db: Database) -> None:
    alice = user(db)
    view = view_of(db)
    assert view.session_principal(alice.id, 1500.0) is not None
    db.transaction(store.set_password, alice.id, "$2b$new", 2000.0)
    view.load_now()
    assert view.session_principal(alice.id, 1500.0) is None
    assert view.session_principal(alice.id, 2500.0) is not None


def test_head_is_the_newest_migration() -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from relaymail.accounts.database import MIGRATIONS
    from relaymail.accounts.migrations import HEAD

    alembic = AlembicConfig()
    alembic.set_main_option("script_location", MIGRATIONS)
    assert ScriptDirectory.from_config(alembic).get_current_head() == HEAD


def test_the_api_document_says_who_may_call_each_route() -> None:
    from relaymail.web.openapi import document

    paths = document("test")["paths"]
    roles = {(p, m): op["x-role"] for p, ops in paths.items() for m, op in ops.items()}
    assert roles[("/api/users", "get")] == "admin"
    assert roles[("/api/smtp-credentials", "post")] == "user"
    assert roles[("/api/auth/login", "post")] == "anyone"
    assert all(role in ("anyone", "user", "admin") for role in roles.values())
    assert paths["/api/send"]["post"]["x-scope"] == "send"
    assert paths["/api/mail-logs/stats"]["get"]["x-scope"] == "read-logs"
    assert paths["/api/queue"]["get"]["x-scope"] == "admin"
