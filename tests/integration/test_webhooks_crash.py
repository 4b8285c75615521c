"""Webhooks survive SIGKILL: relaymail (twistd, with and without acceptor processes) is
killed at random moments under load, several times, then started again; every message it
acknowledged must reach the real receiver (tests.webhookreceiver) as an ``accepted`` and a
``delivered`` event, each correctly signed.  An event may come twice (at least once, with
its id); none may be missing."""

from __future__ import annotations

import os
import random
import signal
import smtplib
import threading
import time
from typing import Any

import pytest

from tests.helpers import free_port
from tests.integration.test_twistd import stop, twistd_logged, wait_for_banner, write_config
from tests.webhookreceiver import WebhookReceiver, independent_verify

SECRET = "crash-test-secret-0123456789"


class QueueIdSender(threading.Thread):
    """Sends until stopped or killed; keeps the queue ID of every acknowledged message."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acked: list[str] = []
        self.stopping = False

    def run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
                s.ehlo()
                while not self.stopping:
                    s.mail("app@client.test")
                    s.rcpt("user@dest.test")
                    code, reply = s.data(b"Subject: crash\r\n\r\nbody\r\n")
                    if code == 250:
                        self.acked.append(reply.decode().rsplit(" ", 1)[1])
        except (OSError, smtplib.SMTPException):
            return


def load_and_kill(port: int, config: str, rng: random.Random) -> list[str]:
    proc = twistd_logged(config)
    senders = [QueueIdSender(port) for _ in range(3)]
    try:
        wait_for_banner(port, proc)
        for sender in senders:
            sender.start()
        time.sleep(rng.uniform(0.4, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
        kill_leftovers(config)
    for sender in senders:
        sender.stopping = True
        sender.join(timeout=15)
    return [qid for s in senders for qid in s.acked]


def kill_leftovers(config: str) -> None:
    """Acceptor processes exit when their main process goes; wait for that (or help)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not children_of(config):
            return
        time.sleep(0.1)
    for pid in children_of(config):
        os.kill(pid, signal.SIGKILL)


def children_of(config: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"relaymail.workers.acceptor" in cmdline and config.encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_loses_no_webhook_event(tmp_path: Any, workers: int) -> None:
    receiver = WebhookReceiver().start()
    try:
        port = free_port()
        config = write_config(str(tmp_path), port, extra={"webhooks": [
            {"url": receiver.url, "secret": SECRET, "events": ["accepted", "delivered"],
             "timeout": 2}]}, workers=workers)
        rng = random.Random(os.getpid())
        acked: list[str] = []
        for _ in range(3):
            acked += load_and_kill(port, config, rng)
        assert len(acked) > 20, f"too little load: {len(acked)} acknowledged"
        proc = twistd_logged(config)
        try:
            wait_for_banner(port, proc)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and missing(receiver, acked):
                time.sleep(0.2)
        finally:
            stop(proc)
            kill_leftovers(config)
        lost = missing(receiver, acked)
        assert not lost, f"{len(lost)} event(s) lost of {2 * len(acked)}: {sorted(lost)[:5]}"
        for r in receiver.received:
            assert independent_verify(SECRET, r.headers["X-Relaymail-Signature"], r.body)
        docs = receiver.events()
        twice = len(docs) - len({(d["queue_id"], d["event"]) for d in docs})
        print(f"webhook crash test (workers {workers}): {len(acked)} acknowledged, "
              f"{len(docs)} events, {twice} repeated")
    finally:
        receiver.stop()


def missing(receiver: WebhookReceiver, acked: list[str]) -> set[tuple[str, str]]:
    got = {(d["queue_id"], d["event"]) for d in receiver.events()}
    return {(qid, event) for qid in acked for event in ("accepted", "delivered")} - got
