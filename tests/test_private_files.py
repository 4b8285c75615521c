"""Files that hold secrets or mail metadata are created 0600 and never through a symlink
(the delivery history was 0644; TLS files and the control token were opened with O_TRUNC
and no O_NOFOLLOW, so a planted link made us truncate or write elsewhere)."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from relaymail.spool.lock import write_token
from relaymail.spool.safeio import open_private


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_open_private_narrows_an_existing_file_and_refuses_symlinks(tmp_path: Any) -> None:
    loose = tmp_path / "loose"
    loose.write_text("x")
    os.chmod(loose, 0o644)
    os.close(open_private(str(loose)))
    assert mode(str(loose)) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(OSError):
        open_private(str(tmp_path / "link"))
    assert victim.read_text() == "keep me"


def test_control_token_is_private_and_not_written_through_a_link(tmp_path: Any) -> None:
    write_token(str(tmp_path))
    assert mode(str(tmp_path / "control.token")) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "control.token.tmp").symlink_to(victim)  # the temp name it used to have
    token = write_token(str(tmp_path))
    assert victim.read_text() == "keep me"
    assert (tmp_path / "control.token").read_text() == token
    assert not os.path.islink(tmp_path / "control.token")


def test_one_atomic_write_helper_leaves_no_temp_file_on_failure(tmp_path: Any) -> None:
    from relaymail.spool.safeio import write_atomically

    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    (tmp_path / "sub").mkdir()
    with pytest.raises(OSError):
        write_atomically(str(tmp_path / "sub"), b"x")  # renaming over a directory fails
    write_atomically(str(target), b"new")
    assert target.read_bytes() == b"new" and mode(str(target)) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.json", "sub"]


def test_history_database_is_private(tmp_path: Any) -> None:
    from relaymail.history import History

    history = History.__new__(History)
    history.path = str(tmp_path / "history.db")
    history.db = None
    history._open()
    history._close()
    assert mode(history.path) == 0o600
