"""The agent keeps its secrets and its data to its own user: configuration and buffer modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgemon.agent.buffer import Buffer
from edgemon.agent.cli import main


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [v for v in os.environ if v.startswith("EDGEMON_AGENT_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_a_configuration_other_users_can_access_is_refused_with_the_fix(
        tmp_path: Path, mode: int, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    config = tmp_path / "agent.toml"
    config.write_text('[broker]\nusername = "h"\npassword = "s3cret-value"\n')
    config.chmod(mode)
    for command in ("check-config", "status", "run"):
        assert main([command, "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"mode {mode:04o}" in err and f"chmod 600 {config}" in err
        assert "s3cret-value" not in err


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_configuration_private_to_the_user_or_group_is_accepted(
        tmp_path: Path, mode: int, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    config = tmp_path / "agent.toml"
    config.write_text("interval_seconds = 5\n")
    config.chmod(mode)
    assert main(["check-config", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith("OK")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_buffer_and_its_log_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "buffer.db"
    buffer = Buffer.open(path, host="h", instance="i", max_bytes=1 << 20, max_age_seconds=3600)
    try:
        files = [p for p in path.parent.iterdir() if p.name.startswith("buffer.db")]
        assert {p.name for p in files} >= {"buffer.db", "buffer.db-wal"}
        for file in files:
            assert _mode(file) & 0o077 == 0, f"{file.name} mode {_mode(file):04o}"
        assert _mode(path.parent) & 0o077 == 0
    finally:
        buffer.close()


def test_an_existing_buffer_open_to_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    Buffer.open(path, host="h", instance="i", max_bytes=1 << 20, max_age_seconds=3600).close()
    path.chmod(0o644)
    buffer = Buffer.open(path, host="h", instance="i", max_bytes=1 << 20, max_age_seconds=3600)
    try:
        assert _mode(path) == 0o600
        wal = path.with_name("buffer.db-wal")
        assert not wal.exists() or _mode(wal) & 0o077 == 0
    finally:
        buffer.close()


def test_the_running_agent_creates_its_files_private_whatever_the_umask(tmp_path: Path) -> None:
    """`run` sets umask 077: the lock file and anything SQLite creates are the agent's only."""
    config = tmp_path / "agent.toml"
    state = tmp_path / "state"
    config.write_text(f'interval_seconds = 0.05\nbatch_cycles = 1\n[broker]\nport = 1\n'
                      f'reconnect_max_seconds = 0.5\n[buffer]\npath = "{state / "buffer.db"}"\n')
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMON_AGENT_")}
    script = ("import os, sys; os.umask(0); from edgemon.agent.cli import main; "
              "sys.exit(main(['run', '-c', sys.argv[1]]))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        from tests.support.waiting import wait_until

        wait_until(lambda: (state / "buffer.db-wal").exists() or proc.poll() is not None, 20,
                   "the agent's buffer files")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        for file in state.iterdir():
            assert _mode(file) & 0o077 == 0, f"{file.name} mode {_mode(file):04o}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
