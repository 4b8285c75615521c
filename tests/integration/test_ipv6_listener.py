"""A listener on a specific IPv6 address, written as Twisted writes it
(``tcp6:PORT:interface=\\:\\:1``): relaymail starts on it, and smtplib over ::1 gets mail
queued; the same port on 127.0.0.1 is not listening."""

from __future__ import annotations

import smtplib
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relaymail.config import load_config
from tests.helpers import relay_config, write_config
from tests.peers import require


def free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def ipv6_loopback() -> bool:
    try:
        free_ipv6_port()
        return True
    except OSError:
        return False


class IPv6ListenerTests(TestCase):
    async def test_escaped_ipv6_interface_listens_on_loopback(self) -> None:
        require(ipv6_loopback(), "IPv6 loopback (::1)")
        from relaymail.service import build_service

        directory = tempfile.mkdtemp()
        port = free_ipv6_port()
        data = relay_config(directory, port)
        data["smtp"]["listeners"] = [{"name": "v6", "tls": "none",
                                      "endpoint": f"tcp6:{port}:interface=\\:\\:1"}]
        data["web"] = {"enabled": False}
        config = load_config(write_config(directory, data), environ={})
        service = build_service(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

        def send() -> dict:
            with smtplib.SMTP("::1", port, timeout=10) as s:
                return s.sendmail("a@client.test", ["b@dest.test"], b"Subject: v6\r\n\r\nhi\r\n")

        self.assertEqual(await deferToThread(send), {})

        def plain_v4() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass

        with self.assertRaises(ConnectionRefusedError):
            await deferToThread(plain_v4)
