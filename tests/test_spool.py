"""The spool contract: atomic visibility, group commit, failure handling, startup recovery."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

from twisted.trial.unittest import TestCase

from relaymail.spool import Spool, SpoolError, new_queue_id, run_synchronously
from relaymail.spool.envelope import Envelope, Recipient
from relaymail.spool.record import TAIL_READ, envelope_json_of, open_body, read_record
from relaymail.spool.safeio import FileOps
from relaymail.testing import FailingOps, ManualRunner


def envelope(qid: str) -> Envelope:
    return Envelope(queue_id=qid, sender="a@b.example", recipients=[Recipient("c@d.example")],
                    received_at=1.0)


class CountingOps(FileOps):
    """Records the commit's fsyncs: "fsync" for a file, "dir:<name>" for a directory."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fsync(self, fd: int) -> None:
        self.calls.append("fsync")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self.calls.append("dir:" + os.path.basename(path))
        super().fsync_dir(path)


class SpoolTests(TestCase):
    def make(self, runner: Any = run_synchronously, ops: FileOps | None = None,
             sync_directory: bool = True) -> Spool:
        spool = Spool(tempfile.mkdtemp(), runner, ops=ops, sync_directory=sync_directory)
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
        with open_body(spool.path("data", qid + ".eml")) as f:
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
        with open_body(spool.path("data", qid + ".eml")) as f:
            self.assertEqual(f.read(), chunk * MAX_WAITING_SPILLS)

    def test_large_body_spills_and_survives(self) -> None:
        spool = self.make()
        body = (b"x" * 998 + b"\r\n") * 1000
        writer = spool.new_message()
        for i in range(0, len(body), 1000):
            writer.write(body[i:i + 1000])
        self.assertTrue(os.path.exists(writer.body_path))
        qid = self.successResultOf(spool.commit(writer, envelope(writer.queue_id)))
        with open_body(spool.path("data", qid + ".eml")) as f:
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
        with open_body(spool.path("data", qid + ".eml")) as f:
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

    def test_link_failure(self) -> None:
        self.check_failure_leaves_nothing("link")

    def test_publish_is_a_link_of_the_body_whose_record_is_the_envelope(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"linked\r\n")[1])
        queued, body = spool.path("queue", qid + ".json"), spool.path("data", qid + ".eml")
        self.assertTrue(os.path.samefile(queued, body))
        self.assertEqual(os.listdir(spool.path("incoming")), [])
        [envelope] = Spool(spool.root, run_synchronously).prepare()
        self.assertEqual((envelope.queue_id, envelope.sender), (qid, "a@b.example"))
        with open_body(queued) as f:  # the body reads the same through either name
            self.assertTrue(f.read().endswith(b"linked\r\n"))

    def test_without_hard_links_the_envelope_is_a_file_of_its_own(self) -> None:
        for code in (errno.EPERM, errno.EOPNOTSUPP):
            spool = self.make(ops=FailingOps("link", code))
            qid = self.successResultOf(self.store(spool, b"no links\r\n")[1])
            queued = spool.path("queue", qid + ".json")
            self.assertFalse(os.path.samefile(queued, spool.path("data", qid + ".eml")))
            with open(queued, "rb") as f:
                self.assertEqual(Envelope.from_json(f.read()).queue_id, qid)
            self.assertEqual(os.listdir(spool.path("incoming")), [])

    def test_envelopes_read_in_either_form_and_any_size(self) -> None:
        """A big body behind the link (the record past the tail read), a big envelope of
        its own (many recipients), and a torn record that is refused, not misread."""
        spool = self.make()
        writer = spool.new_message()
        writer.write(b"Subject: big\r\n\r\n" + b"y" * 98 + b"\r\n" * 1000)
        many = Envelope(queue_id=writer.queue_id, sender="a@b.example",
                        recipients=[Recipient(f"r{i}@d.example") for i in range(400)],
                        received_at=1.0)
        qid = self.successResultOf(spool.commit(writer, many))
        queued = spool.path("queue", qid + ".json")
        self.assertGreater(os.path.getsize(queued), 2 * TAIL_READ)
        self.assertEqual(len(Envelope.from_json(envelope_json_of(queued)).recipients), 400)
        self.successResultOf(spool.save_envelope(Envelope.from_json(envelope_json_of(queued))))
        self.assertGreater(os.path.getsize(queued), TAIL_READ)  # JSON of its own, > one read
        self.assertEqual(len(Envelope.from_json(envelope_json_of(queued)).recipients), 400)
        torn = spool.path("data", qid + ".eml")
        with open(torn, "r+b") as f:
            f.seek(os.path.getsize(torn) - 40)
            f.write(b"X")
        os.link(torn, spool.path("hold", qid + ".json"))
        self.assertRaises(ValueError, envelope_json_of, spool.path("hold", qid + ".json"))

    def test_rename_failure_without_hard_links(self) -> None:
        class NoLinksNoRename(FileOps):
            def link(self, src: str, dst: str) -> None:
                raise OSError(errno.EPERM, "no hard links here")

            def rename(self, src: str, dst: str) -> None:
                raise OSError(errno.EIO, "I/O error")

        spool = self.make(ops=NoLinksNoRename())
        self.failureResultOf(self.store(spool, b"body\r\n")[1], SpoolError)
        for state in ("queue", "data", "incoming"):
            self.assertEqual(os.listdir(spool.path(state)), [], state)

    def test_an_envelope_updated_after_the_commit_replaces_the_link(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"x\r\n")[1])
        [envelope] = Spool(spool.root, run_synchronously).prepare()
        envelope.attempts = 3
        self.successResultOf(spool.save_envelope(envelope))
        queued, body = spool.path("queue", qid + ".json"), spool.path("data", qid + ".eml")
        self.assertFalse(os.path.samefile(queued, body))
        self.assertEqual(os.stat(body).st_nlink, 1)
        [again] = Spool(spool.root, run_synchronously).prepare()
        self.assertEqual(again.attempts, 3)
        self.successResultOf(spool.remove(qid, "queue"))
        self.assertEqual((os.listdir(spool.path("queue")), os.listdir(spool.path("data"))),
                         ([], []))

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

    def test_commit_is_one_file_fsync_and_one_directory_fsync(self) -> None:
        """The critical path: per message one fsync (the body with its record); per batch
        one ``data/`` fsync; the envelope file gets none."""
        ops = CountingOps()
        runner = ManualRunner()
        spool = self.make(runner, ops=ops)
        results = [self.store(spool, b"m%d\r\n" % i)[1] for i in range(4)]
        runner.release()
        runner.release()
        self.assertEqual([len({self.successResultOf(d) for d in results})], [4])
        self.assertEqual(ops.calls,
                         ["fsync", "dir:data", "fsync", "fsync", "fsync", "dir:data"])

    def test_no_directory_fsync_where_the_file_fsync_covers_the_entry(self) -> None:
        """ext4, XFS, btrfs: the body's fsync is the commit's only one."""
        ops = CountingOps()
        spool = self.make(ops=ops, sync_directory=False)
        self.successResultOf(self.store(spool, b"m\r\n")[1])
        self.assertEqual(ops.calls, ["fsync"])
        self.assertEqual(spool.count("queue"), 1)

    def test_body_file_carries_the_envelope_record(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"Subject: r\r\n\r\nb\r\n")[1])
        data = read_record(spool.path("data", qid + ".eml"))
        assert data is not None
        self.assertEqual(Envelope.from_json(data).queue_id, qid)

    def test_lost_envelope_file_is_restored_from_the_record(self) -> None:
        """A crash after the body's fsync may lose the envelope file (written without
        fsync): startup writes it again from the record."""
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"Subject: r\r\n\r\nb\r\n")[1])
        os.unlink(spool.path("queue", qid + ".json"))
        reloaded = Spool(spool.root, run_synchronously).prepare()
        self.assertEqual([e.queue_id for e in reloaded], [qid])
        self.assertEqual(reloaded[0].recipients[0].address, "c@d.example")
        self.assertEqual(spool.find_state(qid), "queue")

    def test_torn_envelope_file_is_restored_not_quarantined(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"Subject: r\r\n\r\nb\r\n")[1])
        self.successResultOf(spool.move(qid, "queue", "hold"))
        held = spool.path("hold", qid + ".json")
        os.unlink(held)  # (the commit's link is another name of the body: never written to)
        open(held, "wb").close()  # an envelope file of zero length, as after a crash
        reloaded = Spool(spool.root, run_synchronously)
        reloaded.prepare()
        self.assertEqual([e.queue_id for e in reloaded.load_state("hold")], [qid])
        self.assertEqual(reloaded.quarantined, [])

    def test_body_with_torn_record_is_removed(self) -> None:
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"Subject: r\r\n\r\nb\r\n")[1])
        os.unlink(spool.path("queue", qid + ".json"))
        path = spool.path("data", qid + ".eml")
        with open(path, "r+b") as f:  # the record's JSON damaged: the CRC no longer matches
            f.seek(os.path.getsize(path) - 40)
            f.write(b"X")
        self.assertEqual(Spool(spool.root, run_synchronously).prepare(), [])
        self.assertEqual(os.listdir(spool.path("data")), [])

    def test_body_from_before_the_record_is_read_whole(self) -> None:
        """Spools written by earlier versions: body file without a record, envelope file."""
        spool = self.make()
        qid = new_queue_id(1.0)
        body = b"Subject: old\r\n\r\nno record here\r\n"
        with open(spool.path("data", qid + ".eml"), "wb") as f:
            f.write(body)
        with open(spool.path("queue", qid + ".json"), "wb") as f:
            f.write(envelope(qid).to_json())
        reloaded = Spool(spool.root, run_synchronously).prepare()
        self.assertEqual([e.queue_id for e in reloaded], [qid])
        with open_body(spool.path("data", qid + ".eml")) as f:
            self.assertEqual(f.read(), body)

    def test_readers_never_see_the_record(self) -> None:
        """Headers only (no empty line, no body): a reader reading "up to the empty line"
        must still stop at the body's end, or the envelope (Bcc!) would go upstream."""
        spool = self.make()
        body = b"Subject: no body at all\r\n"
        qid = self.successResultOf(self.store(spool, body)[1])
        path = spool.path("data", qid + ".eml")
        with open_body(path) as f:
            self.assertEqual(f.read(1 << 20), body)
            f.seek(9)
            self.assertEqual(f.read(), body[9:])
        from relaymail.relay.control import read_head
        from relaymail.relay.rewrite import read_head as read_head_block

        self.assertEqual(read_head(path), body)
        self.assertEqual(read_head_block(path), (body, len(body)))

    def test_removal_cut_short_is_finished_at_startup_not_sent_again(self) -> None:
        """A removal removes the body first; killed before the envelope went, startup drops
        the envelope (had the envelope gone first, the body would be restored from its
        record and delivered twice)."""
        spool = self.make()
        qid = self.successResultOf(self.store(spool, b"Subject: r\r\n\r\nb\r\n")[1])
        os.unlink(spool.path("data", qid + ".eml"))
        self.assertEqual(Spool(spool.root, run_synchronously).prepare(), [])
        self.assertEqual(os.listdir(spool.path("queue")), [])

    def test_removals_asked_together_share_one_thread_trip(self) -> None:
        runner = ManualRunner()
        spool = self.make(runner)
        ids = []
        for i in range(3):
            self.store(spool, b"m%d\r\n" % i)
            runner.release()
        ids = [e.queue_id for e in spool.load_state("queue")]
        done = [spool.remove(qid, "queue") for qid in ids]
        self.assertEqual(len(runner.calls), 1)  # the first removal
        runner.release()
        self.assertEqual(len(runner.calls), 1)  # the other two, together
        self.assertEqual(len(runner.calls[0][1][0]), 2)
        runner.release()
        for d in done:
            self.successResultOf(d)
        self.assertEqual(os.listdir(spool.path("data")), [])

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


def test_record_reader_takes_any_file_without_failing() -> None:
    """Whatever a damaged or hostile file ends with, the record reader answers None or
    the record, and a reader of the body gets at most the file: never an exception."""
    import random

    from relaymail.spool.record import envelope_record

    rng = random.Random(5)
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "x.eml")
    good = envelope_record(b'{"queue_id": "X"}')
    tails = [b"", good, good[:-1], good[1:], b"\n%RMENV1 9999999999 00000000%\n",
             b"\n%RMENV1 0000000005 00000000%\n", good.replace(b"%RMENV1", b"%RMENV2")]
    for _ in range(300):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        tail = rng.choice(tails)
        if rng.random() < 0.3 and tail:
            cut = rng.randrange(len(tail))
            tail = tail[:cut] + bytes([rng.randrange(256)]) + tail[cut + 1:]
        with open(path, "wb") as f:
            f.write(body + tail)
        record = read_record(path)
        assert record is None or record == b'{"queue_id": "X"}'
        with open_body(path) as f:
            assert len(f.read()) <= len(body + tail)


class RecoveryTests(TestCase):
    """The queue found at startup is read in batches behind the listeners
    (relaymail.spool.recovery): every message once, subscribers in order, none lost."""

    def queued(self, count: int) -> Spool:
        spool = Spool(tempfile.mkdtemp(), run_synchronously)
        spool.prepare()
        for i in range(count):
            writer = spool.new_message()
            writer.write(b"Subject: %d\r\n\r\nx\r\n" % i)
            self.successResultOf(spool.commit(writer, envelope(writer.queue_id)))
        return spool

    def test_every_queued_message_once_in_batches_and_in_order(self) -> None:
        from relaymail.spool.recovery import Recovery

        spool = self.queued(7)
        expected = sorted(n[:-5] for n in os.listdir(spool.path("queue")))
        restarted = Spool(spool.root, run_synchronously)
        names = restarted.repair()
        calls: list[tuple[str, list[str]]] = []
        recovery = Recovery(restarted, batch=3)
        recovery.subscribe(lambda b: calls.append(("archive", [e.queue_id for e in b])))
        recovery.subscribe(lambda b: calls.append(("relay", [e.queue_id for e in b])))
        finished = recovery.when_finished()
        self.assertNoResult(finished)
        recovery.start(names)
        self.assertEqual(self.successResultOf(finished), 7)
        self.assertEqual([who for who, _ in calls], ["archive", "relay"] * 3)
        relayed = [qid for who, batch in calls if who == "relay" for qid in batch]
        self.assertEqual(relayed, expected)
        self.assertEqual([len(batch) for who, batch in calls if who == "relay"], [3, 3, 1])
        self.assertEqual(self.successResultOf(recovery.when_finished()), 7)

    def test_batches_wait_for_the_thread_and_skip_what_is_gone(self) -> None:
        from relaymail.spool.recovery import Recovery

        spool = self.queued(4)
        runner = ManualRunner()
        restarted = Spool(spool.root, runner)
        names = restarted.repair()
        got: list[str] = []
        recovery = Recovery(restarted, batch=2)
        recovery.subscribe(lambda b: got.extend(e.queue_id for e in b))
        recovery.start(names)
        self.assertEqual(got, [])  # nothing read on the caller's thread
        runner.release()
        self.assertEqual(len(got), 2)
        os.unlink(restarted.path("queue", names[3]))  # removed meanwhile (console, say)
        runner.release()
        self.assertEqual(got, [n[:-5] for n in names[:3]])
        self.assertTrue(recovery.finished)

    def test_one_failing_subscriber_does_not_stop_the_others(self) -> None:
        from relaymail.spool.recovery import Recovery

        spool = self.queued(2)
        restarted = Spool(spool.root, run_synchronously)
        got: list[str] = []
        recovery = Recovery(restarted, batch=1)
        recovery.subscribe(lambda b: 1 / 0)
        recovery.subscribe(lambda b: got.extend(e.queue_id for e in b))
        recovery.start(restarted.repair())
        self.assertEqual(len(got), 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)


MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 27 0:30 / /var/spool rw,relatime - nfs4 server:/export rw
32 31 254:1 / /var/spool/relay rw,relatime - xfs /dev/vdb rw
33 27 0:31 / /srv/with\040space rw,relatime - btrfs /dev/vdc rw
34 27 0:32 / /tmp rw - tmpfs tmpfs rw
35 34 0:33 / /tmp rw - overlay overlay rw
"""


class FilesystemTests(TestCase):
    """Which filesystem the spool is on decides whether a commit fsyncs data/ too."""

    def mountinfo(self) -> str:
        path = os.path.join(tempfile.mkdtemp(), "mountinfo")
        with open(path, "w") as f:
            f.write(MOUNTINFO)
        return path

    def test_the_longest_mount_point_above_the_path_wins(self) -> None:
        from relaymail.spool.safeio import directory_fsync_needed, filesystem_type

        info = self.mountinfo()
        cases = {"/var/lib/relaymail": "ext4", "/var/spool": "nfs4",
                 "/var/spool/relay/spool": "xfs", "/var/spool/relaymail": "nfs4",
                 "/srv/with space/spool": "btrfs", "/tmp/spool": "overlay"}
        for path, kind in cases.items():
            self.assertEqual(filesystem_type(path, info), kind, path)
        self.assertFalse(directory_fsync_needed("/var/lib/relaymail", info))
        self.assertFalse(directory_fsync_needed("/var/spool/relay/x", info))
        self.assertTrue(directory_fsync_needed("/var/spool/x", info))  # NFS
        self.assertTrue(directory_fsync_needed("/tmp/spool", info))  # overlay on top
        self.assertTrue(directory_fsync_needed("/x", "/nonexistent/mountinfo"))  # unknown

    def test_this_machine_is_read(self) -> None:
        from relaymail.spool.safeio import filesystem_type

        self.assertIsNotNone(filesystem_type(tempfile.gettempdir()))


def test_a_small_body_is_read_in_one_go_without_its_record(tmp_path: Any) -> None:
    """read_small_body gives what open_body gives, from an offset, and None where the
    body (from the offset) is over the limit, with or without an envelope record."""
    from relaymail.spool.record import envelope_record, open_body, read_small_body

    body = b"Subject: s\r\n\r\n" + b"line\r\n" * 300
    for name, data in (("with", body + envelope_record(b'{"queue_id": "X"}' * 200)),
                       ("without", body), ("tiny", b"x\r\n")):
        path = tmp_path / name
        path.write_bytes(data)
        whole = open_body(str(path)).read()
        assert read_small_body(str(path), len(whole)) == whole
        assert read_small_body(str(path), len(whole), 3) == whole[3:]
        assert read_small_body(str(path), len(whole) - 3, 3) == whole[3:]
        assert read_small_body(str(path), len(whole) - 4, 3) is None
        assert read_small_body(str(path), len(whole) - 1) is None
