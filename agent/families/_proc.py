"""Reading small kernel files (``/proc``, ``/sys``) cheaply: one ``os.open`` + ``os.read``, no
buffered file object (``Path.read_text`` costs about three times as much CPU for these)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_bytes", "read_text"]

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
