"""Two relaymail instances (twistd processes, each with its own spool) behind HAProxy sending
the PROXY protocol, sharing limits in a real Redis: relaymail sees the real client address,
the global limit holds across both, and when one instance is killed (SIGKILL) under load,
nothing it acknowledged is lost and HAProxy sends new sessions to the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import free_port
from tests.integration.test_twistd import Sender, stop, stored_messages
from tests.integration.test_twistd import twistd_logged as twistd
from tests.interop.test_real_clients import require
from tests.redisserver import RedisServer

BODY = b"X-Marker: plain\r\nFrom: app@client.test\r\nSubject: via haproxy\r\n\r\nhello\r\n"


def wait_listening(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def instance_config(directory: str, port: int, redis_url: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "relay.json")
    with open(path, "w") as f:
        json.dump({"hostname": "relay.test", "spool_dir": "spool", "web": {"enabled": False},
                   "smtp": {"listeners": [{"name": "smtp", "tls": "none",
                                           "proxy_protocol": True,
                                           "endpoint": f"tcp:{port}:interface=127.0.0.1"}],
                            "proxy_trusted_networks": ["127.0.0.1/32"]},
                   # the load of part 3 comes from 127.0.0.1 and .9: not limited
                   "rate_limits": {"backend": redis_url, "global": {"hour": 12},
                                   "exempt_networks": ["127.0.0.1/32", "127.0.0.9/32"]}}, f)
    return path


HAPROXY_CFG = """\
global
    maxconn 500
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend smtp
    bind 127.0.0.1:{front}
    default_backend relays
backend relays
    balance roundrobin
    server r1 127.0.0.1:{p1} send-proxy-v2 check inter 300ms fall 1 rise 2
    server r2 127.0.0.1:{p2} send-proxy-v2 check inter 300ms fall 1 rise 2
"""


@contextmanager
def haproxy(front: int, p1: int, p2: int) -> Iterator[None]:
    path = os.path.join(tempfile.mkdtemp(), "haproxy.cfg")
    with open(path, "w") as f:
        f.write(HAPROXY_CFG.format(front=front, p1=p1, p2=p2))
    proc = subprocess.Popen(["haproxy", "-f", path, "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(front)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def send_from(front: int, source: str) -> Any:
    with smtplib.SMTP("127.0.0.1", front, timeout=10, source_address=(source, 0)) as s:
        try:
            return s.sendmail("app@client.test", ["x@dest.test"], BODY)
        except smtplib.SMTPSenderRefused as e:
            return e


def received_from(directory: str) -> list[bytes]:
    """The top of each stored message (Return-Path, our Received), spool and outbox."""
    found = []
    for sub in ("spool/data", "var/outbox/new"):
        where = os.path.join(directory, sub)
        for name in os.listdir(where) if os.path.isdir(where) else ():
            with open(os.path.join(where, name), "rb") as f:
                found.append(f.read(400))
    return found


def test_two_instances_behind_haproxy() -> None:
    require(shutil.which("haproxy") is not None, "haproxy")
    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer()
    root = tempfile.mkdtemp()
    ports = [free_port(), free_port()]
    dirs = [os.path.join(root, f"r{i}") for i in (1, 2)]
    configs = [instance_config(d, p, server.url) for d, p in zip(dirs, ports, strict=True)]
    procs = [twistd(c) for c in configs]
    front = free_port()
    try:
        for port in ports:
            wait_listening(port)
        with haproxy(front, *ports):
            # 1. the real client address, through HAProxy's PROXY v2 header
            assert send_from(front, "127.0.0.7") == {}
            time.sleep(1)
            lines = [line for d in dirs for line in received_from(d)]
            assert any(b"([127.0.0.7])" in line for line in lines), lines

            # 2. a global limit of 12 across both instances (1 used above)
            answers = [send_from(front, "127.0.0.8") for _ in range(15)]
            accepted = [a for a in answers if a == {}]
            refused = [a for a in answers if isinstance(a, smtplib.SMTPSenderRefused)]
            assert (len(accepted), len(refused)) == (11, 4), answers
            assert all(r.smtp_code == 451 and b"relay-wide" in r.smtp_error for r in refused)

            # 3. one instance killed under load: nothing acknowledged is lost
            senders = [Sender(front, f"k{i}") for i in range(6)]
            for sender in senders:
                sender.start()
            time.sleep(1.0)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            time.sleep(1.5)  # HAProxy's check marks r1 down
            after = [send_from(front, "127.0.0.9") for _ in range(5)]
            assert after == [{}] * 5, after  # new sessions go to the survivor
            for sender in senders:
                sender.stopping = True
                sender.join(timeout=15)
    finally:
        for proc in procs:
            stop(proc)
        server.stop()
    acked = {m: b for s in senders for m, b in s.acked.items()}
    maybe = {m: b for s in senders for m, b in s.in_flight.items()}
    assert len(acked) > 10, len(acked)
    restarted = twistd(configs[0])  # recovery of the killed instance's spool
    try:
        wait_listening(ports[0])
    finally:
        stop(restarted)
    stored: dict[bytes, list[bytes]] = {}
    for d in dirs:
        for marker, copies in stored_messages(os.path.join(d, "spool"),
                                              os.path.join(d, "var", "outbox")).items():
            stored.setdefault(marker, []).extend(copies)
    for marker, body in acked.items():
        copies = stored.get(marker.encode(), [])
        assert copies and all(c == body for c in copies), f"acknowledged {marker} lost"
    for marker in stored:
        assert marker.decode() in acked or marker.decode() in maybe or \
            not marker.startswith(b"k"), marker

