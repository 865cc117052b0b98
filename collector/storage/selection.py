"""Which series, hosts, groups and tier a query reads: the backend-independent part of a query.

A backend finds the rows; what they mean is decided here, the same way for every backend:
``Selection`` (the series a query or compaction step works on, by local index), host patterns
(exact ids or ``fnmatch`` globs), label filters, ``group_by`` groups, the tier ``auto`` picks,
the step-aligned range and the query's size limits.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemon.collector.storage.base import QueryTooLarge, RangeQuery

__all__ = [
    "HOUR",
    "MINUTE",
    "TIER_WIDTH_MS",
    "QueryRange",
    "Selection",
    "canonical_labels",
    "check_points_limit",
    "check_series_limit",
    "groups",
    "is_glob",
    "labels_match",
    "match_hosts",
    "pick_tier",
]

MINUTE = 60_000
HOUR = 60 * MINUTE
TIER_WIDTH_MS = {"raw": 1, "1m": MINUTE, "1h": HOUR}  # bucket width of each tier


def canonical_labels(keys: Iterable[str], values: Iterable[str]) -> str:
    """Labels as the JSON object with sorted keys that identifies a series."""
    return json.dumps(dict(sorted(zip(keys, values, strict=True))), separators=(",", ":"),
                      ensure_ascii=False)


def _parsed_labels(labels_json: str) -> dict[str, str]:
    """Parsed canonical labels, shared: the same few label sets repeat on every host (callers
    copy before handing them out). Long ones are not kept (at most ~4 MB in the cache)."""
    if len(labels_json) > 1024:
        parsed: dict[str, str] = json.loads(labels_json)
        return parsed
    return _parsed_short(labels_json)


@functools.lru_cache(maxsize=4096)
def _parsed_short(labels_json: str) -> dict[str, str]:
    parsed: dict[str, str] = json.loads(labels_json)
    return parsed


def labels_match(labels_json: str, want: dict[str, str]) -> bool:
    if not want:
        return True
    have = _parsed_labels(labels_json)
    return all(have.get(k) == v for k, v in want.items())


_GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def match_hosts(rows: Iterable[tuple[int, str]], patterns: tuple[str, ...]) -> dict[int, str]:
    """The (id, name) rows whose name is one of ``patterns`` or matches one of its globs."""
    if not patterns:
        return dict(rows)
    exact = {p for p in patterns if not is_glob(p)}
    globs = [p for p in patterns if is_glob(p)]
    return {hid: name for hid, name in rows
            if name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)}


class Selection:
    """The series a query or compaction step works on, by local index 0..n-1."""

    def __init__(self) -> None:
        self.sid: list[int | None] = []  # the backend's series id, None = only in pending batches
        self.host: list[int] = []
        self.labels: list[str] = []  # canonical JSON
        self.kind: list[str] = []
        self.unit: list[str] = []
        self.scale: list[int] = []
        self.index: dict[tuple[int, str], int] = {}

    def add(self, sid: int | None, host: int, labels: str, kind: str, unit: str,
            scale: int) -> int:
        i = len(self.sid)
        self.sid.append(sid)
        self.host.append(host)
        self.labels.append(labels)
        self.kind.append(kind)
        self.unit.append(unit)
        self.scale.append(scale)
        self.index[(host, labels)] = i
        return i

    def __len__(self) -> int:
        return len(self.sid)

    def counter(self) -> np.ndarray:
        return np.array([k == "counter" for k in self.kind], dtype=bool)

    def scales(self) -> np.ndarray:
        return np.array(self.scale, dtype=np.int64)


def groups(sel: Selection, group_by: tuple[str, ...] | None,
           hosts: dict[int, str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Group index of each selected series, and each group's host/labels/kind/unit."""
    group = np.zeros(len(sel), dtype=np.int64)
    found: list[dict[str, Any]] = []
    index: dict[tuple[str, ...], int] = {}
    for i in range(len(sel)):
        labels = dict(_parsed_labels(sel.labels[i]))
        if group_by is None:
            key: tuple[str, ...] = (str(i),)
            meta = {"host": hosts[sel.host[i]], "labels": labels}
        else:
            key = tuple(hosts[sel.host[i]] if k == "host" else labels.get(k, "")
                        for k in group_by)
            meta = {"host": hosts[sel.host[i]] if "host" in group_by else None,
                    "labels": {k: v for k, v in zip(group_by, key, strict=True) if k != "host"}}
        gi = index.get(key)
        if gi is None:
            gi = index[key] = len(found)
            found.append({**meta, "kind": sel.kind[i], "unit": sel.unit[i]})
        group[i] = gi
    return group, found


@dataclass(frozen=True, slots=True)
class QueryRange:
    """A query's range aligned to its step: points are step starts in [start, end); samples are
    read from ``read_from`` (one step earlier for a rate, which needs the previous step)."""

    start: int
    end: int
    read_from: int

    @classmethod
    def of(cls, q: RangeQuery) -> QueryRange:
        start = q.start_ms - q.start_ms % q.step_ms
        end = -(-q.end_ms // q.step_ms) * q.step_ms
        return cls(start, end, start - q.step_ms if q.rate else start)


def pick_tier(q: RangeQuery, cutoffs: dict[str, int]) -> str:
    """Explicit tiers are honoured. Auto: of the tiers still holding ``start`` (its retention
    cutoff <= start), the coarsest whose bucket divides the step (exact), else the coarsest not
    wider than the step, else the finest. p95 (not of rates) reads raw samples."""
    if q.combine_by == "p95" and not q.rate:
        return "raw"
    if q.tier != "auto":
        return q.tier
    covered = [t for t in ("1h", "1m", "raw") if q.start_ms >= cutoffs[t]]
    if not covered:
        return "1h"
    for t in covered:
        if q.step_ms % TIER_WIDTH_MS[t] == 0:
            return t
    for t in covered:
        if TIER_WIDTH_MS[t] <= q.step_ms:
            return t
    return covered[-1]


def check_series_limit(q: RangeQuery, n_series: int) -> None:
    """``QueryTooLarge`` when the query selects more series than allowed."""
    if n_series > q.max_series:
        raise QueryTooLarge(
            f"query matches {n_series} series of {q.name!r}, more than the limit of "
            f"{q.max_series}: select fewer hosts or add label filters (or group_by)")


def check_points_limit(q: RangeQuery, span: QueryRange, tier: str, n_groups: int) -> None:
    """``QueryTooLarge`` when the query could return more points than allowed."""
    width = TIER_WIDTH_MS[tier]
    step = q.step_ms
    n_steps = ((span.end - span.start) // step if step >= width
               else (span.end - span.start) // width + 1)
    if n_groups * n_steps > q.max_points:
        raise QueryTooLarge(
            f"query would return up to {n_groups * n_steps} points ({n_groups} "
            f"series x {n_steps} steps), more than the limit of {q.max_points}: use a "
            "larger step, a shorter range, or fewer hosts/series")
