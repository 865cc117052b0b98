"""Pending batches -> flat sample columns for L0 compaction, with their series ids resolved once
per host *layout*.

An agent sends the same metrics and label values batch after batch (one a minute, in the real
fleet), so the series ids of a batch's entries are worked out once per (host, layout) — the
batch's ``metrics`` and entry labels — and kept (``LayoutCache``, the last layout of each host).
Every later batch of that host costs a dictionary lookup, not Python work per series entry:
``gather`` joins the columns of many batches with one ``np.repeat``/``concatenate`` per column.
A layout seen for the first time is resolved entry by entry (``series`` rows are made in the
compaction's transaction; ``Resolved.commit`` keeps them once it has committed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemon.collector.storage.batches import BatchColumns, rescale
from edgemon.collector.storage.selection import canonical_labels

__all__ = ["INSERT_SERIES", "Gathered", "LayoutCache", "NewSeries", "Resolved", "gather"]

_I64 = np.int64
# (host_id, metrics, labels): the batch's shape as far as series are concerned
LayoutKey = tuple[int, tuple[Any, ...], tuple[tuple[str, ...], ...]]


@dataclass(frozen=True, slots=True)
class Layout:
    """Per series entry of a batch: the series id, and the series' scale (its first batch's)."""

    sids: np.ndarray
    scales: np.ndarray


class LayoutCache:
    """The last layout of each host, and series ids by (host, name, label keys) -> label values
    (shared with the backend's series cache). Cleared when retention deletes series."""

    def __init__(self, series: dict[tuple[Any, ...], dict[tuple[str, ...], Any]]) -> None:
        self.series = series  # (host, name, keys) -> labels -> (id, scale, is_counter)
        self.last: dict[int, tuple[LayoutKey, Layout]] = {}

    def clear(self) -> None:
        self.last.clear()


class NewSeries(Exception):
    """A layout needs a series not in the caches, and there is no transaction to make it in."""


@dataclass
class Resolved:
    """Series and layouts found in one transaction; ``commit`` keeps them after it commits (a
    rolled-back transaction's new series ids may be given to other series later)."""

    cache: LayoutCache
    fresh: dict[tuple[Any, ...], dict[tuple[str, ...], Any]] = field(default_factory=dict)
    layouts: dict[int, tuple[LayoutKey, Layout]] = field(default_factory=dict)

    def commit(self) -> None:
        for mkey, labels in self.fresh.items():
            self.cache.series.setdefault(mkey, {}).update(labels)
        self.cache.last.update(self.layouts)

    def layout(self, db: Any, hid: int, cols: BatchColumns) -> Layout:
        """The layout of a batch of host ``hid``; with ``db`` None (outside the write
        transaction) from the caches only, else ``NewSeries``."""
        key: LayoutKey = (hid, cols.metrics, tuple(cols.labels))
        for found in (self.layouts.get(hid), self.cache.last.get(hid)):
            if found is not None and found[0] == key:
                return found[1]
        sids = np.empty(len(cols.labels), dtype=_I64)
        scales = np.empty(len(cols.labels), dtype=_I64)
        for m in cols.metrics:
            mkey = (hid, m.name, m.keys)
            known = self.cache.series.get(mkey, {})
            fresh = self.fresh.setdefault(mkey, {})
            for i in range(m.first, m.end):
                labels = cols.labels[i]
                hit = known.get(labels) or fresh.get(labels)
                if hit is None:
                    if db is None:
                        raise NewSeries(hid, m.name, labels)
                    hit = fresh[labels] = _series_row(db, hid, m.name, m.keys, labels, m.kind,
                                                      m.unit, m.scale)
                sids[i], scales[i] = hit[0], hit[1]
        layout = Layout(sids, scales)
        self.layouts[hid] = (key, layout)
        return layout


# A series made before its first samples are written: (host_id, name, canonical labels, kind,
# unit, scale), with first_ms above last_ms (no data yet; L0 widens them).
INSERT_SERIES = ("INSERT INTO series (host_id, name, labels, kind, unit, scale, first_ms, "
                 f"last_ms) VALUES (?, ?, ?, ?, ?, ?, {1 << 62}, 0)")


def _series_row(db: Any, hid: int, name: str, keys: tuple[str, ...], labels: tuple[str, ...],
                kind: str, unit: str, scale: int) -> tuple[int, int, bool]:
    """(id, scale, is_counter) of a series, made if it does not exist yet."""
    canon = canonical_labels(keys, labels)
    row = db.execute("SELECT id, scale, kind FROM series WHERE host_id = ? AND name = ? AND "
                     "labels = ?", (hid, name, canon)).fetchone()
    if row is None:
        new_id = db.execute(INSERT_SERIES + " RETURNING id",
                            (hid, name, canon, kind, unit, scale)).fetchone()[0]
        row = (new_id, scale, kind)
    return row[0], row[1], row[2] == "counter"


@dataclass(frozen=True, slots=True)
class Gathered:
    """Every sample of some batches: series id, host, timestamp, value (at the series' scale)
    and order (the batch's row id: of two samples of a series at one time the later wins)."""

    sid: np.ndarray
    host: np.ndarray
    ts: np.ndarray
    val: np.ndarray
    order: np.ndarray


def gather(batches: list[tuple[int, int, BatchColumns]],
           layout: Callable[[int, BatchColumns], Layout]) -> Gathered:
    """The samples of ``batches`` (host id, batch id, columns) as flat columns."""
    if not batches:
        e = np.empty(0, dtype=_I64)
        return Gathered(e, e, e, e, e)
    layouts = [layout(hid, cols) for hid, _, cols in batches]
    entry_sizes = [np.diff(cols.bounds) for _, _, cols in batches]
    sizes = np.concatenate(entry_sizes)
    per_batch = np.array([cols.ts.size for _, _, cols in batches], dtype=_I64)
    sid = np.repeat(np.concatenate([lay.sids for lay in layouts]), sizes)
    host = np.repeat(np.array([hid for hid, _, _ in batches], dtype=_I64), per_batch)
    order = np.repeat(np.array([bid for _, bid, _ in batches], dtype=_I64), per_batch)
    ts = np.concatenate([cols.ts for _, _, cols in batches])
    val = np.concatenate([cols.values for _, _, cols in batches])  # a new array: cache intact
    # entries whose metric's scale differs from the series' (rare): rescaled, run by run
    have = np.concatenate([np.repeat(np.array([m.scale for m in cols.metrics], dtype=_I64),
                                     [m.end - m.first for m in cols.metrics])
                           for _, _, cols in batches])
    want = np.concatenate([lay.scales for lay in layouts])
    odd = np.flatnonzero(have != want)
    if odd.size:
        bounds = np.zeros(sizes.size + 1, dtype=_I64)
        np.cumsum(sizes, out=bounds[1:])
        for e in odd.tolist():
            lo, hi = int(bounds[e]), int(bounds[e + 1])
            val[lo:hi] = rescale(val[lo:hi], int(have[e]), int(want[e]))
    return Gathered(sid, host, ts, val, order)
