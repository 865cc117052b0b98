"""Chart data for one host: every metric it sends over one range, on one shared time axis.

``GET /edgemon/api/v1/hosts/{host}/charts?start=&end=&step=`` answers, in one response, what the
host page draws: one storage query per metric name (counters as per-second rates), all in one
read transaction by one call on the read pool, aligned on the union of their step times (``x``)
with ``null`` where a series has no value. Where the data stops for longer than its usual
spacing (an agent down, a network cut), an extra ``x`` with every value ``null`` is put in, so
charts draw a break there instead of a line across the hole. The answer names the storage tier
each query used (the API picks it from the step: raw samples, 1-minute or 1-hour rollups).

Bounded per host: at most ``MAX_METRICS`` metric names and ``MAX_SERIES`` series per metric; a
metric over the limit carries an ``error`` instead of values, and the rest still come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from edgemon.collector.storage.base import (
    QueryTooLarge,
    RangeQuery,
    SeriesArrays,
    SeriesInfo,
    SeriesResult,
)

__all__ = ["MAX_METRICS", "MAX_SERIES", "ChartMetric", "align", "chart_document", "chart_metrics",
           "metric_query", "run_metrics"]

MAX_METRICS = 200
MAX_SERIES = 256


@dataclass(frozen=True, slots=True)
class ChartMetric:
    name: str
    kind: str
    unit: str


def chart_metrics(series: Sequence[SeriesInfo]) -> tuple[list[ChartMetric], int]:
    """The host's metric names (first ``MAX_METRICS`` by name) and how many were left out."""
    found: dict[str, ChartMetric] = {}
    for s in series:
        if s.name not in found:
            found[s.name] = ChartMetric(s.name, s.kind, s.unit)
    names = sorted(found)
    return [found[n] for n in names[:MAX_METRICS]], max(0, len(names) - MAX_METRICS)


def metric_query(metric: ChartMetric, host: str, start_ms: int, end_ms: int,
                 step_ms: int) -> RangeQuery:
    counter = metric.kind == "counter"
    return RangeQuery(name=metric.name, start_ms=start_ms, end_ms=end_ms, step_ms=step_ms,
                      aggregation="sum" if counter else "avg", hosts=(host,), rate=counter,
                      max_series=MAX_SERIES, max_points=MAX_SERIES * 2000)


MetricAnswer = tuple[ChartMetric, "list[SeriesArrays] | list[SeriesResult] | None", str | None]


def run_metrics(storage: Any, metrics: Sequence[ChartMetric], host: str, start_ms: int,
                end_ms: int, step_ms: int) -> list[MetricAnswer]:
    """Each metric's results, or the reason there are none: one read transaction for them all
    (blocking: run it in the pool)."""
    queries: list[RangeQuery | None] = []
    failed: dict[int, str] = {}
    for i, metric in enumerate(metrics):
        try:
            queries.append(metric_query(metric, host, start_ms, end_ms, step_ms))
        except ValueError as exc:
            queries.append(None)
            failed[i] = f"not charted: {exc}"
    answers = iter(storage.query_arrays_many([q for q in queries if q is not None]))
    out: list[MetricAnswer] = []
    for i, (metric, query) in enumerate(zip(metrics, queries, strict=True)):
        if query is None:
            out.append((metric, None, failed[i]))
            continue
        got = next(answers)
        if isinstance(got, QueryTooLarge):
            out.append((metric, None, str(got)))
        elif isinstance(got, ValueError):
            out.append((metric, None, f"not charted: {got}"))
        else:
            out.append((metric, got, None))
    return out


def chart_document(storage: Any, host: str, start_ms: int, end_ms: int,
                   step_ms: int) -> bytes | None:
    """The charts answer for ``host`` as JSON, or None for a host the store does not know
    (blocking: one call in the pool does the whole page; a thread hop per metric cost more than
    most metrics' query)."""
    series = storage.series(host)
    if not series and host not in {h.host for h in storage.hosts()}:
        return None
    metrics, left_out = chart_metrics(series)
    doc = align(run_metrics(storage, metrics, host, start_ms, end_ms, step_ms), step_ms)
    doc.update(host=host, start=start_ms, end=end_ms, step_ms=step_ms,
               metrics_left_out=left_out,
               newest_sample_ms=max((s.last_ms for s in series), default=None))
    return msgspec.json.encode(doc)  # align left no NaN; C speed for ~50 k numbers


def _break_after(xs: np.ndarray, step_ms: int) -> int:
    """The spacing beyond which two neighbouring times are a gap, not the usual interval."""
    if xs.size < 2:
        return 0
    usual = int(np.sort(np.diff(xs))[(xs.size - 2) // 2])  # the low median
    if usual <= step_ms:
        return int(step_ms * 1.5)  # one point per step: a missing step is a gap
    return 2 * usual  # sparser than the step: more than twice the usual spacing


def _arrays(r: SeriesArrays | SeriesResult) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(r, SeriesArrays):
        return r.starts, r.values
    n = len(r.points)
    return (np.fromiter((int(p[0]) for p in r.points), dtype=np.int64, count=n),
            np.fromiter((p[1] for p in r.points), dtype=np.float64, count=n))


def align(answers: Sequence[MetricAnswer], step_ms: int) -> dict[str, Any]:
    """``{"x": [...], "metrics": [...]}`` with every series' values on the shared ``x``
    (numpy throughout: a 24 h page is tens of thousands of points)."""
    arrays = [[_arrays(r) for r in results or ()] for _, results, _ in answers]
    times = [ts for group in arrays for ts, _ in group if ts.size]
    xs = np.unique(np.concatenate(times)) if times else np.empty(0, dtype=np.int64)
    gap = _break_after(xs, step_ms)
    axis = xs
    if gap:
        breaks = np.flatnonzero(np.diff(xs) > gap) + 1
        if breaks.size:  # a null row after the last point before each hole: the line breaks
            axis = np.insert(xs, breaks, xs[breaks - 1] + gap // 2)
    metrics = []
    for (metric, results, error), group in zip(answers, arrays, strict=True):
        tiers = sorted({r.tier for r in results or ()})
        entry: dict[str, Any] = {"name": metric.name, "kind": metric.kind, "unit": metric.unit,
                                 "rate": metric.kind == "counter", "tier": tiers[0] if len(
                                     tiers) == 1 else None, "error": error, "series": []}
        for r, (ts, values) in zip(results or (), group, strict=True):
            row = np.full(axis.size, np.nan)
            row[np.searchsorted(axis, ts)] = values
            # JSON has no NaN or infinity: those steps stay empty, like steps without data
            entry["series"].append({"labels": r.labels, "values": [
                v if v - v == 0 else None for v in row.tolist()]})
        metrics.append(entry)
    return {"x": axis.tolist(), "metrics": metrics}
