"""Recycled body files: a delivered message's file becomes the next message's.

Creating a file allocates an inode and freeing one releases it; on ext4 without a journal
(common on cloud VMs) each allocation also walks past every recently freed inode
(``recently_deleted`` in the kernel's ialloc.c), so after a burst of deliveries a create
cost up to 1 ms of kernel CPU, most of the acceptor's time per message.  Renaming keeps the
inode: the main process moves a removed body into ``spare/`` and an acceptor takes it back
into ``data/`` for its next message, overwriting it from the start and cutting it at the
end at commit.  No inode is allocated or freed while spares last.

Rules that keep it safe:

* a body goes to ``spare/`` first under a dot-name (``.<id>``) while its ``queue/`` name may
  still be a link to it, and becomes eligible (``<ms>-<id>``) only once that name is gone
  and it has no other link (the archive keeps hard links: such a file is unlinked);
* a spare is taken only after resting ``MIN_AGE`` seconds, so a reader that opened
  the message just before its removal has finished long before the file is reused;
* it is taken with ``rename(spare → data/<id>.eml, RENAME_NOREPLACE)``: of several
  acceptors trying one spare, exactly one gets it, and an existing body is never replaced
  (a queue ID collision fails as ``O_EXCL`` did);
* an uncommitted recycled file ends with its old record, whose queue ID is not its name,
  so startup removes it (Spool.repair) like any uncommitted body;
* after startup (once the queue is read back) the main process makes ``STOCK`` empty
  spares, so that the first burst before any delivery allocates none either;
* only files up to ``MAX_SIZE`` are kept, at most ``MAX_SPARES`` of them, so the pool holds
  at most 128 MB (with 4 KiB messages, 8 MB); without renameat2 (or on a filesystem without
  RENAME_NOREPLACE) bodies are created and removed as before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable

from relaymail.logs import Logger
from relaymail.spool.record import read_record
from relaymail.spool.safeio import FileOps

log = Logger(namespace="relaymail.spool")

MIN_AGE = 0.5  # seconds a spare rests before it is reused
MAX_SIZE = 64 * 1024  # bigger bodies are removed, not kept
MAX_SPARES = 2048  # at 1,000 messages/s about 1,000 are resting or waiting
STOCK = 512  # empty spares made after startup, for the first burst before deliveries
RELIST_EVERY = 0.25  # seconds between listings of spare/ (per process)
QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,40}")  # a file name of data/, never a path
UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM,
                         errno.EXDEV})


class SparePool:
    """The files in ``<spool>/spare/``, as taken by acceptors and given back by the relay."""

    def __init__(self, directory: str, ops: FileOps,
                 clock: Callable[[], float] = time.time, enabled: bool = True) -> None:
        self.directory = directory
        self.ops = ops
        self.clock = clock
        self.enabled = enabled
        self._candidates: list[str] = []  # eligible names from the last listing
        self._listed_at = float("-inf")
        self._kept = 0  # spares in the directory, as last listed plus those given since
        self._lock = threading.Lock()  # spill and commit threads may take at once
        self.taken = self.created = self.kept = self.dropped = 0  # counts, for tests

    # ------------------------------------------------------------ taking (acceptors)

    def open_body(self, path: str) -> tuple[int, bool]:
        """Thread: an open descriptor for the new body ``path`` and whether it is a
        recycled file (then the commit must cut it at its end: ``truncate_here``)."""
        while self.enabled and (name := self._next_candidate()) is not None:
            try:
                self.ops.rename_noreplace(os.path.join(self.directory, name), path)
            except FileNotFoundError:
                continue  # another acceptor took it first
            except OSError as e:
                if e.errno in UNSUPPORTED:
                    self._disable(e)
                    break
                raise  # EEXIST: a queue ID collision, as O_EXCL reports it
            try:
                fd = self.ops.open_existing(path)  # never through a symlink
            except OSError as e:  # not a file we can write: drop it, try the next
                log.warn("spool: spare file unusable ({error}); removed", error=e)
                with contextlib.suppress(OSError):
                    self.ops.unlink(path)
                continue
            self.taken += 1
            return fd, True
        self.created += 1
        return self.ops.create_exclusive(path), False

    def _next_candidate(self) -> str | None:
        with self._lock:
            if not self._candidates and self.clock() - self._listed_at >= RELIST_EVERY:
                self._relist()
            candidates = self._candidates
            if not candidates:
                return None
            # A random one: acceptors that listed at the same moment rarely reach for the
            # same file (a miss costs one failed rename).
            i = random.randrange(len(candidates))
            candidates[i], candidates[-1] = candidates[-1], candidates[i]
            return candidates.pop()

    def _relist(self) -> None:
        now = self.clock()
        self._listed_at = now
        try:
            names = self.ops.listdir(self.directory)
        except OSError:
            names = []
        self._kept = len(names)
        ripe = int((now - MIN_AGE) * 1000)
        self._candidates = [n for n in names if _rested_since(n) <= ripe]

    def _disable(self, error: OSError) -> None:
        self.enabled = False
        log.info("spool: body files are not recycled here ({error})", error=error)

    # ------------------------------------------------------------ giving back (relay)

    def remove_body(self, body: str, envelope: str, queue_id: str) -> None:
        """Thread: remove a delivered message (``data/<id>.eml`` and its envelope name),
        keeping the body file as a spare when it may be.  Order as in Spool._remove: the
        body leaves ``data/`` first, so a crash never leaves it to be restored and sent
        again; an envelope left without its body is dropped at startup."""
        if not self.enabled:
            self._unlink_quietly(body)
            self.ops.unlink(envelope)
            return
        staged = os.path.join(self.directory, "." + queue_id)
        try:
            self.ops.rename(body, staged)
        except FileNotFoundError:
            staged = ""
        self.ops.unlink(envelope)
        if staged:
            self._keep_or_drop(staged, queue_id)

    def _keep_or_drop(self, staged: str, queue_id: str) -> None:
        try:
            info = self.ops.lstat(staged)
            keep = (info.st_nlink == 1 and info.st_size <= MAX_SIZE
                    and self._room_for_one())
            if keep:
                name = f"{int(self.clock() * 1000):013d}-{queue_id}"
                self.ops.rename(staged, os.path.join(self.directory, name))
                self.kept += 1
                return
        except OSError as e:
            log.warn("spool: could not keep {path} as a spare: {error}", path=staged,
                     error=e)
        self.dropped += 1
        self._unlink_quietly(staged)

    def _room_for_one(self) -> bool:
        with self._lock:
            if self.clock() - self._listed_at >= RELIST_EVERY:
                self._relist()
            if self._kept >= MAX_SPARES:
                return False
            self._kept += 1
            return True

    # ------------------------------------------------------------ startup

    def stock(self, floor: int = STOCK) -> int:
        """Thread, after startup: make empty spares until ``floor`` are there, so that the
        first burst after a start allocates no inodes either; returns how many it made."""
        if not self.enabled:
            return 0
        try:
            present = len(self.ops.listdir(self.directory))
        except OSError:
            return 0
        made = 0
        for _ in range(floor - present):
            name = f"{0:013d}-S{secrets.token_hex(8)}"
            try:
                self.ops.close(self.ops.create_exclusive(os.path.join(self.directory, name)))
            except OSError as e:
                log.warn("spool: could not make spare files: {error}", error=e)
                break
            made += 1
        with self._lock:
            self._kept += made
        return made

    def tidy(self, data: str) -> None:
        """Startup (blocking), before Spool.repair looks at ``data``: a spare holding a
        committed message other than the one it is named after was taken by a commit
        whose rename into ``data`` a power failure lost (no journal syncs that entry
        with the file), and goes back there; files a crash left staged, and any beyond
        the limit, are removed."""
        try:
            names = sorted(self.ops.listdir(self.directory))
        except OSError:
            return
        kept = 0
        for name in names:
            path = os.path.join(self.directory, name)
            if _rested_since(name) != _NEVER and self._return_taken(path, name, data):
                continue
            if _rested_since(name) == _NEVER or kept >= MAX_SPARES:
                self._unlink_quietly(path)
            else:
                kept += 1

    def _return_taken(self, path: str, name: str, data: str) -> bool:
        try:
            record = read_record(path)
            queue_id = json.loads(record)["queue_id"] if record else None
        except (OSError, ValueError, TypeError, KeyError):
            return False
        if not isinstance(queue_id, str) or queue_id == name.partition("-")[2] \
                or not QUEUE_ID.fullmatch(queue_id):
            return False
        try:
            self.ops.rename_noreplace(path, os.path.join(data, queue_id + ".eml"))
        except OSError:
            return False
        log.warn("spool: {queue_id}: body found among the spares, put back in data/",
                 queue_id=queue_id)
        return True

    def _unlink_quietly(self, path: str) -> None:
        remove_quietly(self.ops, path)


def remove_quietly(ops: FileOps, path: str) -> None:
    """Thread: unlink ``path``; one already gone is fine, another failure is logged."""
    try:
        ops.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warn("spool: could not remove {path}: {error}", path=path, error=e)


_NEVER = 1 << 62


def _rested_since(name: str) -> int:
    """The millisecond timestamp in an eligible spare's name; _NEVER for any other name
    (a staged ``.<id>``, a stranger)."""
    stamp, dash, _ = name.partition("-")
    if not dash or len(stamp) != 13 or not stamp.isdigit():
        return _NEVER
    return int(stamp)
