"""2,000 slow clients (a byte a second, never a whole line) against a relaymail process:
a normal client is still served meanwhile, and the idle timeout closes every slow one with
421 4.4.2, so they cannot hold the server's connection slots for ever (slowloris)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import smtplib
import socket
import subprocess
import threading
import time
from typing import Any

from tests.helpers import free_port
from tests.integration.test_twistd import stop, twistd_logged, wait_for_banner

SLOW = 2000
IDLE_TIMEOUT = 4


def start(directory: str, port: int) -> subprocess.Popen:
    config = os.path.join(directory, "relay.json")
    with open(config, "w") as f:
        json.dump({"hostname": "relay.test", "spool_dir": "spool", "web": {"enabled": False},
                   "log": {"level": "warn"},
                   "smtp": {"listeners": [{"name": "smtp", "tls": "none",
                                           "endpoint": f"tcp:{port}:interface=127.0.0.1:"
                                                       "backlog=4096"}],
                            "max_connections": SLOW + 100, "max_connections_per_ip": SLOW + 100,
                            "idle_timeout": IDLE_TIMEOUT}}, f)
    return twistd_logged(config)


def normal_client(port: int, result: dict[str, Any]) -> None:
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        result["refused"] = s.sendmail("a@client.example", ["b@dest.example"],
                                       b"Subject: in the crowd\r\n\r\nhello\r\n")
    result["seconds"] = time.monotonic() - started


def test_slow_clients_are_timed_out_and_others_served(tmp_path: Any) -> None:
    port = free_port()
    proc = start(str(tmp_path), port)
    sockets: list[socket.socket] = []
    try:
        wait_for_banner(port, proc)
        selector = selectors.DefaultSelector()
        received: dict[int, bytes] = {}
        for _ in range(SLOW):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            sockets.append(s)
            received[s.fileno()] = b""
            selector.register(s, selectors.EVENT_READ)
        open_ = set(received)
        normal: dict[str, Any] = {}
        helper = threading.Thread(target=normal_client, args=(port, normal))
        deadline = time.monotonic() + IDLE_TIMEOUT + 6  # bounded in time
        next_byte, tick = time.monotonic(), 0
        while open_ and time.monotonic() < deadline:
            if time.monotonic() >= next_byte:
                for s in sockets:
                    if s.fileno() in open_:
                        with contextlib.suppress(OSError):  # closed by the server meanwhile
                            s.send(b"EHLO slow"[tick % 9:tick % 9 + 1])
                tick += 1
                next_byte += 1
                if tick == 2:
                    helper.start()  # a normal client arrives while the crowd crawls
            for key, _ in selector.select(timeout=0.2):
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                if data:
                    received[key.fd] += data
                else:
                    open_.discard(key.fd)
                    selector.unregister(key.fileobj)
        helper.join(timeout=15)
        assert normal.get("refused") == {}, normal
        assert not open_, f"{len(open_)} slow connections still open after the idle timeout"
        timed_out = sum(b"421 4.4.2" in data for data in received.values())
        assert timed_out == SLOW, f"only {timed_out} of {SLOW} got 421 4.4.2"
        print(f"slow clients: {SLOW} timed out; the normal client took "
              f"{normal['seconds']:.2f} s meanwhile")
    finally:
        for s in sockets:
            s.close()
        stop(proc)
