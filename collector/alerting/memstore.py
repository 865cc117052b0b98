"""``InMemoryGridStorage``: a small in-memory ``Storage`` over numpy arrays, for alerting tests and
benchmarks (not a production backend).

Samples live on a regular time grid (``interval_ms``; NaN = no sample): one 2-D array per metric
name, a row per series. ``query`` aggregates whole steps (step starts are multiples of the step,
as in the real storage) with numpy, vectorised over every selected series at once.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemon.collector.storage.base import (
    Gap,
    HostInfo,
    IngestItem,
    QueryTooLarge,
    RangeQuery,
    SeriesInfo,
    SeriesResult,
    Storage,
    StoreResult,
)

__all__ = ["InMemoryGridStorage"]


@dataclass
class _Metric:
    kind: str
    unit: str
    hosts: list[str] = field(default_factory=list)
    labels: list[dict[str, str]] = field(default_factory=list)
    index: dict[tuple[str, tuple[tuple[str, str], ...]], int] = field(default_factory=dict)
    data: np.ndarray = field(default_factory=lambda: np.full((0, 0), np.nan))
    origin: int = 0  # grid column 0 = origin * interval ms


@dataclass
class _Host:
    online: bool = True
    last_seen_ms: int | None = None
    last_status_ms: int | None = None
    instance: str | None = "mem"


class InMemoryGridStorage(Storage):
    """Feed it with ``write`` / ``write_block`` / ``set_status``; ``queries`` records every
    ``RangeQuery`` asked (tests count them)."""

    def __init__(self, interval_ms: int = 10_000) -> None:
        self.interval = interval_ms
        self.lock = threading.Lock()
        self.metrics: dict[str, _Metric] = {}
        self.host_info: dict[str, _Host] = {}
        self.queries: list[RangeQuery] = []
        self.hosts_calls = 0
        self._select_cache: dict[Any, np.ndarray] = {}

    # --- feeding --------------------------------------------------------------------------

    def _metric(self, name: str, kind: str, unit: str) -> _Metric:
        m = self.metrics.get(name)
        if m is None:
            m = self.metrics[name] = _Metric(kind, unit)
        return m

    def _rows(self, m: _Metric, hosts: Sequence[str], labels: Sequence[dict[str, str]],
              ) -> np.ndarray:
        out = np.empty(len(hosts), dtype=np.int64)
        added = False
        for i, (h, lb) in enumerate(zip(hosts, labels, strict=True)):
            key = (h, tuple(sorted(lb.items())))
            row = m.index.get(key)
            if row is None:
                row = m.index[key] = len(m.hosts)
                m.hosts.append(h)
                m.labels.append(dict(lb))
                added = True
            out[i] = row
        if added:
            self._select_cache.clear()
            grown = np.full((len(m.hosts), m.data.shape[1]), np.nan)
            grown[: m.data.shape[0]] = m.data
            m.data = grown
        return out

    def _cols(self, m: _Metric, ts_ms: np.ndarray) -> np.ndarray:
        ts = np.asarray(ts_ms, dtype=np.int64)
        if ts.size and np.any(ts % self.interval):
            raise ValueError(f"timestamps must be multiples of {self.interval} ms")
        grid = ts // self.interval
        if m.data.shape[1] == 0:
            m.origin = int(grid.min()) if grid.size else 0
        lo = int(grid.min()) if grid.size else m.origin
        hi = int(grid.max()) + 1 if grid.size else m.origin
        if lo < m.origin:
            pad = m.origin - lo
            m.data = np.concatenate([np.full((m.data.shape[0], pad), np.nan), m.data], axis=1)
            m.origin = lo
        need = hi - m.origin
        if need > m.data.shape[1]:
            extra = max(need - m.data.shape[1], m.data.shape[1] // 2, 64)
            m.data = np.concatenate([m.data, np.full((m.data.shape[0], extra), np.nan)], axis=1)
        return grid - m.origin

    def write(self, name: str, host: str, labels: dict[str, str] | None, ts_ms: Any,
              values: Any, *, kind: str = "gauge", unit: str = "",
              received_ms: int | None = None) -> None:
        """Samples of one series; ``ts_ms`` multiples of the grid interval."""
        ts = np.atleast_1d(np.asarray(ts_ms, dtype=np.int64))
        vals = np.atleast_1d(np.asarray(values, dtype=np.float64))
        with self.lock:
            m = self._metric(name, kind, unit)
            row = self._rows(m, [host], [labels or {}])[0]
            cols = self._cols(m, ts)
            m.data[row, cols] = vals
            self._seen(host, received_ms if received_ms is not None else
                       (int(ts.max()) if ts.size else None))

    def write_block(self, name: str, hosts: Sequence[str], labels: Sequence[dict[str, str]],
                    ts_ms: Any, values: np.ndarray, *, kind: str = "gauge", unit: str = "",
                    received_ms: int | None = None) -> None:
        """Many series at once: ``values[i, j]`` is series i at ``ts_ms[j]``."""
        ts = np.atleast_1d(np.asarray(ts_ms, dtype=np.int64))
        with self.lock:
            m = self._metric(name, kind, unit)
            rows = self._rows(m, hosts, labels)
            cols = self._cols(m, ts)
            if cols.size and np.all(np.diff(cols) == 1):
                m.data[rows, cols[0]: cols[-1] + 1] = values
            else:
                m.data[np.ix_(rows, cols)] = values
            seen = received_ms if received_ms is not None else (
                int(ts.max()) if ts.size else None)
            for h in set(hosts):
                self._seen(h, seen)

    def _seen(self, host: str, ms: int | None) -> None:
        info = self.host_info.setdefault(host, _Host())
        if ms is not None and (info.last_seen_ms is None or ms > info.last_seen_ms):
            info.last_seen_ms = ms

    def set_status(self, host: str, online: bool, ts_ms: int) -> None:
        with self.lock:
            info = self.host_info.setdefault(host, _Host())
            info.online = online
            info.last_status_ms = ts_ms

    def set_last_seen(self, host: str, ms: int | None) -> None:
        with self.lock:
            self.host_info.setdefault(host, _Host()).last_seen_ms = ms

    # --- Storage --------------------------------------------------------------------------

    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        raise NotImplementedError("InMemoryGridStorage is fed with write() / write_block()")

    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int, last_seq: int | None = None) -> None:
        self.set_status(host, online, timestamp_ms)

    def hosts(self) -> list[HostInfo]:
        with self.lock:
            self.hosts_calls += 1
            return [HostInfo(h, i.online, i.instance, i.last_seen_ms, i.last_status_ms, 1)
                    for h, i in sorted(self.host_info.items())]

    def series(self, host: str | None = None, name: str | None = None) -> list[SeriesInfo]:
        out = []
        with self.lock:
            for metric_name, m in self.metrics.items():
                if name is not None and metric_name != name:
                    continue
                for row, h in enumerate(m.hosts):
                    if host is not None and h != host:
                        continue
                    cols = np.flatnonzero(np.isfinite(m.data[row]))
                    if cols.size == 0:
                        continue
                    first = (int(cols[0]) + m.origin) * self.interval
                    last = (int(cols[-1]) + m.origin) * self.interval
                    out.append(SeriesInfo(h, metric_name, m.labels[row], m.kind, m.unit,
                                          first, last))
        return out

    def gaps(self, host: str | None = None) -> list[Gap]:
        return []

    def maintain(self, now_ms: int) -> None:
        return None

    def close(self) -> None:
        return None

    def _select(self, name: str, m: _Metric, q: RangeQuery) -> np.ndarray:
        key = (name, q.hosts, tuple(sorted(q.labels.items())), len(m.hosts))
        sel = self._select_cache.get(key)
        if sel is not None:
            return sel
        mask = np.ones(len(m.hosts), dtype=bool)
        if q.hosts:
            pattern = re.compile("|".join(fnmatch.translate(g) for g in q.hosts))
            mask &= np.fromiter((bool(pattern.match(h)) for h in m.hosts), dtype=bool,
                                count=len(m.hosts))
        for k, v in q.labels.items():
            mask &= np.fromiter((lb.get(k) == v for lb in m.labels), dtype=bool,
                                count=len(m.hosts))
        sel = self._select_cache[key] = np.flatnonzero(mask)
        return sel

    def query(self, query: RangeQuery) -> list[SeriesResult]:
        q = query
        if q.step_ms <= 0 or q.end_ms <= q.start_ms:
            raise ValueError("bad range or step")
        if q.step_ms % self.interval:
            raise ValueError(f"step must be a multiple of {self.interval} ms")
        with self.lock:
            self.queries.append(q)
            m = self.metrics.get(q.name)
            if m is None or not m.hosts:
                return []
            sel = self._select(q.name, m, q)
            if sel.size > q.max_series:
                raise QueryTooLarge(f"{sel.size} series > max_series {q.max_series}")
            step = q.step_ms
            first = q.start_ms // step * step
            last = (q.end_ms - 1) // step * step
            nsteps = (last - first) // step + 1
            per = step // self.interval
            c0 = first // self.interval - m.origin
            ncols = nsteps * per
            lo = c0 - (1 if q.rate else 0)
            block = np.full((sel.size, ncols + (1 if q.rate else 0)), np.nan)
            a, b = max(lo, 0), min(lo + block.shape[1], m.data.shape[1])
            if b > a:
                block[:, a - lo: b - lo] = m.data[sel, a:b]
            if q.rate:
                diff = np.diff(block, axis=1)
                diff = np.where(diff < 0, block[:, 1:], diff)  # a reset counts from zero
                cube = diff.reshape(sel.size, nsteps, per)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ok = np.isfinite(cube).any(axis=2)
                    agg = np.where(ok, np.nansum(cube, axis=2) / (step / 1000), np.nan)
            else:
                agg = _aggregate(block.reshape(sel.size, nsteps, per), q.aggregation)
            starts_all = first + step * np.arange(nsteps)
            finite = np.isfinite(agg)
            used = finite.any(axis=0)  # drop steps no series has data for (the future)
            if not used.all():
                agg, finite, starts_all = agg[:, used], finite[:, used], starts_all[used]
            starts = starts_all.tolist()
            total = int(finite.sum())
            if total > q.max_points:
                raise QueryTooLarge(f"{total} points > max_points {q.max_points}")
            full = finite.all(axis=1)
            rows = agg.tolist()
            if full.all():
                points = [list(zip(starts, row, strict=True)) for row in rows]
                keep = sel.tolist()
            else:
                fin = finite.tolist()
                points, keep = [], []
                for row, vals, ok in zip(sel.tolist(), rows, fin, strict=True):
                    p = [(s, v) for s, v, f in zip(starts, vals, ok, strict=True) if f]
                    if p:
                        points.append(p)
                        keep.append(row)
            hosts, labels, kind, unit, name = m.hosts, m.labels, m.kind, m.unit, q.name
            return [SeriesResult(hosts[row], name, labels[row], kind, unit, p)
                    for row, p in zip(keep, points, strict=True)]


def _aggregate(cube: np.ndarray, how: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        count = np.isfinite(cube).sum(axis=2)
        if how == "avg":
            return np.nanmean(cube, axis=2)
        if how == "min":
            return np.nanmin(cube, axis=2)
        if how == "max":
            return np.nanmax(cube, axis=2)
        if how == "sum":
            return np.where(count > 0, np.nansum(cube, axis=2), np.nan)
        if how == "count":
            return np.where(count > 0, count.astype(np.float64), np.nan)
        if how == "p95":
            return np.nanpercentile(cube, 95, axis=2)
        if how == "last":
            finite = np.isfinite(cube)
            idx = cube.shape[2] - 1 - np.argmax(finite[:, :, ::-1], axis=2)
            vals = np.take_along_axis(cube, idx[:, :, None], axis=2)[:, :, 0]
            return np.where(count > 0, vals, np.nan)
    raise ValueError(f"unknown aggregation {how!r}")
