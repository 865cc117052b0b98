"""The read path: hosts, gaps, series and range queries, each in one read transaction.

A query reads, in one snapshot, rollup rows, raw chunks and still-pending batches together, so
it sees every stored batch at once and counts none twice. Which series, groups and tier it reads
is decided in ``selection.py``; the numbers are computed in ``aggregate.py``. A pending batch
that cannot be read is skipped (and quarantined by the next maintenance step).

Why one module of ~600 lines: the three sources (rollups, chunks, pending batches) are read
by one class in one transaction, sharing its reads (``_SharedReads``) and caches between
the queries of a page; selection, aggregation and decoding already live elsewhere.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.base import (
    Gap,
    HostInfo,
    RangeQuery,
    SeriesArrays,
    SeriesInfo,
    SeriesResult,
)
from edgemon.collector.storage.batches import BatchColumns, Table, flatten
from edgemon.collector.storage.encoding import (
    ROLLUP_COLUMNS,
    decode_chunks,
    decode_rollups,
    decode_times,
)
from edgemon.collector.storage.selection import (
    QueryRange,
    Selection,
    canonical_labels,
    check_points_limit,
    check_series_limit,
    groups,
    is_glob,
    labels_match,
    match_hosts,
    pick_tier,
)
from edgemon.collector.storage.sql.store import (
    PENDING_IDENT,
    PENDING_ORDER,
    TIERS,
    SQLStore,
    chunked,
    floor,
    placeholders,
)

__all__ = ["Queries"]

# decoded-cache keys: what kind of blob (with what else its decoding depends on)
_CHUNK, _TIMES, _ROLLUP = "chunk", "times", "rollup"
_NO_SAMPLES = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
# the bucket column a per-series read picks (PromQL: raw samples, a rollup bucket's value)
_PICK = {"last": "last_v", "min": "min", "max": "max"}


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
        found, tier, g, start, v = self._evaluate(query)
        cuts = [*np.flatnonzero(np.concatenate(((True,), g[1:] != g[:-1]))).tolist(), g.size]
        ts_list, v_list = start.tolist(), v.tolist()
        points = {int(g[lo]): list(zip(ts_list[lo:hi], v_list[lo:hi], strict=True))
                  for lo, hi in itertools.pairwise(cuts) if lo < hi}
        out = []
        for gi, meta in enumerate(found):
            if gi in points:
                out.append(SeriesResult(meta["host"], query.name, meta["labels"], meta["kind"],
                                        meta["unit"], points[gi], tier))
        out.sort(key=lambda r: (r.host or "", sorted(r.labels.items())))
        return out

    def query_arrays(self, query: RangeQuery) -> list[SeriesArrays]:
        return _as_arrays(query, self._evaluate(query))

    def query_arrays_many(self, queries: Sequence[RangeQuery],
                          ) -> list[list[SeriesArrays] | ValueError]:
        """``query_arrays`` of each query, all in one read transaction (one snapshot), the
        reads they share done once: the cut-offs, the hosts, the hosts' series rows and pending
        batches over one range (a host page: every metric of one host)."""
        out: list[list[SeriesArrays] | ValueError] = []
        with self._read() as db:
            shared = _SharedReads(self._cutoffs(db), several=len(queries) > 1)
            for q in queries:
                try:
                    out.append(_as_arrays(q, self._evaluate_in(db, q, shared)))
                except ValueError as exc:  # QueryTooLarge is one
                    out.append(exc)
        return out

    def _evaluate(self, q: RangeQuery) -> tuple[list[dict[str, Any]], str, np.ndarray,
                                                np.ndarray, np.ndarray]:
        """(groups, tier, group, step start, value) of every non-empty step, sorted by
        (group, start); ``q`` was validated when it was built."""
        with self._read() as db:
            return self._evaluate_in(db, q, _SharedReads(self._cutoffs(db)))

    def _evaluate_in(self, db: Any, q: RangeQuery, shared: _SharedReads,
                     ) -> tuple[list[dict[str, Any]], str, np.ndarray, np.ndarray, np.ndarray]:
        """``_evaluate`` inside read transaction ``db``; ``shared``: reads other queries of
        the same transaction made already."""
        none = np.empty(0, dtype=np.int64)
        how = q.combine_by
        step = q.step_ms
        span = QueryRange.of(q)
        cut = shared.cut
        tier = pick_tier(q, cut)
        hosts = shared.hosts.get(q.hosts)
        if hosts is None:
            hosts = shared.hosts[q.hosts] = self._query_hosts(db, q.hosts)
        if not hosts:
            return [], tier, none, none, np.empty(0)
        sel = Selection()
        host_list = sorted(hosts)
        for sid, hid, labels, kind, unit, scale in self._series_rows(db, q, host_list,
                                                                     span, shared):
            if labels_match(labels, q.labels):
                sel.add(sid, hid, labels, kind, unit, scale)
        pending = self._pending(db, sel, host_list, q, span.read_from, span.end, shared)
        check_series_limit(q, len(sel))
        group, found = groups(sel, q.group_by, hosts)
        check_points_limit(q, span, tier, len(found))
        if not len(sel):
            return found, tier, none, none, np.empty(0)
        counter, scale = sel.counter(), sel.scales()
        # one value per sample or bucket of one series (PromQL's reads): no combining
        single = q.group_by is None and not q.rate and how in _PICK
        if tier == "raw":
            sid, ts, val = self._raw_samples(db, sel, pending, span.read_from, span.end,
                                             None)
            if single and step == 1:
                g, start, v = group[sid], ts, val / (10.0 ** scale)[sid]  # a power per series
            elif how == "p95" and not q.rate:
                gscale = _group_scales(group, scale, len(found))
                g, start, v = agg.percentile_steps(sid, ts, val, group, gscale, scale, step)
            else:
                gscale = _group_scales(group, scale, len(found))
                steps = agg.bucketize(sid, ts, val, counter, step)
                g, start, v = agg.combine(steps, group, gscale, scale, counter, how, q.rate)
        else:
            as_stored = single and step == TIERS[tier][0]
            # as stored: only the bucket column picked is read (a month of minutes is
            # 43,200 buckets of 9 columns)
            buckets = self._rollup_buckets(
                db, sel, pending, tier, span.read_from, span.end, cut,
                ("start", _PICK[how]) if as_stored else ROLLUP_COLUMNS)
            if as_stored and not _distinct_starts(buckets):  # to coarsen: every column
                as_stored = False
                buckets = self._rollup_buckets(db, sel, pending, tier, span.read_from,
                                               span.end, cut)
            if as_stored:
                sid, start = buckets["sid"], buckets["start"]
                g, v = group[sid], buckets[_PICK[how]] / (10.0 ** scale)[sid]
            else:
                gscale = _group_scales(group, scale, len(found))
                steps = agg.coarsen(buckets, step, counter)
                g, start, v = agg.combine(steps, group, gscale, scale, counter, how, q.rate)
        ok = np.isfinite(v) & (start >= span.start)
        if not ok.all():
            g, start, v = g[ok], start[ok], v[ok]  # sorted by (group, start)
        return found, tier, g, start, v

    def _query_hosts(self, db: Any, patterns: tuple[str, ...]) -> dict[int, str]:
        """Hosts a query names: exact names through the unique index, globs by a scan."""
        if not patterns or any(is_glob(p) for p in patterns):
            return match_hosts(db.execute("SELECT id, name FROM hosts").fetchall(), patterns)
        found: dict[int, str] = {}
        for chunk in chunked(sorted(set(patterns))):
            found.update(db.execute(
                f"SELECT id, name FROM hosts WHERE name IN ({placeholders(chunk)})", chunk))
        return found

    def _series_rows(self, db: Any, q: RangeQuery, host_list: list[int], span: QueryRange,
                     shared: _SharedReads) -> Iterator[tuple[Any, ...]]:
        """``_query_series``; in a transaction of several queries over a few hosts, the hosts'
        series of every name are read once (one statement, through the (host, name) index)."""
        if not shared.several or not q.hosts or len(host_list) > _SHARED_HOSTS:
            return self._query_series(db, q, host_list, span)
        key = (tuple(host_list), span.read_from, span.end)
        by_name = shared.series.get(key)
        if by_name is None:
            by_name = shared.series[key] = {}
            for name, *row in db.execute(
                    "SELECT name, id, host_id, labels, kind, unit, scale FROM series WHERE "
                    f"host_id IN ({placeholders(host_list)}) AND last_ms >= ? AND "
                    "first_ms < ?", (*host_list, span.read_from, span.end)):
                by_name.setdefault(name, []).append(tuple(row))
        return iter(by_name.get(q.name, ()))

    @staticmethod
    def _query_series(db: Any, q: RangeQuery, host_list: list[int],
                      span: QueryRange) -> Iterator[tuple[Any, ...]]:
        """Series rows (id, host id, labels, kind, unit, scale) of ``q.name`` on these hosts
        with samples in the span (every host: by name alone)."""
        sql = ("SELECT id, host_id, labels, kind, unit, scale FROM series WHERE name = ? AND "
               "last_ms >= ? AND first_ms < ?")
        if not q.hosts:
            yield from db.execute(sql, (q.name, span.read_from, span.end))
            return
        for chunk in chunked(host_list):
            yield from db.execute(sql + f" AND host_id IN ({placeholders(chunk)})",
                                  (q.name, span.read_from, span.end, *chunk))

    def _pending(self, db: Any, sel: Selection, host_list: list[int],
                 q: RangeQuery, start: int, end: int,
                 shared: _SharedReads | None = None) -> tuple[np.ndarray, ...]:
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
            if shared is not None and shared.several and len(host_list) <= _SHARED_HOSTS:
                key = (tuple(host_list), start, end)  # the same for every query of a page
                found = shared.pending.get(key)
                if found is None:
                    found = shared.pending[key] = list(read_batches())
                return iter(found)
            return read_batches()

        def read_batches() -> Iterator[tuple[int, int, BatchColumns]]:
            for chunk in chunked(host_list):
                for batch_id, hid, payload in db.execute(
                        f"SELECT id, host_id, payload FROM batches WHERE host_id IN "
                        f"({placeholders(chunk)}) AND t_max >= ? AND t_min < ? "
                        "ORDER BY id", (*chunk, start, end)):
                    columns = self._pending_columns(batch_id, payload)
                    if columns is not None:
                        yield hid, PENDING_ORDER + batch_id, columns

        source = self._projected(db, host_list, q.name, start, end) \
            if self.pending_cache.enabled else batches()
        return flatten(source, resolve, {q.name})

    def _projected(self, db: Any, host_list: list[int], name: str, start: int, end: int
                   ) -> Iterator[tuple[int, int, BatchColumns]]:
        """(host id, order, columns holding metric ``name``) of the pending batches of these hosts
        with samples in [start, end), in id order: from ``pending_cache`` by batch row, and
        only the payloads of rows it does not hold read and decoded (``pending_cache.py``)."""
        cache = self.pending_cache
        names = cache.read(name)
        for chunk in chunked(host_list):
            rows = [tuple(r) for r in db.execute(
                f"SELECT {PENDING_IDENT} FROM batches WHERE host_id IN ({placeholders(chunk)}) "
                "AND t_max >= ? AND t_min < ? ORDER BY id", (*chunk, start, end))]
            found = [cache.get(ident, name) for ident in rows]
            missing = {ident[0]: ident for ident, item in zip(rows, found, strict=True)
                       if item is None}
            fresh: dict[int, BatchColumns] = {}
            for ids in chunked(sorted(missing)):
                for batch_id, payload in db.execute(
                        f"SELECT id, payload FROM batches WHERE id IN ({placeholders(ids)})",
                        ids):
                    columns = self._pending_columns(batch_id, payload)
                    if columns is not None:
                        fresh[batch_id] = cache.fill(missing[batch_id], columns, names)
            for ident, item in zip(rows, found, strict=True):
                if item is None:
                    item = fresh.get(ident[0])  # None: unreadable, skipped
                if item is not None:
                    yield ident[1], PENDING_ORDER + ident[0], item

    def _series_chunks(self, db: Any, wanted: list[tuple[int, int, int, int]],
                       start: int, end: int) -> tuple[np.ndarray, ...]:
        """Raw samples in [start, end) of (local index, series id, first window, end window)
        from chunks."""
        rows: list[tuple[int, int, bytes]] = []
        spans = {(lo, hi) for _, _, lo, hi in wanted}
        if len(spans) == 1 and len(wanted) > 1:  # one range for all: IN lists, not a query each
            lo, hi = spans.pop()
            local = {sid: i for i, sid, _, _ in wanted}
            for chunk in chunked(sorted(local)):
                for sid, block_id, data in db.execute(
                        "SELECT series_id, block_id, data FROM chunks WHERE series_id IN "
                        f"({placeholders(chunk)}) AND window_ms >= ? AND window_ms < ?",
                        (*chunk, lo, hi)):
                    rows.append((local[sid], block_id, data))
        else:
            for i, sid, lo, hi in wanted:
                for block_id, data in db.execute(
                        "SELECT block_id, data FROM chunks WHERE series_id = ? AND "
                        "window_ms >= ? AND window_ms < ?", (sid, lo, hi)):
                    rows.append((i, block_id, data))
        block_ids = sorted({block_id for _, block_id, _ in rows})
        times: dict[int, bytes] = {}
        for chunk in chunked(block_ids):
            times.update(db.execute(
                f"SELECT id, times FROM blocks WHERE id IN ({placeholders(chunk)})", chunk))
        return self._cached_chunk_samples(rows, times, start, end)

    def _cached_chunk_samples(self, rows: list[tuple[int, int, bytes]],
                              times: dict[int, bytes], start: int, end: int
                              ) -> tuple[np.ndarray, ...]:
        """``_chunk_samples`` through the decoded cache: (local series index, timestamp, value,
        block id) of chunk ``rows`` (local index, block id, data), given their blocks' times
        blobs; chunks of blocks missing from ``times`` (removed by retention meanwhile) are left
        out. A chunk much longer than [start, end) is cut to it by bisection (its times
        increase), so a short range in a long window costs what it keeps; the caller still
        masks to the range."""
        cache = self.decoded
        rows = [r for r in rows if r[1] in times]
        parts: list[tuple[np.ndarray, np.ndarray]] = [_NO_SAMPLES] * len(rows)
        missing = []
        for k, (_, block_id, data) in enumerate(rows):
            hit = cache.get((_CHUNK, times[block_id], data))
            if hit is None:
                missing.append(k)
            else:
                parts[k] = hit
        if missing:
            decoded: dict[int, np.ndarray] = {}
            for block_id in {rows[k][1] for k in missing}:
                blob = times[block_id]
                bt = cache.get((_TIMES, blob))
                if bt is None:
                    bt = decode_times(blob)
                    cache.put((_TIMES, blob), bt)
                decoded[block_id] = bt
            ts, values, sizes = decode_chunks([rows[k][2] for k in missing],
                                              [decoded[rows[k][1]] for k in missing])
            ends = np.cumsum(sizes).tolist()
            for k, lo, hi in zip(missing, [0, *ends[:-1]], ends, strict=True):
                part = (ts[lo:hi].copy(), values[lo:hi].copy())
                cache.put((_CHUNK, times[rows[k][1]], rows[k][2]), part)
                parts[k] = part
        if not rows:
            e = np.empty(0, dtype=np.int64)
            return e, e, e, e
        for k, (ts_k, val_k) in enumerate(parts):
            # a range much shorter than the chunk (an instant query's 5 minutes of a 2 h
            # window): cut by bisection; otherwise the caller's mask over everything is cheaper
            if ts_k.size > 64 and (end - start) * 4 < int(ts_k[-1]) - int(ts_k[0]):
                lo, hi = ts_k.searchsorted(start), ts_k.searchsorted(end)
                parts[k] = (ts_k[lo:hi], val_k[lo:hi])
        sizes_a = np.array([p[0].size for p in parts], dtype=np.int64)
        sid = np.repeat(np.array([r[0] for r in rows], dtype=np.int64), sizes_a)
        order = np.repeat(np.array([r[1] for r in rows], dtype=np.int64), sizes_a)
        return (sid, np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]), order)

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
        c_sid, c_ts, c_val, c_order = self._series_chunks(db, wanted, start, end)
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
                        cut: dict[str, int], columns: tuple[str, ...] = ROLLUP_COLUMNS,
                        ) -> agg.Buckets:
        """Buckets of ``tier`` starting in [start, end), sorted by (series, start): rollup rows,
        with windows that are dirty or have pending samples recomputed from raw samples.
        ``columns``: the bucket columns wanted besides ``sid`` (``start`` among them); all of
        them when pending samples are merged into stored buckets."""
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
        if stale:  # merged into stored buckets: that needs every column
            columns = ROLLUP_COLUMNS
        local = {sid: i for i, sid in enumerate(sel.sid) if sid is not None}
        rows: list[tuple[int, int, bytes]] = []
        for chunk in chunked(sorted(local)):
            for sid, window, data in db.execute(
                    "SELECT series_id, window_ms, data FROM rollups WHERE series_id IN "
                    f"({placeholders(chunk)}) AND tier = ? AND window_ms >= ? AND "
                    "window_ms < ?", (*chunk, width, floor(start, tier_window), end)):
                rows.append((local[sid], window, data))
        rows.sort(key=lambda r: (r[0], r[1]))  # by (series, time), as buckets are read
        owners = [r[0] for r in rows]
        stored, sizes = self._cached_rollups([r[2] for r in rows], width, columns)
        stored["sid"] = np.repeat(np.array(owners, dtype=np.int64), sizes)
        keep = (stored["start"] >= start) & (stored["start"] < end)
        if fresh and stored["sid"].size:  # only buckets from the first fresh window on
            near = np.flatnonzero(stored["start"] >= min(w for _, w in fresh))
            redone = np.isin(_window_keys(host[stored["sid"][near]], stored["start"][near],
                                          window_ms), _pair_keys(fresh, window_ms))
            keep[near[redone]] = False
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
        recomputed = {c: recomputed[c] for c in stored}
        buckets = agg.concat_buckets([stored, recomputed])
        sid, starts = buckets["sid"], buckets["start"]
        if ((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (starts[1:] > starts[:-1]))).all():
            return buckets  # rollup rows come back in order: nothing to sort
        return agg.take(buckets, agg.sort_index(sid, starts))

    def _cached_rollups(self, blobs: list[bytes], width: int,
                        columns: tuple[str, ...] = ROLLUP_COLUMNS,
                        ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``decode_rollups`` through the decoded cache: ``columns`` of every blob's buckets,
        one after the other, and each blob's bucket count."""
        cache = self.decoded
        parts: list[dict[str, np.ndarray] | None] = [cache.get((_ROLLUP, width, b))
                                                     for b in blobs]
        missing = [k for k, p in enumerate(parts) if p is None]
        if missing:
            cols, sizes = decode_rollups([blobs[k] for k in missing], width)
            ends = np.cumsum(sizes).tolist()
            for k, lo, hi in zip(missing, [0, *ends[:-1]], ends, strict=True):
                part = {c: a[lo:hi].copy() for c, a in cols.items()}
                cache.put((_ROLLUP, width, blobs[k]), part)
                parts[k] = part
        done = [p for p in parts if p is not None]
        sizes_a = np.array([p["start"].size for p in done], dtype=np.int64)
        if not done:
            empty, sizes_a = decode_rollups([], width)
            return {c: empty[c] for c in columns}, sizes_a
        return {c: np.concatenate([p[c] for p in done]) for c in columns}, sizes_a


_SHARED_HOSTS = 16  # a query over more hosts reads only its own metric's series and batches


@dataclass
class _SharedReads:
    """What the queries of one read transaction read once: the tiers' cut-offs, the hosts each
    set of patterns names and, when there are ``several`` queries, the series rows and pending
    batches of a few hosts over one range."""

    cut: dict[str, int]
    several: bool = False
    hosts: dict[tuple[str, ...], dict[int, str]] = field(default_factory=dict)
    series: dict[tuple[Any, ...], dict[str, list[tuple[Any, ...]]]] = field(
        default_factory=dict)
    pending: dict[tuple[Any, ...], list[tuple[int, int, BatchColumns]]] = field(
        default_factory=dict)


def _as_arrays(q: RangeQuery, evaluated: tuple[list[dict[str, Any]], str, np.ndarray,
                                                np.ndarray, np.ndarray]) -> list[SeriesArrays]:
    """``query_arrays``' answer from ``_evaluate``'s."""
    found, tier, g, start, v = evaluated
    cuts = [*np.flatnonzero(np.concatenate(((True,), g[1:] != g[:-1]))).tolist(), g.size]
    out = []
    for lo, hi in itertools.pairwise(cuts):
        if lo < hi:
            meta = found[int(g[lo])]
            out.append(SeriesArrays(meta["host"], q.name, meta["labels"], meta["kind"],
                                    meta["unit"], start[lo:hi], v[lo:hi], tier))
    out.sort(key=lambda r: (r.host or "", sorted(r.labels.items())))
    return out


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



def _group_scales(group: np.ndarray, scale: np.ndarray, n_groups: int) -> np.ndarray:
    """The largest scale among each group's series (values are pooled at that scale)."""
    gscale = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(gscale, group, scale)
    return gscale


def _distinct_starts(buckets: agg.Buckets) -> bool:
    """Whether no two buckets share (series, start) (then there is nothing to coarsen)."""
    sid, start = buckets["sid"], buckets["start"]
    return not ((sid[1:] == sid[:-1]) & (start[1:] == start[:-1])).any()
