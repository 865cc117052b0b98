"""Prometheus HTTP API JSON: ``{"status": "success", "data": ...}`` and the error document.

Sample values are strings (``"0.5"``, ``"NaN"``, ``"+Inf"``), timestamps numbers of seconds with
milliseconds, exactly as Prometheus writes them, built as text (a large matrix is most of a
dashboard's response time otherwise).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgemon.collector.promql.engine import QueryResult, matrix_series
from edgemon.collector.promql.errors import PromQLError
from edgemon.collector.promql.labels import Labels
from edgemon.collector.promql.model import InstantVector, RangeVector, Scalar, StringValue
from edgemon.collector.promql.numbers import (
    format_timestamp,
    format_timestamps,
    format_value,
    format_values,
)

__all__ = ["error_body", "query_body", "success_body"]


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def success_body(data: Any, warnings: list[str] | None = None) -> str:
    doc: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        doc["warnings"] = warnings
    return _dumps(doc)


def error_body(error: PromQLError | str, error_type: str | None = None) -> str:
    if isinstance(error, PromQLError):
        return _dumps({"status": "error", "errorType": error_type or error.error_type,
                       "error": str(error)})
    return _dumps({"status": "error", "errorType": error_type or "bad_data", "error": error})


def _metric(labels: Labels) -> str:
    return _dumps(dict(labels))


def _point(ts: str, value: float) -> str:
    return f'[{ts},"{format_value(value)}"]'


def _joined_points(heads: list[str], texts: list[str]) -> str:
    """``[t,"v"],[t,"v"]...`` of one series: ``heads[k]`` is ``"],[<t>,"`` (``_heads``) of its
    k-th point, ``texts[k]`` its value; strings interleaved and joined at C speed (an f-string
    per point costs ~3x more on a day of minutes)."""
    if not texts:
        return ""
    flat: list[str] = [""] * (2 * len(texts))
    flat[0::2] = heads
    flat[1::2] = texts
    flat[0] = flat[0][3:]  # the first point has no '"],' before it
    flat.append('"]')
    return "".join(flat)


def _heads(times: list[str]) -> list[str]:
    """``"],[<t>,"`` of every timestamp text (one join and one split: no string per point is
    built in Python)."""
    if not times:
        return []
    return ('"],[' + ',"\x00"],['.join(times) + ',"').split("\x00")


def _matrix_parts(result: QueryResult, value: InstantVector) -> list[str]:
    """One ``{"metric":...,"values":[...]}`` per series with a point, by labels; every value
    of every series written in one go (per-series calls cost more than the numbers)."""
    order = [i for i in sorted(range(len(value.labels)), key=lambda i: value.labels[i])
             if value.present[i].any()]
    if not order:
        return []
    heads = _heads(format_timestamps(result.times))
    present = value.present[order]
    rows, cols = np.nonzero(present)  # row-major: each series' points in time order
    texts = format_values(value.values[order][rows, cols])
    cuts = np.r_[0, np.cumsum(present.sum(axis=1))].tolist()
    cols_list = cols.tolist()
    parts = []
    for k, i in enumerate(order):
        lo, hi = cuts[k], cuts[k + 1]
        mine = heads if hi - lo == len(heads) else [heads[c] for c in cols_list[lo:hi]]
        parts.append(f'{{"metric":{_metric(value.labels[i])},"values":['
                     f'{_joined_points(mine, texts[lo:hi])}]}}')
    return parts


def query_body(result: QueryResult) -> str:
    """The whole success document of a query or query_range."""
    value = result.value
    t0 = format_timestamp(int(result.times[0]))
    if isinstance(value, Scalar):
        data = f'{{"resultType":"scalar","result":{_point(t0, float(value.values[0]))}}}'
    elif isinstance(value, StringValue):
        data = f'{{"resultType":"string","result":[{t0},{_dumps(value.value)}]}}'
    elif isinstance(value, RangeVector):
        parts = []
        for labels, ts, values in matrix_series(value):
            points = _joined_points(_heads(format_timestamps(ts)), format_values(values))
            parts.append(f'{{"metric":{_metric(labels)},"values":[{points}]}}')
        data = f'{{"resultType":"matrix","result":[{",".join(parts)}]}}'
    elif result.result_type == "vector":
        assert isinstance(value, InstantVector)
        parts = []
        for i, labels in enumerate(value.labels):
            if value.present[i, 0]:
                parts.append(f'{{"metric":{_metric(labels)},'
                             f'"value":{_point(t0, float(value.values[i, 0]))}}}')
        data = f'{{"resultType":"vector","result":[{",".join(parts)}]}}'
    else:
        assert isinstance(value, InstantVector)
        data = f'{{"resultType":"matrix","result":[{",".join(_matrix_parts(result, value))}]}}'
    return f'{{"status":"success","data":{data}}}'
