"""nmap's smtp-open-relay NSE script (Debian package nmap) against relaymail listeners on
127.0.0.1, read from nmap's XML output (-oX).  With ``trusted_networks: []`` nmap must find
no open relay (relaymail wants AUTH for every recipient); with loopback trusted, where nmap
itself connects from, it must find one, so the first verdict is not an nmap that tests
nothing.  The script's portrule wants port 25/465/587; ``+`` runs it on our free port."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.helpers import base_config, start_server
from tests.peers import require

NMAP = shutil.which("nmap")
DOMAIN = "example.org"


def open_relay_scan(port: int, directory: str) -> tuple[str, float, str]:
    """Blocking: the smtp-open-relay script's output for 127.0.0.1:``port``, the run time,
    and nmap's screen output."""
    assert NMAP is not None
    xml_path = os.path.join(directory, "nmap.xml")
    started = time.monotonic()
    result = subprocess.run(
        [NMAP, "-Pn", "-n", "-sT", "-vv", "-p", str(port), "--script", "+smtp-open-relay",
         "--script-args", f"smtp-open-relay.domain={DOMAIN},smtp-open-relay.ip=127.0.0.1,"
         "smtp-open-relay.from=antispam,smtp-open-relay.to=relaytest",
         "-oX", xml_path, "127.0.0.1"],
        capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    screen = result.stdout + result.stderr
    root = ET.parse(xml_path).getroot()
    ports = root.findall(f"./host/ports/port[@portid='{port}']")
    assert ports and ports[0].find("state").get("state") == "open", screen  # type: ignore[union-attr]
    script = ports[0].find("script[@id='smtp-open-relay']")
    assert script is not None, screen
    return script.get("output") or "", took, screen


class OpenRelayTests(TestCase):
    timeout = 300

    async def verdict(self, **smtp: Any) -> tuple[str, float]:
        require(NMAP is not None, "nmap (Debian package nmap)")
        directory = tempfile.mkdtemp()
        data = base_config(directory, tls=False, **smtp)
        data["smtp"]["listeners"][0]["tls"] = "none"
        server = await start_server(data, directory)
        self.addCleanup(server.stop)
        output, took, screen = await deferToThread(open_relay_scan, server.port(), directory)
        print(f"nmap smtp-open-relay ({smtp}): {took:.2f} s: {output.splitlines()[0]}")
        self.assertLess(took, 60, screen)
        self.assertEqual(list(server.ctx.spool.load_state("queue")), [])  # no DATA sent
        return output, took

    async def test_untrusted_listener_is_not_an_open_relay(self) -> None:
        output, _ = await self.verdict(trusted_networks=[])
        self.assertNotIn("is an open relay", output)
        self.assertRegex(output, r"isn't an open relay|doesn't seem to be an open relay")

    async def test_trusted_loopback_is_reported_as_a_relay(self) -> None:
        """nmap connects from 127.0.0.1: trusted, so relaying is what it should see."""
        output, _ = await self.verdict(trusted_networks=["127.0.0.0/8"])
        found = re.match(r"Server is an open relay \((\d+)/16 tests\)", output)
        self.assertIsNotNone(found, output)
        assert found is not None
        self.assertGreaterEqual(int(found.group(1)), 1)
        self.assertIn(f"MAIL FROM:<antispam@{DOMAIN}> -> RCPT TO:<relaytest@{DOMAIN}>", output)
