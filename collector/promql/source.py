"""Samples for selectors, read through the ``Storage`` interface (``series`` and ``query``).

The series catalogue (``Storage.series()``: names, hosts, labels, kind, unit, first/last sample)
resolves the matchers; then one ``Storage.query`` per metric name reads the wanted hosts'
samples of one tier with ``aggregation="last"``:

* ``raw``: a step of 1 ms, so every stored sample comes back with its own timestamp;
* ``1m`` / ``1h`` rollups: one sample per bucket, the bucket's last value, stamped at the
  bucket's last millisecond. Chosen from the query step (``tier_for_step``): dashboards over
  weeks read minute or hour buckets instead of millions of raw samples.

The catalogue is cached for ``CATALOGUE_TTL_S`` (a dashboard sends its panels' queries at once);
new series become visible to PromQL at most that much later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from edgemon.collector.promql.aliases import ALIASES, alias_labels, aliases_of
from edgemon.collector.promql.errors import ExecutionError
from edgemon.collector.promql.labels import (
    HOST_LABEL,
    METRIC_NAME,
    LabelMatcher,
    Labels,
    matches_all,
    metric_name,
    series_labels,
)
from edgemon.collector.promql.model import SeriesSet
from edgemon.collector.storage.base import RangeQuery, SeriesInfo, Storage

__all__ = ["CATALOGUE_TTL_S", "TIER_WIDTH_MS", "CatalogueEntry", "SampleSource",
           "tier_for_step"]

CATALOGUE_TTL_S = 5.0
TIER_WIDTH_MS = {"raw": 1, "1m": 60_000, "1h": 3_600_000}
_ONE_MINUTE_TIER_FROM_MS = 15 * 60_000
_ONE_HOUR_TIER_FROM_MS = 6 * 3_600_000
_NO_LIMIT = 2**62
ALIAS_NAMES = {a.name: a for a in ALIASES}


def tier_for_step(step_ms: int) -> str:
    """Raw samples below a 15-minute step, 1-minute buckets up to 6 hours, then hourly."""
    if step_ms >= _ONE_HOUR_TIER_FROM_MS:
        return "1h"
    if step_ms >= _ONE_MINUTE_TIER_FROM_MS:
        return "1m"
    return "raw"


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    labels: Labels
    info: SeriesInfo  # the stored series (of an alias: the one it reads)
    constant: float | None = None  # an info alias: this value instead of the stored ones
    alias: bool = False


def _entries(infos: list[SeriesInfo], natives: bool, aliases: str | None) -> list[
        CatalogueEntry]:
    """Catalogue entries of stored series (``natives``) and of their aliases (``aliases``:
    ``"*"`` all, a name only that one, None none)."""
    out = []
    for s in infos:
        if natives:
            out.append(CatalogueEntry(series_labels(s.name, s.host, s.labels), s))
        for alias in aliases_of(s.name) if aliases else ():
            if aliases in ("*", alias.name):
                labels = series_labels(alias.name, s.host, alias_labels(alias, s.host,
                                                                        s.labels))
                out.append(CatalogueEntry(labels, s, alias.constant, alias=True))
    return out


class SampleSource:
    """Resolves matchers and loads samples; shared by all queries (thread-safe)."""

    def __init__(self, storage: Storage, *, ttl_s: float = CATALOGUE_TTL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cache: dict[str | None, tuple[float, list[CatalogueEntry]]] = {}
        # per cached entry list (by identity): its entries by host
        self._host_index: dict[int, tuple[list[CatalogueEntry],
                                          dict[str, list[CatalogueEntry]]]] = {}

    # -- catalogue ---------------------------------------------------------------------------

    def catalogue(self, name: str | None = None) -> list[CatalogueEntry]:
        """Every stored series (of metric ``name``), with its Prometheus labels."""
        now = self._monotonic()
        with self._lock:
            hit = self._cache.get(name)
            if hit is None and name is not None:
                every = self._cache.get(None)
                if every is not None and now - every[0] < self.ttl_s:
                    return [e for e in every[1] if metric_name(e.labels) == name]
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        alias = ALIAS_NAMES.get(name) if name is not None else None
        if alias is not None:  # a node_exporter name: the series of the metric it reads
            entries = _entries(self.storage.series(None, alias.source), False, alias.name)
        else:
            entries = _entries(self.storage.series(None, name), True,
                               "*" if name is None else None)
        with self._lock:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[name] = (now, entries)
        return entries

    def find(self, matchers: Iterable[LabelMatcher], mint: int | None = None,
             maxt: int | None = None) -> list[CatalogueEntry]:
        """Series matching every matcher with samples in ``[mint, maxt]`` (None: unbounded)."""
        matchers = list(matchers)
        exact = [m.value for m in matchers if m.name == METRIC_NAME and m.op == "="]
        entries = self.catalogue(exact[0] if exact else None)
        rest = [m for m in matchers if not (m.name == METRIC_NAME and m.op == "=")]
        hosts = [m.value for m in rest if m.name == HOST_LABEL and m.op == "="]
        if hosts:  # a dashboard's usual host="x": look it up instead of scanning the fleet
            entries = self._by_host(entries).get(hosts[0], [])
        return [e for e in entries
                if (mint is None or e.info.last_ms >= mint)
                and (maxt is None or e.info.first_ms <= maxt)
                and matches_all(e.labels, rest)]

    def _by_host(self, entries: list[CatalogueEntry]) -> dict[str, list[CatalogueEntry]]:
        key = id(entries)
        with self._lock:
            found = self._host_index.get(key)
            if found is not None and found[0] is entries:
                return found[1]
        index: dict[str, list[CatalogueEntry]] = {}
        for e in entries:
            index.setdefault(e.info.host, []).append(e)
        with self._lock:
            if len(self._host_index) > 1000:
                self._host_index.clear()
            self._host_index[key] = (entries, index)
        return index

    # -- samples -----------------------------------------------------------------------------

    def load(self, entries: list[CatalogueEntry], mint: int, maxt: int, tier: str,
             max_samples: int, check: Callable[[], None] = lambda: None,
             rollup: str = "last") -> SeriesSet:
        """Samples with ``mint <= t <= maxt`` of ``entries`` from ``tier``; from a rollup tier
        each bucket's ``rollup`` (``last``, or ``max``/``min`` for max/min_over_time, which
        keeps peaks that the minute's last value would lose)."""
        if not entries or maxt < mint:
            return SeriesSet.empty()
        width = TIER_WIDTH_MS[tier]
        by_name: dict[str, list[CatalogueEntry]] = {}
        for e in entries:
            by_name.setdefault(e.info.name, []).append(e)
        found: dict[Labels, tuple[np.ndarray, np.ndarray]] = {}
        loaded = 0
        for name, group in by_name.items():
            check()
            wanted: dict[tuple[str, Labels], list[CatalogueEntry]] = {}
            for e in group:
                wanted.setdefault((e.info.host, tuple(sorted(e.info.labels.items()))),
                                  []).append(e)
            common = _common_labels([e.info.labels for e in group])
            results = self.storage.query_arrays(RangeQuery(
                name=name, start_ms=mint - (width - 1), end_ms=maxt + 1, step_ms=width,
                aggregation="last" if tier == "raw" else rollup,  # type: ignore[arg-type]
                hosts=tuple(sorted({e.info.host for e in group})),
                labels=common, tier=tier, max_series=_NO_LIMIT, max_points=_NO_LIMIT))
            for r in results:
                targets = wanted.get((r.host or "", tuple(sorted(r.labels.items()))))
                if not targets or not r.starts.size:
                    continue
                ts, stored = r.starts, r.values
                if width > 1:  # a bucket's last millisecond; the range's edge buckets may stick out
                    ts = ts + (width - 1)
                    keep = (ts >= mint) & (ts <= maxt)
                    if not keep.all():
                        ts, stored = ts[keep], stored[keep]
                if not ts.size:
                    continue
                for e in targets:
                    values = stored if e.constant is None else np.full(ts.size, e.constant)
                    found[e.labels] = (ts, values)
                    loaded += ts.size
                if loaded > max_samples:
                    raise ExecutionError("query processing would load too many samples "
                                         "into memory in query execution")
        order = sorted(found)
        return SeriesSet.build(order, [found[k][0] for k in order], [found[k][1] for k in order])

    def metadata(self) -> dict[str, tuple[str, str]]:
        """Metric name -> (kind, unit) of every stored metric and alias."""
        out: dict[str, tuple[str, str]] = {}
        for e in self.catalogue(None):
            name = metric_name(e.labels)
            kind = "gauge" if e.constant is not None else e.info.kind
            out.setdefault(name, (kind, "" if e.constant is not None else e.info.unit))
        return out


def _common_labels(label_sets: list[dict[str, str]]) -> dict[str, str]:
    """The agent labels every one of ``label_sets`` has with the same value (a storage filter
    that narrows the read without losing any wanted series)."""
    if not label_sets:
        return {}
    common = dict(label_sets[0])
    for labels in label_sets[1:]:
        common = {k: v for k, v in common.items() if labels.get(k) == v}
        if not common:
            break
    return common
