"""SIGKILL with acceptor processes (``smtp.workers: 2``), 20 rounds: an acceptor, the main
process, or the whole process group is killed under load at a random moment.  After each
round relaymail starts again (recovery runs first) and is stopped cleanly; then every
acknowledged message must be stored (queued, or delivered to the outbox) and intact, and
nothing stored may be a message that was never sent in full.  A killed main process must
not leave acceptors behind (they hold the listening socket, so a restart could not bind).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from typing import Any

from tests.helpers import free_port
from tests.integration.test_twistd import (
    TWISTD,
    Sender,
    recover_and_check,
    wait_for_banner,
    write_config,
)

ROUNDS = 20
KINDS = ("acceptor", "main", "group")


def start_logged(config: str) -> subprocess.Popen:
    directory = os.path.dirname(config)
    log = open(os.path.join(directory, "twistd.log"), "ab")  # noqa: SIM115 (child keeps it)
    try:
        return subprocess.Popen([TWISTD, "-n", "--pidfile=", "relaymail", "--config", config],
                                stdout=log, stderr=subprocess.STDOUT, cwd=directory,
                                start_new_session=True)
    finally:
        log.close()


def wait_until_serving(directory: str, pids: list[int], seconds: float = 30) -> None:
    """Until each acceptor in ``pids`` logged that it serves (twistd.log)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(os.path.join(directory, "twistd.log"), "rb") as f:
            log = f.read()
        if all(b"(pid %d) serving" % pid in log for pid in pids):
            return
        time.sleep(0.05)
    raise AssertionError(f"acceptors {pids} did not start serving")


def acceptors_of(pid: int) -> list[int]:
    """The main process's children, from /proc (no procps needed on a fresh machine)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except FileNotFoundError:  # the process (or a thread) is gone
        pass
    return out


def gone(pids: list[int], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def crash_round(port: int, config: str, kind: str, round_no: int, rng: random.Random
                ) -> list[Sender]:
    proc = start_logged(config)
    try:
        wait_for_banner(port, proc)
        deadline = time.monotonic() + 15
        while len(acceptors_of(proc.pid)) < 2:
            assert time.monotonic() < deadline, "acceptors did not start"
            time.sleep(0.05)
        children = acceptors_of(proc.pid)
        if round_no % 4 != 3:  # both serve before the load; else the main process
            # takes the first sessions itself while the acceptors start, and is killed so
            wait_until_serving(os.path.dirname(config), children)
        senders = [Sender(port, f"r{round_no}s{i}") for i in range(4)]
        for sender in senders:
            sender.start()
        time.sleep(rng.uniform(0.3, 1.2))
        if kind == "acceptor":
            os.kill(rng.choice(children), signal.SIGKILL)
            time.sleep(rng.uniform(0.2, 0.8))  # the others go on; the dead one restarts
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "main":
            proc.send_signal(signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert gone(children), f"acceptors {children} outlived the main process"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for sender in senders:
        sender.stopping = True
        sender.join(timeout=15)
    return senders


def test_sigkill_of_acceptors_main_and_group_loses_nothing(tmp_path: Any) -> None:
    port = free_port()
    config = write_config(str(tmp_path), port, workers=2)
    spool = str(tmp_path / "spool")
    outbox = str(tmp_path / "var" / "outbox")
    acked: dict[str, bytes] = {}
    maybe: dict[str, bytes] = {}
    rng = random.Random(os.getpid())
    for round_no in range(ROUNDS):
        for sender in crash_round(port, config, KINDS[round_no % 3], round_no, rng):
            acked.update(sender.acked)
            maybe.update(sender.in_flight)
        recover_and_check(port, config, spool, outbox, acked, maybe)
    print(f"crash test with acceptors: {ROUNDS} rounds, {len(acked)} acknowledged, "
          f"{len(maybe)} in flight at kills")
    assert len(acked) > 100, f"too little load to mean anything: {len(acked)} acknowledged"
