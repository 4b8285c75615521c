"""A private Postfix instance (``postfix -c DIR``) that relays everything to relaymail, as
a customer's MTA would: plain, STARTTLS, or SASL AUTH over TLS (``relayhost``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.helpers import free_port


def private_main_cf(directory: str, hostname: str, relay_port: int, extra: str = "") -> str:
    """main.cf of a private Postfix in ``directory``: accepts from loopback only and relays
    everything to ``[127.0.0.1]:relay_port``; ``extra`` lines are appended."""
    return f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
smtpd_tls_security_level = none
maillog_file_prefixes = {directory}
maillog_file = {directory}/maillog
""" + extra


CLIENT_CF = """\
myorigin = interop.test
smtp_tls_security_level = {tls}
smtp_tls_CAfile = {ca}
smtp_tls_verify_cert_match = nexthop
smtp_sasl_auth_enable = {sasl}
smtp_sasl_password_maps = static:{user}:{password}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
"""


def available() -> bool:
    return bool(shutil.which("postfix")) and os.geteuid() == 0


def wait_for_port(port: int, seconds: float = 30) -> None:
    import socket
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def private_postfix(directory: str, main_cf: str) -> Iterator[int]:
    """Postfix with its own config in ``directory`` (``postfix -c``), smtpd on a free
    loopback port; yields that port and stops it afterwards.  Blocking: call it from a
    thread.  The benchmark runs its Postfix this way too."""
    os.chmod(directory, 0o755)  # Postfix's unprivileged daemons must reach their queue
    for sub in ("queue", "data"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    shutil.chown(os.path.join(directory, "data"), "postfix")
    with open(os.path.join(directory, "main.cf"), "w") as f:
        f.write(main_cf)
    port = free_port()
    with open("/etc/postfix/master.cf") as f:
        lines = [line for line in f.read().splitlines() if not line.startswith("smtp      inet")]
    lines.append(f"127.0.0.1:{port} inet n - n - - smtpd")
    with open(os.path.join(directory, "master.cf"), "w") as f:
        f.write("\n".join(lines) + "\n")
    subprocess.run(["postfix", "-c", directory, "check"], check=True, capture_output=True)
    master = subprocess.Popen(["postfix", "-c", directory, "start-fg"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        subprocess.run(["postfix", "-c", directory, "stop"], capture_output=True)
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()


@contextmanager
def postfix_client(relay_port: int, tls: str = "none", ca: str = "",
                   user: str = "", password: str = "") -> Iterator[tuple[int, str]]:
    """A Postfix relaying to relaymail; yields (its smtpd port, its log file)."""
    directory = tempfile.mkdtemp(prefix="postfix-client-")
    extra = CLIENT_CF.format(tls=tls, ca=ca or "", sasl="yes" if user else "no",
                             user=user or "x", password=password or "x")
    text = private_main_cf(directory, "client.interop.test", relay_port, extra)
    try:
        with private_postfix(directory, text) as port:
            yield port, os.path.join(directory, "maillog")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
