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


def _series_points(times: list[str], values: np.ndarray, present: np.ndarray) -> str:
    idx = np.flatnonzero(present)
    texts = format_values(values[idx])
    return ",".join([f'[{times[i]},"{v}"]' for i, v in zip(idx.tolist(), texts, strict=True)])


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
            points = ",".join([f'[{t},"{v}"]' for t, v in zip(
                format_timestamps(ts), format_values(values), strict=True)])
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
        times = format_timestamps(result.times)
        order = sorted(range(len(value.labels)), key=lambda i: value.labels[i])
        parts = []
        for i in order:
            if value.present[i].any():
                parts.append(f'{{"metric":{_metric(value.labels[i])},"values":['
                             f'{_series_points(times, value.values[i], value.present[i])}]}}')
        data = f'{{"resultType":"matrix","result":[{",".join(parts)}]}}'
    return f'{{"status":"success","data":{data}}}'
