"""Binary operators between scalars and vectors, with Prometheus's vector matching.

Arithmetic (``+ - * / % ^ atan2``) drops the metric name; comparisons (``== != > < >= <=``)
filter and keep it, or with ``bool`` answer 1/0 and drop it; ``and``/``or``/``unless`` are set
operations. Two vectors match on all labels but the name, ``on(...)`` or ``ignoring(...)``;
``group_left/right(...)`` allow many-to-one and copy labels from the "one" side. Matching is
decided per step, like Prometheus's evaluation step by step: a series may match one partner
at some steps and another later, but never two at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgemon.collector.promql.errors import ExecutionError, Unsupported
from edgemon.collector.promql.labels import (
    METRIC_NAME,
    Labels,
    drop_name,
    format_labels,
    labels_from,
)
from edgemon.collector.promql.model import InstantVector, Scalar, merge_same_labels

__all__ = ["ARITHMETIC", "COMPARISONS", "Matching", "binary"]

ARITHMETIC: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "%": np.fmod,
    "^": np.power,
    "atan2": np.arctan2,
}
COMPARISONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "==": np.equal,
    "!=": np.not_equal,
    ">": np.greater,
    "<": np.less,
    ">=": np.greater_equal,
    "<=": np.less_equal,
}
SET_OPERATORS = frozenset({"and", "or", "unless"})
# Prometheus 2.x drops the metric name for these (not for atan2, nor for comparisons)
_DROPS_NAME = frozenset({"+", "-", "*", "/", "%", "^"})


@dataclass(frozen=True, slots=True)
class Matching:
    card: str = "one-to-one"  # one-to-one, many-to-one, one-to-many, many-to-many
    on: bool = False
    labels: tuple[str, ...] = ()
    include: tuple[str, ...] = ()  # group_left/group_right labels
    return_bool: bool = False

    def signature(self, labels: Labels) -> Labels:
        if self.on:
            wanted = set(self.labels)
            return tuple(p for p in labels if p[0] in wanted)
        dropped = {*self.labels, METRIC_NAME}
        return tuple(p for p in labels if p[0] not in dropped)


def _compute(op: str, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, keep) of ``left op right`` element-wise; a comparison's value is ``left``."""
    with np.errstate(all="ignore"):
        if op in ARITHMETIC:
            value = ARITHMETIC[op](left, right)
            return value, np.ones(value.shape, dtype=bool)
        if op in COMPARISONS:
            keep = COMPARISONS[op](left, right)
            return np.broadcast_to(left, keep.shape), keep
    raise Unsupported(f"binary operator {op}")


def binary(op: str, lhs: object, rhs: object, matching: Matching) -> Scalar | InstantVector:
    if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
        value, keep = _compute(op, lhs.values, rhs.values)
        return Scalar(keep.astype(np.float64) if op in COMPARISONS else value)
    if isinstance(lhs, InstantVector) and isinstance(rhs, Scalar):
        return _vector_scalar(op, lhs, rhs.values[None, :], matching.return_bool, swap=False)
    if isinstance(lhs, Scalar) and isinstance(rhs, InstantVector):
        return _vector_scalar(op, rhs, lhs.values[None, :], matching.return_bool, swap=True)
    assert isinstance(lhs, InstantVector) and isinstance(rhs, InstantVector)
    if op in SET_OPERATORS:
        return _set_operation(op, lhs, rhs, matching)
    return _vector_vector(op, lhs, rhs, matching)


def _vector_scalar(op: str, vec: InstantVector, scalar: np.ndarray, return_bool: bool,
                   swap: bool) -> InstantVector:
    left, right = (scalar, vec.values) if swap else (vec.values, scalar)
    value, keep = _compute(op, left, right)
    present = vec.present
    if op in COMPARISONS:
        value = vec.values  # the vector's value, also when the scalar is on the left
        if return_bool:
            value, labels = keep.astype(np.float64), [drop_name(x) for x in vec.labels]
        else:
            present, labels = present & keep, vec.labels
    elif op in _DROPS_NAME:
        labels = [drop_name(x) for x in vec.labels]
    else:
        labels = vec.labels
    return merge_same_labels(InstantVector(labels, np.array(value, dtype=np.float64),
                                           np.array(present)))


def _set_operation(op: str, lhs: InstantVector, rhs: InstantVector,
                   matching: Matching) -> InstantVector:
    T = lhs.values.shape[1]
    lsig = [matching.signature(x) for x in lhs.labels]
    rsig = [matching.signature(x) for x in rhs.labels]

    def any_present(vec: InstantVector, sigs: list[Labels]) -> dict[Labels, np.ndarray]:
        out: dict[Labels, np.ndarray] = {}
        for i, s in enumerate(sigs):
            seen = out.get(s)
            out[s] = vec.present[i] if seen is None else seen | vec.present[i]
        return out

    none = np.zeros(T, dtype=bool)
    if op == "and":
        right = any_present(rhs, rsig)
        present = np.array([lhs.present[i] & right.get(s, none) for i, s in enumerate(lsig)])
        return InstantVector(lhs.labels, lhs.values, present.reshape(lhs.present.shape))
    if op == "unless":
        right = any_present(rhs, rsig)
        present = np.array([lhs.present[i] & ~right.get(s, none) for i, s in enumerate(lsig)])
        return InstantVector(lhs.labels, lhs.values, present.reshape(lhs.present.shape))
    left = any_present(lhs, lsig)
    extra = np.array([rhs.present[j] & ~left.get(s, none) for j, s in enumerate(rsig)])
    extra = extra.reshape(rhs.present.shape)
    return merge_same_labels(InstantVector(
        lhs.labels + rhs.labels, np.concatenate([lhs.values, rhs.values]),
        np.concatenate([lhs.present, extra])))


def _result_labels(many: Labels, one: Labels, op: str, matching: Matching) -> Labels:
    out = dict(many)
    if op in _DROPS_NAME or matching.return_bool:
        out.pop(METRIC_NAME, None)
    if matching.card == "one-to-one":
        if matching.on:
            out = {k: v for k, v in out.items() if k in matching.labels}
        else:
            for k in matching.labels:
                out.pop(k, None)
    if matching.include:
        other = dict(one)
        for k in matching.include:
            if other.get(k):
                out[k] = other[k]
            else:
                out.pop(k, None)
    return labels_from(out)


def _vector_vector(op: str, lhs: InstantVector, rhs: InstantVector,
                   matching: Matching) -> InstantVector:
    if matching.card == "many-to-many":
        raise ExecutionError("many-to-many matching only for and, or and unless")
    swapped = matching.card == "one-to-many"
    many, one = (rhs, lhs) if swapped else (lhs, rhs)
    T = lhs.values.shape[1]
    one_rows: dict[Labels, list[int]] = defaultdict(list)
    for j, labels in enumerate(one.labels):
        one_rows[matching.signature(labels)].append(j)
    for sig, rows in one_rows.items():
        if len(rows) > 1:
            clash = one.present[rows].sum(axis=0) > 1
            if clash.any():
                step = int(np.flatnonzero(clash)[0])
                at = [one.labels[j] for j in rows if one.present[j, step]][:2]
                side = "left" if swapped else "right"
                raise ExecutionError(
                    f"found duplicate series for the match group {format_labels(sig)} on "
                    f"the {side} hand-side of the operation: [{format_labels(at[1])}, "
                    f"{format_labels(at[0])}];many-to-many matching not allowed: matching "
                    "labels must be unique on one side")
    pairs_many, pairs_one, sigs = [], [], []
    for i, labels in enumerate(many.labels):
        sig = matching.signature(labels)
        for j in one_rows.get(sig, ()):
            pairs_many.append(i)
            pairs_one.append(j)
            sigs.append(sig)
    if not pairs_many:
        return InstantVector.empty(T)
    mi, oi = np.array(pairs_many), np.array(pairs_one)
    mv, ov = many.values[mi], one.values[oi]
    left, right = (ov, mv) if swapped else (mv, ov)
    value, keep = _compute(op, left, right)
    present = many.present[mi] & one.present[oi]
    if op in COMPARISONS:
        if matching.return_bool:
            value = keep.astype(np.float64)
        else:
            present = present & keep
    labels = [_result_labels(many.labels[i], one.labels[j], op, matching)
              for i, j in zip(pairs_many, pairs_one, strict=True)]
    _check_unique(sigs, labels, present, matching)
    return merge_same_labels(InstantVector(labels, np.array(value, dtype=np.float64), present))


def _check_unique(sigs: list[Labels], labels: list[Labels], present: np.ndarray,
                  matching: Matching) -> None:
    """One-to-one: one result per match group and step; many-to-one: one per result labels."""
    groups: dict[object, list[int]] = defaultdict(list)
    for k, (sig, lab) in enumerate(zip(sigs, labels, strict=True)):
        groups[sig if matching.card == "one-to-one" else (sig, lab)].append(k)
    for rows in groups.values():
        if len(rows) > 1 and (present[rows].sum(axis=0) > 1).any():
            if matching.card == "one-to-one":
                raise ExecutionError("multiple matches for labels: many-to-one matching must "
                                     "be explicit (group_left/group_right)")
            raise ExecutionError("multiple matches for labels: grouping labels must ensure "
                                 "unique matches")
