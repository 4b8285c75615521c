"""``twistd -n relaymail`` as a real process: startup errors, and the SIGKILL crash test."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest

from relaymail.spool.record import open_body
from tests.helpers import free_port

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
RELAYMAIL = os.path.join(BIN, "relaymail")


def twistd(config: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([TWISTD, "-n", "--pidfile=", "relaymail", "--config", config],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=os.path.dirname(config), **kw)


def twistd_logged(config: str) -> subprocess.Popen:
    """twistd with its log in ``twistd.log`` beside the config: under load a pipe that
    nobody reads fills up and stalls the process."""
    directory = os.path.dirname(config)
    log = open(os.path.join(directory, "twistd.log"), "ab")  # noqa: SIM115 (child keeps it)
    try:
        return subprocess.Popen([TWISTD, "-n", "--pidfile=", "relaymail", "--config", config],
                                stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    finally:
        log.close()  # the child has its own copy


def write_config(directory: str, port: int, web: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, **smtp: Any) -> str:
    path = os.path.join(directory, "relay.json")
    data = {"hostname": "relay.test", "spool_dir": "spool", "web": web or {"enabled": False},
            "smtp": {"listeners": [{"name": "smtp", "endpoint": f"tcp:{port}:interface=127.0.0.1",
                                    "tls": "none"}], "workers": 0, **smtp}, **(extra or {})}
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def wait_for_banner(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited: {proc.communicate()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"220 "):
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("relaymail did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


@pytest.mark.parametrize(("data", "words"), [
    ({"smtp": {"max_recipients": "ten"}}, 'smtp.max_recipients: expected an integer >= 1 '
                                          '(got "ten")'),
    ({"smtp": {"tls": {"certificate": "nope.pem", "private_key": "nope.key"}}},
     "smtp.tls.certificate: file is missing or unreadable"),
    ({"unknown_section": 1}, "unknown_section: unknown key"),
])
def test_bad_config_stops_twistd_without_traceback(tmp_path: Any, data: Any, words: str) -> None:
    config = tmp_path / "relay.json"
    config.write_text(json.dumps(data))
    proc = twistd(str(config))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    text = (out + err).decode()
    assert f"{config}: {words}" in text
    assert "Traceback" not in text
    check = subprocess.run([RELAYMAIL, "--config", str(config), "check-config"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    assert f"{config}: {words}" in check.stderr


def test_busy_port_stops_twistd_with_one_line(tmp_path: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_config(str(tmp_path), busy.getsockname()[1])
        proc = twistd(config)
        out, err = proc.communicate(timeout=60)
    text = (out + err).decode()
    assert proc.returncode != 0
    assert "smtp.listeners[0].endpoint: [Errno 98] Address already in use" in text
    assert "Traceback" not in text


def test_credentials_cli_round_trip(tmp_path: Any) -> None:
    config = write_config(str(tmp_path), free_port())

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([RELAYMAIL, "--config", config, *args], capture_output=True,
                              text=True, timeout=60)

    added = cli("credentials", "add", "app1", "--sender-domain", "example.com")
    assert added.returncode == 0, added.stderr
    password = added.stdout.rsplit(" ", 1)[1].strip()
    stored = (tmp_path / "credentials.json").read_text()
    assert password not in stored and "$2b$" in stored
    assert oct((tmp_path / "credentials.json").stat().st_mode & 0o777) == "0o600"
    listing = cli("credentials", "list", "--json")
    assert json.loads(listing.stdout)[0]["allowed_sender_domains"] == ["example.com"]
    assert "password" not in listing.stdout
    assert cli("credentials", "add", "app1").returncode == 2
    reset = cli("credentials", "reset", "app1")
    assert reset.returncode == 0 and password not in reset.stdout
    assert cli("credentials", "remove", "app1").returncode == 0
    assert json.loads(cli("credentials", "list", "--json").stdout) == []


def test_queue_commands_online_and_offline(tmp_path: Any) -> None:
    """The queue command against a running instance (through its API with the local
    control token), then against the stopped instance's spool files."""
    port, web_port, dead = free_port(), free_port(), free_port()
    extra = {"routes": [{"domains": ["*"], "transport": "provider"}],
             "transports": {"provider": {"type": "smarthost", "upstreams": [
                 {"host": "127.0.0.1", "port": dead, "tls": "none"}]}},
             "delivery": {"bounces": False, "connect_timeout": 1}}
    config = write_config(str(tmp_path), port, web={
        "endpoint": f"tcp:{web_port}:interface=127.0.0.1"}, extra=extra)

    def queue(*args: str) -> Any:
        done = subprocess.run([RELAYMAIL, "--config", config, "queue", *args],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    proc = twistd(config)
    try:
        wait_for_banner(port, proc)
        second = twistd(config)
        out, err = second.communicate(timeout=60)
        assert second.returncode != 0 and b"in use by another relaymail" in out + err, out + err
        with smtplib.SMTP("127.0.0.1", port) as s:
            for i in range(3):
                s.sendmail("app@client.test", [f"user{i}@dest.test"], b"Subject: q\r\n\r\nx\r\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = json.loads(queue("list", "--json")[1])
            if len(rows) == 3 and all(r["attempts"] for r in rows):
                break
            time.sleep(0.2)
        assert len(rows) == 3 and all("Connection" in (r["recipients"][0]["last_reply"] or "")
                                      for r in rows), rows
        a, b, c = sorted(r["queue_id"] for r in rows)
        code, out, _ = queue("list")
        assert code == 0 and "user0@dest.test" in out and "3 Requests" in out
        assert queue("hold", a)[0] == 0
        assert f"{a}!" in queue("list")[1]
        code, out, err = queue("release", b)
        assert code == 1 and "not on hold" in out + err
        assert queue("delete", b)[0] == 0
        assert queue("bounce", c)[0] == 0
        states = {r["queue_id"]: r["state"] for r in json.loads(queue("list", "--json")[1])}
        assert states == {a: "hold", c: "failed"}
        shown = json.loads(queue("show", a, "--json")[1])
        assert shown["headers"].startswith("Received: ") and "Subject: q" in shown["headers"]
        assert json.loads(queue("flush", "--json")[1]) == {"flushed": 0}
    finally:
        stop(proc)
    # Stopped: the same commands work on the files.
    assert queue("release", a)[0] == 0
    assert queue("retry", "--failed")[0] == 0
    states = {r["queue_id"]: r["state"] for r in json.loads(queue("list", "--json")[1])}
    assert states == {a: "queue", c: "queue"}
    assert json.loads(queue("flush", "--json")[1]) == {"flushed": 2}
    assert queue("delete", "NOSUCHID")[0] == 1


def wait_until(predicate: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_paused_delivery_holds_across_restarts_until_resumed(tmp_path: Any) -> None:
    """``relaymail queue pause`` against the running instance: mail is still accepted and
    queued, an upstream that would take it gets none, /health says why; the pause holds
    across a restart; ``queue retry ID`` sends that one message anyway; ``queue resume``
    sends the rest.  Offline, ``queue pause`` before a start starts it paused."""
    from aiosmtpd.controller import Controller

    from tests.upstreams import RecordingHandler

    handler = RecordingHandler()
    upstream = Controller(handler, hostname="127.0.0.1", port=free_port())
    upstream.start()
    port, web_port = free_port(), free_port()
    extra = {"routes": [{"domains": ["*"], "transport": "provider"}],
             "transports": {"provider": {"type": "smarthost", "upstreams": [
                 {"host": "127.0.0.1", "port": upstream.port, "tls": "none"}]}}}
    config = write_config(str(tmp_path), port, web={
        "endpoint": f"tcp:{web_port}:interface=127.0.0.1"}, extra=extra)

    def queue(*args: str) -> Any:
        done = subprocess.run([RELAYMAIL, "--config", config, "queue", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def health() -> Any:
        token = (tmp_path / "spool" / "control.token").read_text().strip()
        request = urllib.request.Request(f"http://127.0.0.1:{web_port}/health",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["details"]

    def delivered() -> list[str]:
        with handler.lock:
            return sorted(r for m in handler.messages for r in m.rcpt_tos)

    proc = twistd(config)
    try:
        wait_for_banner(port, proc)
        assert json.loads(queue("pause", "--json")) == {"paused": True}
        with smtplib.SMTP("127.0.0.1", port) as s:
            for name in ("one", "two"):
                s.sendmail("app@client.test", [f"{name}@dest.test"], b"Subject: p\r\n\r\nx\r\n")
        rows = json.loads(queue("list", "--json"))
        assert len(rows) == 2 and all(r["attempts"] == 0 for r in rows), rows
        assert queue("list").startswith("-- delivery is paused")
        details = health()
        assert details["delivery_paused"] is True
        assert "delivery_paused" in [r["code"] for r in details["degraded_reasons"]]
        time.sleep(1.5)  # what a running relay would have delivered by now
        assert delivered() == []
        stop(proc)
        proc = twistd(config)
        wait_for_banner(port, proc)
        time.sleep(1.5)
        assert delivered() == [] and health()["delivery_paused"] is True
        one = next(r["queue_id"] for r in json.loads(queue("list", "--json"))
                   if r["recipients"][0]["address"] == "one@dest.test")
        queue("retry", one)
        assert wait_until(lambda: delivered() == ["one@dest.test"])
        time.sleep(0.5)
        assert delivered() == ["one@dest.test"]
        assert json.loads(queue("resume", "--json")) == {"paused": False}
        wait_until(lambda: delivered() == ["one@dest.test", "two@dest.test"])
        assert wait_until(lambda: json.loads(queue("list", "--json")) == [])
        assert health()["delivery_paused"] is False
    finally:
        stop(proc)
    assert "delivery is paused" not in queue("list")
    assert "delivery paused" in queue("pause")  # stopped: the marker for the next start
    assert queue("list").startswith("-- delivery is paused")
    proc = twistd(config)
    try:
        wait_for_banner(port, proc)
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail("app@client.test", ["three@dest.test"], b"Subject: p\r\n\r\nx\r\n")
        time.sleep(1.5)
        assert "three@dest.test" not in delivered() and health()["delivery_paused"] is True
        queue("resume")
        wait_until(lambda: "three@dest.test" in delivered())
    finally:
        stop(proc)
        upstream.stop()


# ---------------------------------------------------------------------------- crash test


MARKER = re.compile(rb"^X-Marker: (\S+)\r$", re.M)


def message(marker: str) -> bytes:
    filler = "".join(random.choice("abcdefghij .") for _ in range(random.randint(10, 3000)))
    text = [filler[i:i + 76] for i in range(0, len(filler), 76)]  # lines an upstream takes
    lines = [f"X-Marker: {marker}", "Subject: crash test", "", *text, "end"]
    return ("\r\n".join(lines) + "\r\n").encode()


class Sender(threading.Thread):
    """Sends messages until told to stop; records which got a 250 and which were in flight."""

    def __init__(self, port: int, name: str) -> None:
        super().__init__(daemon=True)
        self.port, self.tag = port, name
        self.acked: dict[str, bytes] = {}
        self.in_flight: dict[str, bytes] = {}
        self.stopping = False

    def run(self) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
                s.ehlo()
                while not self.stopping:
                    n += 1
                    marker = f"{self.tag}-{n}"
                    body = message(marker)
                    s.mail("a@client.example")
                    s.rcpt("b@dest.example")
                    self.in_flight[marker] = body
                    code, _ = s.data(body)
                    if code == 250:
                        self.acked[marker] = self.in_flight.pop(marker)
        except (OSError, smtplib.SMTPException):
            return  # the server was killed


def load_and_kill(port: int, config: str, round_no: int, rng: random.Random) -> list[Sender]:
    """One crash round: start relaymail, load it from four clients, SIGKILL it at a random
    moment; returns the stopped senders (what each got acknowledged, what was in flight)."""
    proc = twistd_logged(config)
    try:
        wait_for_banner(port, proc)
        senders = [Sender(port, f"r{round_no}s{i}") for i in range(4)]
        for sender in senders:
            sender.start()
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    for sender in senders:
        sender.stopping = True
        sender.join(timeout=15)
    return senders


def marked(stored: bytes, where: str) -> tuple[bytes, bytes]:
    marker = MARKER.search(stored)
    assert marker, f"{where} has no marker"
    return marker.group(1), stored[stored.index(b"\r\nX-Marker:") + 2:]


def stored_messages(spool: str, outbox: str) -> dict[bytes, list[bytes]]:
    """marker -> bodies (without our trace headers) still queued or delivered to the outbox."""
    out: dict[bytes, list[bytes]] = {}
    queued = {n[:-5] for n in os.listdir(os.path.join(spool, "queue"))}
    data = {n[:-4] for n in os.listdir(os.path.join(spool, "data"))}
    assert queued <= data, "an envelope without its body"
    assert queued == data, "a body without an envelope survived startup"
    assert os.listdir(os.path.join(spool, "incoming")) == []
    paths = [os.path.join(spool, "data", qid + ".eml") for qid in queued]
    if os.path.isdir(os.path.join(outbox, "new")):
        paths += [os.path.join(outbox, "new", n) for n in os.listdir(os.path.join(outbox, "new"))]
    for path in paths:
        with open_body(path) as f:  # a spooled body without its envelope record
            marker, body = marked(f.read(), path)
        out.setdefault(marker, []).append(body)
    return out


def recover_and_check(port: int, config: str, spool: str, outbox: str,
                      acked: dict[str, bytes], maybe: dict[str, bytes]
                      ) -> dict[bytes, list[bytes]]:
    """Start relaymail again (recovery runs before the first session), stop it cleanly,
    and check what is stored: every acknowledged message, intact; nothing that was never
    sent in full."""
    proc = twistd(config)
    try:
        wait_for_banner(port, proc)
    finally:
        stop(proc)  # a clean stop, so that no delivery runs while we look
    stored = stored_messages(spool, outbox)
    for name, body in acked.items():
        copies = stored.get(name.encode(), [])
        assert copies and all(c == body for c in copies), f"acknowledged {name} lost"
    for marker, copies in stored.items():
        name = marker.decode()
        assert name in acked or name in maybe, f"{name} stored but never fully sent"
        assert all(c == (acked.get(name) or maybe[name]) for c in copies), f"{name} damaged"
    return stored


def test_sigkill_loses_nothing_acknowledged(tmp_path: Any) -> None:
    port = free_port()
    config = write_config(str(tmp_path), port)
    spool = str(tmp_path / "spool")
    outbox = str(tmp_path / "var" / "outbox")
    acked: dict[str, bytes] = {}
    maybe: dict[str, bytes] = {}
    rng = random.Random(os.getpid())
    for round_no in range(4):
        for sender in load_and_kill(port, config, round_no, rng):
            acked.update(sender.acked)
            maybe.update(sender.in_flight)
        stored = recover_and_check(port, config, spool, outbox, acked, maybe)
    twice = sum(len(copies) > 1 for copies in stored.values())
    print(f"crash test: {len(acked)} acknowledged, {len(maybe)} in flight at kills, "
          f"{twice} stored twice (delivered while killed)")
    assert len(acked) > 20, f"too little load to mean anything: {len(acked)} acknowledged"


def test_malformed_envelopes_are_quarantined_and_twistd_starts(tmp_path: Any) -> None:
    """M8: ``queue/X.json`` containing ``[]`` made twistd exit 1 (AttributeError), and the
    same broke the hold and failed listings.  Now each malformed file is moved to
    ``quarantine/`` with its body, logged, shown in /health, and the rest goes on."""
    port, web_port = free_port(), free_port()
    config = write_config(str(tmp_path), port,
                          web={"endpoint": f"tcp:{web_port}:interface=127.0.0.1"})
    spool = tmp_path / "spool"
    for state in ("queue", "hold", "failed", "data"):
        (spool / state).mkdir(parents=True)
    bad = {"queue/AAA1.json": b"[]", "queue/AAA2.json": b"{not json",
           "hold/AAA3.json": b'{"queue_id": "AAA3", "sender": 5, "recipients": []}',
           "failed/AAA4.json": b'{"queue_id": "../x", "sender": "", "received_at": 0, '
                               b'"recipients": [{"address": "a@b"}]}'}
    for name, content in bad.items():
        (spool / name).write_bytes(content)
    (spool / "data" / "AAA1.eml").write_bytes(b"Subject: kept\r\n\r\nbody\r\n")
    proc = twistd(config)
    try:
        wait_for_banner(port, proc)
        for state in ("hold", "failed"):  # listings load the other states
            done = subprocess.run([RELAYMAIL, "--config", config, "queue", "list", "--state",
                                   state, "--json"], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        with smtplib.SMTP("127.0.0.1", port) as s:  # the service works
            s.sendmail("app@client.test", ["user@dest.test"], b"Subject: q\r\n\r\nx\r\n")
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/health", timeout=10) as r:
            health = json.loads(r.read())
    finally:
        stop(proc)
    quarantine = sorted(os.listdir(spool / "quarantine"))
    assert quarantine == ["AAA1.eml", "AAA1.json", "AAA2.json", "AAA3.json", "AAA4.json"]
    assert (spool / "quarantine" / "AAA1.eml").read_bytes() == b"Subject: kept\r\n\r\nbody\r\n"
    assert health["status"] == "degraded"
    assert sorted(health["details"]["quarantined_files"]) == sorted(
        n for n in quarantine if n.endswith(".json"))
