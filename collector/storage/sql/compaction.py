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

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.base import StorageStats
from edgemon.collector.storage.batches import BatchColumns, MetricPart, UnreadableBatch
from edgemon.collector.storage.encoding import decode_rollups, encode_rollups
from edgemon.collector.storage.selection import Selection, canonical_labels
from edgemon.collector.storage.sql.block_blobs import BlockBlobs, encode_blocks, sort_l0
from edgemon.collector.storage.sql.layouts import (
    INSERT_SERIES,
    Gathered,
    NewSeries,
    Resolved,
    gather,
)
from edgemon.collector.storage.sql.store import TIERS, SQLStore, chunked, log, placeholders

__all__ = ["BEHIND_TXN_FACTOR", "Compaction", "L0Plan", "L1Plan"]

BEHIND_TXN_FACTOR = 2  # L0 transactions of up to this many times txn_samples while behind


@dataclass(frozen=True, slots=True)
class L0Plan:
    """One L0 transaction prepared outside the write lock (``Compaction._prepare_l0``): the
    payloads of its batches by id, what it was prepared under (the store's series deletion
    count its series ids were cached under, the cutoffs), and the rows to write."""

    payloads: dict[int, bytes]
    deletions: int
    cut: dict[str, int]
    first_last: list[tuple[int, int, int]]  # (first ts, last ts, series id)
    blobs: BlockBlobs
    fresh: list[tuple[int, int, int]]  # (host, window, samples) of each block: dirty marks
    resolved: Resolved


@dataclass(frozen=True, slots=True)
class L1Plan:
    """The merge of some open windows prepared outside the write lock
    (``Compaction._prepare_l1``): what it was read from (block ids and dirty (blocks, samples)
    of each (host, window), the cutoffs) and what to write (the merged blocks' rows, the
    windows' sample counts for their dirty rows)."""

    windows: list[tuple[int, int]]
    blocks: dict[tuple[int, int], list[int]]
    dirty: dict[tuple[int, int], tuple[int, int]]
    cut: dict[str, int]
    merged: list[tuple[int, int]]  # windows of more than one block: replaced by one
    blobs: BlockBlobs | None
    samples: list[tuple[int, int, int]]  # (samples, host, window) of each window


class Compaction(SQLStore):
    due_page = 256  # rows of ``batches_by_age`` read at once when looking for due hosts

    # -- L0 ------------------------------------------------------------------------------------

    def _compact_pending(self, now_ms: int) -> bool:
        """L0: the pending batches of some hosts (at most ``step_samples`` samples) -> one block
        per (host, window) per transaction, in transactions of at most ``txn_samples`` samples
        each (whole batches). Returns whether eligible batches are left."""
        with self._read() as db:
            chosen, more = self._choose_pending(db, now_ms)
            cut = self._cutoffs(db)
        if not chosen:
            return False
        decoded = self._decode_chosen([batch_id for _, batch_id, _ in chosen])
        # behind (more is due than a step takes): fewer, larger transactions, each commit (an
        # fsync with SQLite's synchronous=FULL) costing the write lock as much as writing
        # 10-20 k prepared samples
        bound = self.txn_samples * (BEHIND_TXN_FACTOR if more else 1)
        for part in _transactions(chosen, min(bound, self.step_samples)):
            self._compact_part(part, decoded, cut, now_ms)
        return more

    def _choose_pending(self, db: Any, now_ms: int) -> tuple[list[tuple[int, int, int]], bool]:
        """The batches of one L0 step, (host, batch id, samples), and whether eligible batches
        are left. Due hosts are those whose oldest pending batch is older than
        ``compact_delay_ms`` or that hold ``step_samples`` pending samples, in the order of
        their oldest batch (then host id); each one's batches in id order while the step's
        budget lasts (a host's first batch always).

        Bounded by what it chooses, not by the pending table: hosts due by age come from the
        ``batches_by_age`` index in pages, in order, and the search stops once the budget is
        spent. Only when they leave budget are hosts due by size looked for, among the younger
        batches (index only)."""
        cutoff = now_ms - self.compact_delay_ms
        budget = self.step_samples
        chosen: list[tuple[int, int, int]] = []
        seen: set[int] = set()

        def take(hid: int) -> bool:  # the host's batches while the budget lasts; any left?
            nonlocal budget
            first = True
            for batch_id, n in db.execute("SELECT id, samples FROM batches WHERE host_id = ? "
                                          "ORDER BY id", (hid,)):
                if not first and n > budget:
                    return True
                first, budget = False, budget - n
                chosen.append((hid, batch_id, n))
            return False

        more = False
        for hid in self._hosts_due_by_age(db, cutoff, seen):
            if budget <= 0:
                return chosen, True
            more = take(hid) or more
        for hid, _oldest, _n in db.execute(
                # +host_id: grouped from batches_by_age alone, not via the (host_id, ...)
                # unique index and a read of the table for every row
                "SELECT +host_id AS h, min(received_ms), sum(samples) FROM batches WHERE "
                "received_ms > ? GROUP BY h HAVING sum(samples) >= ? ORDER BY 2, 1",
                (cutoff, self.step_samples)).fetchall():
            if hid in seen:  # due by age too (a batch of it is old): taken above
                continue
            if budget <= 0:
                return chosen, True
            more = take(hid) or more
        return chosen, more

    def _hosts_due_by_age(self, db: Any, cutoff: int, seen: set[int]) -> Iterator[int]:
        """Hosts with a batch received at or before ``cutoff``, in the order of their oldest
        one (then host id), each once (added to ``seen``): a walk of ``batches_by_age`` in
        pages, as far as the caller reads."""
        page = self.due_page
        rows = db.execute("SELECT received_ms, host_id FROM batches WHERE received_ms <= ? "
                          f"ORDER BY received_ms, host_id LIMIT {page}", (cutoff,)).fetchall()
        while True:
            for _received, hid in rows:
                if hid not in seen:
                    seen.add(hid)
                    yield hid
            if len(rows) < page:
                return
            # past the last row's (time, host): what follows there is a host already seen
            rows = db.execute("SELECT received_ms, host_id FROM batches WHERE received_ms <= ? "
                              "AND (received_ms, host_id) > (?, ?) ORDER BY received_ms, "
                              f"host_id LIMIT {page}", (cutoff, *rows[-1])).fetchall()

    def _compact_part(self, part: list[tuple[int, int, int]],
                      decoded: dict[int, tuple[bytes, BatchColumns | str]], cut: dict[str, int],
                      now_ms: int) -> None:
        """One L0 transaction: the batches ``part`` (host, batch id, samples) that are still
        pending -> blocks and chunks; those batches deleted (or quarantined).

        Prepared outside the write lock when it can be (``_prepare_l0``: every blob encoded
        from the batches decoded before it), then applied in a short write transaction if
        nothing it was prepared from changed meanwhile (``_apply_l0``); else, in that same
        transaction, done there from the start (``_compact_in_lock``)."""
        plan = self._prepare_l0(part, decoded, cut)
        if plan in ("new_series", "unknown_deletions"):
            self._make_series(part, decoded)
            plan = self._prepare_l0(part, decoded, cut)
        with self._compaction_write() as db:
            began = time.monotonic()
            why = plan if isinstance(plan, str) else self._apply_l0(db, plan)
            if why is None and isinstance(plan, L0Plan):
                read, moved, resolved = list(plan.payloads.values()), [], plan.resolved
            else:
                read, moved, resolved = self._compact_in_lock(db, part, decoded, now_ms)
            self._kill_point("l0end")
        self._give_way(time.monotonic() - began)
        self.count({"l0_prepared" if why is None else f"l0_in_lock_{why}": 1})
        resolved.commit()
        self.reader.forget(read)
        _log_quarantined(moved)

    def _make_series(self, part: list[tuple[int, int, int]],
                     decoded: dict[int, tuple[bytes, BatchColumns | str]]) -> None:
        """The series of ``part``'s readable batches that are not in the caches, made in a
        short write transaction of their own, before its plan is prepared (``_prepare_l0``)
        and kept in the caches: a host's first batches are then written from a plan like any
        other, not decoded, gathered and encoded again inside the write lock. A series made
        here and not used (a crash before the plan's transaction) has no samples (first_ms
        above last_ms): ``series`` lists it only with its pending samples, and retention
        deletes it like any series without data; one deleted meanwhile changes the deletion
        count, which sends the plan to the in-lock path (``_apply_l0``)."""
        resolved = Resolved(self._layouts)
        with self._compaction_write() as db:
            began = time.monotonic()
            self._drop_series_ids_deleted_elsewhere(db)
            _make_series_rows(db, resolved, [
                (hid, early[1]) for hid, batch_id, _ in sorted(part, key=lambda item: item[1])
                if (early := decoded.get(batch_id)) is not None
                and not isinstance(early[1], str)])  # in batch order, as in the lock
        self._give_way(time.monotonic() - began)
        resolved.commit()
        self.count({"l0_series_transactions": 1})

    def _compact_in_lock(self, db: Any, part: list[tuple[int, int, int]],
                         decoded: dict[int, tuple[bytes, BatchColumns | str]], now_ms: int
                         ) -> tuple[list[bytes], list[tuple[str, str, int, str]], Resolved]:
        """L0 of ``part`` done inside the write transaction ``db``, from what it reads there:
        the payloads read, the batches quarantined, and the series and layouts resolved."""
        read: list[bytes] = []  # payloads read (to drop from the reader's cache after commit)
        unreadable: list[tuple[int, str]] = []
        batches: list[tuple[int, int, BatchColumns]] = []
        self._drop_series_ids_deleted_elsewhere(db)
        host_of = {batch_id: hid for hid, batch_id, _ in part}
        found = self._pending_payloads(db, [batch_id for _, batch_id, _ in part])
        for batch_id, payload in sorted(found.items()):
            read.append(payload)
            early = decoded.get(batch_id)
            if early is not None and early[0] == payload:
                columns = early[1]
            else:  # not seen before the lock (an id given again): read it now
                columns = self._read_columns(payload)
            if isinstance(columns, str):
                unreadable.append((batch_id, columns))
            else:
                batches.append((host_of[batch_id], batch_id, columns))
        resolved = Resolved(self._layouts)
        g = gather(batches, lambda hid, cols: resolved.layout(db, hid, cols))
        if g.sid.size:
            self._write_l0(db, g, self._cutoffs(db))
        moved = self._quarantine(db, unreadable, now_ms)
        db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in sorted(found)])
        return read, moved, resolved

    @staticmethod
    def _pending_payloads(db: Any, ids: list[int]) -> dict[int, bytes]:
        """The payloads of those of the batches ``ids`` that are pending, by id."""
        found: dict[int, bytes] = {}
        for some in chunked(ids):
            found.update(db.execute(f"SELECT id, payload FROM batches WHERE id IN "
                                    f"({placeholders(some)})", some).fetchall())
        return found

    def _prepare_l0(self, part: list[tuple[int, int, int]],
                    decoded: dict[int, tuple[bytes, BatchColumns | str]],
                    cut: dict[str, int]) -> L0Plan | str:
        """Everything L0 of ``part`` computes, without the write lock: series ids from the
        caches, samples deduplicated and sorted, every blob encoded. Else why the part needs
        the in-lock path: a batch not decoded or unreadable (quarantined there), a series not
        made yet, no known series deletion count, no samples, samples of a window older than
        the raw cutoff (their rollups are read and merged there)."""
        deletions = self._series_deletions  # before any cached id is read (``_apply_l0``)
        if deletions is None:
            return "unknown_deletions"
        batches: list[tuple[int, int, BatchColumns]] = []
        payloads: dict[int, bytes] = {}
        for hid, batch_id, _ in sorted(part, key=lambda item: item[1]):
            early = decoded.get(batch_id)
            if early is None:
                return "not_decoded"
            if isinstance(early[1], str):
                return "unreadable"
            payloads[batch_id] = early[0]
            batches.append((hid, batch_id, early[1]))
        resolved = Resolved(self._layouts)
        try:
            g = gather(batches, lambda hid, cols: resolved.layout(None, hid, cols))
        except NewSeries:
            return "new_series"
        if not g.sid.size:
            return "empty"
        s = sort_l0(g, self.window_ms)
        if any(s.win[b] < cut["raw"] for b in s.bounds):
            return "old_window"
        fresh = [(int(s.host[b]), int(s.win[b]), e - b) for b, e in zip(s.bounds, s.ends,
                                                                        strict=True)]
        blobs = encode_blocks(s.ids[s.sid], s.ts, s.val, s.host, s.win)
        return L0Plan(payloads, deletions, cut, s.first_last, blobs, fresh, resolved)

    def _apply_l0(self, db: Any, plan: L0Plan) -> str | None:
        """In the write transaction ``db``: write ``plan`` if what it was prepared from is
        unchanged (the same batches pending with the same payloads, no series deleted since
        its ids were cached, the same cutoffs), deleting its batches: None if it did, else
        what changed (then nothing was written)."""
        self._drop_series_ids_deleted_elsewhere(db)
        if self._series_deletions != plan.deletions:
            return "series_deleted"
        if self._cutoffs(db) != plan.cut:
            return "cutoffs_moved"
        if self._pending_payloads(db, list(plan.payloads)) != plan.payloads:
            return "batches_changed"
        _widen_first_last(db, plan.first_last)
        self._insert_blocks(db, plan.blobs, "l0")
        db.executemany("INSERT INTO dirty VALUES (?, ?, 1, ?) ON CONFLICT (host_id, "
                       "window_ms) DO UPDATE SET blocks = dirty.blocks + 1, samples = "
                       "dirty.samples + excluded.samples", plan.fresh)
        db.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in plan.payloads])
        return None

    def _decode_chosen(self, ids: list[int]) -> dict[int, tuple[bytes, BatchColumns | str]]:
        """The payloads of the chosen batches with their columns (or why they are unreadable),
        decoded in a read transaction, without the write lock: ingest's writer commits
        meanwhile. Inside the write transaction a batch is taken from here only if its payload
        is still the one decoded."""
        out: dict[int, tuple[bytes, BatchColumns | str]] = {}
        with self._read() as db:
            for some in chunked(ids):
                for batch_id, payload in db.execute(
                        f"SELECT id, payload FROM batches WHERE id IN ({placeholders(some)})",
                        some):
                    out[batch_id] = (payload, self._read_columns(payload))
        return out

    def _read_columns(self, payload: bytes) -> BatchColumns | str:
        try:
            return self.reader.read(payload, keep=False)
        except UnreadableBatch as exc:
            return exc.reason

    def _write_l0(self, db: Any, g: Gathered, cut: dict[str, int]) -> None:
        """The samples of one L0 transaction, in it: deduplicated (the batch received last
        wins), series first/last updated, one block per (host, window) plus its chunks, windows
        marked dirty; samples of windows whose raw data retention removed go to the rollups."""
        s = sort_l0(g, self.window_ms)
        ids, sid, ts, val, host, win = s.ids, s.sid, s.ts, s.val, s.host, s.win
        _widen_first_last(db, s.first_last)
        keep = np.ones(sid.size, dtype=bool)
        old: list[tuple[int, int]] = []  # samples of windows whose raw data retention removed
        fresh: list[tuple[int, int, int]] = []  # (host, window, samples) of each block
        for b, e in zip(s.bounds, s.ends, strict=True):
            hid, w = int(host[b]), int(win[b])
            if w < cut["raw"] and db.execute("SELECT 1 FROM dirty WHERE host_id = ? AND "
                                             "window_ms = ?", (hid, w)).fetchone() is None:
                old.append((b, e))
                keep[b:e] = False
            else:
                fresh.append((hid, w, e - b))
        if fresh:
            self._write_blocks(db, ids[sid[keep]], ts[keep], val[keep], host[keep], win[keep],
                               "l0")
            db.executemany("INSERT INTO dirty VALUES (?, ?, 1, ?) ON CONFLICT (host_id, "
                           "window_ms) DO UPDATE SET blocks = dirty.blocks + 1, samples = "
                           "dirty.samples + excluded.samples", fresh)
        if old:
            pick = np.concatenate([np.arange(b, e) for b, e in old])
            sel, at = self._selection(db, ids[np.unique(sid[pick])])
            self._merge_rollups(db, sel, at[ids[sid[pick]]], ts[pick], val[pick], cut)

    def _selection(self, db: Any, series_ids: np.ndarray) -> tuple[Selection, dict[Any, int]]:
        """A Selection of ``series_ids`` (from their rows) and an array-like mapping a series
        id to its local index."""
        sel = Selection()
        for some in chunked(series_ids.tolist()):
            for series_id, hid, kind, scale in db.execute(
                    f"SELECT id, host_id, kind, scale FROM series WHERE id IN "
                    f"({placeholders(some)}) ORDER BY id", some):
                sel.add(series_id, hid, "", kind, "", scale)
        lookup = np.full(int(series_ids.max()) + 1, -1, dtype=np.int64)
        lookup[np.array(sel.sid, dtype=np.int64)] = np.arange(len(sel))
        return sel, lookup  # type: ignore[return-value]

    def _write_blocks(self, db: Any, series_id: np.ndarray, ts: np.ndarray, val: np.ndarray,
                      host: np.ndarray, win: np.ndarray, stage: str) -> None:
        """Blocks of samples sorted by (host, window, series, ts), one per (host, window), encoded
        and inserted in the transaction ``db`` (``block_blobs.encode_blocks``)."""
        self._insert_blocks(db, encode_blocks(series_id, ts, val, host, win), stage)

    def _insert_blocks(self, db: Any, blobs: BlockBlobs, stage: str) -> None:
        """The rows of encoded blocks: each block, then its chunks (with the block's new id)."""
        self._partitions_for(db, "blocks", blobs.windows)
        block_ids = [db.execute("INSERT INTO blocks (host_id, window_ms, n, times) VALUES "
                                "(?, ?, ?, ?) RETURNING id", row).fetchone()[0]
                     for row in blobs.blocks]

        def rows() -> Iterator[tuple[int, int, int, bytes]]:
            for series_id, window, block, data in blobs.chunks:
                yield series_id, window, block_ids[block], data
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
        budget = min(self.txn_samples, self.step_samples)  # one transaction
        chosen = []
        for row in rows:
            if chosen and row[3] > budget:
                break
            chosen.append(row)
            budget -= row[3]
        windows = [(hid, w) for hid, w, _, _ in chosen]
        plan = self._prepare_l1([hw for hw in windows if hw[1] > closed_before])
        with self._compaction_write() as db:
            began = time.monotonic()
            cut = self._cutoffs(db)
            if plan is not None and self._apply_l1(db, plan, cut):
                windows = [hw for hw in windows if hw[1] <= closed_before]
            if windows:
                self._merge_chosen(db, windows, closed_before, cut)
            self._kill_point("l1end")
        self._give_way(time.monotonic() - began)
        return len(chosen) < len(rows)

    def _prepare_l1(self, windows: list[tuple[int, int]]) -> L1Plan | None:
        """The merge of the open (host, window) pairs ``windows``, without the write lock: read
        in one read snapshot (with the ids of their blocks and their dirty rows), merged and
        encoded. None when there is none."""
        if not windows:
            return None
        with self._read() as db:
            cut = self._cutoffs(db)
            dirty = self._dirty_rows(db, windows)
            sel, sid, ts, val, blocks = self._window_samples(db, windows)
        host = np.array(sel.host, dtype=np.int64)[sid]
        win = ts - ts % self.window_ms
        merged = [hw for hw in windows if len(blocks.get(hw, ())) > 1]
        pick = _pairs_in(host, win, merged)
        blobs = None
        if pick.any():
            idx = np.lexsort((ts[pick], sid[pick], win[pick], host[pick]))
            blobs = encode_blocks(np.array(sel.sid, dtype=np.int64)[sid[pick][idx]],
                                  ts[pick][idx], val[pick][idx], host[pick][idx],
                                  win[pick][idx])
        samples = [(int(np.count_nonzero((host == hid) & (win == w))), hid, w)
                   for hid, w in windows]
        return L1Plan(windows, _sorted_blocks(blocks), dirty, cut, merged, blobs, samples)

    def _apply_l1(self, db: Any, plan: L1Plan, cut: dict[str, int]) -> bool:
        """In the write transaction ``db``: write ``plan`` if its windows still have the blocks
        and dirty rows it was prepared from and the cutoffs (``cut``, read in ``db``) are the
        same; whether it did (if not, nothing was written)."""
        if cut != plan.cut or self._dirty_rows(db, plan.windows) != plan.dirty:
            return False
        if _sorted_blocks(self._window_blocks(db, plan.windows)) != plan.blocks:
            return False
        if plan.merged:
            db.executemany("DELETE FROM chunks WHERE window_ms = ? AND series_id IN "
                           "(SELECT id FROM series WHERE host_id = ?)",
                           [(w, hid) for hid, w in plan.merged])
            db.executemany("DELETE FROM blocks WHERE id = ?",
                           [(i,) for hw in plan.merged for i in plan.blocks[hw]])
        if plan.blobs is not None:
            self._insert_blocks(db, plan.blobs, "l1")
        db.executemany("UPDATE dirty SET blocks = 1, samples = ? WHERE host_id = ? AND "
                       "window_ms = ?", plan.samples)
        return True

    @staticmethod
    def _dirty_rows(db: Any, windows: list[tuple[int, int]]
                    ) -> dict[tuple[int, int], tuple[int, int]]:
        """(blocks, samples) of the dirty rows of the (host, window) pairs ``windows``."""
        wanted = set(windows)
        spans = sorted({w for _, w in windows})
        out = {}
        for some in chunked(sorted({hid for hid, _ in windows})):
            for hid, w, n, samples in db.execute(
                    f"SELECT host_id, window_ms, blocks, samples FROM dirty WHERE host_id IN "
                    f"({placeholders(some)}) AND window_ms IN ({placeholders(spans)})",
                    (*some, *spans)):
                if (hid, w) in wanted:
                    out[(hid, w)] = (n, samples)
        return out

    @staticmethod
    def _window_blocks(db: Any, windows: list[tuple[int, int]]
                       ) -> dict[tuple[int, int], list[int]]:
        """The block ids of the (host, window) pairs ``windows``."""
        wanted = set(windows)
        spans = sorted({w for _, w in windows})
        out: dict[tuple[int, int], list[int]] = {}
        for some in chunked(sorted({hid for hid, _ in windows})):
            for block_id, hid, w in db.execute(
                    f"SELECT id, host_id, window_ms FROM blocks WHERE host_id IN "
                    f"({placeholders(some)}) AND window_ms IN ({placeholders(spans)})",
                    (*some, *spans)):
                if (hid, w) in wanted:
                    out.setdefault((hid, w), []).append(block_id)
        return out

    def _window_samples(self, db: Any, windows: list[tuple[int, int]]
                        ) -> tuple[Selection, np.ndarray, np.ndarray, np.ndarray,
                                   dict[tuple[int, int], list[int]]]:
        """Every raw sample of the (host, window) pairs ``windows``, deduplicated, sorted by
        (series, ts), with the blocks of each pair. One query per 500 hosts or series for
        each table, not one per window."""
        sel = Selection()
        local: dict[int, int] = {}
        hosts = sorted({hid for hid, _ in windows})
        for some in chunked(hosts):
            for sid, hid, kind, scale in db.execute(
                    f"SELECT id, host_id, kind, scale FROM series WHERE host_id IN "
                    f"({placeholders(some)}) ORDER BY id", some):
                local[sid] = sel.add(sid, hid, "", kind, "", scale)
        wanted = set(windows)
        spans = sorted({w for _, w in windows})
        blocks: dict[tuple[int, int], list[int]] = {}
        rows_t: list[tuple[int, bytes]] = []
        for some in chunked(hosts):
            for block_id, hid, w, times in db.execute(
                    f"SELECT id, host_id, window_ms, times FROM blocks WHERE host_id IN "
                    f"({placeholders(some)}) AND window_ms IN ({placeholders(spans)})",
                    (*some, *spans)):
                if (hid, w) in wanted:
                    blocks.setdefault((hid, w), []).append(block_id)
                    rows_t.append((block_id, times))
        times_of = self._block_times(rows_t)
        rows = []
        for some in chunked(list(local)):
            rows += [(local[series_id], block_id, data) for series_id, block_id, data in
                     db.execute(f"SELECT series_id, block_id, data FROM chunks WHERE "
                                f"window_ms IN ({placeholders(spans)}) AND series_id IN "
                                f"({placeholders(some)})", (*spans, *some))
                     if block_id in times_of]
        sid, ts, val, order = self._chunk_samples(rows, times_of)
        sid, ts, val = agg.sort_dedupe(sid, ts, val, order)
        return sel, sid, ts, val, blocks

    def _merge_chosen(self, db: Any, windows: list[tuple[int, int]], closed_before: int,
                      cut: dict[str, int]) -> None:
        """L1 for the (host, window) pairs ``windows`` in one transaction: those with several
        blocks get one merged block; closed ones get their rollups recomputed and lose their
        dirty mark, the others keep it with one block."""
        sel, sid, ts, val, blocks = self._window_samples(db, windows)
        host = np.array(sel.host, dtype=np.int64)[sid]
        win = ts - ts % self.window_ms
        merged = [hw for hw in windows if len(blocks.get(hw, ())) > 1]
        if merged:
            db.executemany("DELETE FROM chunks WHERE window_ms = ? AND series_id IN "
                           "(SELECT id FROM series WHERE host_id = ?)",
                           [(w, hid) for hid, w in merged])
            db.executemany("DELETE FROM blocks WHERE id = ?",
                           [(i,) for hw in merged for i in blocks[hw]])
            pick = _pairs_in(host, win, merged)
            if pick.any():
                idx = np.lexsort((ts[pick], sid[pick], win[pick], host[pick]))
                self._write_blocks(db, np.array(sel.sid, dtype=np.int64)[sid[pick][idx]],
                                   ts[pick][idx], val[pick][idx], host[pick][idx],
                                   win[pick][idx], "l1")
        closed = [(hid, w) for hid, w in windows if w <= closed_before]
        if closed:
            pick = _pairs_in(host, win, closed)
            if pick.any():
                self._replace_rollups(db, sel, sid[pick], ts[pick], val[pick], closed, cut)
            db.executemany("DELETE FROM dirty WHERE host_id = ? AND window_ms = ?", closed)
        open_ = [(hid, w) for hid, w in windows if w > closed_before]
        if open_:
            db.executemany("UPDATE dirty SET blocks = 1, samples = ? WHERE host_id = ? AND "
                           "window_ms = ?",
                           [(int(np.count_nonzero((host == hid) & (win == w))), hid, w)
                            for hid, w in open_])

    # -- rollups -------------------------------------------------------------------------------

    def _replace_rollups(self, db: Any, sel: Selection, sid: np.ndarray, ts: np.ndarray,
                         val: np.ndarray, windows: list[tuple[int, int]],
                         cut: dict[str, int]) -> None:
        """Rollups of closed (host, window) pairs, recomputed from all their raw samples
        (sorted by (series, ts)), replace what the rollup rows held for those windows."""
        counter = sel.counter()
        host = np.array(sel.host, dtype=np.int64)
        win = ts - ts % self.window_ms
        for name, (width, tier_window) in TIERS.items():
            kept = [(hid, w) for hid, w in windows if w + self.window_ms > cut[name]]
            keep = win + self.window_ms > cut[name]
            if not kept or not keep.any():
                continue
            buckets = agg.bucketize(sid[keep], ts[keep], val[keep], counter, width)

            def replaced(old: agg.Buckets, kept: list[tuple[int, int]] = kept) -> np.ndarray:
                return _pairs_in(host[old["sid"]], old["start"] - old["start"] % self.window_ms,
                                 kept)

            self._upsert_rollups(db, sel, buckets, width, tier_window, counter,
                                 replace=replaced)

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
                        counter: np.ndarray,
                        replace: Callable[[agg.Buckets], np.ndarray] | None) -> None:
        """Write ``buckets`` (sorted by (sid, start)) into the rollup rows of their series and
        tier windows: replacing the stored buckets ``replace(stored)`` says are replaced or,
        without ``replace``, merging bucket by bucket."""
        sid = buckets["sid"]
        tw = buckets["start"] - buckets["start"] % tier_window
        s = np.flatnonzero(np.r_[True, (sid[1:] != sid[:-1]) | (tw[1:] != tw[:-1])])
        existing = self._rollup_rows(db, sel, width, [(int(sid[i]), int(tw[i])) for i in s])
        if existing:
            old, sizes = decode_rollups([blob for _, blob in existing], width)
            old["sid"] = np.repeat(np.array([i for i, _ in existing], dtype=np.int64), sizes)
            if replace is not None:
                outside = ~replace(old)
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
        return StorageStats(quarantined=quarantined, compaction=self.counted())


def _make_series_rows(db: Any, resolved: Resolved,
                      batches: list[tuple[int, BatchColumns]]) -> None:
    """The series of ``batches`` (host id, columns) not in the caches, found or made in the
    write transaction ``db`` and put in ``resolved.fresh``: one read of their hosts' series
    rows (again after the inserts) and one ``executemany`` of the new ones, in the order the
    in-lock path makes them (batch, metric, entry; a series' first metric head names its kind,
    unit and scale), not a SELECT and an INSERT per series (``layouts._series_row``: 15 % of
    the compaction process while every part was a new host's)."""
    series = resolved.cache.series
    heads: dict[tuple[int, str, str], MetricPart] = {}  # (host, name, labels) -> first head
    uses: dict[tuple[int, str, str], list[tuple[Any, tuple[str, ...]]]] = {}  # (mkey, labels)
    for hid, cols in batches:
        for m in cols.metrics:
            mkey = (hid, m.name, m.keys)
            known, fresh = series.get(mkey, {}), resolved.fresh.get(mkey, {})
            for labels in cols.labels[m.first:m.end]:
                if labels not in known and labels not in fresh:
                    key = (hid, m.name, canonical_labels(m.keys, labels))
                    heads.setdefault(key, m)
                    uses.setdefault(key, []).append((mkey, labels))
    if not heads:
        return
    found: dict[tuple[int, str, str], tuple[int, int, bool]] = {}

    def read() -> None:
        for some in chunked(sorted({hid for hid, _, _ in heads})):
            for sid, hid, name, canon, scale, kind in db.execute(
                    f"SELECT id, host_id, name, labels, scale, kind FROM series WHERE "
                    f"host_id IN ({placeholders(some)})", some):
                if (hid, name, canon) in heads:
                    found[(hid, name, canon)] = (sid, scale, kind == "counter")

    read()
    new = [(hid, name, canon, m.kind, m.unit, m.scale)
           for (hid, name, canon), m in heads.items() if (hid, name, canon) not in found]
    if new:
        db.executemany(INSERT_SERIES, new)
        read()
    for key, used in uses.items():
        for mkey, labels in used:
            resolved.fresh.setdefault(mkey, {})[labels] = found[key]


def _widen_first_last(db: Any, first_last: list[tuple[int, int, int]]) -> None:
    """Series first/last widened to the samples of an L0 transaction, ``first_last`` (first ts,
    last ts, series id): a row is written only where it widens (the WHERE), so the result is
    that of ``first_ms = min(first_ms, ?), last_ms = max(last_ms, ?)`` on every row."""
    db.executemany("UPDATE series SET first_ms = min(first_ms, ?), last_ms = max(last_ms, ?) "
                   "WHERE id = ? AND (first_ms > ? OR last_ms < ?)",
                   [(first, last, sid, first, last) for first, last, sid in first_last])


def _sorted_blocks(blocks: dict[tuple[int, int], list[int]]
                   ) -> dict[tuple[int, int], list[int]]:
    return {hw: sorted(ids) for hw, ids in blocks.items()}


def _pairs_in(host: np.ndarray, win: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Which (host, window) rows are among ``pairs``."""
    if not pairs:
        return np.zeros(host.size, dtype=bool)
    ph, pw = np.array(pairs, dtype=np.int64).T
    span = int(max(int(pw.max()), int(win.max()) if win.size else 0)) + 1
    if span < (1 << 62) // (int(max(int(ph.max()), int(host.max()) if host.size else 0)) + 1):
        return np.isin(host * span + win, ph * span + pw)
    wanted = set(pairs)
    return np.fromiter(((h, w) in wanted for h, w in zip(host.tolist(), win.tolist(),
                                                         strict=True)), dtype=bool,
                       count=host.size)


def _transactions(chosen: list[tuple[int, int, int]], bound: int
                  ) -> Iterator[list[tuple[int, int, int]]]:
    """``chosen`` (host, batch id, samples), host by host, cut into parts of at most ``bound``
    samples (whole batches; a batch larger than that is a part of its own)."""
    part: list[tuple[int, int, int]] = []
    size = 0
    for item in chosen:
        if part and size + item[2] > bound:
            yield part
            part, size = [], 0
        part.append(item)
        size += item[2]
    if part:
        yield part


def _log_quarantined(moved: list[tuple[str, str, int, str]]) -> None:
    for host, instance, seq, reason in moved:
        log.warning("stored batch %s/%s/%d cannot be read: quarantined (%s)", host, instance,
                    seq, reason, extra={"host": host, "instance": instance, "seq": seq,
                                        "reason": reason})
