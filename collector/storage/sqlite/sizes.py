"""Bytes the SQLite store takes on disk, for ``/metrics`` (``Storage.disk_bytes``); the bytes
by tier are the shared ``sql/sizes.py``."""

from __future__ import annotations

import os

from edgemon.collector.storage.sqlite.schema import SQLiteFile

__all__ = ["DiskSize"]


class DiskSize(SQLiteFile):
    def disk_bytes(self) -> int | None:
        """The database file with its WAL and shared-memory index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                continue
        return total
