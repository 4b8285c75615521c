"""One temporary directory per test run, removed when the run ends.

Many tests (and the relaymail processes, peers and tools they start) make spools and
files with ``tempfile`` and leave their removal to nobody; on a developer's machine that
added up to gigabytes in /tmp.  Pointing ``tempfile`` and ``TMPDIR`` at one directory of
the run's own makes its removal one call, whatever the tests did or failed to do.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_run_directory: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    directory = tempfile.mkdtemp(prefix="relaymail-tests-")
    # As /tmp is: peers that run as their own users (PostgreSQL's initdb and server as
    # "postgres", Postfix's daemons) must reach, and may make, their files under it.
    os.chmod(directory, 0o1777)
    _run_directory.append(directory)
    os.environ["TMPDIR"] = directory
    tempfile.tempdir = directory


def pytest_unconfigure(config: pytest.Config) -> None:
    tempfile.tempdir = None
    for directory in _run_directory:
        shutil.rmtree(directory, ignore_errors=True)
    _run_directory.clear()
