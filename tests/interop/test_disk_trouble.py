"""The spool on a real small filesystem (a 4 MB tmpfs) that fills up, then turns read-only
(its data directory):
clients get 452 4.3.1, the service stays up and recovers when space (or write access)
returns, and every message acknowledged with 250 is still in the spool afterwards."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.helpers import free_port
from tests.integration.test_twistd import stop, stored_messages, twistd_logged, wait_for_banner


@contextmanager
def tmpfs(size: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="spool-fs-")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                            capture_output=True)
    if result.returncode != 0:
        raise SkipTest(f"this machine does not permit a tmpfs mount: {result.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", path], capture_output=True)


@contextmanager
def read_only(path: str) -> Iterator[None]:
    """``path`` turns read-only (a read-only bind mount over it): the filesystem as a whole
    cannot be remounted read-only while relaymail holds its lock file open for writing."""
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)


def message(marker: str, size: int) -> bytes:
    bulk = b"".join(b"%06d the bulk of a message on a small disk\r\n" % i
                    for i in range(size // 46))
    return b"X-Marker: " + marker.encode() + b"\r\nSubject: disk\r\n\r\n" + bulk


def send(port: int, marker: str, size: int = 300_000) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        for code, text in (s.mail("a@client.example"), s.rcpt("b@dest.example")):
            if code >= 400:
                return code, text
        try:
            return s.data(message(marker, size))
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


def test_full_then_read_only_spool(tmp_path: Any) -> None:
    with tmpfs("4m") as spool_fs:
        port = free_port()
        config = tmp_path / "relay.json"
        config.write_text(json.dumps({
            "hostname": "relay.test", "spool_dir": os.path.join(spool_fs, "spool"),
            "web": {"enabled": False},
            "smtp": {"listeners": [{"name": "smtp", "tls": "none",
                                    "endpoint": f"tcp:{port}:interface=127.0.0.1"}]},
            # nowhere to deliver: messages stay in the spool and fill it
            "routes": [{"domains": ["*"], "transport": "nowhere"}],
            "transports": {"nowhere": {"type": "smtp", "upstreams": [
                {"host": "127.0.0.1", "port": free_port(), "tls": "none"}]}},
            "delivery": {"retry_schedule": [3600], "connect_timeout": 1}}))
        filler = os.path.join(spool_fs, "filler")
        with open(filler, "wb") as f:  # another user of the disk
            f.write(b"\0" * 1_500_000)
        proc = twistd_logged(str(config))
        acked: dict[str, bytes] = {}
        try:
            wait_for_banner(port, proc)
            answers = []
            for i in range(20):  # 20 x 300 KB cannot fit in 4 MB
                code, text = send(port, f"fill-{i}")
                answers.append(code)
                if code == 250:
                    acked[f"fill-{i}"] = message(f"fill-{i}", 300_000)
                else:
                    assert (code, text[:5]) == (452, b"4.3.1"), text
                    break
            assert answers[-1] == 452 and 2 <= len(acked) < 10, answers

            code, text = send(port, "still-full")
            assert code == 452, text  # the service is up, and honest
            os.unlink(filler)  # space returns (another tenant of the disk cleans up)
            code, text = send(port, "after-space")
            assert code == 250, text
            acked["after-space"] = message("after-space", 300_000)

            with read_only(os.path.join(spool_fs, "spool", "data")):
                code, text = send(port, "read-only", 10_000)
                assert (code, text[:5]) == (452, b"4.3.1"), text
            code, text = send(port, "writable-again", 10_000)
            assert code == 250, text
            acked["writable-again"] = message("writable-again", 10_000)
        finally:
            stop(proc)
        stored = stored_messages(os.path.join(spool_fs, "spool"), str(tmp_path / "none"))
        for marker, body in acked.items():
            copies = stored.get(marker.encode(), [])
            assert copies and all(c == body for c in copies), f"acknowledged {marker} lost"
        assert b"still-full" not in stored and b"read-only" not in stored

