"""Reading small kernel files (``/proc``, ``/sys``) cheaply: one ``os.open`` + ``os.read``, no
buffered file object (``Path.read_text`` costs about three times as much CPU for these)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["PerCycle", "ProcFile", "open_dir", "read_bytes", "read_text", "read_whole_at"]

LIMIT = 1 << 20  # no kernel summary file we read is near this; bounds a surprise


def read_bytes(path: Path | str) -> bytes:
    """The file's content, read until end of file (at most ``LIMIT`` bytes); ``OSError``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        size = 0
        while size < LIMIT:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path | str) -> str:
    """``read_bytes`` decoded as ASCII-compatible text (invalid bytes replaced)."""
    return read_bytes(path).decode("utf-8", "replace")


def open_dir(path: Path | str) -> int:
    """A descriptor of directory ``path`` to read under with ``read_whole_at``; ``OSError``."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def read_whole_at(dir_fd: int, name: str, size: int = 4096) -> bytes:
    """File ``name`` under the open directory ``dir_fd``, for files the kernel makes whole at
    open (``single_open``: ``/proc/<pid>/stat``), so a read that does not fill ``size`` bytes got
    all of it: one relative open (no path to join and walk from /) and one read, where
    ``read_bytes`` needs a second to see the end. Reads on if the buffer filled; ``OSError``."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        data = os.read(fd, size)
        if len(data) < size:
            return data
        chunks = [data]
        while len(data) and size < LIMIT:
            data = os.read(fd, 65536)
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


class ProcFile:
    """A kernel file kept open and read again from offset 0 (``os.pread``) at every ``read``.

    The kernel makes a /proc or /sys file afresh when it is read at offset 0 (procps' ``top``
    keeps ``/proc/stat`` open the same way), so this reads what opening it again would, for about
    half the CPU of open + read + close measured between agent cycles (cold caches), and without
    the path walk (``/proc/net/...`` goes through the ``/proc/self`` link). Opened at the first
    read; ``OSError`` as ``read_bytes``, after which the next read opens it again."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> bytes:
        """The file's content (at most about ``LIMIT`` bytes)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        try:
            chunks = []
            size = 0
            while size < LIMIT:
                chunk = os.pread(self._fd, 65536, size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        except OSError:
            self.close()
            raise

    def text(self) -> str:
        """``read`` decoded as ``read_text`` does."""
        return self.read().decode("utf-8", "replace")

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class PerCycle:
    """A source several families (or several calls of one) ask in one sampling cycle: inside
    ``with source.cycle():`` what ``_once`` reads is read at the first call and reused until the
    block ends; outside one, every call reads afresh."""

    _in_cycle = False
    _cached: Any = None

    @contextmanager
    def cycle(self) -> Iterator[None]:
        self._in_cycle, self._cached = True, None
        try:
            yield
        finally:
            self._in_cycle, self._cached = False, None

    def _once(self, read: Callable[[], Any]) -> Any:
        if self._cached is not None:
            return self._cached
        value = read()
        if self._in_cycle:
            self._cached = value
        return value
