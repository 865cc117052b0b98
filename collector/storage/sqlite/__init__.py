"""The embedded default store: one SQLite file in WAL mode (see ``collector/STORAGE.md``).

The shared SQL parts (``storage/sql/``: writes, compaction, retention, queries) over
``schema.SQLiteFile`` (the file, its connections and transactions).
``sizes.py`` (bytes stored per tier and on disk, for ``/metrics``) and ``forward_log.py`` (the
forwarding log and one cursor per ``[[forward]]`` receiver) are SQLite's own, and so is
``catalogues.py`` (each host's newest series catalogues, protocol SPEC.md §9).
"""

from __future__ import annotations

from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite.catalogues import Catalogues
from edgemon.collector.storage.sqlite.forward_log import ForwardLog
from edgemon.collector.storage.sqlite.schema import SQLiteFile
from edgemon.collector.storage.sqlite.sizes import Sizes

__all__ = ["SQLiteStorage"]


class SQLiteStorage(Sizes, ForwardLog, Catalogues, SQLiteFile, SQLStorage):
    """``Storage`` on one SQLite file (constructor options: ``schema.SQLiteFile``)."""
