"""One metric's columns of each pending batch, keyed by the batch row: what repeated readers of
the not-yet-compacted back-log (alert rules every cycle, dashboards) take instead of the payload.

A stored pending batch never changes until compaction or quarantine deletes its row, so the
columns of metric ``name`` in batch ``ident`` can be kept under (ident, name). ``ident`` is the
row's id together with its (host, instance, seq, received time): SQLite may give a deleted row's
id to a later batch, but never to one with the same host, instance and seq (ingest stores a
sequence number once), so a reused id cannot hit a stale entry. A reader selects the ids of the
pending batches in its range (no payloads), takes what is cached, and reads and decodes only the
payloads of the rest, inside the same read transaction: it sees every batch of its snapshot
exactly once whatever compaction did meanwhile, and a batch another collector stored on the same
database is simply a new id.

Decoding a batch for one metric projects every metric read recently (``hot``), so the few
metrics alert rules read cost one decode per batch in all, not one per rule. A projection holds
only its own slices (copied), about 16 bytes per sample plus its label values: the alert
metrics of a batch are a small part of it.

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
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edgemon.collector.storage.batches import BatchColumns, MetricPart

__all__ = ["ABSENT", "PendingMetricCache", "project"]

# (id, host_id, instance, seq, received_ms) of a batch row
Ident = tuple[int, int, str, int, int]
ABSENT = "absent"  # the batch has no samples of the metric
_ABSENT_BYTES = 120
_HOT_NAMES = 64  # metric names remembered as read recently


def project(columns: BatchColumns, name: str) -> BatchColumns | str:
    """The columns of metric ``name`` alone (copies), or ``ABSENT``."""
    parts = [m for m in columns.metrics if m.name == name]
    if not parts:
        return ABSENT
    metrics, labels, bounds, ts, values = [], [], [np.zeros(1, dtype=np.int64)], [], []
    at, base = 0, 0
    for m in parts:
        lo, hi = int(columns.bounds[m.first]), int(columns.bounds[m.end])
        metrics.append(MetricPart(m.name, m.kind, m.unit, m.scale, m.keys, at, at + m.end
                                  - m.first))
        at += m.end - m.first
        labels += columns.labels[m.first:m.end]
        bounds.append(columns.bounds[m.first + 1:m.end + 1] - lo + base)
        ts.append(columns.ts[lo:hi])
        values.append(columns.values[lo:hi])
        base += hi - lo
    out = [np.concatenate(bounds), np.concatenate(ts), np.concatenate(values)]
    for column in out:
        column.flags.writeable = False
    nbytes = sum(c.nbytes for c in out) + 120 * len(labels) + 200 * len(metrics) + 200
    return BatchColumns(tuple(metrics), labels, out[0], out[1], out[2], nbytes)


def _size(item: BatchColumns | str) -> int:
    return item.nbytes if isinstance(item, BatchColumns) else _ABSENT_BYTES


class PendingMetricCache:
    """Projected columns by (batch ident, metric name); see the module docstring."""

    def __init__(self, max_bytes: int, *, idle_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.idle_s = idle_s
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.decoded = 0  # batches projected (each read once from its payload)
        self._clock = clock
        # (ident, name) -> (item, size, last use); least recently used first
        self._entries: OrderedDict[tuple[Ident, str], tuple[BatchColumns | str, int, float]] = \
            OrderedDict()
        self._hot: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, ident: Ident, name: str) -> BatchColumns | str | None:
        """The cached projection (or ``ABSENT``), None when not cached."""
        key = (ident, name)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries[key] = (found[0], found[1], self._clock())
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]

    def read(self, name: str) -> list[str]:
        """Note that ``name`` is being read; the hot names to project on a decode (it first)."""
        with self._lock:
            self._hot[name] = None
            self._hot.move_to_end(name)
            while len(self._hot) > _HOT_NAMES:
                self._hot.popitem(last=False)
            return [name, *[n for n in reversed(self._hot) if n != name]]

    def fill(self, ident: Ident, columns: BatchColumns, names: list[str]) -> None:
        """Keep the projections of ``columns`` on ``names`` (as room allows)."""
        items = [(name, project(columns, name)) for name in names]
        now = self._clock()
        with self._lock:
            self.decoded += 1
            for name, item in items:
                key = (ident, name)
                size = _size(item)
                old = self._entries.pop(key, None)
                if old is not None:
                    self.used -= old[1]
                if not self._make_room(size, now):
                    continue
                self._entries[key] = (item, size, now)
                self.used += size

    def _make_room(self, size: int, now: float) -> bool:
        """Drop idle entries, least recently used first, until ``size`` more bytes fit."""
        while self.used + size > self.max_bytes and self._entries:
            key, (_, dropped, last) = next(iter(self._entries.items()))
            if now - last < self.idle_s:
                return False
            del self._entries[key]
            self.used -= dropped
        return self.used + size <= self.max_bytes

    def idents(self) -> set[Ident]:
        with self._lock:
            return {ident for ident, _ in self._entries}

    def forget(self, gone: Iterable[Ident]) -> int:
        """Drop the entries of batches no longer pending; how many entries."""
        drop = set(gone)
        if not drop:
            return 0
        with self._lock:
            keys = [k for k in self._entries if k[0] in drop]
            for key in keys:
                self.used -= self._entries.pop(key)[1]
            return len(keys)

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
