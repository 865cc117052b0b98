"""How much the store holds, by tier, for ``/metrics`` (``Storage.tier_bytes``): the same
SQL and the same meaning on both engines (bytes of stored blobs, without the database's own
overhead; that is ``disk_bytes``, each backend's own).

Sums of blob lengths. SQLite reads a blob's length from the record header without loading the
blob; PostgreSQL's ``length(bytea)`` of a value kept out of line (TOAST) reads only its
pointer. Every row of the table is still visited, so this is a scan: the maintenance thread
calls it now and then (``MaintenanceRunner.sizes_interval``), never a scrape. Each table is
read in its own short read transaction (a long snapshot would hold back SQLite's WAL
checkpoints, and PostgreSQL's vacuum).
"""

from __future__ import annotations

from edgemon.collector.storage.sql.store import TIERS, SQLStore

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


class Sizes(SQLStore):
    def tier_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part, queries in _PARTS.items():
            total = 0
            for sql, params in queries:
                with self._read() as db:
                    total += int(db.execute(sql, params).fetchone()[0])
            out[part] = total
        return out
