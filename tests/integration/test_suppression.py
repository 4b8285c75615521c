"""The suppression list across processes: ``relaymail suppression`` changes the file of a
running twistd with two acceptor processes; within about a second every acceptor refuses
the address at RCPT with 550 5.1.1, each refusal reaches the webhook receiver as a
``suppressed`` event (over AMP from the acceptor), and removal lets mail through again."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from typing import Any

from tests.helpers import free_port
from tests.integration.test_twistd import (
    RELAYMAIL,
    stop,
    twistd_logged,
    wait_for_banner,
    write_config,
)
from tests.integration.test_webhooks_crash import kill_leftovers
from tests.webhookreceiver import WebhookReceiver

SECRET = "suppression-test-secret-0123"


def rcpt_reply(port: int, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        s.mail("app@client.test")
        return s.rcpt(address)


def cli(config: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([RELAYMAIL, "--config", config, "suppression", *args], input=stdin,
                          capture_output=True, text=True, timeout=30, check=False)


def until(predicate: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_every_acceptor_refuses_a_suppressed_address(tmp_path: Any) -> None:
    receiver = WebhookReceiver().start()
    port = free_port()
    config = write_config(str(tmp_path), port, workers=2, extra={"webhooks": [
        {"url": receiver.url, "secret": SECRET, "events": ["suppressed"]}]})
    proc = twistd_logged(config)
    try:
        wait_for_banner(port, proc)
        assert rcpt_reply(port, "gone@dest.test")[0] == 250
        added = cli(config, "add", "Gone@Dest.test", "--reason", "complained")
        assert added.returncode == 0, added.stderr
        changed = time.monotonic()
        replies: list[tuple[int, bytes]] = []

        def refused_everywhere() -> bool:  # a dozen sessions land on both acceptors
            replies[:] = [rcpt_reply(port, "GONE@dest.test") for _ in range(12)]
            return all(code == 550 for code, _ in replies)

        until(refused_everywhere)
        assert time.monotonic() - changed < 4, "acceptors saw the change late"
        assert b"5.1.1 <GONE@dest.test>: Recipient address suppressed by the administrator" \
            in replies[0][1]
        until(lambda: len(receiver.events()) >= 12)
        doc = receiver.events()[0]
        assert (doc["event"], doc["recipient"].lower(), doc["code"]) == ("suppressed",
                                                                        "gone@dest.test", 550)
        assert rcpt_reply(port, "other@dest.test")[0] == 250
        listed = json.loads(cli(config, "list", "--json").stdout)
        assert [(e["address"], e["source"]) for e in listed["items"]] == \
            [("gone@dest.test", "manual")]
        assert cli(config, "remove", "gone@dest.test").returncode == 0
        until(lambda: all(rcpt_reply(port, "gone@dest.test")[0] == 250 for _ in range(6)))
    finally:
        stop(proc)
        kill_leftovers(config)
        receiver.stop()


def test_cli_import_export_and_errors(tmp_path: Any) -> None:
    config = write_config(str(tmp_path), free_port())
    imported = cli(config, "import", "-", stdin="address,reason\nA@x.test,old\nb@y.test,\n")
    assert imported.returncode == 0, imported.stderr
    assert "2 address(es) added" in imported.stdout
    again = cli(config, "import", "-", stdin="a@x.test\n")
    assert "0 address(es) added, 1 already suppressed" in again.stdout
    bad = cli(config, "import", "-", stdin="a@x.test\nnot an address\n")
    assert bad.returncode == 2 and "line 2: not an address" in bad.stderr
    exported = cli(config, "export").stdout.splitlines()
    assert exported[0] == "address,reason,source,queue_id,created"
    assert sorted(line.split(",")[0] for line in exported[1:]) == ["a@x.test", "b@y.test"]
    missing = cli(config, "remove", "nobody@x.test")
    assert missing.returncode == 2 and "nobody@x.test is not suppressed" in missing.stderr
    mode = os.stat(os.path.join(str(tmp_path), "spool", "suppression.db")).st_mode & 0o777
    assert mode == 0o600
    checked = subprocess.run([RELAYMAIL, "--config", config, "check-config"],
                             capture_output=True, text=True, timeout=30, check=False)
    assert "webhooks: none; suppression list: on, hard bounces added; archive: off" \
        in checked.stdout


def test_an_unusable_webhook_outbox_stops_startup(tmp_path: Any) -> None:
    from tests.integration.test_twistd import twistd

    config = write_config(str(tmp_path), free_port(), extra={"webhooks": [
        {"url": "http://127.0.0.1:9/", "secret": SECRET}]})
    os.makedirs(os.path.join(str(tmp_path), "spool", "webhooks.db"))  # a directory
    proc = twistd(config)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert b"relaymail: cannot open the webhook outbox " in out + err
    assert b"Traceback" not in out + err
