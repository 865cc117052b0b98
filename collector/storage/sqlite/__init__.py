"""The embedded default store: one SQLite file in WAL mode (see ``collector/STORAGE.md``).

The shared SQL parts (``storage/sql/``: writes, compaction, retention, queries) over
``schema.SQLiteFile`` (the file, its connections and transactions). SQLite's own besides:
``sizes.py`` (bytes on disk), and the tables the shared forwarding log (``forward_log.py``)
and catalogues (``catalogues.py``) make on first use.
"""

from __future__ import annotations

from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite.catalogues import CatalogueTable
from edgemon.collector.storage.sqlite.forward_log import ForwardTables
from edgemon.collector.storage.sqlite.schema import SQLiteFile
from edgemon.collector.storage.sqlite.sizes import DiskSize

__all__ = ["SQLiteStorage"]


class SQLiteStorage(DiskSize, ForwardTables, CatalogueTable, SQLiteFile, SQLStorage):
    """``Storage`` on one SQLite file (constructor options: ``schema.SQLiteFile``)."""
