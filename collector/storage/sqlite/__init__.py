"""The embedded default store: one SQLite file in WAL mode (see ``collector/STORAGE.md``).

Assembled from one part per job, over ``schema.SQLiteFile`` (the file, its connections and
transactions), split along the write/read seam:

* ``writes.py`` — ingest: batches kept as received, sequence numbers, hosts, statuses;
* ``compaction.py`` — pending batches -> blocks and chunks, merged windows, 1m/1h rollups, and
  the quarantine of stored batches that cannot be read;
* ``retention.py`` — per-tier retention in small deletes;
* ``queries.py`` — hosts, series, gaps and range queries in one read snapshot;
* ``catalogues.py`` — each host's newest series catalogues (protocol SPEC.md §9).

What another backend shares lives beside this package: ``batches.py`` (reading stored payloads
with the protocol's decoder), ``selection.py`` (which series, groups and tier a query reads),
``aggregate.py`` (the numbers) and ``encoding.py`` (blob formats).
"""

from __future__ import annotations

import time

from edgemon.collector.storage.base import Storage
from edgemon.collector.storage.sqlite.catalogues import Catalogues
from edgemon.collector.storage.sqlite.compaction import Compaction
from edgemon.collector.storage.sqlite.queries import Queries
from edgemon.collector.storage.sqlite.retention import Retention
from edgemon.collector.storage.sqlite.writes import Writes

__all__ = ["SQLiteStorage"]


class SQLiteStorage(Writes, Catalogues, Compaction, Retention, Queries, Storage):
    """``Storage`` on one SQLite file (constructor options: ``schema.SQLiteFile``)."""

    def maintain(self, now_ms: int) -> None:
        """Background work for at most about ``maintain_budget_ms``: bounded steps (each one
        transaction of at most ``step_samples`` samples) until nothing is left or the budget is
        spent. ``backlog()`` tells whether it keeps up."""
        deadline = time.monotonic() + self.maintain_budget_ms / 1000
        while self.maintain_step(now_ms) and time.monotonic() < deadline:
            pass

    def maintain_step(self, now_ms: int) -> bool:
        """Quarantine what readers found unreadable, one L0 step, one L1 step, one retention
        step; whether work is left (call again soon) or not."""
        with self._write_lock:
            self._quarantine_noted(now_ms)
            more = self._compact_pending(now_ms)
            more = self._merge_windows(now_ms) or more
            return self._apply_retention(now_ms) or more

    def compact_all(self, now_ms: int, max_steps: int = 1_000_000) -> int:
        """Run ``maintain_step`` until nothing is left to do at ``now_ms``; the number of
        steps."""
        for step in range(1, max_steps + 1):
            if not self.maintain_step(now_ms):
                return step
        return max_steps

    def backlog(self, now_ms: int | None = None) -> dict[str, int]:
        """What maintenance has yet to do: pending batches/samples, dirty windows."""
        with self._read() as db:
            nb, ns = db.execute("SELECT count(*), coalesce(sum(samples), 0) FROM batches"
                                ).fetchone()
            nd = db.execute("SELECT count(*) FROM dirty").fetchone()[0]
            closable = 0
            if now_ms is not None:
                closable = db.execute("SELECT count(*) FROM dirty WHERE window_ms <= ?", (
                    now_ms - self.window_ms - self.close_grace_ms,)).fetchone()[0]
        return {"pending_batches": nb, "pending_samples": ns, "dirty_windows": nd,
                "closable_windows": closable}
