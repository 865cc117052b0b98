"""Chart data for one host: every metric it sends over one range, on one shared time axis.

``GET /edgemon/api/v1/hosts/{host}/charts?start=&end=&step=`` answers, in one response, what the
host page draws: one storage query per metric name (counters as per-second rates), run on the
read pool, aligned on the union of their step times (``x``) with ``null`` where a series has no
value. Where the data stops for longer than its usual spacing (an agent down, a network cut), an
extra ``x`` with every value ``null`` is put in, so charts draw a break there instead of a line
across the hole. The answer names the storage tier each query used (the API picks it from the
step: raw samples, 1-minute or 1-hour rollups).

Bounded per host: at most ``MAX_METRICS`` metric names and ``MAX_SERIES`` series per metric; a
metric over the limit carries an ``error`` instead of values, and the rest still come.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgemon.collector.storage.base import QueryTooLarge, RangeQuery, SeriesInfo, SeriesResult

__all__ = ["MAX_METRICS", "MAX_SERIES", "ChartMetric", "align", "chart_metrics", "metric_query"]

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


MetricAnswer = tuple[ChartMetric, list[SeriesResult] | None, str | None]


def run_metric(storage: Any, metric: ChartMetric, host: str, start_ms: int, end_ms: int,
               step_ms: int) -> MetricAnswer:
    """One metric's results, or the reason there are none (blocking: run it in the pool)."""
    try:
        return metric, storage.query(metric_query(metric, host, start_ms, end_ms, step_ms)), None
    except QueryTooLarge as exc:
        return metric, None, str(exc)
    except ValueError as exc:
        return metric, None, f"not charted: {exc}"


def _break_after(xs: list[int], step_ms: int) -> int:
    """The spacing beyond which two neighbouring times are a gap, not the usual interval."""
    if len(xs) < 2:
        return 0
    usual = statistics.median_low([b - a for a, b in itertools.pairwise(xs)])
    if usual <= step_ms:
        return int(step_ms * 1.5)  # one point per step: a missing step is a gap
    return 2 * usual  # sparser than the step: more than twice the usual spacing


def align(answers: Sequence[MetricAnswer], step_ms: int) -> dict[str, Any]:
    """``{"x": [...], "metrics": [...]}`` with every series' values on the shared ``x``."""
    times: set[int] = set()
    for _metric, results, _error in answers:
        for r in results or ():
            times.update(int(ts) for ts, _ in r.points)
    xs = sorted(times)
    gap = _break_after(xs, step_ms)
    axis: list[int] = []
    for i, x in enumerate(xs):
        if i and gap and x - xs[i - 1] > gap:
            axis.append(xs[i - 1] + gap // 2)  # a null row: the line breaks here
        axis.append(x)
    index = {x: i for i, x in enumerate(axis)}
    metrics = []
    for metric, results, error in answers:
        tiers = sorted({r.tier for r in results or ()})
        entry: dict[str, Any] = {"name": metric.name, "kind": metric.kind, "unit": metric.unit,
                                 "rate": metric.kind == "counter", "tier": tiers[0] if len(
                                     tiers) == 1 else None, "error": error, "series": []}
        for r in results or ():
            values: list[float | None] = [None] * len(axis)
            for ts, v in r.points:
                if math.isfinite(v):  # JSON has no NaN or infinity: those steps stay empty
                    values[index[int(ts)]] = v
            entry["series"].append({"labels": r.labels, "values": values})
        metrics.append(entry)
    return {"x": axis, "metrics": metrics}
