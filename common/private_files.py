"""Files that hold secrets: refuse ones every user on the machine can access, and write new
versions atomically with a private mode.

Group access is allowed: packages install configurations ``root:edgemon`` mode 0640.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from pathlib import Path

__all__ = ["InsecureFileMode", "OwnerNotSet", "check_not_world_accessible",
           "check_private_file", "write_private"]


class InsecureFileMode(PermissionError, ValueError):
    """The file gives "other" users access; the message holds the ``chmod`` that fixes it.

    A ``ValueError`` too, so configuration checks report it like any other bad value.
    """


class OwnerNotSet(PermissionError):
    """``write_private`` could not give the new file the owner or group asked for."""


def check_not_world_accessible(path: str | Path, what: str, *,
                               owner: str = "the service") -> None:
    """Raise ``InsecureFileMode`` when ``path`` is a regular file with any "other" permission.

    ``what`` names the file for the message ("configuration file", "private key", ...);
    ``owner`` is whose group may read it. A file that does not exist, or is not a regular
    file (``/dev/stdin``), is left to the caller.
    """
    try:
        info = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o007:
        quoted = shlex.quote(str(path))
        raise InsecureFileMode(
            f"{what} {str(path)!r}: other users can access it (mode {mode:04o}); run: "
            f"chmod 600 {quoted} (or chmod 640 {quoted} and give it {owner}'s group)")


def check_private_file(path: Path, what: str, *, owner: str = "this program") -> Path:
    """``path`` if it is a readable regular file other users cannot access, else ValueError
    (``InsecureFileMode`` for the mode)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ValueError(f"{what} {str(path)!r}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {str(path)!r}: not a regular file")
    check_not_world_accessible(path, what, owner=owner)
    return path


def write_private(path: Path, data: str | bytes, *, mode: int = 0o600, uid: int = -1,
                  gid: int = -1) -> None:
    """Replace ``path`` atomically: a temporary file beside it with ``mode`` (and owner
    ``uid``/``gid`` when not -1), fsync'ed, renamed over ``path``, the directory fsync'ed.

    A reader sees the old file or the new one, never a part; the temporary file never has a
    wider mode than 0600 and is removed when anything fails. ``OwnerNotSet`` when this user
    may not give the file that owner or group.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(data.encode() if isinstance(data, str) else data)
            while view:
                view = view[os.write(fd, view):]
            if (uid, gid) != (-1, -1):
                try:
                    os.fchown(fd, uid, gid)
                except PermissionError:
                    raise OwnerNotSet(
                        f"{path}: cannot give the new file owner {uid} / group {gid}; run this "
                        "command as root (or as the file's owner in that group)") from None
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
