"""Ownership of a spool directory by one running process, and its local control token.

The running instance holds an exclusive ``flock`` on ``<spool>/lock`` (so a second
instance on the same spool refuses to start, and the queue command knows whether to talk
to the running instance or to work on the files itself).  ``<spool>/control.token``
(mode 0600, new at every start) authenticates that command to the instance's API: whoever
can read the spool may control the queue, as with Postfix's ``postqueue``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets

from relaymail.spool.safeio import write_atomically

LOCK_NAME = "lock"
TOKEN_NAME = "control.token"


class SpoolBusyError(Exception):
    """Another process holds the spool."""


def acquire(spool_dir: str) -> int:
    """Lock the spool for this process; returns the descriptor to keep open."""
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(spool_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise SpoolBusyError(f"{spool_dir} is in use by another relaymail process") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def is_locked(spool_dir: str) -> bool:
    """True while a running instance holds the spool."""
    try:
        fd = os.open(os.path.join(spool_dir, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def write_token(spool_dir: str) -> str:
    token = secrets.token_urlsafe(32)
    write_atomically(os.path.join(spool_dir, TOKEN_NAME), token.encode(), durable=False)
    return token


def read_token(spool_dir: str) -> str:
    with open(os.path.join(spool_dir, TOKEN_NAME)) as f:
        return f.read().strip()
