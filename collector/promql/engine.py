"""The PromQL engine's entry points: instant and range queries, series, labels, metadata.

    engine = Engine(storage)
    result = engine.range_query('sum by (host) (rate(network_received_bytes_total[5m]))',
                                start_ms, end_ms, step_ms)
    body = result.to_json()        # Prometheus's {"status": "success", "data": ...}

Blocking (storage reads, numpy): call it from a thread, never on the event loop. Errors are
``PromQLError`` subclasses carrying Prometheus's ``errorType`` and HTTP status.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import promql_parser as pp

from edgemon.collector.promql.errors import BadData, ExecutionError, PromQLError
from edgemon.collector.promql.evaluator import Evaluator, QueryLimits, Value, matcher_sets
from edgemon.collector.promql.labels import LABEL_NAME_RE, LabelMatcher, Labels
from edgemon.collector.promql.model import InstantVector, RangeVector, Scalar, StringValue
from edgemon.collector.promql.source import CatalogueEntry, SampleSource, tier_for_step
from edgemon.collector.promql.windows import window_bounds
from edgemon.collector.storage.base import Storage

__all__ = ["Engine", "PromQLError", "QueryLimits", "QueryResult", "matrix_series",
           "parse_expression", "parse_selector"]


def _register_prometheus_2_functions() -> None:
    """Functions Prometheus 2.x has that the parser (following 3.x) no longer knows, so that
    they are answered as unsupported by name rather than as unknown."""
    matrix, scalar, vector = pp.ValueType.Matrix, pp.ValueType.Scalar, pp.ValueType.Vector
    with contextlib.suppress(ValueError):  # registered already: the registry is process-wide
        pp.register_extra_functions([pp.Function("holt_winters", [matrix, scalar, scalar],
                                                 vector)])


_register_prometheus_2_functions()


def parse_expression(query: str) -> Any:
    """The AST, or ``BadData`` with the parser's message."""
    if not query.strip():
        raise BadData("parse error: no expression found in input")
    try:
        return pp.parse(query)
    except ValueError as exc:
        raise BadData(f"parse error: {exc}") from None
    except BaseException as exc:  # a panic inside the Rust parser surfaces as BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit | MemoryError):
            raise
        raise BadData(f"parse error: {exc}") from None


def parse_selector(text: str) -> list[list[LabelMatcher]]:
    """A ``match[]`` series selector: its matcher sets (``or`` alternatives)."""
    node = parse_expression(text)
    if type(node).__name__ != "VectorSelector":
        raise BadData(f"parse error: {text!r} is not a series selector")
    if node.offset is not None or node.at is not None:
        raise BadData("parse error: a series selector cannot have offset or @")
    sets = matcher_sets(node)
    for group in sets:
        if all(m.matches_empty() for m in group):
            raise BadData("match[] must contain at least one non-empty matcher")
    return sets


@dataclass(frozen=True, slots=True)
class QueryResult:
    """``result_type``: scalar, string, vector or matrix; ``value``: what evaluation gave."""

    result_type: str
    value: Value
    times: np.ndarray  # evaluation times (ms)


class Engine:
    def __init__(self, storage: Storage, limits: QueryLimits | None = None,
                 source: SampleSource | None = None) -> None:
        self.limits = limits or QueryLimits()
        self.source = source or SampleSource(storage)

    def _timeout(self, timeout_s: float | None) -> float:
        limit = self.limits.timeout_s
        wanted = limit if timeout_s is None or timeout_s <= 0 else min(timeout_s, limit)
        return time.monotonic() + wanted

    def instant_query(self, query: str, time_ms: int, timeout_s: float | None = None
                      ) -> QueryResult:
        node = parse_expression(query)
        times = np.array([time_ms], dtype=np.int64)
        ev = Evaluator(self.source, times, start_ms=time_ms, end_ms=time_ms, tier="raw",
                       limits=self.limits, deadline=self._timeout(timeout_s))
        value = ev.eval(node)
        kinds = {Scalar: "scalar", StringValue: "string", InstantVector: "vector",
                 RangeVector: "matrix"}
        return QueryResult(kinds[type(value)], value, times)

    def range_query(self, query: str, start_ms: int, end_ms: int, step_ms: int,
                    timeout_s: float | None = None) -> QueryResult:
        if step_ms <= 0:
            raise BadData("zero or negative query resolution step widths are not accepted. "
                          "Try a positive integer")
        if end_ms < start_ms:
            raise BadData("end timestamp must not be before start time")
        if (end_ms - start_ms) // step_ms >= self.limits.max_points_per_series:
            raise BadData(f"exceeded maximum resolution of "
                          f"{self.limits.max_points_per_series:,} points per timeseries. Try "
                          "decreasing the query resolution (?step=XX)")
        node = parse_expression(query)
        kind = _value_type(node)
        if kind not in ("scalar", "vector"):
            raise BadData(f'invalid expression type "{_TYPE_NAMES[kind]}" for range query, '
                          "must be Scalar or instant Vector")
        times = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
        ev = Evaluator(self.source, times, start_ms=start_ms, end_ms=end_ms,
                       tier=tier_for_step(step_ms), limits=self.limits,
                       deadline=self._timeout(timeout_s))
        value = ev.eval(node)
        if isinstance(value, Scalar):
            value = InstantVector([()], value.values[None, :],
                                  np.ones((1, times.size), dtype=bool))
        if not isinstance(value, InstantVector):
            raise ExecutionError("range query did not evaluate to a vector")
        return QueryResult("matrix", value, times)

    # -- series and labels -------------------------------------------------------------------

    def find_series(self, selectors: Iterable[str], start_ms: int | None, end_ms: int | None,
                    ) -> list[CatalogueEntry]:
        found: dict[Labels, CatalogueEntry] = {}
        for text in selectors:
            for group in parse_selector(text):
                for e in self.source.find(group, start_ms, end_ms):
                    found[e.labels] = e
        return [found[k] for k in sorted(found)]

    def _entries(self, selectors: list[str], start_ms: int | None,
                 end_ms: int | None) -> list[CatalogueEntry]:
        if selectors:
            return self.find_series(selectors, start_ms, end_ms)
        return [e for e in self.source.catalogue(None)
                if (start_ms is None or e.info.last_ms >= start_ms)
                and (end_ms is None or e.info.first_ms <= end_ms)]

    def label_names(self, selectors: list[str], start_ms: int | None = None,
                    end_ms: int | None = None) -> list[str]:
        names = {k for e in self._entries(selectors, start_ms, end_ms) for k, _ in e.labels}
        return sorted(names)

    def label_values(self, name: str, selectors: list[str], start_ms: int | None = None,
                     end_ms: int | None = None) -> list[str]:
        if not LABEL_NAME_RE.fullmatch(name):
            raise BadData(f"invalid label name: {name!r}")
        values = {v for e in self._entries(selectors, start_ms, end_ms)
                  for k, v in e.labels if k == name}
        return sorted(values)

    def metadata(self, metric: str | None = None, limit: int | None = None
                 ) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for name, (kind, unit) in sorted(self.source.metadata().items()):
            if metric is not None and name != metric:
                continue
            if limit is not None and 0 <= limit <= len(out):
                break
            out[name] = [{"type": kind, "help": _help(name, kind, unit), "unit": unit}]
        return out


def _help(name: str, kind: str, unit: str) -> str:
    return f"edgemon agent {kind}" + (f" in {unit}" if unit else "")


_TYPE_NAMES = {"matrix": "range vector", "string": "string", "scalar": "scalar",
               "vector": "instant vector"}


def _value_type(node: Any) -> str:
    kind = type(node).__name__
    if kind == "ParenExpr":
        return _value_type(node.expr)
    if kind == "NumberLiteral":
        return "scalar"
    if kind == "StringLiteral":
        return "string"
    if kind in ("MatrixSelector", "SubqueryExpr"):
        return "matrix"
    if kind == "Call":
        return str(node.func.return_type).rsplit(".", 1)[-1].lower()
    if kind == "BinaryExpr":
        if _value_type(node.lhs) == "scalar" and _value_type(node.rhs) == "scalar":
            return "scalar"
        return "vector"
    if kind == "UnaryExpr":
        return _value_type(node.expr)
    return "vector"


def matrix_series(value: RangeVector) -> list[tuple[Labels, np.ndarray, np.ndarray]]:
    """A top-level range selector's samples (instant query): every window's raw samples."""
    lo, hi = window_bounds(value)
    out = []
    for i, labels in enumerate(value.series.labels):
        a, b = int(lo[i, 0]), int(hi[i, 0])
        if b > a:
            out.append((labels, value.series.ts[a:b], value.series.values[a:b]))
    return out

