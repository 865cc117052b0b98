"""Prometheus's matrix JSON as ``query_body`` writes it, byte for byte, against a plain
per-point reference (the way it was written before the texts were joined in one go): series
with every point, with gaps and with none, millisecond timestamps, NaN and infinities, and a
range selector's raw samples."""

from __future__ import annotations

import json

import numpy as np

from edgemon.collector.promql.engine import QueryResult
from edgemon.collector.promql.jsonfmt import query_body
from edgemon.collector.promql.model import InstantVector, RangeVector, SeriesSet
from edgemon.collector.promql.numbers import format_timestamp, format_value


def _reference(series: list[tuple[dict[str, str], list[tuple[int, float]]]]) -> str:
    parts = []
    for labels, points in series:
        text = ",".join(f'[{format_timestamp(t)},"{format_value(v)}"]' for t, v in points)
        metric = json.dumps(labels, separators=(",", ":"), ensure_ascii=False)
        parts.append(f'{{"metric":{metric},"values":[{text}]}}')
    return ('{"status":"success","data":{"resultType":"matrix","result":['
            + ",".join(parts) + "]}}")


def test_range_query_matrix_is_the_reference_text() -> None:
    times = np.array([1_700_000_000_000, 1_700_000_017_250, 1_700_000_034_500,
                      1_700_000_051_750], dtype=np.int64)
    labels = [(("__name__", "b"), ("host", "web-2")), (("__name__", "a"), ("host", "wéb-1")),
              (("__name__", "c"), ("host", "web-3"))]
    values = np.array([[0.5, 1e21, np.nan, -np.inf],
                       [1.0, 2.25, 3.0, 0.000025],
                       [7.0, 8.0, 9.0, 10.0]])
    present = np.array([[True, False, True, True],   # a gap
                        [True, True, True, True],    # every point
                        [False, False, False, False]])  # none: left out
    body = query_body(QueryResult("matrix", InstantVector(labels, values, present), times))
    expected = [(dict(labels[1]), [(int(t), float(v)) for t, v in zip(times, values[1],
                                                                       strict=True)]),
                (dict(labels[0]), [(int(times[k]), float(values[0, k])) for k in (0, 2, 3)])]
    assert body == _reference(expected)
    assert json.loads(body)["data"]["result"][1]["values"][0] == [1700000000, "0.5"]


def test_one_point_and_a_range_selector_instant_query() -> None:
    one = InstantVector([(("__name__", "x"),)], np.array([[4.0]]), np.array([[True]]))
    times = np.array([1_000], dtype=np.int64)
    assert query_body(QueryResult("matrix", one, times)) == _reference(
        [({"__name__": "x"}, [(1_000, 4.0)])])
    ts = np.array([400, 700, 1_000, 1_900], dtype=np.int64)
    series = SeriesSet.build([(("__name__", "x"), ("host", "h"))], [ts],
                             [np.array([1.5, np.inf, 3.0, 4.0])])
    selector = RangeVector(series, 600, np.array([1_000], dtype=np.int64), times)
    assert query_body(QueryResult("matrix", selector, times)) == _reference(
        [({"__name__": "x", "host": "h"}, [(400, 1.5), (700, np.inf), (1_000, 3.0)])])
