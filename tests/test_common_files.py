"""edgemon.common: atomic private writes and running a program under its single-instance lock."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgemon.common.private_files import (
    InsecureFileMode,
    check_private_file,
    write_private,
)
from edgemon.common.single_instance import EXIT_ALREADY_RUNNING, hold_lock, run_exclusively


def test_write_private_replaces_the_file_whole_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_private(path, b"\x00" * (3 << 20), mode=0o640)  # larger than one write may take
    assert path.stat().st_size == 3 << 20 and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def test_a_private_file_check_is_a_value_error_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("k")
    path.chmod(0o604)
    with pytest.raises(InsecureFileMode, match=rf"mode 0604\); run: chmod 600 {path}"):
        check_private_file(path, "private key")
    assert issubclass(InsecureFileMode, ValueError) and issubclass(InsecureFileMode, OSError)
    with pytest.raises(ValueError, match="cannot read it"):
        check_private_file(tmp_path / "missing", "private key")


def test_run_exclusively_refuses_a_second_instance(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.db"
    assert run_exclusively(data, "prog", lambda: 7) == 7
    held = hold_lock(data, "prog")
    try:
        assert run_exclusively(data, "prog", lambda: pytest.fail("ran twice")) == \
            EXIT_ALREADY_RUNNING
        assert f"prog: another prog (pid {os.getpid()}) is already using {data}" in \
            capsys.readouterr().err
    finally:
        assert held is not None
        held.close()
    assert run_exclusively(data, "prog", lambda: 0) == 0
