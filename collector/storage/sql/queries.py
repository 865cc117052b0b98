"""The read path: hosts, gaps, series and range queries, each in one read transaction.

A query reads, in one snapshot, rollup rows, raw chunks and still-pending batches together, so
it sees every stored batch at once and counts none twice. Which series, groups and tier it reads
is decided in ``selection.py``; the numbers are computed in ``aggregate.py``. A pending batch
that cannot be read is skipped (and quarantined by the next maintenance step).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.base import Gap, HostInfo, RangeQuery, SeriesInfo, SeriesResult
from edgemon.collector.storage.batches import BatchColumns, Table, flatten
from edgemon.collector.storage.encoding import decode_rollups
from edgemon.collector.storage.selection import (
    QueryRange,
    Selection,
    canonical_labels,
    check_points_limit,
    check_series_limit,
    groups,
    labels_match,
    match_hosts,
    pick_tier,
)
from edgemon.collector.storage.sql.store import (
    PENDING_ORDER,
    TIERS,
    SQLStore,
    chunked,
    floor,
    placeholders,
)

__all__ = ["Queries"]


class Queries(SQLStore):
    def hosts(self) -> list[HostInfo]:
        with self._read() as db:
            rows = db.execute(
                "SELECT h.name, h.online, h.instance, h.last_seen_ms, h.last_status_ms, "
                "(SELECT count(*) FROM instances i WHERE i.host_id = h.id), h.clock_offset_ms "
                "FROM hosts h ORDER BY h.name").fetchall()
        return [HostInfo(name, bool(online), instance, seen, status, n, offset)
                for name, online, instance, seen, status, n, offset in rows]

    def gaps(self, host: str | None = None) -> list[Gap]:
        sql = ("SELECT h.name, r.instance, r.lo, r.hi FROM seq_ranges r JOIN hosts h "
               "ON h.id = r.host_id")
        args: tuple[Any, ...] = ()
        if host is not None:
            sql += " WHERE h.name = ?"
            args = (host,)
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY h.name, r.instance, r.lo", args).fetchall()
        out = []
        for (h1, i1, _, hi1), (h2, i2, lo2, _) in itertools.pairwise(rows):
            if h1 == h2 and i1 == i2:
                out.append(Gap(h1, i1, hi1 + 1, lo2 - 1))
        return out

    def series(self, host: str | None = None, name: str | None = None) -> list[SeriesInfo]:
        sql = ("SELECT h.name, s.host_id, s.name, s.labels, s.kind, s.unit, s.first_ms, "
               "s.last_ms FROM series s JOIN hosts h ON h.id = s.host_id WHERE 1 = 1")
        args: list[Any] = []
        if host is not None:
            sql += " AND h.name = ?"
            args.append(host)
        if name is not None:
            sql += " AND s.name = ?"
            args.append(name)
        found: dict[tuple[int, str, str], list[Any]] = {}
        names: dict[int, str] = {}
        with self._read() as db:
            for hname, hid, sname, labels, kind, unit, first, last in db.execute(sql, args):
                names[hid] = hname
                found[(hid, sname, labels)] = [kind, unit, first, last]
            pending = "SELECT p.id, p.host_id, h.name, p.payload FROM batches p JOIN hosts h " \
                      "ON h.id = p.host_id"
            pargs: tuple[Any, ...] = ()
            if host is not None:
                pending += " WHERE h.name = ?"
                pargs = (host,)
            for batch_id, hid, hname, payload in db.execute(pending, pargs):
                columns = self._pending_columns(batch_id, payload)
                if columns is None:
                    continue
                names[hid] = hname
                _pending_series(columns, hid, name, found)
        out = [SeriesInfo(names[hid], sname, json.loads(labels), kind, unit, first, last)
               for (hid, sname, labels), (kind, unit, first, last) in found.items()]
        out.sort(key=lambda s: (s.host, s.name, sorted(s.labels.items())))
        return out

    def query(self, query: RangeQuery) -> list[SeriesResult]:
        q = query  # validated when it was built
        how = q.combine_by
        step = q.step_ms
        span = QueryRange.of(q)
        with self._read() as db:
            cut = self._cutoffs(db)
            tier = pick_tier(q, cut)
            hosts = match_hosts(db.execute("SELECT id, name FROM hosts").fetchall(), q.hosts)
            if not hosts:
                return []
            sel = Selection()
            host_list = sorted(hosts)
            for chunk in chunked(host_list):
                for sid, hid, labels, kind, unit, scale in db.execute(
                        "SELECT id, host_id, labels, kind, unit, scale FROM series WHERE "
                        f"name = ? AND host_id IN ({placeholders(chunk)}) AND "
                        "last_ms >= ? AND first_ms < ?",
                        (q.name, *chunk, span.read_from, span.end)):
                    if labels_match(labels, q.labels):
                        sel.add(sid, hid, labels, kind, unit, scale)
            pending = self._pending(db, sel, host_list, q, span.read_from, span.end)
            check_series_limit(q, len(sel))
            group, found = groups(sel, q.group_by, hosts)
            check_points_limit(q, span, tier, len(found))
            if not len(sel):
                return []
            counter, scale = sel.counter(), sel.scales()
            gscale = np.zeros(len(found), dtype=np.int64)
            np.maximum.at(gscale, group, scale)
            if tier == "raw":
                sid, ts, val = self._raw_samples(db, sel, pending, span.read_from, span.end,
                                                 None)
                if how == "p95" and not q.rate:
                    g, start, v = agg.percentile_steps(sid, ts, val, group, gscale, scale, step)
                else:
                    steps = agg.bucketize(sid, ts, val, counter, step)
                    g, start, v = agg.combine(steps, group, gscale, scale, counter, how, q.rate)
            else:
                buckets = self._rollup_buckets(db, sel, pending, tier, span.read_from,
                                               span.end, cut)
                steps = agg.coarsen(buckets, step, counter)
                g, start, v = agg.combine(steps, group, gscale, scale, counter, how, q.rate)
        ok = np.isfinite(v) & (start >= span.start)
        g, start, v = g[ok], start[ok], v[ok]  # sorted by (group, start)
        cuts = [*np.flatnonzero(np.r_[True, g[1:] != g[:-1]]).tolist(), g.size]
        ts_list, v_list = start.tolist(), v.tolist()
        points = {int(g[lo]): list(zip(ts_list[lo:hi], v_list[lo:hi], strict=True))
                  for lo, hi in itertools.pairwise(cuts) if lo < hi}
        out = []
        for gi, meta in enumerate(found):
            if gi in points:
                out.append(SeriesResult(meta["host"], q.name, meta["labels"], meta["kind"],
                                        meta["unit"], points[gi], tier))
        out.sort(key=lambda r: (r.host or "", sorted(r.labels.items())))
        return out

    def _pending(self, db: Any, sel: Selection, host_list: list[int],
                 q: RangeQuery, start: int, end: int) -> tuple[np.ndarray, ...]:
        """Samples of the query's metric in batches not compacted yet (they extend ``sel``)."""
        want = q.labels
        tables: dict[tuple[Any, ...], tuple[Table, Any]] = {}

        def resolve(hid: int, name: str, kind: str, unit: str, scale: int,
                    keys: tuple[str, ...]) -> tuple[Table, Any]:
            mkey = (hid, keys)
            found = tables.get(mkey)
            if found is not None:
                return found
            table: Table = {}

            def miss(labels: tuple[str, ...]) -> tuple[int, int] | None:
                if want:
                    have = dict(zip(keys, labels, strict=True))
                    if any(have.get(k) != v for k, v in want.items()):
                        return None
                canon = canonical_labels(keys, labels)
                i = sel.index.get((hid, canon))
                if i is None:
                    i = sel.add(None, hid, canon, kind, unit, scale)
                table[labels] = (i, sel.scale[i])
                return table[labels]

            found = tables[mkey] = (table, miss)
            return found

        def batches() -> Iterator[tuple[int, int, BatchColumns]]:
            for chunk in chunked(host_list):
                for batch_id, hid, payload in db.execute(
                        f"SELECT id, host_id, payload FROM batches WHERE host_id IN "
                        f"({placeholders(chunk)}) AND t_max >= ? AND t_min < ? "
                        "ORDER BY id", (*chunk, start, end)):
                    columns = self._pending_columns(batch_id, payload)
                    if columns is not None:
                        yield hid, PENDING_ORDER + batch_id, columns

        return flatten(batches(), resolve, {q.name})

    def _series_chunks(self, db: Any, wanted: list[tuple[int, int, int, int]]
                       ) -> tuple[np.ndarray, ...]:
        """Raw samples of (local index, series id, first window, end window) from chunks."""
        rows = []
        for i, sid, lo, hi in wanted:
            for block_id, data in db.execute(
                    "SELECT block_id, data FROM chunks WHERE series_id = ? AND window_ms >= ? "
                    "AND window_ms < ?", (sid, lo, hi)):
                rows.append((i, block_id, data))
        block_ids = sorted({block_id for _, block_id, _ in rows})
        times: dict[int, np.ndarray] = {}
        for chunk in chunked(block_ids):
            times.update(self._block_times(db.execute(
                f"SELECT id, times FROM blocks WHERE id IN ({placeholders(chunk)})", chunk)))
        return self._chunk_samples(rows, times)

    def _raw_samples(self, db: Any, sel: Selection,
                     pending: tuple[np.ndarray, ...], start: int, end: int,
                     windows: set[tuple[int, int]] | None) -> tuple[np.ndarray, ...]:
        """Deduplicated samples in [start, end) sorted by (series, ts): chunks + pending. With
        ``windows`` only those (host, window) pairs are read."""
        window_ms = self.window_ms
        by_host: dict[int, list[int]] = {}
        for h, w in windows or ():
            by_host.setdefault(h, []).append(w)
        wanted = []
        for i, sid in enumerate(sel.sid):
            if sid is None:
                continue
            if windows is None:
                wanted.append((i, sid, floor(start, window_ms), end))
            else:
                wanted += [(i, sid, w, w + 1) for w in by_host.get(sel.host[i], ())]
        c_sid, c_ts, c_val, c_order = self._series_chunks(db, wanted)
        p_sid, p_ts, p_val, p_order = pending
        if windows is not None and p_sid.size:
            host = np.array(sel.host, dtype=np.int64)
            keys = _window_keys(host[p_sid], p_ts, window_ms)
            keep = np.isin(keys, _pair_keys(windows, window_ms))
            p_sid, p_ts, p_val, p_order = p_sid[keep], p_ts[keep], p_val[keep], p_order[keep]
        sid = np.concatenate([c_sid, p_sid])
        ts = np.concatenate([c_ts, p_ts])
        val = np.concatenate([c_val, p_val])
        order = np.concatenate([c_order, p_order])
        inside = (ts >= start) & (ts < end)
        return agg.sort_dedupe(sid[inside], ts[inside], val[inside], order[inside])

    def _rollup_buckets(self, db: Any, sel: Selection,
                        pending: tuple[np.ndarray, ...], tier: str, start: int, end: int,
                        cut: dict[str, int]) -> agg.Buckets:
        """Buckets of ``tier`` starting in [start, end), sorted by (series, start): rollup rows,
        with windows that are dirty or have pending samples recomputed from raw samples."""
        window_ms = self.window_ms
        width, tier_window = TIERS[tier]
        counter = sel.counter()
        host = np.array(sel.host, dtype=np.int64)
        hosts = sorted(set(sel.host))
        dirty: set[tuple[int, int]] = set()
        for chunk in chunked(hosts):
            dirty.update(db.execute(
                f"SELECT host_id, window_ms FROM dirty WHERE host_id IN "
                f"({placeholders(chunk)}) AND window_ms >= ? AND window_ms < ?",
                (*chunk, floor(start, window_ms), end)))
        p_sid, p_ts, p_val, p_order = pending
        inside = (p_ts >= floor(start, width)) & (p_ts < end)
        p_sid, p_ts, p_val, p_order = p_sid[inside], p_ts[inside], p_val[inside], p_order[inside]
        p_win = p_ts - p_ts % window_ms
        pending_windows = set(zip(host[p_sid].tolist(), p_win.tolist(), strict=True))
        # windows recomputed from raw samples, and windows whose raw samples expired, where
        # pending samples are merged into the rollup buckets (as compaction will do)
        fresh = dirty | {hw for hw in pending_windows if hw[1] >= cut["raw"]}
        stale = pending_windows - fresh
        owners, blobs = [], []
        for i, sid in enumerate(sel.sid):
            if sid is None:
                continue
            for (data,) in db.execute(
                    "SELECT data FROM rollups WHERE series_id = ? AND tier = ? AND "
                    "window_ms >= ? AND window_ms < ? ORDER BY window_ms",
                    (sid, width, floor(start, tier_window), end)):
                owners.append(i)
                blobs.append(data)
        stored, sizes = decode_rollups(blobs, width)
        stored["sid"] = np.repeat(np.array(owners, dtype=np.int64), sizes)
        keep = (stored["start"] >= start) & (stored["start"] < end)
        if fresh and stored["sid"].size:
            keep &= ~np.isin(_window_keys(host[stored["sid"]], stored["start"], window_ms),
                             _pair_keys(fresh, window_ms))
        if not keep.all():
            stored = agg.take(stored, np.flatnonzero(keep))
        if stale:
            old = np.isin(_window_keys(host[p_sid], p_ts, window_ms),
                          _pair_keys(stale, window_ms))
            s_sid, s_ts, s_val = agg.sort_dedupe(p_sid[old], p_ts[old], p_val[old],
                                                 p_order[old])
            extra = agg.bucketize(s_sid, s_ts, s_val, counter, width)
            extra = agg.take(extra, np.flatnonzero(extra["start"] >= start))
            stored = agg.merge_buckets(stored, extra, counter)
        recomputed = agg.empty_buckets()
        if fresh:
            r_sid, r_ts, r_val = self._raw_samples(db, sel, (p_sid, p_ts, p_val, p_order),
                                                   floor(start, width), end, fresh)
            recomputed = agg.bucketize(r_sid, r_ts, r_val, counter, width)
            recomputed = agg.take(recomputed, np.flatnonzero(recomputed["start"] >= start))
        buckets = agg.concat_buckets([stored, recomputed])
        sid, starts = buckets["sid"], buckets["start"]
        if ((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (starts[1:] > starts[:-1]))).all():
            return buckets  # rollup rows come back in order: nothing to sort
        return agg.take(buckets, agg.sort_index(sid, starts))


def _pending_series(columns: BatchColumns, hid: int, name: str | None,
                    found: dict[tuple[int, str, str], list[Any]]) -> None:
    """Add the series of a pending batch (first and last sample time) to ``found``."""
    first_ts = columns.ts[columns.bounds[:-1]].tolist() if columns.ts.size else []
    last_ts = columns.ts[columns.bounds[1:] - 1].tolist() if columns.ts.size else []
    for m in columns.metrics:
        if name is not None and m.name != name:
            continue
        for i in range(m.first, m.end):
            key = (hid, m.name, canonical_labels(m.keys, columns.labels[i]))
            cur = found.get(key)
            if cur is None:
                found[key] = [m.kind, m.unit, first_ts[i], last_ts[i]]
            else:
                cur[2], cur[3] = min(cur[2], first_ts[i]), max(cur[3], last_ts[i])


def _window_keys(host: np.ndarray, ts: np.ndarray, window_ms: int) -> np.ndarray:
    return host * (1 << 32) + ts // window_ms


def _pair_keys(pairs: set[tuple[int, int]], window_ms: int) -> np.ndarray:
    return np.array([h * (1 << 32) + w // window_ms for h, w in pairs], dtype=np.int64)

