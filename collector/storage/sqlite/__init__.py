"""The embedded default store: one SQLite file in WAL mode (see ``collector/STORAGE.md``).

The shared SQL parts (``storage/sql/``: writes, compaction, retention, queries) over
``schema.SQLiteFile`` (the file, its connections and transactions).
"""

from __future__ import annotations

from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite.schema import SQLiteFile

__all__ = ["SQLiteStorage"]


class SQLiteStorage(SQLiteFile, SQLStorage):
    """``Storage`` on one SQLite file (constructor options: ``schema.SQLiteFile``)."""
