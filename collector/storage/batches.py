"""Stored batch payloads -> numpy columns, for every backend (compaction, queries, ``series``).

A payload of the common shape is read by ``stored_reader`` (ingest's typed msgspec decoder and
the protocol rules storage relies on; ingest checked the rest before storing it), any other with
ingest's own decoder (``edgemon.protocol.decode``: one decoder, one truth); either is then
checked for what storage relies on (types, label counts, offsets inside the batch's timestamps,
64-bit timestamps that increase) and turned into per-sample columns with numpy: one cumulative
sum for the timestamps, one for the values of all series entries. A payload that
fails any of it raises ``UnreadableBatch``: the backend moves that batch aside (quarantine)
instead of failing the compaction, query or alert rule that met it.

``BatchReader`` keeps the columns of recently read payloads (keyed by the payload bytes, bounded
in bytes), so a batch pending compaction is decoded once, not by every query and alert rule that
reads it; it also remembers unreadable payloads, which are then never decoded again.
``flatten`` turns the columns of many batches into flat (series index, timestamp, value, order)
arrays through a backend's series lookup.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from edgemon.collector.storage.encoding import cumsum_by_segment
from edgemon.collector.storage.stored_reader import read_common
from edgemon.protocol import ProtocolError
from edgemon.protocol.batch import KINDS
from edgemon.protocol.codec import decode_packed, decompress
from edgemon.protocol.limits import MAX_SCALE

__all__ = [
    "BatchColumns",
    "BatchReader",
    "MetricPart",
    "Resolve",
    "UnreadableBatch",
    "flatten",
    "read_batch",
    "rescale",
]

_I64 = np.int64

# (host_id, name, kind, unit, scale, label_keys) -> (table, miss) or None to skip the metric.
# ``table`` maps a tuple of label values to (series index, the series' scale); ``miss(labels)``
# is called for label values not in the table (it may add them) and returns the same or None to
# skip that entry.
Table = dict[tuple[str, ...], tuple[int, int]]
Miss = Callable[[tuple[str, ...]], "tuple[int, int] | None"]
Resolve = Callable[[int, str, str, str, int, tuple[str, ...]], "tuple[Table, Miss] | None"]


class UnreadableBatch(ValueError):
    """A stored payload that storage cannot read; ``reason`` says why (kept with the batch)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MetricPart(NamedTuple):
    """One metric of a batch: its series entries are ``first`` up to ``end`` of the batch's."""

    name: str
    kind: str
    unit: str
    scale: int
    keys: tuple[str, ...]
    first: int
    end: int


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """A readable batch, by series entry and by sample (absolute timestamps and values)."""

    metrics: tuple[MetricPart, ...]
    labels: list[tuple[str, ...]]  # label values of each entry
    bounds: np.ndarray  # entry i's samples are bounds[i]:bounds[i + 1]
    ts: np.ndarray  # int64 ms, per sample
    values: np.ndarray  # int64 at the metric's scale, per sample
    nbytes: int  # about what this object holds in memory

    def entry_sizes(self, first: int, end: int) -> np.ndarray:
        return np.diff(self.bounds[first:end + 1])


def _only(items: Iterable[Any], kind: type) -> bool:
    """Whether every item is exactly of ``kind`` (``int`` excludes ``bool``); C-speed."""
    return set(map(type, items)) <= {kind}


def _columns(batch: dict[str, Any], *, typed: bool = False) -> BatchColumns:
    """Check a decoded batch map for what storage reads, and lay it out as columns.

    Every check runs over a whole batch at once (``set(map(type, ...))``, numpy): a batch costs
    a few passes over its lists, not Python work per metric, series or sample. ``typed``: the
    map's types are those of the layout already (msgspec's typed decoder built it,
    ``stored_reader``; metrics and entries as tuples): the checks of types are skipped, those
    of values (counts, offsets, timestamps, kinds, scales) run all the same."""
    t = batch.get("t")
    if not typed and (type(t) is not list or not _only(t, int)):
        raise UnreadableBatch("t must be a non-empty list of integers")
    if not t:
        raise UnreadableBatch("t must be a non-empty list of integers")
    try:
        deltas = np.array(t, dtype=_I64)
    except OverflowError:
        raise UnreadableBatch("t: a timestamp delta does not fit 64 bits") from None
    with np.errstate(over="ignore"):
        times = np.cumsum(deltas)
    # positive deltas and a sum that did not wrap: strictly increasing, positive timestamps
    if deltas[0] <= 0 or (deltas[1:] <= 0).any() or (np.diff(times) <= 0).any():
        raise UnreadableBatch("t: timestamps must be positive, strictly increasing and fit 64 bits")
    metrics_in = batch.get("metrics")
    if not typed and (type(metrics_in) is not list or not _only(metrics_in, list)
                      or set(map(len, metrics_in)) - {6}):
        raise UnreadableBatch("metrics must be a list of "
                              "[name, kind, unit, scale, label_keys, series]")
    names, kinds, units, scales, keys, entry_lists = (
        zip(*metrics_in, strict=True) if metrics_in else ((),) * 6)
    if (not typed and (not _only(names, str) or not _only(units, str))) \
            or set(kinds) - set(KINDS):
        raise UnreadableBatch("a metric's name and unit are strings, its kind gauge or counter")
    if (not typed and not _only(scales, int)) \
            or (scales and not 0 <= min(scales) <= max(scales) <= MAX_SCALE):
        raise UnreadableBatch(f"a metric's scale is an integer in 0..{MAX_SCALE}")
    if not typed and (not _only(keys, list) or not _only(chain.from_iterable(keys), str)):
        raise UnreadableBatch("a metric's label keys are a list of strings")
    if not typed and not _only(entry_lists, list):
        raise UnreadableBatch("a metric's series are a list")
    entries = list(chain.from_iterable(entry_lists))
    if not typed and (not _only(entries, list) or set(map(len, entries)) - {3}):
        raise UnreadableBatch("a series entry is [label_values, offset, values]")
    label_lists, offsets, value_lists = zip(*entries, strict=True) if entries else ((),) * 3
    per_metric = np.fromiter(map(len, entry_lists), dtype=_I64, count=len(entry_lists))
    n_keys = np.repeat(np.fromiter(map(len, keys), dtype=_I64, count=len(keys)), per_metric)
    if (not typed and (not _only(label_lists, list)
                       or not _only(chain.from_iterable(label_lists), str))) \
            or (np.fromiter(map(len, label_lists), dtype=_I64, count=len(entries))
                != n_keys).any():
        raise UnreadableBatch("a series has one string value per label key of its metric")
    if (not typed and (not _only(offsets, int) or not _only(value_lists, list))) \
            or not all(value_lists):
        raise UnreadableBatch("a series has an integer offset and a non-empty list of values")
    flat = list(chain.from_iterable(value_lists))
    if not typed and not _only(flat, int):
        raise UnreadableBatch("values must be integers")
    try:
        raw_values = np.array(flat, dtype=_I64)
        offset_a = np.array(offsets, dtype=_I64)
    except OverflowError:
        raise UnreadableBatch("a value or an offset does not fit 64 bits") from None
    size_a = np.fromiter(map(len, value_lists), dtype=_I64, count=len(value_lists))
    if ((offset_a < 0) | (offset_a + size_a > times.size)).any():
        raise UnreadableBatch("a series runs outside the batch's timestamps")
    bounds = np.zeros(size_a.size + 1, dtype=_I64)
    np.cumsum(size_a, out=bounds[1:])
    entry = np.repeat(np.arange(size_a.size), size_a)
    within = np.arange(raw_values.size, dtype=_I64) - bounds[:-1][entry]
    with np.errstate(over="ignore"):
        values = cumsum_by_segment(raw_values, bounds[:-1], entry)  # values are delta-coded
    ts = times[offset_a[entry] + within]
    ends = np.cumsum(per_metric)
    metrics = tuple(map(MetricPart._make, zip(names, kinds, units, scales, map(tuple, keys),
                                              (ends - per_metric).tolist(), ends.tolist(),
                                              strict=True)))
    labels = list(map(tuple, label_lists))
    for column in (bounds, ts, values):
        column.flags.writeable = False  # shared by every reader of the cache
    nbytes = (ts.nbytes + values.nbytes + bounds.nbytes + 120 * len(labels)
              + 200 * len(metrics))
    return BatchColumns(metrics, labels, bounds, ts, values, nbytes)


def read_batch(payload: bytes) -> BatchColumns:
    """The columns of a stored payload; ``UnreadableBatch`` if storage cannot read it.

    A payload of the common shape is read without the protocol's rules run again
    (``stored_reader``: ingest checked them before it was stored) and its types checked by the
    decoder; any other, or one that fails any check that way, is read the complete way
    (ingest's own decoder, then every check here), which also names why it cannot be read."""
    try:
        packed = decompress(payload)  # once, for either way
        common = read_common(packed)
        if common is not None:
            with contextlib.suppress(UnreadableBatch):
                return _columns({"t": common[0], "metrics": common[1]}, typed=True)
        batch = decode_packed(packed).to_map()
    except ProtocolError as exc:
        raise UnreadableBatch(f"{exc.reason}: {exc}"[:500]) from None
    return _columns(batch)


class BatchReader:
    """``read_batch`` with the columns of recent payloads kept, up to ``max_bytes``.

    Entries are admitted while there is room and leave when the backend ``forget``s a payload
    (compacted or quarantined), so a scan over more pending batches than fit keeps the first
    ones cached instead of evicting everything. Unreadable payloads are remembered (their
    reason only) and raise again without being decoded. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.decoded = 0  # payloads decoded (cache misses), for tests and benchmarks
        self._cache: dict[bytes, BatchColumns | str] = {}  # str: why it is unreadable
        self._ids: dict[bytes, int] = {}  # the batch row of a cached payload, when known
        self._lock = threading.Lock()

    def read(self, payload: bytes, *, keep: bool = True, batch_id: int | None = None
             ) -> BatchColumns:
        """The payload's columns; ``keep=False`` for a last read (compaction): not cached.
        ``batch_id``: the row it was read from (``cached_ids``)."""
        hit = self._cache.get(payload)
        if hit is None:
            hit = _read_or_reason(payload)
            with self._lock:
                self.decoded += 1
                size = _size(payload, hit)
                if (keep or isinstance(hit, str)) and payload not in self._cache \
                        and self.used + size <= self.max_bytes:
                    self._cache[payload] = hit
                    self.used += size
                    if batch_id is not None:
                        self._ids[payload] = batch_id
        if isinstance(hit, str):
            raise UnreadableBatch(hit)
        return hit

    def forget(self, payloads: Iterable[bytes]) -> None:
        with self._lock:
            for payload in payloads:
                item = self._cache.pop(payload, None)
                self._ids.pop(payload, None)
                if item is not None:
                    self.used -= _size(payload, item)

    def cached_ids(self) -> dict[bytes, int]:
        """The cached payloads whose batch row is known, with its id."""
        with self._lock:
            return dict(self._ids)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._ids.clear()
            self.used = 0


def _read_or_reason(payload: bytes) -> BatchColumns | str:
    """The payload's columns, or why it cannot be read. An unexpected error (a bug, memory) is
    tried once more before the payload is called unreadable: it must not stop every reader of
    the store, nor get a good batch quarantined by a passing fault."""
    for attempt in (1, 2):
        try:
            return read_batch(payload)
        except UnreadableBatch as exc:
            return exc.reason
        except Exception as exc:
            if attempt == 2:
                return f"unexpected {type(exc).__name__}: {exc}"[:500]
    raise AssertionError("unreachable")


def _size(payload: bytes, item: BatchColumns | str) -> int:
    return len(payload) + (item.nbytes if isinstance(item, BatchColumns) else 100 + len(item))


def rescale(values: np.ndarray, from_scale: int, to_scale: int) -> np.ndarray:
    """Integers kept to ``from_scale`` decimals as integers kept to ``to_scale`` (rounding half
    to even when digits are dropped)."""
    if from_scale == to_scale:
        return values
    if to_scale > from_scale:
        with np.errstate(over="ignore"):
            return values * _I64(10 ** (to_scale - from_scale))
    div = 10 ** (from_scale - to_scale)
    quotient, remainder = np.divmod(values, div)
    up = (2 * remainder > div) | ((2 * remainder == div) & (quotient % 2 == 1))
    return quotient + up


def flatten(batches: Iterable[tuple[int, int, BatchColumns]], resolve: Resolve,
            names: set[str] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(series index, timestamp, value, order) of every sample of ``batches``.

    ``batches`` yields (host_id, order, columns); ``order`` (e.g. the row id) tells which of two
    samples with the same series and timestamp arrived last. Metrics not in ``names`` (when
    given) are skipped before any per-entry work. Samples are taken as slices of each batch's
    columns (one per run of consecutive taken entries), joined by one concatenate per column."""
    entry_sid: list[int] = []  # series index of every taken entry, in order
    slices: list[tuple[BatchColumns, int, int, int]] = []  # (columns, first entry, end, order)
    fixes: list[tuple[int, int, int, int]] = []  # (first sample, end, from scale, to scale)
    taken = 0  # samples taken so far
    for host_id, order, cols in batches:
        for m in cols.metrics:
            if names is not None and m.name not in names:
                continue
            found = resolve(host_id, m.name, m.kind, m.unit, m.scale, m.keys)
            if found is None:
                continue
            table, miss = found
            labels = cols.labels[m.first:m.end]
            hits = [table.get(k) for k in labels]
            if None in hits:
                hits = [h if h is not None else miss(k)
                        for h, k in zip(hits, labels, strict=True)]
            for first, end in _runs(hits, m.first):
                run = hits[first - m.first:end - m.first]
                entry_sid += [h[0] for h in run]  # type: ignore[index]
                if slices and slices[-1][0] is cols and slices[-1][2] == first:
                    slices[-1] = (cols, slices[-1][1], end, order)  # adjacent: one slice
                else:
                    slices.append((cols, first, end, order))
                if any(h[1] != m.scale for h in run):  # type: ignore[index]
                    at = taken
                    run_sizes = cols.entry_sizes(first, end).tolist()
                    for h, n in zip(run, run_sizes, strict=True):
                        if h[1] != m.scale:  # type: ignore[index]
                            fixes.append((at, at + n, m.scale, h[1]))  # type: ignore[index]
                        at += n
                taken += int(cols.bounds[end] - cols.bounds[first])
    if not taken:
        empty = np.empty(0, dtype=_I64)
        return empty, empty, empty, empty
    spans = [(int(c.bounds[first]), int(c.bounds[end])) for c, first, end, _ in slices]
    sizes = np.concatenate([c.entry_sizes(first, end) for c, first, end, _ in slices])
    sid = np.repeat(np.array(entry_sid, dtype=_I64), sizes)
    ts = np.concatenate([c.ts[lo:hi] for (c, *_), (lo, hi) in zip(slices, spans, strict=True)])
    values = np.concatenate([c.values[lo:hi]  # a new array: the cached columns stay as they are
                             for (c, *_), (lo, hi) in zip(slices, spans, strict=True)])
    order = np.repeat(np.array([s[3] for s in slices], dtype=_I64),
                      np.array([hi - lo for lo, hi in spans], dtype=_I64))
    for lo, hi, from_scale, to_scale in fixes:
        values[lo:hi] = rescale(values[lo:hi], from_scale, to_scale)
    return sid, ts, values, order


def _runs(hits: list[Any], first: int) -> list[tuple[int, int]]:
    """(first, end) entry numbers of the runs of entries the resolver did not skip."""
    if None not in hits:
        return [(first, first + len(hits))] if hits else []
    runs: list[tuple[int, int]] = []
    start = None
    for i, h in enumerate(hits):
        if h is None:
            if start is not None:
                runs.append((first + start, first + i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        runs.append((first + start, first + len(hits)))
    return runs
