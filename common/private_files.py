"""Refuse configuration, credential and key files that every user on the machine can read.

Group access is allowed: packages install configurations ``root:edgemon`` mode 0640.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

__all__ = ["InsecureFileMode", "check_not_world_accessible", "check_private_file"]


class InsecureFileMode(PermissionError):
    """The file gives "other" users access; the message holds the ``chmod`` that fixes it."""


def check_not_world_accessible(path: str | Path, what: str) -> None:
    """Raise ``InsecureFileMode`` when ``path`` is a regular file with any "other" permission.

    ``what`` names the file for the message ("configuration file", "token file", ...). A file
    that does not exist, or is not a regular file (``/dev/stdin``), is left to the caller.
    """
    try:
        st = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        quoted = shlex.quote(str(path))
        raise InsecureFileMode(
            f"{path}: refusing the {what}: its mode {mode:04o} gives every user on this machine "
            f"access, and it may hold secrets. Fix: chmod 600 {quoted} (or chmod 640 {quoted} "
            f"with the service's group as the file's group, e.g. chown root:edgemon {quoted})")


def check_private_file(path: Path, what: str, *, owner: str = "this program") -> Path:
    """``path`` if it is a readable regular file other users cannot access, else ValueError."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ValueError(f"{what} {str(path)!r}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {str(path)!r}: not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o007:
        raise ValueError(f"{what} {str(path)!r}: other users can access it (mode {mode:04o}); "
                         f"run: chmod 600 {path} (or chmod 640 and give it {owner}'s group)")
    return path
