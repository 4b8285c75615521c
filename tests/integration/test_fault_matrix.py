"""Every upstream fault at once, with failover: a provider that refuses our password, one
whose STARTTLS is broken, a primary that cycles through refused connections, 421 at the
banner, 454 at MAIL, 451 on RCPT, a drop in DATA and a stall, and a backup that defers some
recipients the first time.  All mail ends up delivered, none lost, and no recipient that
was delivered is delivered again."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.integration.test_relay import RelayTestCase, plain, smarthost
from tests.upstreams import Script, ca_file, wait_until

FAULTS = [
    Script(banner="421 4.3.2 try later"),
    Script(mail="454 4.7.0 Throttling failure"),
    Script(rcpt={f"r{i}@dest.test": "451 4.7.1 greylisted" for i in range(40)}),
    Script(drop_in_data=True),
    Script(stall_on="RCPT"),
]


class FaultMatrixTests(RelayTestCase):
    async def test_all_faults_with_failover_lose_and_duplicate_nothing(self) -> None:
        wrong_password = self.aio(password="the-real-password")
        broken_tls = await self.scripted(Script(extensions=("STARTTLS", "PIPELINING")))
        primary = await self.scripted(lambda n: FAULTS[n % len(FAULTS)])
        backup = await self.scripted(Script(
            rcpt_first_time={f"r{i}@dest.test": "451 4.7.1 try again" for i in range(0, 40, 3)}))
        relay = await self.relay(**smarthost(
            {"host": "localhost", "port": wrong_password.port, "tls": "starttls",
             "ca_file": ca_file(), "username": "relay", "password": "not-it"},
            {"host": "127.0.0.1", "port": broken_tls.port, "tls": "starttls"},
            plain(primary.port), plain(backup.port),
            retry_schedule=[1], connect_timeout=2, command_timeout=2))
        expected: list[str] = []
        for i in range(0, 40, 4):
            rcpts = [f"r{j}@dest.test" for j in range(i, i + 4)]
            expected += rcpts
            await self.send(relay, rcpts)

        def delivered() -> Counter[str]:
            got: Counter[str] = Counter()
            for upstream in (primary, backup, broken_tls):
                for m in upstream.messages:
                    got.update(m.rcpt_tos)
            got.update(r for m in wrong_password.messages for r in m.rcpt_tos)
            return got

        await wait_until(lambda: set(delivered()) == set(expected), seconds=60,
                         what="every recipient delivered")
        await self.drained(relay)
        counts = delivered()
        twice = {r: n for r, n in counts.items() if n > 1}
        self.assertEqual(twice, {})  # no recipient delivered again
        self.assertEqual(sorted(counts), sorted(expected))
        self.assertEqual(self.envelopes(relay, "failed"), [])
        self.assertEqual(wrong_password.messages + broken_tls.messages, [])
        self.assertFalse("not-it" in self.log_text())  # the password is never logged
        # the primary was tried several times, so several of its faults were met; which
        # ones depends on how many sessions the breaker allowed before it opened
        self.assertGreaterEqual(len(primary.sessions), 2)
        self.assertGreater(sum(len(m.rcpt_tos) for m in backup.messages), 0)
        self.show(relay, primary, backup)

    def show(self, relay: Any, primary: Any, backup: Any) -> None:
        print(f"fault matrix: primary sessions {len(primary.sessions)}, delivered there "
              f"{sum(len(m.rcpt_tos) for m in primary.messages)}, at the backup "
              f"{sum(len(m.rcpt_tos) for m in backup.messages)}")
