"""The relational store both SQL backends share (SQLite, PostgreSQL), one part per job:

* ``writes.py`` — ingest: batches kept as received, sequence numbers, hosts, statuses;
* ``compaction.py`` — pending batches -> blocks and chunks, merged windows, 1m/1h rollups, and
  the quarantine of stored batches that cannot be read;
* ``retention.py`` — per-tier retention in small deletes;
* ``queries.py`` — hosts, series, gaps and range queries in one read snapshot;
* ``sizes.py`` — bytes stored by tier, for ``/metrics``;
* ``catalogues.py`` — each host's newest series catalogues (protocol SPEC.md §9);
* ``forward_log.py`` — the forwarding log and one cursor per ``[[forward]]`` receiver;

over ``store.SQLStore`` (options, helpers and the connection seam a backend fills in). The
tables are described in ``collector/STORAGE.md``; each backend creates them (``sqlite/schema.py``,
``postgres/migrations.py``). What is not SQL lives beside this package: ``batches.py``
(reading stored payloads), ``selection.py`` (which series, groups and tier a query reads),
``aggregate.py`` (the numbers) and ``encoding.py`` (blob formats).

A method added to ``base.Storage`` is written once here when it is SQL both dialects share
(``?`` placeholders, ``ON CONFLICT``, ``RETURNING``), and in a backend's module when it is not.
"""

from __future__ import annotations

import time

from edgemon.collector.storage.base import DueBacklog, Storage
from edgemon.collector.storage.sql.catalogues import Catalogues
from edgemon.collector.storage.sql.compaction import Compaction
from edgemon.collector.storage.sql.forward_log import ForwardLog
from edgemon.collector.storage.sql.queries import Queries
from edgemon.collector.storage.sql.retention import Retention
from edgemon.collector.storage.sql.sizes import Sizes
from edgemon.collector.storage.sql.writes import Writes
from edgemon.common import clock

__all__ = ["SQLStorage"]


class SQLStorage(Writes, Compaction, Retention, Queries, Sizes, Catalogues, ForwardLog, Storage):
    """``Storage`` over a backend's connection seam (``store.SQLStore``)."""

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
        with self._maintain_lock:  # not the write lock: each transaction takes it
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
            # batches are stored in arrival order: the first id is the oldest pending one
            oldest = db.execute("SELECT received_ms FROM batches ORDER BY id LIMIT 1"
                                ).fetchone()
            closable = 0
            if now_ms is not None:
                closable = db.execute("SELECT count(*) FROM dirty WHERE window_ms <= ?", (
                    now_ms - self.window_ms - self.close_grace_ms,)).fetchone()[0]
        out = {"pending_batches": nb, "pending_samples": ns, "dirty_windows": nd,
               "closable_windows": closable}
        if oldest is not None:
            out["oldest_pending_received_ms"] = int(oldest[0])
        return out

    def due_by_host(self) -> DueBacklog:
        """Pending samples by host, and of them those received ``compact_delay_ms`` ago or
        earlier (what compaction's ``_choose_pending`` counts as due by age; due by size is
        ``step_samples``, passed on): one pass over ``batches_by_age`` (+host_id: grouped from
        that index alone, not via the (host_id, ...) unique index and a read of the table for
        every row), then one lookup of each host's name."""
        cutoff = clock.now_ms() - self.compact_delay_ms
        with self._read() as db:
            rows = db.execute(
                "SELECT h.name, p.n, p.aged FROM (SELECT +host_id AS hid, sum(samples) AS n, "
                "sum(CASE WHEN received_ms <= ? THEN samples ELSE 0 END) AS aged "
                "FROM batches GROUP BY hid) AS p JOIN hosts h ON h.id = p.hid",
                (cutoff,)).fetchall()
        return DueBacklog(self.step_samples,
                          {str(name): (int(n), int(aged)) for name, n, aged in rows})
