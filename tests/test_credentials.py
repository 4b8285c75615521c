"""Credential store and checker, without sockets."""

from __future__ import annotations

import string
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial.unittest import TestCase

from relaymail.credentials import CredentialChecker, CredentialStore, generate_password
from relaymail.spool import run_synchronously


def test_generated_passwords_are_safe_on_a_command_line() -> None:
    passwords = {generate_password() for _ in range(2000)}
    assert len(passwords) == 2000
    allowed = set(string.ascii_letters + string.digits)
    assert all(len(p) == 24 and set(p) <= allowed for p in passwords)


class CheckerTests(TestCase):
    def setUp(self) -> None:
        self.store = CredentialStore(self.mktemp() + ".json")
        self.password = self.store.add("app1")
        self.checker = CredentialChecker(self.store, run_synchronously)

    def check(self, name: bytes, password: bytes) -> Any:
        return self.checker.requestAvatarId(UsernamePassword(name, password))

    def test_good_bad_unknown(self) -> None:
        self.assertEqual(self.successResultOf(self.check(b"app1", self.password.encode())),
                         "app1")
        self.failureResultOf(self.check(b"app1", b"wrong"), UnauthorizedLogin)
        self.failureResultOf(self.check(b"nobody", b"x"), UnauthorizedLogin)

    def test_reset_invalidates_cached_login(self) -> None:
        old = self.password.encode()
        self.successResultOf(self.check(b"app1", old))
        self.store.reset("app1")
        self.failureResultOf(self.check(b"app1", old), UnauthorizedLogin)


def test_cli_set_changes_limits_and_flags(tmp_path: Any, capsys: Any) -> None:
    import json

    from relaymail.cli import main

    config = tmp_path / "relay.json"
    config.write_text(json.dumps({"credentials_file": "creds.json"}))
    base = ["--config", str(config), "credentials"]
    assert main([*base, "add", "shop", "--hourly-quota", "5", "--check-header-from"]) == 0
    store = CredentialStore(str(tmp_path / "creds.json"))
    shop = store.get("shop")
    assert shop is not None and shop.check_header_from and shop.hourly_quota == 5
    assert main([*base, "set", "shop", "--hourly-quota", "0", "--daily-quota", "100",
                 "--no-check-header-from", "--sender-domain", "shop.example"]) == 0
    shop = CredentialStore(str(tmp_path / "creds.json")).get("shop")
    assert shop is not None
    assert (shop.hourly_quota, shop.daily_quota, shop.check_header_from,
            shop.allowed_sender_domains) == (None, 100, False, ["shop.example"])
    assert main([*base, "set", "shop"]) == 2
    assert main([*base, "set", "nobody", "--enabled"]) == 2
    assert "no credential named 'nobody'" in capsys.readouterr().err


def test_unknown_logins_cost_what_real_ones_cost(tmp_path: Any) -> None:
    """M1: unknown users were refused in ~1.5 ms and real ones in ~199 ms (the dummy hash
    had cost 4): the time told which usernames exist."""
    import time

    from relaymail.credentials import BCRYPT_ROUNDS, dummy_hash

    assert dummy_hash().startswith(b"$2b$%02d$" % BCRYPT_ROUNDS)
    store = CredentialStore(str(tmp_path / "credentials.json"))
    password = store.add("app1")
    checker = CredentialChecker(store, run_synchronously, cache_seconds=0)

    def seconds(name: str, secret: str) -> float:
        start = time.perf_counter()
        d = checker.requestAvatarId(UsernamePassword(name.encode(), secret.encode()))
        d.addErrback(lambda f: f.trap(UnauthorizedLogin))
        return time.perf_counter() - start

    seconds("nobody", "x")  # the dummy hash is made once
    real = min(seconds("app1", password + "wrong") for _ in range(2))
    unknown = min(seconds("nobody", "x") for _ in range(2))
    assert 0.5 < unknown / real < 2, (unknown, real)


def test_new_credentials_are_restricted_or_say_they_are_not(tmp_path: Any,
                                                             capsys: Any) -> None:
    """Low: credentials had no sender restriction by default, silently."""
    import json

    from relaymail.cli import main

    config = tmp_path / "relay.json"
    config.write_text(json.dumps({"credentials_file": "credentials.json"}))
    assert main(["--config", str(config), "credentials", "add", "noreply@shop.example"]) == 0
    assert main(["--config", str(config), "credentials", "add", "app1"]) == 0
    err = capsys.readouterr().err
    store = CredentialStore(str(tmp_path / "credentials.json"))
    assert store.get("noreply@shop.example").allowed_sender_domains == ["shop.example"]
    assert store.get("app1").allowed_sender_domains == []
    assert "warning: app1 may send as any address" in err
    assert "noreply@shop.example may send" not in err


def test_hash_password_on_a_terminal_asks_twice(monkeypatch: Any, capsys: Any) -> None:
    import argparse
    import importlib

    cli = importlib.import_module("relaymail.cli.main")

    monkeypatch.setattr(cli.sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter(["s3cret-one", "s3cret-two"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(answers))
    assert cli.cmd_hash_password(argparse.Namespace()) == 2
    assert "differ" in capsys.readouterr().err
    answers = iter(["s3cret-one", "s3cret-one"])
    assert cli.cmd_hash_password(argparse.Namespace()) == 0
    assert capsys.readouterr().out.startswith("$2")
