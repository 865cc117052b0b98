"""Aggregation operators (``sum by (host) (...)``, ``topk(3, ...)``, ...) over all steps at once.

Series are grouped by their ``by`` labels (or all labels but the ``without`` ones and the
metric name); each step aggregates the group's series that have a sample there. Sums and
running means go through the series in order like Prometheus's loop, so results agree to the
last bits where it matters (a group of equal values has a standard deviation of exactly 0).
"""

from __future__ import annotations

import numpy as np

from edgemon.collector.promql.errors import ExecutionError, Unsupported
from edgemon.collector.promql.labels import METRIC_NAME, Labels, labels_from
from edgemon.collector.promql.model import InstantVector
from edgemon.collector.promql.numbers import format_value
from edgemon.collector.promql.windows import quantile_of_sorted

__all__ = ["AGGREGATIONS", "aggregate"]

AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
                          "topk", "bottomk", "quantile", "count_values"})


def group_labels(labels: Labels, names: list[str] | None, without: bool) -> Labels:
    if names is None:
        return ()
    wanted = set(names)
    if without:
        return tuple(p for p in labels if p[0] not in wanted and p[0] != METRIC_NAME)
    return tuple(p for p in labels if p[0] in wanted)


def _groups(vec: InstantVector, names: list[str] | None,
            without: bool) -> tuple[np.ndarray, list[Labels]]:
    index: dict[Labels, int] = {}
    g = np.empty(len(vec), dtype=np.int64)
    for i, labels in enumerate(vec.labels):
        g[i] = index.setdefault(group_labels(labels, names, without), len(index))
    return g, list(index)


def _layers(g: np.ndarray) -> list[np.ndarray]:
    """Rows split into layers: layer k holds the k-th member of every group (in order), so a
    running computation over a group's members is one vector operation per layer."""
    layers: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, gi in enumerate(g.tolist()):
        k = seen.get(gi, 0)
        seen[gi] = k + 1
        if k == len(layers):
            layers.append([])
        layers[k].append(i)
    return [np.array(layer, dtype=np.int64) for layer in layers]


def aggregate(op: str, vec: InstantVector, names: list[str] | None, without: bool,
              param: np.ndarray | str | None, steps: int) -> InstantVector:
    """``param``: topk/bottomk's k and quantile's φ per step, count_values's label name."""
    if op not in AGGREGATIONS:
        raise Unsupported(f"aggregation {op}()")
    vec = vec.nonempty()
    if not len(vec):
        return InstantVector.empty(steps)
    if op in ("topk", "bottomk"):
        assert isinstance(param, np.ndarray)
        return _top(vec, names, without, param, bottom=op == "bottomk")
    if op == "count_values":
        assert isinstance(param, str)
        return _count_values(vec, names, without, param)
    g, keys = _groups(vec, names, without)
    G, T = len(keys), vec.values.shape[1]
    V, P = vec.values, vec.present
    count = np.zeros((G, T))
    np.add.at(count, g, P.astype(np.float64))
    present = count > 0
    if op == "count":
        value = count
    elif op == "group":
        value = np.ones((G, T))
    elif op == "sum":  # in series order, like Prometheus's loop
        value = np.zeros((G, T))
        np.add.at(value, g, np.where(P, V, 0.0))
    elif op == "avg":
        value = _running_mean(vec, g, G)
    elif op in ("min", "max"):
        value = np.full((G, T), np.nan)
        (np.fmin if op == "min" else np.fmax).at(value, g, np.where(P, V, np.nan))
    elif op in ("stddev", "stdvar"):
        value = _welford(vec, g, G)
        if op == "stddev":
            value = np.sqrt(value)
    else:  # quantile
        assert isinstance(param, np.ndarray)
        value = _quantile(vec, g, G, param)
    return InstantVector(keys, value, present)


def _running_mean(vec: InstantVector, g: np.ndarray, G: int) -> np.ndarray:
    """Prometheus's incremental mean: mean += v/n - mean/n (no overflow for huge values)."""
    T = vec.values.shape[1]
    n, mean = np.zeros((G, T)), np.zeros((G, T))
    for rows in _layers(g):
        gi, p, v = g[rows], vec.present[rows], vec.values[rows]
        n_new = n[gi] + p
        with np.errstate(invalid="ignore", divide="ignore"):
            step = v / n_new - mean[gi] / n_new
            inf_kept = np.isinf(mean[gi]) & (np.isfinite(v) | (np.isinf(v) &
                                                               (np.sign(v) == np.sign(mean[gi]))))
            mean[gi] = np.where(p & ~inf_kept, mean[gi] + step, mean[gi])
        n[gi] = n_new
    return mean


def _welford(vec: InstantVector, g: np.ndarray, G: int) -> np.ndarray:
    T = vec.values.shape[1]
    n, mean, aux = np.zeros((G, T)), np.zeros((G, T)), np.zeros((G, T))
    for rows in _layers(g):
        gi, p, v = g[rows], vec.present[rows], vec.values[rows]
        n_new = n[gi] + p
        with np.errstate(invalid="ignore", divide="ignore"):
            d = v - mean[gi]
            m_new = np.where(p, mean[gi] + d / n_new, mean[gi])
            aux[gi] = np.where(p, aux[gi] + d * (v - m_new), aux[gi])
        mean[gi], n[gi] = m_new, n_new
    with np.errstate(invalid="ignore", divide="ignore"):
        return aux / n


def _quantile(vec: InstantVector, g: np.ndarray, G: int, q: np.ndarray) -> np.ndarray:
    T = vec.values.shape[1]
    out = np.full((G, T), np.nan)
    for gi in range(G):
        rows = np.flatnonzero(g == gi)
        block = np.where(vec.present[rows], vec.values[rows], np.inf).T  # (T, members)
        n = vec.present[rows].sum(axis=0)
        out[gi] = quantile_of_sorted(np.sort(block, axis=1), n, q)
    return out


def _top(vec: InstantVector, names: list[str] | None, without: bool, k_param: np.ndarray,
         bottom: bool) -> InstantVector:
    if not np.all(np.isfinite(k_param)) or np.abs(k_param).max() >= 2**63:
        bad = k_param[~np.isfinite(k_param) | (np.abs(k_param) >= 2**63)][0]
        raise ExecutionError(f"Scalar value {format_value(float(bad))} overflows int64")
    k = np.trunc(k_param).astype(np.int64)
    g, keys = _groups(vec, names, without)
    V, P = vec.values, vec.present
    selected = np.zeros_like(P)
    T = V.shape[1]
    steps = np.arange(T)
    for gi in range(len(keys)):
        rows = np.flatnonzero(g == gi)
        # rank: present non-NaN values best first (ties keep series order), then NaN, then absent
        score = np.where(np.isnan(V[rows]), np.inf if bottom else -np.inf, V[rows])
        if not bottom:
            score = -score
        kind = np.where(P[rows], np.where(np.isnan(V[rows]), 1, 0), 2)
        order = np.lexsort((np.broadcast_to(np.arange(rows.size)[:, None], score.shape),
                            score, kind), axis=0)
        present_n = P[rows].sum(axis=0)
        take = np.arange(rows.size)[:, None] < np.minimum(k, present_n)[None, :]
        chosen = rows[order]  # (members, T)
        selected[chosen[take], np.broadcast_to(steps, chosen.shape)[take]] = True
        # where the k-th and the next value tie, which one Prometheus keeps depends on its
        # heap: replay the heap there
        cut = np.clip(k - 1, 0, rows.size - 1)
        if rows.size > 1:
            nxt = np.clip(k, 0, rows.size - 1)
            kth = V[chosen[cut, steps], steps]
            after = V[chosen[nxt, steps], steps]
            ties = (k >= 1) & (present_n > k) & ((kth == after) | np.isnan(kth) | np.isnan(after))
            for step in np.flatnonzero(ties).tolist():
                members = rows[P[rows, step]]
                selected[members, step] = False
                kept = _heap_select(V[members, step].tolist(), int(k[step]), bottom)
                selected[members[kept], step] = True
    keep = np.flatnonzero((P & selected).any(axis=1))
    result = InstantVector([vec.labels[i] for i in keep.tolist()], V[keep], (P & selected)[keep])
    if T == 1 and len(result):  # an instant query lists them best first, group by group
        v = result.values[:, 0]
        key = np.where(np.isnan(v), np.inf, v if bottom else -v)
        result = result.take(np.lexsort((key, g[keep])))
    return result


def _heap_select(values: list[float], k: int, bottom: bool) -> list[int]:
    """Which of ``values`` (in series order) Prometheus's topk/bottomk keeps: a Go
    container/heap of the k best so far, the worst at the root (NaN counts as worst)."""

    def less(a: int, b: int) -> bool:  # vectorByValueHeap / vectorByReverseValueHeap
        va, vb = values[heap[a]], values[heap[b]]
        if va != va:
            return True
        return va > vb if bottom else va < vb

    def up(j: int) -> None:
        while j > 0:
            i = (j - 1) // 2
            if i == j or not less(j, i):
                break
            heap[i], heap[j] = heap[j], heap[i]
            j = i

    def down(i: int, n: int) -> None:
        while True:
            j = 2 * i + 1
            if j >= n:
                break
            if j + 1 < n and less(j + 1, j):
                j += 1
            if not less(j, i):
                break
            heap[i], heap[j] = heap[j], heap[i]
            i = j

    heap: list[int] = []
    for index, v in enumerate(values):
        if not heap:
            heap.append(index)
            continue
        root = values[heap[0]]
        better = (root > v) if bottom else (root < v)
        if len(heap) < k or better or root != root:
            if len(heap) == k:
                if k == 1:
                    heap[0] = index
                    continue
                heap[0], heap[-1] = heap[-1], heap[0]
                down(0, len(heap) - 1)
                heap.pop()
            heap.append(index)
            up(len(heap) - 1)
    return heap


def _count_values(vec: InstantVector, names: list[str] | None, without: bool,
                  label: str) -> InstantVector:
    from edgemon.collector.promql.labels import LABEL_NAME_RE

    if not LABEL_NAME_RE.fullmatch(label):
        raise ExecutionError(f"invalid label name {label!r}")
    g, keys = _groups(vec, names, without)
    T = vec.values.shape[1]
    out: dict[Labels, np.ndarray] = {}
    rows, cols = np.nonzero(vec.present)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        base = dict(keys[g[r]])
        base[label] = format_value(float(vec.values[r, c]))
        key = labels_from(base)
        counts = out.get(key)
        if counts is None:
            counts = out[key] = np.zeros(T)
        counts[c] += 1
    labels = list(out)
    values = np.array([out[k] for k in labels]).reshape(len(labels), T)
    return InstantVector(labels, values, values > 0)
