"""One metric's columns of each pending batch, keyed by the batch row: what repeated readers of
the not-yet-compacted back-log (alert rules every cycle, dashboards) take instead of the payload.

A stored pending batch never changes until compaction or quarantine deletes its row, so the
columns of the metrics readers ask for can be kept under the batch's ``ident``. ``ident`` is the
row's id together with its (host, instance, seq, received time): SQLite may give a deleted row's
id to a later batch, but never to one with the same host, instance and seq (ingest stores a
sequence number once), so a reused id cannot hit a stale entry. A reader selects the ids of the
pending batches in its range (no payloads), takes what is cached, and reads and decodes only the
payloads of the rest, inside the same read transaction: it sees every batch of its snapshot
exactly once whatever compaction did meanwhile, and a batch another collector stored on the same
database is simply a new id.

One entry per batch holds the columns of every metric read recently (the last 64 names any
reader asked for), copied out of the batch's: the few metrics alert rules read cost one decode
per batch in all, not one per rule, and a fraction of the batch's memory. A reader asking for a
metric the entry does not cover yet projects the batch again (from the payload), now with that
metric too. Each entry's size is counted as its arrays plus a fixed overhead per array, label
set, metric and entry: 2.8 KB per batch for the default rules' metrics (6 metrics, 8 series,
48 samples of a 474-sample batch; tracemalloc measures 2.6 KB), so the default 128 MB
(``pending_cache_mb``) holds about 47,000 pending batches: 10,000 hosts sending a batch a
minute, almost five minutes of them.

Bounded in bytes (``max_bytes``; 0 turns the cache off): entries are admitted while there is
room; when full, entries no reader used for ``idle_s`` seconds give way, least recently used
first. A scan over more pending batches than fit therefore keeps what it cached instead of
evicting it for the next cycle's misses. ``forget`` drops entries of batches that are gone
(compacted or quarantined: ``SQLStore.forget_compacted``). Thread-safe; cached arrays are
read-only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from edgemon.collector.storage.batches import BatchColumns, MetricPart

__all__ = ["PendingMetricCache", "Projection", "project", "projection_of"]

# (id, host_id, instance, seq, received_ms) of a batch row
Ident = tuple[int, int, str, int, int]
_HOT_NAMES = 64  # metric names remembered as read recently
_ENTRY_BYTES = 200  # an entry's key, ident and bookkeeping


def project(columns: BatchColumns, names: Collection[str]) -> BatchColumns:
    """The columns of the metrics in ``names`` alone (copies; no metric: empty columns)."""
    parts = [m for m in columns.metrics if m.name in names]
    metrics, labels, bounds, ts, values = [], [], [np.zeros(1, dtype=np.int64)], [], []
    at, base = 0, 0
    for m in parts:
        lo, hi = int(columns.bounds[m.first]), int(columns.bounds[m.end])
        metrics.append(MetricPart(m.name, m.kind, m.unit, m.scale, m.keys, at,
                                  at + m.end - m.first))
        at += m.end - m.first
        labels += columns.labels[m.first:m.end]
        bounds.append(columns.bounds[m.first + 1:m.end + 1] - lo + base)
        ts.append(columns.ts[lo:hi])
        values.append(columns.values[lo:hi])
        base += hi - lo
    empty = np.empty(0, dtype=np.int64)
    return _columns_of_parts(tuple(metrics), labels, [
        np.concatenate(bounds), np.concatenate([empty, *ts]), np.concatenate([empty, *values])])


@dataclass(frozen=True, slots=True)
class Projection:
    """``project`` of a batch's columns on ``names``, made where the batch was decoded anyway (an
    ingest worker) for ``PendingMetricCache.put`` once the batch is stored. Pickled as its
    arrays' bytes: unpickled, they are read-only views of those bytes, no copy."""

    names: frozenset[str]
    columns: BatchColumns

    def __reduce__(self) -> tuple[Any, ...]:
        c = self.columns
        return _projection, (self.names, c.metrics, c.labels, c.bounds.tobytes(),
                             c.ts.tobytes(), c.values.tobytes(), c.nbytes)


def _projection(names: frozenset[str], metrics: tuple[MetricPart, ...],
                labels: list[tuple[str, ...]], bounds: bytes, ts: bytes, values: bytes,
                nbytes: int) -> Projection:
    arrays = [np.frombuffer(b, dtype=np.int64) for b in (bounds, ts, values)]  # read-only
    return Projection(names, BatchColumns(metrics, labels, *arrays, nbytes))


def projection_of(t: list[int], metrics: list[list[Any]], names: frozenset[str]
                  ) -> Projection | None:
    """The ``Projection`` on ``names`` of a decoded, checked batch (its delta-coded ``t`` and
    its ``metrics`` as the batch map holds them): equal to ``project`` of the columns storage
    reads from the batch's payload (``batches.read_batch``), built from the metrics in
    ``names`` alone (a few series of the batch) with running sums over Python lists and three
    arrays: a quarter of what ``read_batch``'s two dozen numpy passes cost on them. None when
    there is nothing to project or it would not fit 64 bits (then a reader decodes the
    payload, as without this)."""
    if not names or not t or t[0] <= 0 or min(t[1:], default=1) <= 0:
        return None
    times = list(accumulate(t))
    parts: list[MetricPart] = []
    labels: list[tuple[str, ...]] = []
    sizes: list[int] = []
    ts: list[int] = []
    values: list[int] = []
    for name, kind, unit, scale, keys, entries in metrics:
        if name not in names:
            continue
        first = len(labels)
        for label_values, offset, deltas in entries:
            n = len(deltas)
            if not n or offset < 0 or offset + n > len(times):
                return None
            labels.append(tuple(label_values))
            sizes.append(n)
            ts += times[offset:offset + n]
            values += accumulate(deltas)
        parts.append(MetricPart(name, kind, unit, scale, tuple(keys), first, len(labels)))
    try:
        columns = [np.array(c, dtype=np.int64) for c in ([0, *accumulate(sizes)], ts, values)]
    except OverflowError:  # a running sum beyond 64 bits: storage would not read it
        return None
    return Projection(names, _columns_of_parts(tuple(parts), labels, columns))


def _columns_of_parts(metrics: tuple[MetricPart, ...], labels: list[tuple[str, ...]],
                      columns: list[np.ndarray]) -> BatchColumns:
    """``BatchColumns`` of (bounds, ts, values), read-only, sized as ``project`` counts: arrays
    (with numpy's ~112 bytes of header each), label tuples, metric parts, the object."""
    for column in columns:
        column.flags.writeable = False
    nbytes = (sum(c.nbytes + 112 for c in columns) + 60 * len(labels) + 100 * len(metrics)
              + 200)
    return BatchColumns(metrics, labels, columns[0], columns[1], columns[2], nbytes)


class PendingMetricCache:
    """Projected columns by batch ident; see the module docstring."""

    def __init__(self, max_bytes: int, *, idle_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.idle_s = idle_s
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.decoded = 0  # projections made from a payload
        self._clock = clock
        # ident -> (columns, names they cover, size, last use); least recently used first
        self._entries: OrderedDict[Ident, tuple[BatchColumns, frozenset[str], int, float]] = \
            OrderedDict()
        self._hot: OrderedDict[str, None] = OrderedDict()
        self._names: frozenset[str] | None = None  # frozenset(self._hot), made when asked
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, ident: Ident, name: str) -> BatchColumns | None:
        """The cached columns of the batch (holding metric ``name``, if the batch has it),
        None when not cached."""
        with self._lock:
            found = self._entries.get(ident)
            if found is None or name not in found[1]:
                self.misses += 1
                return None
            self._entries[ident] = (*found[:3], self._clock())
            self._entries.move_to_end(ident)
            self.hits += 1
            return found[0]

    def read(self, name: str) -> frozenset[str]:
        """Note that ``name`` is being read; the metric names to project on a decode."""
        with self._lock:
            if name in self._hot:
                self._hot.move_to_end(name)  # the set stays the same
            else:
                self._hot[name] = None
                while len(self._hot) > _HOT_NAMES:
                    self._hot.popitem(last=False)
                self._names = None
            if self._names is None:
                self._names = frozenset(self._hot)
            return self._names

    def hot(self) -> frozenset[str]:
        """The metric names read recently (empty when the cache is off): what ingest projects
        a new batch on (``projection_of``). The same object while they stay the same."""
        if not self.enabled:
            return frozenset()
        with self._lock:
            if self._names is None:
                self._names = frozenset(self._hot)
            return self._names

    def fill(self, ident: Ident, columns: BatchColumns, names: frozenset[str]) -> BatchColumns:
        """The projection of ``columns`` on ``names``, kept (as room allows)."""
        with self._lock:
            self.decoded += 1
        return self.put(ident, project(columns, names), names)

    def put(self, ident: Ident, item: BatchColumns, names: frozenset[str]) -> BatchColumns:
        """Keep ``item``, the projection on ``names`` of batch ``ident``'s columns (as room
        allows)."""
        size = item.nbytes + _ENTRY_BYTES
        now = self._clock()
        with self._lock:
            old = self._entries.pop(ident, None)
            if old is not None:
                self.used -= old[2]
            if self._make_room(size, now):
                self._entries[ident] = (item, names, size, now)
                self.used += size
            elif old is not None:  # no room for the new one: the one it held stays (it fits:
                self._entries[ident] = old  # only entries were dropped since it was counted)
                self.used += old[2]
        return item

    def _make_room(self, size: int, now: float) -> bool:
        """Drop idle entries, least recently used first, until ``size`` more bytes fit."""
        while self.used + size > self.max_bytes and self._entries:
            ident, (_, _, dropped, last) = next(iter(self._entries.items()))
            if now - last < self.idle_s:
                return False
            del self._entries[ident]
            self.used -= dropped
        return self.used + size <= self.max_bytes

    def idents(self) -> set[Ident]:
        with self._lock:
            return set(self._entries)

    def forget(self, gone: Iterable[Ident]) -> int:
        """Drop the entries of batches no longer pending; how many."""
        dropped = 0
        with self._lock:
            for ident in gone:
                found = self._entries.pop(ident, None)
                if found is not None:
                    self.used -= found[2]
                    dropped += 1
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self.used, "hits": self.hits,
                    "misses": self.misses, "decoded": self.decoded}
