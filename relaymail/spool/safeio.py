"""The few blocking file operations the spool needs, behind one class so tests can inject faults.

Everything here blocks: call it from a thread, never from the reactor thread (except at startup).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
from typing import Any

from relaymail.spool.record import envelope_json_of


def open_private(path: str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """Open a file only its owner may read (0600), refusing to follow a symlink there (a
    planted link would otherwise make us write a secret, or truncate a file, elsewhere);
    an existing file's mode is narrowed too.  Blocking."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_atomically(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once: a private temp file beside it (never
    through a symlink), written, fsync'd when ``durable``, renamed over ``path``, and the
    directory fsync'd when ``durable``; a reader sees the old file or the new one, never
    half of one.  The one atomic-write helper (credentials, config saves, OAuth2 tokens,
    the control token).  Blocking."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}-{secrets.token_hex(6)}")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# Filesystems on which the fsync of a newly created file also makes its directory entry
# durable, so that a commit needs no fsync of data/ (measured on ext4: a third of the
# commit's disk time for one message):
# - ext4: fsync waits for the journal commit of the inode's last change, and journal
#   transactions commit in order, so the one that created the entry is in; without a
#   journal, ext4 syncs the parent directory of a new inode itself (ext4_sync_parent);
# - XFS: fsync forces the log up to the inode's last change, the create's included;
# - btrfs: fsync logs a new inode's names in the log tree.
# Elsewhere (NFS, FUSE, overlayfs, tmpfs, ext2, anything unknown) data/ is fsync'd too.
ENTRY_DURABLE_WITH_FILE = frozenset({"ext4", "xfs", "btrfs"})
MOUNTINFO = "/proc/self/mountinfo"


def filesystem_type(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem ``path`` is on (the last mount of the longest mount
    point above it, from /proc/self/mountinfo), or None when that cannot be read."""
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), right.split()[0])
    return best[1] if best else None


def directory_fsync_needed(path: str, mountinfo: str = MOUNTINFO) -> bool:
    """Must a commit into ``path`` fsync the directory too (see ENTRY_DURABLE_WITH_FILE)?"""
    return filesystem_type(path, mountinfo) not in ENTRY_DURABLE_WITH_FILE


def write_json_atomically(path: str, data: Any, mode: int = 0o600) -> None:
    """``data`` as indented, sorted JSON, durably and atomically (write_atomically)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomically(path, text.encode("utf-8"), mode)


READ_SIZE = 1 << 16
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def _renameat2() -> Any:
    """libc's renameat2 (glibc 2.28 and later), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError), atomically:
    of several processes renaming one ``src``, exactly one succeeds and the others get
    FileNotFoundError.  OSError(ENOSYS) without renameat2; EINVAL where the filesystem
    does not support RENAME_NOREPLACE.  Blocking."""
    if _RENAMEAT2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", src)
    if _RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                  RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)


class FileOps:
    """Real filesystem operations with explicit durability (fsync of files and directories)."""

    def create_exclusive(self, path: str) -> int:
        """Open a new file for writing; fail if it exists (a queue ID collision)."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def open_append(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def open_read(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def copy_all(self, source: int, target: int) -> None:
        """Append all of ``source`` (from its start) to ``target``, in the kernel if possible."""
        offset = 0
        while True:
            try:
                copied = os.copy_file_range(source, target, 1 << 24, offset)
            except OSError:  # a filesystem or kernel without it: copy through user space
                copied = len(chunk := os.pread(source, 1 << 20, offset))
                self.write_all(target, chunk)
            if copied == 0:
                return
            offset += copied

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def rename_noreplace(self, src: str, dst: str) -> None:
        rename_noreplace(src, dst)

    def open_existing(self, path: str) -> int:
        """Open a file to overwrite it from its start (a recycled spool file)."""
        return os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def truncate_here(self, fd: int) -> None:
        """Cut the file at the current position: drop what a recycled file held beyond."""
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))

    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(path)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, path: str) -> bytes:
        """The whole file; plain descriptor calls (half the time of ``open()`` for the
        100,000 small envelopes read at a restart)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            while True:
                chunk = os.read(fd, READ_SIZE)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def read_envelope(self, path: str) -> bytes:
        """The envelope JSON of ``<state>/<id>.json``, whichever form it has
        (relaymail.spool.record.envelope_json_of)."""
        return envelope_json_of(path)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def write_file_durably(self, path: str, data: bytes) -> None:
        """Create ``path`` (must not exist) with ``data`` and fsync it."""
        fd = self.create_exclusive(path)
        try:
            self.write_all(fd, data)
            self.fsync(fd)
        finally:
            self.close(fd)
