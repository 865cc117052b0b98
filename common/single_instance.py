"""One process per data file: an advisory lock beside it, released when the process ends.

The agent holds it for its buffer, the collector for its database.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["EXIT_ALREADY_RUNNING", "AlreadyRunning", "hold_lock", "run_exclusively"]

EXIT_ALREADY_RUNNING = 2  # like a configuration error: starting it again cannot help


class AlreadyRunning(RuntimeError):
    """Another process holds the lock; the message says which file and which process."""


def hold_lock(data_path: Path, program: str) -> IO[str] | None:
    """Lock ``<data_path>.lock``; keep the returned file open for as long as the process runs.

    Returns None when the lock file cannot be created at all (e.g. a read-only directory): the
    program then runs unguarded rather than not at all, and its own storage code reports the
    problem. Raises ``AlreadyRunning`` when another process holds the lock.
    """
    lock_path = Path(f"{data_path}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open on purpose
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(f"another {program} (pid {holder}) is already using {data_path}; "
                             "stop it first, or give this one its own path") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def run_exclusively(data_path: Path, program: str, main: Callable[[], int]) -> int:
    """``main()`` while holding the lock of ``data_path``; its exit status, or
    ``EXIT_ALREADY_RUNNING`` with the reason on stderr when another process holds the lock."""
    try:
        lock = hold_lock(data_path, program)
    except AlreadyRunning as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    try:
        return main()
    finally:
        if lock is not None:
            lock.close()
