"""The spool contract: atomic visibility, group commit, failure handling, startup recovery."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.trial.unittest import TestCase

from relaymail.spool import Spool, SpoolError, new_queue_id, run_synchronously
from relaymail.spool.envelope import Envelope, Recipient
from relaymail.spool.safeio import FileOps
from relaymail.testing import FailingOps, ManualRunner


def envelope(qid: str) -> Envelope:
    return Envelope(queue_id=qid, sender="a@b.example", recipients=[Recipient("c@d.example")],
                    received_at=1.0)


class SpoolTests(TestCase):
    def make(self, runner: Any = run_synchronously, ops: FileOps | None = None) -> Spool:
        spool = Spool(tempfile.mkdtemp(), runner, ops=ops)
        spool.prepare()
        return spool

    def store(self, spool: Spool, body: bytes) -> Any:
        writer = spool.new_message()
        writer.write(body)
        return writer, spool.commit(writer, envelope(writer.queue_id))

    def test_commit_makes_body_and_envelope_visible(self) -> None:
        spool = self.make()
        writer, d = self.store(spool, b"Subject: x\r\n\r\nbody\r\n")
        qid = self.successResultOf(d)
        self.assertEqual(qid, writer.queue_id)
        self.assertEqual(os.listdir(spool.path("queue")), [qid + ".json"])
        with open(spool.path("data", qid + ".eml"), "rb") as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nbody\r\n")
        loaded = list(spool.load_state("queue"))
        self.assertEqual(loaded[0].size, len(b"Subject: x\r\n\r\nbody\r\n"))

    def test_concurrent_commits_share_one_batch(self) -> None:
        runner = ManualRunner()
        spool = self.make(runner)
        results = [self.store(spool, b"m%d\r\n" % i)[1] for i in range(5)]
        self.assertEqual(len(runner.calls), 1)  # first batch holds message 0
        runner.release()
        self.assertEqual(len(runner.calls), 1)  # the other four queued up: one batch
        self.assertEqual(len(runner.calls[0][1][0]), 4)
        runner.release()
        self.assertEqual(len({self.successResultOf(d) for d in results}), 5)
        self.assertEqual(spool.count("queue"), 5)

    def test_spill_backlog_asks_the_session_to_pause_then_resume(self) -> None:
        from relaymail.spool import MAX_WAITING_SPILLS, SPILL_THRESHOLD

        runner = ManualRunner()
        spool = self.make(runner)
        writer = spool.new_message()
        signals: list[bool] = []
        writer.on_pressure = signals.append
        chunk = b"y" * SPILL_THRESHOLD
        for _ in range(MAX_WAITING_SPILLS - 1):
            writer.write(chunk)
        self.assertEqual(signals, [])  # the disk keeps up so far
        writer.write(chunk)
        self.assertEqual(signals, [True])  # 1 MB waiting: stop reading
        while runner.calls:
            runner.release()
        self.assertEqual(signals, [True, False])  # drained: read again
        committed = spool.commit(writer, envelope(writer.queue_id))
        while runner.calls:
            runner.release()
        qid = self.successResultOf(committed)
        with open(spool.path("data", qid + ".eml"), "rb") as f:
            self.assertEqual(f.read(), chunk * MAX_WAITING_SPILLS)

    def test_large_body_spills_and_survives(self) -> None:
        spool = self.make()
        body = (b"x" * 998 + b"\r\n") * 1000
        writer = spool.new_message()
        for i in range(0, len(body), 1000):
            writer.write(body[i:i + 1000])
        self.assertTrue(os.path.exists(writer.body_path))
        qid = self.successResultOf(spool.commit(writer, envelope(writer.queue_id)))
        with open(spool.path("data", qid + ".eml"), "rb") as f:
            self.assertEqual(f.read(), body)

    def test_spill_writes_run_off_the_reactor_thread(self) -> None:
        runner = ManualRunner()
        spool = self.make(runner)
        writer = spool.new_message()
        chunk = b"y" * 998 + b"\r\n"
        for _ in range(600):
            writer.write(chunk)
        self.assertFalse(os.path.exists(writer.body_path))  # nothing written in this thread
        self.assertEqual([c[0].__name__ for c in runner.calls], ["_append"])
        d = spool.commit(writer, envelope(writer.queue_id))
        while runner.calls:
            runner.release()
        qid = self.successResultOf(d)
        with open(spool.path("data", qid + ".eml"), "rb") as f:
            self.assertEqual(f.read(), chunk * 600)

    def test_discard_after_spill_removes_the_file(self) -> None:
        spool = self.make()
        writer = spool.new_message()
        writer.write(b"z" * 300_000)
        self.assertTrue(os.path.exists(writer.body_path))
        writer.discard()
        self.assertEqual(os.listdir(spool.path("data")), [])

    def test_spill_failure_fails_the_commit(self) -> None:
        spool = self.make(ops=FailingOps("write_all"))
        writer = spool.new_message()
        writer.write(b"z" * 300_000)
        self.failureResultOf(spool.commit(writer, envelope(writer.queue_id)), SpoolError)
        self.assertEqual(spool.count("queue"), 0)
        self.assertEqual(os.listdir(spool.path("data")), [])
        self.assertEqual(os.listdir(spool.path("incoming")), [])
        self.assertIsNone(writer._spill_fd)

    def check_failure_leaves_nothing(self, operation: str) -> None:
        spool = self.make(ops=FailingOps(operation))
        _, d = self.store(spool, b"body\r\n")
        self.failureResultOf(d, SpoolError)
        for state in ("queue", "data", "incoming"):
            self.assertEqual(os.listdir(spool.path(state)), [], (operation, state))

    def test_fsync_failure(self) -> None:
        self.check_failure_leaves_nothing("fsync")

    def test_write_failure(self) -> None:
        self.check_failure_leaves_nothing("write_all")

    def test_rename_failure(self) -> None:
        self.check_failure_leaves_nothing("rename")

    def test_directory_fsync_failure_withdraws_published(self) -> None:
        self.check_failure_leaves_nothing("fsync_dir")

    def test_spool_recovers_after_failure(self) -> None:
        spool = self.make(ops=FailingOps("fsync"))
        self.failureResultOf(self.store(spool, b"a\r\n")[1], SpoolError)
        spool.ops = FileOps()
        self.successResultOf(self.store(spool, b"b\r\n")[1])
        self.assertEqual(spool.count("queue"), 1)

    def test_prepare_removes_uncommitted_and_reloads_committed(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"kept\r\n")[1])
        for name in ("leftover.eml", "leftover.json"):
            open(spool.path("incoming", name), "wb").close()
        open(spool.path("data", "ORPHAN.eml"), "wb").close()
        reloaded = Spool(spool.root, run_synchronously).prepare()
        self.assertEqual([e.queue_id for e in reloaded], [qid])
        self.assertEqual(os.listdir(spool.path("incoming")), [])
        self.assertEqual(os.listdir(spool.path("data")), [qid + ".eml"])

    def test_envelope_update_and_moves(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"x\r\n")[1])
        env = next(iter(spool.load_state("queue")))
        env.recipients[0].state = "delivered"
        self.successResultOf(spool.save_envelope(env))
        self.assertEqual(next(iter(spool.load_state("queue"))).recipients[0].state, "delivered")
        self.successResultOf(spool.move(qid, "queue", "hold"))
        self.assertEqual(spool.find_state(qid), "hold")
        self.successResultOf(spool.remove(qid, "hold"))
        self.assertIsNone(spool.find_state(qid))
        self.assertEqual(os.listdir(spool.path("data")), [])

    def test_queue_ids_unique_and_time_ordered(self) -> None:
        ids = [new_queue_id(1_700_000_000 + i / 1000) for i in range(2000)]
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual([i[:11] for i in ids], sorted(i[:11] for i in ids))
        self.assertTrue(all(len(i) == 15 and i.isalnum() for i in ids))
