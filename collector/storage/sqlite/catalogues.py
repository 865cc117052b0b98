"""The SQLite ``catalogues`` table, made on first use; the methods are the shared
``sql/catalogues.py``."""

from __future__ import annotations

from edgemon.collector.storage.sqlite.schema import SQLiteFile

__all__ = ["CatalogueTable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalogues (
    host TEXT NOT NULL,
    id TEXT NOT NULL,               -- the catalogue's content hash (16 hex digits)
    received_ms INTEGER NOT NULL,   -- last declared (a re-declaration makes it the newest)
    payload BLOB NOT NULL,          -- the catalogue message as received
    PRIMARY KEY (host, id)
) WITHOUT ROWID;
"""


class CatalogueTable(SQLiteFile):
    _catalogues_ready = False

    def _catalogue_table(self) -> None:
        if not self._catalogues_ready:
            with self._write_lock, self._open() as db:
                db.executescript(_SCHEMA)
                self._catalogues_ready = True
