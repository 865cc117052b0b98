"""The PostgreSQL store, chosen by ``storage.url = "postgresql://..."``: the shared SQL parts
(``storage/sql/``: writes, compaction, retention, queries) over ``database.PostgresDatabase``
(pool, transactions, migrations, time partitions). Same tables, same blobs (``encoding.py``),
same answers as the SQLite store; see ``collector/STORAGE.md``.

TimescaleDB is not used (nor needed): chunks are already compressed per series by
``encoding.py``, and plain declarative partitioning gives retention by dropping partitions.
"""

from __future__ import annotations

from typing import Any

from edgemon.collector.storage.postgres.database import MissingPartitions, PostgresDatabase
from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sql.store import TIERS

__all__ = ["PostgresStorage"]

_COPY_BATCHES = ("COPY batches (host_id, instance, seq, received_ms, t_min, t_max, samples, "
                 "historical, payload) FROM STDIN (FORMAT BINARY)")
_BATCH_TYPES = ["int8", "text", "int8", "int8", "int8", "int8", "int8", "int2", "bytea"]
_ATTEMPTS = 8  # tries of a step that finds partitions missing (each try makes them)


class PostgresStorage(PostgresDatabase, SQLStorage):
    """``Storage`` in a PostgreSQL database (constructor options: ``database.PostgresDatabase``)."""

    def _insert_batches(self, db: Any, rows: list[tuple[Any, ...]]) -> None:
        """Binary ``COPY`` (``ingest_copy``), else the shared ``INSERT``: see
        ``benchmarks/postgres_ingest.py`` for why ``COPY`` is the default. ``COPY`` has no
        ``ON CONFLICT``: a row already there fails the transaction (it cannot be: the rows are
        new by ``seq_ranges``, read under the write lock), and ingest tries again."""
        if not self.ingest_copy:
            super()._insert_batches(db, rows)
            return
        with db.conn.cursor().copy(_COPY_BATCHES) as copy:
            copy.set_types(_BATCH_TYPES)
            for row in rows:
                copy.write_row(row)

    def disk_bytes(self) -> int | None:
        """The whole database (``pg_database_size``: tables, indexes, TOAST, free space kept
        for reuse), as PostgreSQL sees it; not its share of the server's WAL."""
        with self._read() as db:
            return int(db.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    def _forward_head(self, db: Any) -> int:
        """The identity sequence's last value. A value drawn by a transaction rolled back is
        never given again (a gap in seq, as in SQLite)."""
        last, called = db.execute("SELECT last_value, is_called FROM forward_log_seq"
                                  ).fetchone()
        return int(last) if called else 0

    def maintain_step(self, now_ms: int) -> bool:
        """The shared step, with partitions made before it (those of the current windows, or
        the ones a step was rolled back for) and expired ones dropped after it."""
        with self._maintain_lock:  # not the write lock: each transaction takes it
            self.make_partitions(self._live_partitions(now_ms))
            for _ in range(_ATTEMPTS):
                try:
                    more = super().maintain_step(now_ms)
                    break
                except MissingPartitions as exc:
                    self.make_partitions(exc.missing)
            else:
                return True  # a step needing partitions in ever more places: next round
            self.drop_expired_partitions()
            return more

    def _live_partitions(self, now_ms: int) -> list[tuple[str, int]]:
        """The partitions that live data goes to now."""
        w = now_ms - now_ms % self.window_ms
        out = [("blocks", w), ("chunks", w)]
        for name, (_, tier_window) in TIERS.items():
            out.append((f"rollups_{name}", now_ms - now_ms % tier_window))
        return out
