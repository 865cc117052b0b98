"""Retention per tier, in small deletes.

Cutoffs are aligned to the row granularity (raw windows, 1 day of 1m buckets, 30 days of 1h
buckets), kept in ``meta`` and never move backwards. Each step deletes a bounded number of
blocks by age, then walks ``retention_series`` series ids deleting their expired chunks and
rollup rows, series whose every sample expired, and agent instances not heard of for longer
than anything is kept. Quarantined batches keep their row (the count) but lose their payload
once the raw tier has expired past them.
"""

from __future__ import annotations

from edgemon.collector.storage.sql.store import (
    DAY,
    SERIES_DELETED,
    TIERS,
    SQLStore,
    floor,
    placeholders,
)

__all__ = ["Retention"]


class Retention(SQLStore):
    _ret_cursor = 0
    _ret_round: tuple[int, ...] | None = None  # cutoffs of the last finished walk
    _ret_walk: tuple[int, ...] | None = None  # cutoffs of the walk in progress

    def _apply_retention(self, now_ms: int) -> bool:
        """Move the cutoffs forward and delete a bounded number of expired rows."""
        with self._compaction_write() as db:
            cut = self._cutoffs(db)
            want = {
                "raw": floor(now_ms - self.retention["raw"], self.window_ms),
                "1m": floor(now_ms - self.retention["1m"], TIERS["1m"][1]),
                "1h": floor(now_ms - self.retention["1h"], TIERS["1h"][1]),
            }
            for name, value in want.items():
                if value > cut[name]:  # never backwards, even if retention grows
                    cut[name] = value
                    db.execute("UPDATE meta SET value = ? WHERE key = ?",
                               (value, f"cutoff_{name}"))
            # raw data of windows still waiting for their rollups stays until they are done
            oldest_dirty = db.execute("SELECT min(window_ms) FROM dirty").fetchone()[0]
            raw_cut = cut["raw"] if oldest_dirty is None else min(cut["raw"], oldest_dirty)
            more = db.execute(
                "DELETE FROM blocks WHERE id IN (SELECT id FROM blocks WHERE window_ms < ? "
                "LIMIT ?)", (raw_cut, self.retention_rows)).rowcount >= self.retention_rows
            key = (raw_cut, cut["1m"], cut["1h"])
            if self._ret_round == key:
                return more
            if self._ret_walk != key:
                self._ret_walk, self._ret_cursor = key, 0
                db.execute("UPDATE quarantine SET payload = ? WHERE quarantined_ms < ? AND "
                           "length(payload) > 0", (b"", cut["raw"]))
            ids = [r[0] for r in db.execute(
                "SELECT id FROM series WHERE id > ? ORDER BY id LIMIT ?",
                (self._ret_cursor, self.retention_series))]
            if not ids:
                self._ret_round, self._ret_cursor = key, 0
                return more
            self._ret_cursor = ids[-1]
            db.executemany("DELETE FROM chunks WHERE series_id = ? AND window_ms < ?",
                           [(i, raw_cut) for i in ids])
            for name, (width, _) in TIERS.items():
                db.executemany("DELETE FROM rollups WHERE series_id = ? AND tier = ? AND "
                               "window_ms < ?", [(i, width, cut[name]) for i in ids])
            # series whose every sample has expired from every tier
            oldest_kept = min(cut.values())
            gone = db.execute(
                f"DELETE FROM series WHERE id IN ({placeholders(ids)}) AND last_ms < ? "
                "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.series_id = series.id) "
                "AND NOT EXISTS (SELECT 1 FROM rollups r WHERE r.series_id = series.id)",
                (*ids, oldest_kept)).rowcount
            if gone:
                self._series_cache.clear()
                self._layouts.clear()
                # other processes on this store drop their cached ids at their next L0 step
                db.execute("INSERT INTO meta (key, value) VALUES (?, 1) ON CONFLICT (key) DO "
                           "UPDATE SET value = meta.value + 1", (SERIES_DELETED,))
                self._series_deletions = self._series_deletions_in(db)
            # agent instances not heard of for longer than anything is kept
            horizon = now_ms - max(self.retention.values()) - DAY
            for hid, inst in db.execute(
                    "SELECT host_id, instance FROM instances WHERE last_seen_ms < ? LIMIT ?",
                    (horizon, self.retention_rows)).fetchall():
                db.execute("DELETE FROM seq_ranges WHERE host_id = ? AND instance = ?",
                           (hid, inst))
                db.execute("DELETE FROM instances WHERE host_id = ? AND instance = ?",
                           (hid, inst))
            return True
