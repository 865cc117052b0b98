"""Evaluation of a parsed PromQL expression (``promql_parser`` AST) over all steps at once.

One ``Evaluator`` per query: it walks the tree once; every node yields a value for every step
(``model.py``). Selectors read through ``SampleSource`` (cached within the query), the limits
(series, samples, deadline) are checked as the tree is walked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import promql_parser as pp

from edgemon.collector.promql import functions as fn
from edgemon.collector.promql.aggregate import aggregate
from edgemon.collector.promql.binary import Matching, binary
from edgemon.collector.promql.errors import (
    BadData,
    ExecutionError,
    QueryTimeout,
    Unsupported,
)
from edgemon.collector.promql.labels import (
    METRIC_NAME,
    LabelMatcher,
    Labels,
    drop_name,
    labels_from,
)
from edgemon.collector.promql.model import (
    InstantVector,
    RangeVector,
    Scalar,
    SeriesSet,
    StringValue,
    merge_same_labels,
)
from edgemon.collector.promql.source import CatalogueEntry, SampleSource
from edgemon.collector.promql.windows import RANGE_FUNCTIONS, window_bounds

__all__ = ["Evaluator", "QueryLimits", "Value", "matcher_sets"]

Value = Scalar | StringValue | InstantVector | RangeVector
_MS = timedelta(milliseconds=1)
_TOO_MANY_SAMPLES = ("query processing would load too many samples into memory in query "
                     "execution")


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """Bounds on one query; exceeding one is an ``execution`` error naming it."""

    max_series: int = 10_000  # series selected by all of a query's selectors together
    max_samples: int = 50_000_000  # raw samples loaded plus points of any intermediate result
    max_points_per_series: int = 11_000  # a range query's steps (Prometheus's limit)
    timeout_s: float = 30.0  # default and upper bound of the ``timeout`` parameter
    lookback_ms: int = 300_000  # how far back an instant selector looks for a sample


def _ms(delta: timedelta | None) -> int:
    return 0 if delta is None else delta // _MS


def matcher_sets(vs: Any) -> list[list[LabelMatcher]]:
    """The selector's matchers (one list per ``or`` alternative), name included."""
    ops = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}

    def convert(matchers: list[Any]) -> list[LabelMatcher]:
        out = []
        for m in matchers:
            try:
                out.append(LabelMatcher.create(m.name, ops[str(m.op).rsplit('.', 1)[-1]],
                                                m.value))
            except ValueError as exc:
                raise BadData(str(exc)) from None
        return out

    base = convert(vs.matchers.matchers)
    if vs.name:
        base.append(LabelMatcher.create(METRIC_NAME, "=", vs.name))
    alternatives = [convert(group) for group in (vs.matchers.or_matchers or [])]
    if not alternatives:
        return [base]
    name = [LabelMatcher.create(METRIC_NAME, "=", vs.name)] if vs.name else []
    return [[*group, *name] for group in alternatives]


class Evaluator:
    def __init__(self, source: SampleSource, times: np.ndarray, *, start_ms: int, end_ms: int,
                 tier: str, limits: QueryLimits, deadline: float) -> None:
        self.source = source
        self.times = times.astype(np.int64)
        self.steps = self.times.size
        self.start_ms, self.end_ms = start_ms, end_ms
        self.tier = tier
        self.limits = limits
        self.deadline = deadline
        self.selected = 0
        self.loaded = 0
        self._cache: dict[tuple[Any, ...], SeriesSet] = {}

    # -- limits ------------------------------------------------------------------------------

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise QueryTimeout()

    def _count_cells(self, rows: int) -> None:
        if rows * self.steps > self.limits.max_samples:
            raise ExecutionError(_TOO_MANY_SAMPLES)

    # -- dispatch ----------------------------------------------------------------------------

    def eval(self, node: Any) -> Value:
        self.check()
        kind = type(node).__name__
        method = getattr(self, f"_eval_{kind}", None)
        if method is None:
            raise Unsupported(f"expression {kind}")
        return method(node)  # type: ignore[no-any-return]

    def scalar_arg(self, node: Any) -> np.ndarray:
        value = self.eval(node)
        if not isinstance(value, Scalar):
            raise BadData("expected a scalar")
        return value.values

    def vector_arg(self, node: Any) -> InstantVector:
        value = self.eval(node)
        if not isinstance(value, InstantVector):
            raise BadData("expected an instant vector")
        return value

    def string_arg(self, node: Any) -> str:
        value = self.eval(node)
        if not isinstance(value, StringValue):
            raise BadData("expected a string")
        return value.value

    # -- leaves ------------------------------------------------------------------------------

    def _eval_NumberLiteral(self, node: Any) -> Scalar:
        return Scalar(np.full(self.steps, float(node.val)))

    def _eval_StringLiteral(self, node: Any) -> StringValue:
        return StringValue(str(node.val))

    def _eval_ParenExpr(self, node: Any) -> Value:
        return self.eval(node.expr)

    def _eval_SubqueryExpr(self, node: Any) -> Value:
        raise Unsupported(f"subquery {node.prettify()}")

    def _eval_UnaryExpr(self, node: Any) -> Value:
        value = self.eval(node.expr)
        if isinstance(value, Scalar):
            return Scalar(-value.values)
        if isinstance(value, InstantVector):
            return merge_same_labels(InstantVector([drop_name(x) for x in value.labels],
                                                   -value.values, value.present))
        raise BadData("unary minus needs a scalar or an instant vector")

    def _selector_times(self, vs: Any) -> np.ndarray:
        at = vs.at
        if at is None:
            times = self.times
        elif at.type == pp.AtModifierType.Start:
            times = np.full(self.steps, self.start_ms, dtype=np.int64)
        elif at.type == pp.AtModifierType.End:
            times = np.full(self.steps, self.end_ms, dtype=np.int64)
        else:
            moment: datetime = at.at
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            at_ms = round(moment.timestamp() * 1000)
            times = np.full(self.steps, at_ms, dtype=np.int64)
        return times - _ms(vs.offset)

    def _select(self, vs: Any, times: np.ndarray, reach_ms: int,
                rollup: str = "last") -> SeriesSet:
        """Samples of ``vs`` in ``[min(times) - reach, max(times)]`` (``rollup``: which value
        of a rollup bucket, see ``SampleSource.load``)."""
        mint, maxt = int(times.min()) - reach_ms, int(times.max())
        sets = matcher_sets(vs)
        key = (str([[str(m) for m in group] for group in sets]), mint, maxt, rollup)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        entries: dict[Labels, CatalogueEntry] = {}
        for group in sets:
            if all(m.matches_empty() for m in group):
                raise BadData("vector selector must contain at least one non-empty matcher")
            for e in self.source.find(group, mint, maxt):
                entries[e.labels] = e
        self.selected += len(entries)
        if self.selected > self.limits.max_series:
            raise ExecutionError(
                f"the query selects more than {self.limits.max_series} series (the limit): "
                "narrow its selectors with more label matchers (e.g. host=\"...\")")
        series = self.source.load(list(entries.values()), mint, maxt, self.tier,
                                  self.limits.max_samples - self.loaded, self.check, rollup)
        self.loaded += series.ts.size
        self._cache[key] = series
        return series

    def _eval_VectorSelector(self, node: Any) -> InstantVector:
        return self._instant_selector(node)[0]

    def _instant_selector(self, vs: Any) -> tuple[InstantVector, np.ndarray]:
        """The vector and each point's sample time (for ``timestamp()``)."""
        times = self._selector_times(vs)
        lookback = self.limits.lookback_ms
        series = self._select(vs, times, lookback)
        self._count_cells(len(series))
        lo, hi = series.bounds(times - lookback, times)
        top = max(series.ts.size - 1, 0)
        last = np.clip(hi - 1, 0, top)
        vec = InstantVector(series.labels, series.values[last] if series.ts.size else
                            np.zeros(lo.shape), hi > lo)
        sample_ts = series.ts[last] if series.ts.size else np.zeros(lo.shape, np.int64)
        return vec, sample_ts

    def _eval_MatrixSelector(self, node: Any, rollup: str = "last") -> RangeVector:
        vs = node.vector_selector
        range_ms = _ms(node.range)
        times = self._selector_times(vs)
        series = self._select(vs, times, range_ms, rollup)
        return RangeVector(series, range_ms, times, self.times)

    # -- functions ---------------------------------------------------------------------------

    def _eval_Call(self, node: Any) -> Value:
        name = node.func.name
        args = list(node.args)
        if name in RANGE_FUNCTIONS:
            return self._range_function(name, args)
        if name in fn.MATH_FUNCTIONS:
            return fn.apply_math(name, self.vector_arg(args[0]))
        if name in fn.DATE_FUNCTIONS:
            vec = (self.vector_arg(args[0]) if args else
                   InstantVector([()], (self.times / 1000)[None, :],
                                 np.ones((1, self.steps), dtype=bool)))
            return fn.date_function(name, vec)
        handler = getattr(self, f"_fn_{name}", None)
        if handler is None:
            raise Unsupported(f"function {name}()")
        return handler(args)  # type: ignore[no-any-return]

    def _range_function(self, name: str, args: list[Any]) -> InstantVector:
        matrix_at = 1 if name == "quantile_over_time" else 0
        node = args[matrix_at]
        while type(node).__name__ == "ParenExpr":
            node = node.expr
        if type(node).__name__ == "SubqueryExpr":
            raise Unsupported(f"subquery {node.prettify()} in {name}()")
        if type(node).__name__ != "MatrixSelector":
            raise Unsupported(f"{name}() of a {type(node).__name__}")
        rv = self._eval_MatrixSelector(node, _ROLLUP_OF.get(name, "last"))
        self._count_cells(len(rv.series))
        others = [self.scalar_arg(a) for i, a in enumerate(args) if i != matrix_at]
        if name == "quantile_over_time":
            values, present = RANGE_FUNCTIONS[name](others[0], rv)
        else:
            values, present = RANGE_FUNCTIONS[name](rv, *others)
        labels = rv.series.labels
        if name != "last_over_time":
            labels = [drop_name(x) for x in labels]
        return merge_same_labels(InstantVector(labels, values, present).nonempty())

    def _fn_time(self, _args: list[Any]) -> Scalar:
        return Scalar(self.times / 1000)

    def _fn_vector(self, args: list[Any]) -> InstantVector:
        return InstantVector([()], self.scalar_arg(args[0])[None, :].copy(),
                             np.ones((1, self.steps), dtype=bool))

    def _fn_scalar(self, args: list[Any]) -> Scalar:
        vec = self.vector_arg(args[0])
        if not len(vec):
            return Scalar(np.full(self.steps, np.nan))
        one = vec.present.sum(axis=0) == 1
        value = np.where(vec.present, vec.values, 0.0).sum(axis=0)
        return Scalar(np.where(one, value, np.nan))

    def _fn_timestamp(self, args: list[Any]) -> InstantVector:
        node = args[0]
        while type(node).__name__ == "ParenExpr":
            node = node.expr
        if type(node).__name__ == "VectorSelector":
            vec, sample_ts = self._instant_selector(node)
            values = sample_ts / 1000
        else:
            vec = self.vector_arg(node)
            values = np.broadcast_to(self.times / 1000, vec.values.shape)
        return merge_same_labels(InstantVector([drop_name(x) for x in vec.labels],
                                               np.array(values, dtype=np.float64),
                                               vec.present))

    def _absent_labels(self, node: Any) -> Labels:
        """Prometheus: the selector's ``=`` matchers (not the name), unless a label has other
        matchers too."""
        while type(node).__name__ == "ParenExpr":
            node = node.expr
        kind = type(node).__name__
        if kind == "MatrixSelector":
            node = node.vector_selector
        elif kind != "VectorSelector":
            return ()
        out: dict[str, str] = {}
        other: set[str] = set()
        for m in matcher_sets(node)[0]:
            if m.name == METRIC_NAME:
                continue
            if m.op == "=" and m.name not in out:
                out[m.name] = m.value
            else:
                other.add(m.name)
        return labels_from({k: v for k, v in out.items() if k not in other})

    def _fn_absent(self, args: list[Any]) -> InstantVector:
        vec = self.vector_arg(args[0])
        gone = ~vec.present.any(axis=0) if len(vec) else np.ones(self.steps, dtype=bool)
        return InstantVector([self._absent_labels(args[0])], np.ones((1, self.steps)),
                             gone[None, :])

    def _fn_absent_over_time(self, args: list[Any]) -> InstantVector:
        node = args[0]
        while type(node).__name__ == "ParenExpr":
            node = node.expr
        if type(node).__name__ != "MatrixSelector":
            raise Unsupported("absent_over_time() of a subquery")
        rv = self._eval_MatrixSelector(node)
        lo, hi = window_bounds(rv)
        gone = ~(hi > lo).any(axis=0) if len(rv.series) else np.ones(self.steps, dtype=bool)
        return InstantVector([self._absent_labels(node)], np.ones((1, self.steps)),
                             gone[None, :])

    def _fn_round(self, args: list[Any]) -> InstantVector:
        nearest = self.scalar_arg(args[1]) if len(args) > 1 else np.ones(self.steps)
        return fn.round_to(self.vector_arg(args[0]), nearest[None, :])

    def _fn_clamp(self, args: list[Any]) -> InstantVector:
        return fn.clamp(self.vector_arg(args[0]), self.scalar_arg(args[1])[None, :],
                        self.scalar_arg(args[2])[None, :])

    def _fn_clamp_min(self, args: list[Any]) -> InstantVector:
        return fn.clamp(self.vector_arg(args[0]), self.scalar_arg(args[1])[None, :], None)

    def _fn_clamp_max(self, args: list[Any]) -> InstantVector:
        return fn.clamp(self.vector_arg(args[0]), None, self.scalar_arg(args[1])[None, :])

    def _fn_sort(self, args: list[Any]) -> InstantVector:
        return fn.sort_vector(self.vector_arg(args[0]), descending=False)

    def _fn_sort_desc(self, args: list[Any]) -> InstantVector:
        return fn.sort_vector(self.vector_arg(args[0]), descending=True)

    def _fn_label_replace(self, args: list[Any]) -> InstantVector:
        vec = self.vector_arg(args[0])
        dst, repl, src, regex = (self.string_arg(a) for a in args[1:5])
        return fn.label_replace(vec, dst, repl, src, regex)

    def _fn_label_join(self, args: list[Any]) -> InstantVector:
        vec = self.vector_arg(args[0])
        dst, sep = self.string_arg(args[1]), self.string_arg(args[2])
        return fn.label_join(vec, dst, sep, [self.string_arg(a) for a in args[3:]])

    # -- operators ---------------------------------------------------------------------------

    def _eval_AggregateExpr(self, node: Any) -> InstantVector:
        op = str(node.op)
        vec = self.vector_arg(node.expr)
        param: np.ndarray | str | None = None
        if op in ("topk", "bottomk", "quantile"):
            param = self.scalar_arg(node.param)
        elif op == "count_values":
            param = self.string_arg(node.param)
        elif node.param is not None:
            raise Unsupported(f"aggregation {op}() with a parameter")
        mod = node.modifier
        names: list[str] | None = None
        without = False
        if mod is not None:
            names = list(mod.labels)
            without = mod.type == pp.AggModifierType.Without
        result = aggregate(op, vec, names, without, param, self.steps)
        self._count_cells(len(result))
        return result

    def _eval_BinaryExpr(self, node: Any) -> Value:
        op = str(node.op)
        lhs, rhs = self.eval(node.lhs), self.eval(node.rhs)
        result = binary(op, lhs, rhs, _matching(op, node.modifier))
        if isinstance(result, InstantVector):
            self._count_cells(len(result))
        return result


# from a rollup tier, these read each bucket's extreme instead of its last value
_ROLLUP_OF = {"max_over_time": "max", "min_over_time": "min"}

_CARDINALITY = {
    "OneToOne": "one-to-one",
    "ManyToOne": "many-to-one",
    "OneToMany": "one-to-many",
    "ManyToMany": "many-to-many",
}


def _matching(op: str, mod: Any) -> Matching:
    if mod is None:
        return Matching(card="many-to-many" if op in ("and", "or", "unless") else "one-to-one")
    fill = mod.fill_values
    if fill is not None and (fill.lhs is not None or fill.rhs is not None):
        raise Unsupported("fill modifiers of binary operators")
    card = _CARDINALITY[str(mod.card).rsplit(".", 1)[-1]]
    on, labels = False, ()
    if mod.matching is not None:
        on = mod.matching.type == pp.LabelModifierType.Include
        labels = tuple(mod.matching.labels)
    return Matching(card=card, on=on, labels=labels, include=tuple(mod.group_labels or ()),
                    return_bool=bool(mod.return_bool))
