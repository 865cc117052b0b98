"""How much the SQLite store holds, by tier, for ``/metrics`` (``Storage.tier_bytes``).

Sums of blob lengths: SQLite reads a blob's length from the record header without loading the
blob, but every row of the table is still visited, so this is a scan. The maintenance thread
calls it now and then (``MaintenanceRunner.gauges_interval``), never a scrape. Each table is
read in its own short read transaction: a long snapshot would hold back WAL checkpoints.
"""

from __future__ import annotations

import os

from edgemon.collector.storage.sql.store import TIERS
from edgemon.collector.storage.sqlite.schema import SQLiteFile

__all__ = ["Sizes"]

# part -> (SQL, parameters); rollups keep the tier as its bucket width in ms
_PARTS: dict[str, list[tuple[str, tuple[int, ...]]]] = {
    "pending": [("SELECT coalesce(sum(length(payload)), 0) FROM batches", ())],
    "raw": [("SELECT coalesce(sum(length(times)), 0) FROM blocks", ()),
            ("SELECT coalesce(sum(length(data)), 0) FROM chunks", ())],
    **{tier: [("SELECT coalesce(sum(length(data)), 0) FROM rollups WHERE tier = ?", (width,))]
       for tier, (width, _window) in TIERS.items()},
    "quarantine": [("SELECT coalesce(sum(length(payload)), 0) FROM quarantine", ())],
}


class Sizes(SQLiteFile):
    def tier_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part, queries in _PARTS.items():
            total = 0
            for sql, params in queries:
                with self._read() as db:
                    total += int(db.execute(sql, params).fetchone()[0])
            out[part] = total
        return out

    def disk_bytes(self) -> int | None:
        """The database file with its WAL and shared-memory index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                continue
        return total
