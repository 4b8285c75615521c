"""Recycled body files (relaymail.spool.spares): a delivered body's file serves a later
message; never while anything else may still name or read it, never two messages in one
file, and a crash at any step loses nothing acknowledged."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from typing import Any

from twisted.trial.unittest import TestCase

from relaymail.spool import Spool, run_synchronously
from relaymail.spool.envelope import Envelope, Recipient
from relaymail.spool.record import envelope_json_of, open_body, read_record
from relaymail.spool.safeio import FileOps, rename_noreplace
from relaymail.spool.spares import MAX_SIZE, MAX_SPARES, MIN_AGE, RELIST_EVERY, SparePool


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def envelope(qid: str) -> Envelope:
    return Envelope(queue_id=qid, sender="a@b.example", recipients=[Recipient("c@d.example")],
                    received_at=1.0)


class SpareTests(TestCase):
    def make(self, root: str | None = None, ops: FileOps | None = None,
             clock: Clock | None = None) -> Spool:
        spool = Spool(root or tempfile.mkdtemp(), run_synchronously, ops=ops,
                      clock=clock or Clock(), sync_directory=False)
        spool.prepare()
        return spool

    def store(self, spool: Spool, body: bytes) -> str:
        writer = spool.new_message()
        writer.write(body)
        return self.successResultOf(spool.commit(writer, envelope(writer.queue_id)))

    def deliver(self, spool: Spool, qid: str) -> None:
        self.successResultOf(spool.remove(qid, "queue"))

    def inode(self, spool: Spool, qid: str) -> int:
        return os.stat(spool.path("data", qid + ".eml")).st_ino

    def body(self, spool: Spool, qid: str) -> bytes:
        with open_body(spool.path("data", qid + ".eml")) as f:
            return f.read()

    def test_a_delivered_body_file_serves_a_later_message_cut_to_its_size(self) -> None:
        clock = Clock()
        spool = self.make(clock=clock)
        first = self.store(spool, b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n")
        inode = self.inode(spool, first)
        self.deliver(spool, first)
        self.assertEqual(os.listdir(spool.path("data")), [])
        clock.now += MIN_AGE + 1.1
        second = self.store(spool, b"Subject: short\r\n\r\nhi\r\n")
        self.assertEqual(self.inode(spool, second), inode)
        self.assertEqual(spool.spares.taken, 1)
        self.assertEqual(self.body(spool, second), b"Subject: short\r\n\r\nhi\r\n")
        record = read_record(spool.path("data", second + ".eml"))
        self.assertEqual(Envelope.from_json(record).queue_id, second)
        path = spool.path("queue", second + ".json")
        self.assertEqual(Envelope.from_json(envelope_json_of(path)).queue_id, second)
        self.assertEqual(os.listdir(spool.path("spare")), [])
        self.assertEqual([e.queue_id for e in self.make(spool.root).load_state("queue")],
                         [second])

    def test_a_spare_rests_before_it_is_reused(self) -> None:
        clock = Clock()
        spool = self.make(clock=clock)
        first = self.store(spool, b"a\r\n")
        inode = self.inode(spool, first)
        self.deliver(spool, first)
        clock.now += RELIST_EVERY + 0.1  # a new listing, but the spare is too young
        second = self.store(spool, b"b\r\n")
        self.assertNotEqual(self.inode(spool, second), inode)
        self.assertEqual(spool.spares.taken, 0)
        self.assertEqual(len(os.listdir(spool.path("spare"))), 1)

    def test_a_body_with_another_link_is_never_recycled(self) -> None:
        """The archive keeps a hard link to the body: its copy must stay as it was."""
        clock = Clock()
        spool = self.make(clock=clock)
        first = self.store(spool, b"Subject: archived\r\n\r\nkeep me\r\n")
        archived = os.path.join(spool.root, "archived.eml")
        os.link(spool.path("data", first + ".eml"), archived)
        self.deliver(spool, first)
        self.assertEqual(os.listdir(spool.path("spare")), [])
        clock.now += MIN_AGE + 1.1
        self.store(spool, b"Subject: other\r\n\r\nnot in the archive\r\n")
        with open_body(archived) as f:
            self.assertEqual(f.read(), b"Subject: archived\r\n\r\nkeep me\r\n")

    def test_big_bodies_are_removed_and_the_pool_is_bounded(self) -> None:
        clock = Clock()
        spool = self.make(clock=clock)
        big = self.store(spool, b"y" * (MAX_SIZE + 1) + b"\r\n")
        self.deliver(spool, big)
        self.assertEqual(os.listdir(spool.path("spare")), [])
        spool.spares._kept = MAX_SPARES  # as a full pool lists
        spool.spares._listed_at = clock.now
        small = self.store(spool, b"z\r\n")
        self.deliver(spool, small)
        self.assertEqual(os.listdir(spool.path("spare")), [])
        self.assertEqual(spool.spares.dropped, 2)

    def test_an_updated_envelope_leaves_the_body_free_to_recycle(self) -> None:
        clock = Clock()
        spool = self.make(clock=clock)
        qid = self.store(spool, b"a\r\n")
        env = next(iter(spool.load_state("queue")))
        env.attempts = 1
        self.successResultOf(spool.save_envelope(env))
        self.successResultOf(spool.move(qid, "queue", "hold"))
        self.successResultOf(spool.remove(qid, "hold"))
        self.assertEqual(len(os.listdir(spool.path("spare"))), 1)
        self.assertEqual(os.listdir(spool.path("hold")), [])

    def test_an_uncommitted_recycled_body_is_removed_at_startup(self) -> None:
        """A crash after taking a spare and writing part of the new message: the file ends
        with the old message's record, whose queue ID is not its name."""
        clock = Clock()
        spool = self.make(clock=clock)
        first = self.store(spool, b"Subject: old\r\n\r\n" + b"o" * 3000 + b"\r\n")
        self.deliver(spool, first)
        clock.now += MIN_AGE + 1.1
        writer = spool.new_message()
        writer._open_body()  # as the first spill does
        os.pwrite(os.open(writer.body_path, os.O_WRONLY), b"Subject: new\r\n", 0)
        self.assertTrue(writer.recycled)
        again = self.make(spool.root)
        self.assertEqual(os.listdir(again.path("data")), [])
        self.assertEqual(list(again.load_state("queue")), [])

    def test_a_crash_between_the_steps_of_a_removal(self) -> None:
        """Body staged in spare/, envelope still there: the message is not sent again and
        the staged file goes; nothing is left to restore."""
        spool = self.make()
        qid = self.store(spool, b"a\r\n")
        os.rename(spool.path("data", qid + ".eml"), spool.path("spare", "." + qid))
        again = self.make(spool.root)
        self.assertEqual(list(again.load_state("queue")), [])
        self.assertEqual(os.listdir(again.path("spare")), [])
        self.assertEqual(os.listdir(again.path("data")), [])

    def test_a_committed_message_whose_rename_was_lost_is_put_back(self) -> None:
        """Power failure on ext4 without a journal: the file's contents were synced, the
        rename out of spare/ was not.  Startup finds the message by its record."""
        clock = Clock()
        spool = self.make(clock=clock)
        first = self.store(spool, b"old\r\n")
        self.deliver(spool, first)
        spare = os.listdir(spool.path("spare"))[0]
        clock.now += MIN_AGE + 1.1
        second = self.store(spool, b"Subject: acknowledged\r\n\r\nsafe\r\n")
        os.rename(spool.path("data", second + ".eml"), spool.path("spare", spare))
        os.unlink(spool.path("queue", second + ".json"))
        again = self.make(spool.root)
        self.assertEqual([e.queue_id for e in again.load_state("queue")], [second])
        self.assertEqual(self.body(again, second), b"Subject: acknowledged\r\n\r\nsafe\r\n")
        self.assertEqual(os.listdir(again.path("spare")), [])

    def test_a_delivered_spare_is_not_brought_back(self) -> None:
        spool = self.make()
        self.deliver(spool, self.store(spool, b"sent\r\n"))
        again = self.make(spool.root)
        self.assertEqual(list(again.load_state("queue")), [])
        self.assertEqual(len(os.listdir(again.path("spare"))), 1)

    def test_without_renameat2_bodies_are_created_as_before(self) -> None:
        class NoRenameat2(FileOps):
            def rename_noreplace(self, src: str, dst: str) -> None:
                raise OSError(errno.ENOSYS, "no renameat2")

        clock = Clock()
        spool = self.make(ops=NoRenameat2(), clock=clock)
        self.deliver(spool, self.store(spool, b"a\r\n"))
        clock.now += MIN_AGE + 1.1
        qid = self.store(spool, b"b\r\n")
        self.assertFalse(spool.spares.enabled)
        self.assertEqual(self.body(spool, qid), b"b\r\n")
        self.deliver(spool, qid)
        self.assertEqual(os.listdir(spool.path("data")), [])
        self.assertEqual(os.listdir(spool.path("queue")), [])

    def test_a_queue_id_collision_still_fails(self) -> None:
        spool = self.make()
        open(os.path.join(spool.path("spare"), "0000000000001-X"), "wb").close()
        taken = os.path.join(spool.path("data"), "TAKEN.eml")
        open(taken, "wb").close()
        with self.assertRaises(FileExistsError):
            spool.spares.open_body(taken)


    def test_a_symlink_among_the_spares_is_dropped_not_followed(self) -> None:
        clock = Clock()
        spool = self.make(clock=clock)
        target = os.path.join(spool.root, "elsewhere")
        with open(target, "wb") as f:
            f.write(b"untouched")
        os.symlink(target, os.path.join(spool.path("spare"), "0000000000001-LINK"))
        qid = self.store(spool, b"Subject: fine\r\n\r\nstill stored\r\n")
        self.assertEqual(self.body(spool, qid), b"Subject: fine\r\n\r\nstill stored\r\n")
        self.assertFalse(os.path.islink(spool.path("data", qid + ".eml")))
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"untouched")
        self.assertEqual(os.listdir(spool.path("spare")), [])


class RenameNoReplaceTests(TestCase):
    def test_it_never_replaces_and_only_one_of_many_gets_a_file(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(directory, n))
                                 for n in os.listdir(directory)])
        for i in range(200):
            open(os.path.join(directory, f"s{i}"), "wb").close()
        winners: dict[int, list[int]] = {0: [], 1: [], 2: [], 3: []}

        def take(who: int) -> None:
            for i in range(200):
                try:
                    rename_noreplace(os.path.join(directory, f"s{i}"),
                                     os.path.join(directory, f"t{i}-{who}"))
                    winners[who].append(i)
                except FileNotFoundError:
                    pass

        threads = [threading.Thread(target=take, args=(w,)) for w in winners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        taken = sorted(i for got in winners.values() for i in got)
        self.assertEqual(taken, list(range(200)))  # each exactly once
        target = os.path.join(directory, "t0-x")
        open(target, "wb").close()
        open(os.path.join(directory, "u"), "wb").close()
        with self.assertRaises(FileExistsError):
            rename_noreplace(os.path.join(directory, "u"), target)


class StockTests(TestCase):
    def test_empty_spares_are_made_up_to_the_floor_and_used_at_once(self) -> None:
        clock = Clock()
        spool = Spool(tempfile.mkdtemp(), run_synchronously, clock=clock,
                      sync_directory=False)
        spool.prepare()
        self.assertEqual(spool.spares.stock(5), 5)
        self.assertEqual(spool.spares.stock(5), 0)  # never beyond the floor
        self.assertEqual(len(os.listdir(spool.path("spare"))), 5)
        writer = spool.new_message()
        writer.write(b"Subject: first\r\n\r\nafter a start\r\n")
        qid = self.successResultOf(spool.commit(writer, envelope(writer.queue_id)))
        self.assertTrue(writer.recycled)
        self.assertEqual(len(os.listdir(spool.path("spare"))), 4)
        with open_body(spool.path("data", qid + ".eml")) as f:
            self.assertEqual(f.read(), b"Subject: first\r\n\r\nafter a start\r\n")
        again = Spool(spool.root, run_synchronously, sync_directory=False)
        self.assertEqual([e.queue_id for e in again.prepare()], [qid])
        self.assertEqual(len(os.listdir(spool.path("spare"))), 4)  # stock survives tidy

    def test_no_stock_where_files_are_not_recycled(self) -> None:
        spool = Spool(tempfile.mkdtemp(), run_synchronously, recycle=False)
        spool.prepare()
        self.assertEqual(spool.spares.stock(5), 0)
        self.assertEqual(os.listdir(spool.path("spare")), [])


class PoolListingTests(TestCase):
    def test_strangers_and_staged_files_are_never_taken(self) -> None:
        directory = tempfile.mkdtemp()
        for name in (".ABC", "notes.txt", "123-X"):
            open(os.path.join(directory, name), "wb").close()
        clock: Any = Clock()
        pool = SparePool(directory, FileOps(), clock)
        self.assertIsNone(pool._next_candidate())
        pool.tidy(tempfile.mkdtemp())
        self.assertEqual(os.listdir(directory), [])
