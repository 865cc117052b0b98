"""Values an expression evaluates to, over all evaluation steps at once.

An instant vector over ``T`` steps is a list of ``S`` label sets with two ``(S, T)`` arrays: the
values and whether the series has a sample at that step (a NaN value is a real value: 0/0). A
scalar is a ``(T,)`` array. Raw samples of selected series (``SeriesSet``) are one concatenated
pair of arrays with per-series offsets, so window bounds of every (series, step) come from one
``searchsorted``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemon.collector.promql.errors import ExecutionError
from edgemon.collector.promql.labels import Labels

__all__ = [
    "InstantVector",
    "RangeVector",
    "Scalar",
    "SeriesSet",
    "StringValue",
    "merge_same_labels",
]


@dataclass(slots=True)
class SeriesSet:
    """Raw samples: series ``i`` is ``ts[offsets[i]:offsets[i+1]]`` (ms, ascending)."""

    labels: list[Labels]
    ts: np.ndarray
    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def empty(cls) -> SeriesSet:
        return cls([], np.empty(0, np.int64), np.empty(0, np.float64), np.zeros(1, np.int64))

    @classmethod
    def build(cls, labels: list[Labels], ts: list[np.ndarray],
              values: list[np.ndarray]) -> SeriesSet:
        if not labels:
            return cls.empty()
        sizes = np.array([a.size for a in ts], dtype=np.int64)
        offsets = np.zeros(len(labels) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(labels, np.concatenate(ts).astype(np.int64, copy=False),
                   np.concatenate(values).astype(np.float64, copy=False), offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def series_index(self) -> np.ndarray:
        """The series number of every sample."""
        return np.repeat(np.arange(len(self.labels), dtype=np.int64), np.diff(self.offsets))

    def bounds(self, lo_t: np.ndarray, hi_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every series and step, the sample indices ``[lo, hi)`` with
        ``lo_t[step] <= ts <= hi_t[step]``; arrays of shape ``(S, T)``."""
        S, T = len(self.labels), lo_t.size
        if S == 0:
            return np.zeros((0, T), np.int64), np.zeros((0, T), np.int64)
        if self.ts.size == 0:
            zero = np.zeros((S, T), np.int64)
            return zero, zero.copy()
        base = min(int(self.ts.min()), int(lo_t.min()))
        top = max(int(self.ts.max()), int(hi_t.max()))
        span = top - base + 2
        if span * (S + 1) >= 2**62:
            raise ExecutionError("time range too wide for the number of series")
        keys = self.series_index() * span + (self.ts - base)
        row = (np.arange(S, dtype=np.int64) * span)[:, None]
        lo = np.searchsorted(keys, row + (lo_t - base)[None, :], side="left")
        hi = np.searchsorted(keys, row + (hi_t - base)[None, :], side="right")
        return lo.astype(np.int64, copy=False), hi.astype(np.int64, copy=False)


@dataclass(slots=True)
class Scalar:
    values: np.ndarray  # (T,)


@dataclass(slots=True)
class StringValue:
    value: str


@dataclass(slots=True)
class InstantVector:
    labels: list[Labels]
    values: np.ndarray  # (S, T) float64
    present: np.ndarray  # (S, T) bool

    @classmethod
    def empty(cls, steps: int) -> InstantVector:
        return cls([], np.zeros((0, steps)), np.zeros((0, steps), dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | list[int]) -> InstantVector:
        rows = np.asarray(rows, dtype=np.int64)
        return InstantVector([self.labels[i] for i in rows.tolist()], self.values[rows],
                             self.present[rows])

    def nonempty(self) -> InstantVector:
        """Without the series that have no sample at any step."""
        keep = self.present.any(axis=1)
        return self if keep.all() else self.take(np.flatnonzero(keep))


@dataclass(slots=True)
class RangeVector:
    """A matrix selector's samples and, per step, the end of its window (after offset/@)."""

    series: SeriesSet
    range_ms: int
    window_end: np.ndarray  # (T,) ms
    eval_time: np.ndarray  # (T,) ms: the step's time (predict_linear's "now")


def merge_same_labels(vec: InstantVector) -> InstantVector:
    """Series that ended up with the same labels (a name dropped, label_replace) become one;
    two of them with a sample at the same step is Prometheus's duplicate-labelset error."""
    if len(vec) < 2:
        return vec
    first: dict[Labels, int] = {}
    groups: dict[int, list[int]] = {}
    for i, labels in enumerate(vec.labels):
        j = first.setdefault(labels, i)
        if j != i:
            groups.setdefault(j, [j]).append(i)
    if not groups:
        return vec
    values, present = vec.values.copy(), vec.present.copy()
    drop = []
    for j, rows in groups.items():
        if (vec.present[rows].sum(axis=0) > 1).any():
            raise ExecutionError("vector cannot contain metrics with the same labelset")
        for i in rows[1:]:
            here = vec.present[i]
            values[j, here] = vec.values[i, here]
            present[j] |= here
            drop.append(i)
    keep = np.setdiff1d(np.arange(len(vec)), np.array(drop, dtype=np.int64))
    return InstantVector([vec.labels[i] for i in keep.tolist()], values[keep], present[keep])
