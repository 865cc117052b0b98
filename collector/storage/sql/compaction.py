"""Compaction and rollups: pending batches -> blocks and chunks (L0), merged windows and their
1m/1h rollups (L1), and the quarantine of stored batches that cannot be read.

1. L0 compacts pending batches, host by host, into *blocks*: one row of timestamps per (host,
   2 h window) shared by all its series, plus one compressed chunk of values per series;
2. L1 merges the blocks of a window into one when there are many, and once a window is closed
   (its end + ``close_grace_ms`` has passed) recomputes its 1m and 1h rollup buckets from the
   merged raw samples and writes them into per-series rollup blocks (1 day of 1m buckets, 30
   days of 1h buckets per row).

Every step writes its results and removes its inputs (batches, dirty marks) in the same
transaction, so a crash at any point loses nothing and counts nothing twice. A pending batch
that cannot be read (``batches.UnreadableBatch``) is moved to ``quarantine`` in the transaction
that meets it, counted and logged once; it never stops the compaction of any other batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.base import StorageStats
from edgemon.collector.storage.batches import BatchColumns, Table, UnreadableBatch, flatten
from edgemon.collector.storage.encoding import (
    decode_rollups,
    encode_chunks,
    encode_rollups,
    encode_times,
)
from edgemon.collector.storage.selection import Selection, canonical_labels
from edgemon.collector.storage.sql.store import TIERS, SQLStore, chunked, log, placeholders

__all__ = ["Compaction"]


class Compaction(SQLStore):
    def _resolver(self, db: Any, sel: Selection, local: dict[int, int]) -> Any:
        """Series lookup for compaction (``batches.Resolve``); creates rows for new series in
        the transaction. New ids reach ``self._series_cache`` only after the commit
        (``resolve.fresh``)."""
        cache = self._series_cache
        fresh: dict[tuple[Any, ...], dict[tuple[str, ...], tuple[int, int, bool]]] = {}
        tables: dict[tuple[Any, ...], tuple[Table, Any]] = {}

        def resolve(hid: int, name: str, kind: str, unit: str, scale: int,
                    keys: tuple[str, ...]) -> tuple[Table, Any]:
            mkey = (hid, name, keys)
            found = tables.get(mkey)
            if found is not None:
                return found
            table: Table = {}
            known = cache.get(mkey, {})

            def miss(labels: tuple[str, ...]) -> tuple[int, int]:
                hit = known.get(labels) or fresh.get(mkey, {}).get(labels)
                if hit is None:
                    canon = canonical_labels(keys, labels)
                    row = db.execute("SELECT id, scale, kind FROM series WHERE host_id = ? AND "
                                     "name = ? AND labels = ?", (hid, name, canon)).fetchone()
                    if row is None:
                        new_id = db.execute(
                            "INSERT INTO series (host_id, name, labels, kind, unit, scale, "
                            "first_ms, last_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                            (hid, name, canon, kind, unit, scale, 1 << 62, 0)).fetchone()[0]
                        row = (new_id, scale, kind)
                    hit = (row[0], row[1], row[2] == "counter")
                    fresh.setdefault(mkey, {})[labels] = hit
                sid, sscale, is_counter = hit
                i = local.get(sid)
                if i is None:
                    i = local[sid] = sel.add(sid, hid, "", "counter" if is_counter else "gauge",
                                             unit, sscale)
                table[labels] = (i, sscale)
                return i, sscale

            found = tables[mkey] = (table, miss)
            return found

        resolve.fresh = fresh  # type: ignore[attr-defined]
        return resolve

    def _remember_series(self, fresh: dict[tuple[Any, ...], dict[Any, Any]]) -> None:
        for mkey, labels in fresh.items():
            self._series_cache.setdefault(mkey, {}).update(labels)

    # -- L0 ------------------------------------------------------------------------------------

    def _compact_pending(self, now_ms: int) -> bool:
        """L0: the pending batches of some hosts -> one block per (host, window). Returns
        whether eligible batches are left."""
        with self._read() as db:
            rows = db.execute("SELECT host_id, min(received_ms), sum(samples) FROM batches "
                              "GROUP BY host_id ORDER BY 2").fetchall()
            due = [(hid, n) for hid, oldest, n in rows
                   if oldest <= now_ms - self.compact_delay_ms or n >= self.step_samples]
            if not due:
                return False
            budget = self.step_samples
            chosen: list[tuple[int, int]] = []  # (host, last batch id taken)
            more = False  # eligible batches left for the next step
            for hid, _ in due:
                if budget <= 0:
                    more = True
                    break
                last = None
                for batch_id, n in db.execute("SELECT id, samples FROM batches WHERE host_id = ? "
                                              "ORDER BY id", (hid,)):
                    if last is not None and n > budget:
                        more = True
                        break
                    last, budget = batch_id, budget - n
                chosen.append((hid, last))
        taken: list[int] = []
        read: list[bytes] = []  # payloads read (to drop from the reader's cache after commit)
        unreadable: list[tuple[int, str]] = []
        decoded = self._decode_chosen(chosen)  # CPU work, before the write lock is taken
        with self._write() as db:
            cut = self._cutoffs(db)
            sel = Selection()
            local: dict[int, int] = {}
            resolve = self._resolver(db, sel, local)

            def batches() -> Iterator[tuple[int, int, BatchColumns]]:
                for hid, last in chosen:
                    for batch_id, payload in db.execute(
                            "SELECT id, payload FROM batches WHERE host_id = ? AND id <= ? "
                            "ORDER BY id", (hid, last)):
                        taken.append(batch_id)
                        read.append(payload)
                        early = decoded.get(batch_id)
                        if early is not None and early[0] == payload:
                            columns = early[1]
                        else:  # not seen before the lock (not expected): read it now
                            columns = self._read_columns(payload)
                        if isinstance(columns, str):
                            unreadable.append((batch_id, columns))
                            continue
                        yield hid, batch_id, columns

            sid, ts, val, order = flatten(batches(), resolve)
            sid, ts, val = agg.sort_dedupe(sid, ts, val, order)
            if sid.size:
                self._write_l0(db, sel, sid, ts, val, cut)
            moved = self._quarantine(db, unreadable, now_ms)
            db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in taken])
            self._kill_point("l0end")
        self._remember_series(resolve.fresh)
        self.reader.forget(read)
        _log_quarantined(moved)
        return more

    def _decode_chosen(self, chosen: list[tuple[int, int]]
                       ) -> dict[int, tuple[bytes, BatchColumns | str]]:
        """The payloads of the chosen batches with their columns (or why they are unreadable),
        decoded in a read transaction, without the write lock: ingest's writer commits
        meanwhile. Inside the write transaction a batch is taken from here only if its payload
        is still the one decoded."""
        out: dict[int, tuple[bytes, BatchColumns | str]] = {}
        with self._read() as db:
            for hid, last in chosen:
                for batch_id, payload in db.execute(
                        "SELECT id, payload FROM batches WHERE host_id = ? AND id <= ? "
                        "ORDER BY id", (hid, last)):
                    out[batch_id] = (payload, self._read_columns(payload))
        return out

    def _read_columns(self, payload: bytes) -> BatchColumns | str:
        try:
            return self.reader.read(payload, keep=False)
        except UnreadableBatch as exc:
            return exc.reason

    def _write_l0(self, db: Any, sel: Selection, sid: np.ndarray,
                  ts: np.ndarray, val: np.ndarray, cut: dict[str, int]) -> None:
        window_ms = self.window_ms
        host = np.array(sel.host, dtype=np.int64)[sid]
        win = ts - ts % window_ms
        idx = np.lexsort((ts, sid, win, host))
        sid, ts, val, host, win = sid[idx], ts[idx], val[idx], host[idx], win[idx]
        # series first/last
        first = np.full(len(sel), np.iinfo(np.int64).max)
        last = np.full(len(sel), np.iinfo(np.int64).min)
        np.minimum.at(first, sid, ts)
        np.maximum.at(last, sid, ts)
        db.executemany("UPDATE series SET first_ms = min(first_ms, ?), last_ms = "
                       "max(last_ms, ?) WHERE id = ?",
                       [(int(first[i]), int(last[i]), sel.sid[i]) for i in range(len(sel))
                        if first[i] <= last[i]])
        old: list[np.ndarray] = []  # samples of windows whose raw data retention removed
        bounds = np.flatnonzero(np.r_[True, (host[1:] != host[:-1]) | (win[1:] != win[:-1])])
        ends = np.r_[bounds[1:], sid.size]
        blocks = []  # (first, end, host, window) of the blocks to write
        for s, e in zip(bounds.tolist(), ends.tolist(), strict=True):
            hid, w = int(host[s]), int(win[s])
            if w < cut["raw"] and db.execute("SELECT 1 FROM dirty WHERE host_id = ? AND "
                                             "window_ms = ?", (hid, w)).fetchone() is None:
                old.append(np.arange(s, e))
            else:
                blocks.append((s, e, hid, w))
        self._partitions_for(db, "blocks", {w for *_, w in blocks})
        for s, e, hid, w in blocks:
            self._write_block(db, sel, hid, w, sid[s:e], ts[s:e], val[s:e], "l0")
            db.execute("INSERT INTO dirty VALUES (?, ?, 1, ?) ON CONFLICT (host_id, window_ms) "
                       "DO UPDATE SET blocks = dirty.blocks + 1, samples = dirty.samples + "
                       "excluded.samples", (hid, w, e - s))
        if old:
            pick = np.concatenate(old)
            self._merge_rollups(db, sel, sid[pick], ts[pick], val[pick], cut)

    def _write_block(self, db: Any, sel: Selection, hid: int, w: int,
                     sid: np.ndarray, ts: np.ndarray, val: np.ndarray, stage: str) -> None:
        """One block: the window's timestamps once, then one chunk per series (sorted by sid,
        ts)."""
        times = np.unique(ts)
        self._partitions_for(db, "blocks", [w])
        block_id = db.execute("INSERT INTO blocks (host_id, window_ms, n, times) VALUES "
                              "(?, ?, ?, ?) RETURNING id",
                              (hid, w, int(times.size), encode_times(times))).fetchone()[0]
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        ends = np.r_[starts[1:], sid.size]
        masks: list[bytes | None] = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if e - s == times.size:
                masks.append(None)
            else:
                bits = np.zeros(times.size, dtype=bool)
                bits[np.searchsorted(times, ts[s:e])] = True
                masks.append(np.packbits(bits).tobytes())
        blobs = encode_chunks(val, starts, ends, masks)

        def rows() -> Iterator[tuple[int, int, int, bytes]]:
            for s, blob in zip(starts.tolist(), blobs, strict=True):
                yield sel.sid[int(sid[s])], w, block_id, blob  # type: ignore[misc]
                self._kill_point(stage)

        db.executemany("INSERT INTO chunks (series_id, window_ms, block_id, data) "
                       "VALUES (?, ?, ?, ?)", rows())

    # -- L1 ------------------------------------------------------------------------------------

    def _merge_windows(self, now_ms: int) -> bool:
        """L1: merge the blocks of windows with many, and roll up closed windows."""
        closed_before = now_ms - self.window_ms - self.close_grace_ms
        with self._read() as db:
            rows = db.execute("SELECT host_id, window_ms, blocks, samples FROM dirty WHERE "
                              "window_ms <= ? OR blocks >= ? ORDER BY window_ms LIMIT 10000",
                              (closed_before, self.merge_blocks)).fetchall()
        if not rows:
            return False
        budget = self.step_samples
        chosen = []
        for row in rows:
            if chosen and row[3] > budget:
                break
            chosen.append(row)
            budget -= row[3]
        with self._write() as db:
            cut = self._cutoffs(db)
            for hid, w, _, _ in chosen:
                self._merge_window(db, hid, w, w <= closed_before, cut)
            self._kill_point("l1end")
        return len(chosen) < len(rows)

    def _window_samples(self, db: Any, hid: int, w: int
                        ) -> tuple[Selection, np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """Every raw sample of a host's window, deduplicated, sorted by (series, ts)."""
        sel = Selection()
        local: dict[int, int] = {}
        for sid, kind, scale in db.execute("SELECT id, kind, scale FROM series WHERE "
                                           "host_id = ?", (hid,)):
            local[sid] = sel.add(sid, hid, "", kind, "", scale)
        times = self._block_times(db.execute(
            "SELECT id, times FROM blocks WHERE host_id = ? AND window_ms = ?", (hid, w)))
        rows = [(local[series_id], block_id, data) for series_id, block_id, data in db.execute(
            "SELECT series_id, block_id, data FROM chunks WHERE window_ms = ? AND "
            "series_id IN (SELECT id FROM series WHERE host_id = ?)", (w, hid))]
        sid, ts, val, order = self._chunk_samples(rows, times)
        sid, ts, val = agg.sort_dedupe(sid, ts, val, order)
        return sel, sid, ts, val, list(times)

    def _merge_window(self, db: Any, hid: int, w: int, closed: bool,
                      cut: dict[str, int]) -> None:
        sel, sid, ts, val, block_ids = self._window_samples(db, hid, w)
        if len(block_ids) > 1:
            db.execute("DELETE FROM chunks WHERE window_ms = ? AND series_id IN "
                       "(SELECT id FROM series WHERE host_id = ?)", (w, hid))
            db.executemany("DELETE FROM blocks WHERE id = ?", [(i,) for i in block_ids])
            if sid.size:
                self._write_block(db, sel, hid, w, sid, ts, val, "l1")
        if closed:
            if sid.size:
                self._replace_rollups(db, sel, sid, ts, val, w, cut)
            db.execute("DELETE FROM dirty WHERE host_id = ? AND window_ms = ?", (hid, w))
        else:
            db.execute("UPDATE dirty SET blocks = 1, samples = ? WHERE host_id = ? AND "
                       "window_ms = ?", (int(sid.size), hid, w))

    # -- rollups -------------------------------------------------------------------------------

    def _replace_rollups(self, db: Any, sel: Selection, sid: np.ndarray,
                         ts: np.ndarray, val: np.ndarray, w: int, cut: dict[str, int]) -> None:
        """Rollups of a closed window, recomputed from all its raw samples, replace what the
        rollup rows held for that window."""
        counter = sel.counter()
        for name, (width, tier_window) in TIERS.items():
            if w + self.window_ms <= cut[name]:
                continue
            buckets = agg.bucketize(sid, ts, val, counter, width)
            self._upsert_rollups(db, sel, buckets, width, tier_window, counter,
                                 replace=(w, w + self.window_ms))

    def _merge_rollups(self, db: Any, sel: Selection, sid: np.ndarray,
                       ts: np.ndarray, val: np.ndarray, cut: dict[str, int]) -> None:
        """Samples of windows whose raw data is gone: merged into the rollup buckets."""
        idx = np.lexsort((ts, sid))
        sid, ts, val = sid[idx], ts[idx], val[idx]
        counter = sel.counter()
        for name, (width, tier_window) in TIERS.items():
            keep = ts >= cut[name]
            if not keep.any():
                continue
            buckets = agg.bucketize(sid[keep], ts[keep], val[keep], counter, width)
            self._upsert_rollups(db, sel, buckets, width, tier_window, counter, replace=None)

    def _upsert_rollups(self, db: Any, sel: Selection,
                        buckets: agg.Buckets, width: int, tier_window: int,
                        counter: np.ndarray, replace: tuple[int, int] | None) -> None:
        """Write ``buckets`` (sorted by (sid, start)) into the rollup rows of their series and
        tier windows: replacing what those rows held in [replace) or, without ``replace``,
        merging bucket by bucket."""
        sid = buckets["sid"]
        tw = buckets["start"] - buckets["start"] % tier_window
        s = np.flatnonzero(np.r_[True, (sid[1:] != sid[:-1]) | (tw[1:] != tw[:-1])])
        existing = self._rollup_rows(db, sel, width, [(int(sid[i]), int(tw[i])) for i in s])
        if existing:
            old, sizes = decode_rollups([blob for _, blob in existing], width)
            old["sid"] = np.repeat(np.array([i for i, _ in existing], dtype=np.int64), sizes)
            if replace is not None:
                outside = (old["start"] < replace[0]) | (old["start"] >= replace[1])
                both = agg.concat_buckets([agg.take(old, np.flatnonzero(outside)), buckets])
                buckets = agg.take(both, np.lexsort((both["start"], both["sid"])))
            else:
                buckets = agg.merge_buckets(old, buckets, counter)
            sid = buckets["sid"]
            tw = buckets["start"] - buckets["start"] % tier_window
            s = np.flatnonzero(np.r_[True, (sid[1:] != sid[:-1]) | (tw[1:] != tw[:-1])])
        blobs = encode_rollups(buckets, s, tw[s], width)
        self._partitions_for(db, "rollups", set(tw[s].tolist()), width)

        def rows() -> Iterator[tuple[int | None, int, int, bytes]]:
            for i, blob in zip(s.tolist(), blobs, strict=True):
                yield sel.sid[int(sid[i])], width, int(tw[i]), blob
                self._kill_point("l1")

        db.executemany("INSERT INTO rollups (series_id, tier, window_ms, data) VALUES "
                       "(?, ?, ?, ?) ON CONFLICT (series_id, tier, window_ms) DO UPDATE SET "
                       "data = excluded.data", rows())

    def _rollup_rows(self, db: Any, sel: Selection, width: int,
                     keys: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """(local index, data) of the stored rollup rows of (local index, tier window)
        ``keys`` (sorted), in that order: one query per 500 series, not one per row."""
        wanted = {(sel.sid[i], window): i for i, window in keys}
        windows = sorted({window for _, window in keys})
        found: list[tuple[int, int, bytes]] = []
        for chunk in chunked(sorted({sel.sid[i] for i, _ in keys})):  # type: ignore[type-var]
            for series_id, window, data in db.execute(
                    f"SELECT series_id, window_ms, data FROM rollups WHERE tier = ? AND "
                    f"window_ms IN ({placeholders(windows)}) AND series_id IN "
                    f"({placeholders(chunk)})", (width, *windows, *chunk)):
                i = wanted.get((series_id, window))
                if i is not None:
                    found.append((i, window, data))
        found.sort(key=lambda row: (row[0], row[1]))
        return [(i, data) for i, _, data in found]

    # -- quarantine ----------------------------------------------------------------------------

    def _quarantine(self, db: Any, unreadable: list[tuple[int, str]],
                    now_ms: int) -> list[tuple[str, str, int, str]]:
        """Copy pending batches (id, reason) into ``quarantine`` (the caller deletes them from
        ``batches`` in the same transaction); (host, instance, seq, reason) of each."""
        moved = []
        for batch_id, reason in unreadable:
            db.execute("INSERT INTO quarantine (host_id, instance, seq, received_ms, "
                       "quarantined_ms, reason, payload) SELECT host_id, instance, seq, "
                       "received_ms, ?, ?, payload FROM batches WHERE id = ?",
                       (now_ms, reason, batch_id))
            host, instance, seq = db.execute(
                "SELECT h.name, b.instance, b.seq FROM batches b JOIN hosts h ON "
                "h.id = b.host_id WHERE b.id = ?", (batch_id,)).fetchone()
            moved.append((host, instance, seq, reason))
        return moved

    def _quarantine_noted(self, now_ms: int) -> None:
        """Quarantine the pending batches readers found unreadable (without waiting for their
        host's compaction)."""
        with self._unreadable_lock:
            noted, self._unreadable = self._unreadable, set()
        if not noted:
            return
        unreadable = []
        read = []
        with self._write() as db:
            for batch_id in sorted(noted):
                row = db.execute("SELECT payload FROM batches WHERE id = ?",
                                 (batch_id,)).fetchone()
                if row is None:
                    continue  # compacted (and quarantined) meanwhile
                read.append(row[0])
                try:  # the id may have been given to a new batch since: read it again
                    self.reader.read(row[0], keep=False)
                except UnreadableBatch as exc:
                    unreadable.append((batch_id, exc.reason))
            moved = self._quarantine(db, unreadable, now_ms)
            db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i, _ in unreadable])
        self.reader.forget(read)
        _log_quarantined(moved)

    def stats(self) -> StorageStats:
        with self._read() as db:
            quarantined = dict(db.execute(
                "SELECT h.name, count(*) FROM quarantine q JOIN hosts h ON h.id = q.host_id "
                "GROUP BY h.name ORDER BY h.name"))
        return StorageStats(quarantined=quarantined)


def _log_quarantined(moved: list[tuple[str, str, int, str]]) -> None:
    for host, instance, seq, reason in moved:
        log.warning("stored batch %s/%s/%d cannot be read: quarantined (%s)", host, instance,
                    seq, reason, extra={"host": host, "instance": instance, "seq": seq,
                                        "reason": reason})
