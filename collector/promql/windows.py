"""Range-vector functions (``rate(x[5m])``, ``avg_over_time(x[1h])``, ...), vectorised.

Every (series, step) window is a pair of sample indices ``[lo, hi)`` (``SeriesSet.bounds``;
Prometheus 2.x windows include both ends: ``t - range <= ts <= t``). Functions of the window's
ends (rate, increase, delta, irate, idelta, last, count, resets, changes) read the ends and
per-sample running sums; functions of all its samples (sum, avg, min, max, quantile, stddev,
deriv, predict_linear) gather windows into padded ``(windows, K)`` blocks, a bounded number of
cells at a time. Formulas follow Prometheus's (``promql/functions.go``) so that results agree to
rounding; each function returns ``(values, present)`` of shape ``(S, T)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from edgemon.collector.promql.model import RangeVector

__all__ = ["RANGE_FUNCTIONS", "window_bounds"]

Result = tuple[np.ndarray, np.ndarray]
_BLOCK_CELLS = 2_000_000


def window_bounds(rv: RangeVector) -> tuple[np.ndarray, np.ndarray]:
    return rv.series.bounds(rv.window_end - rv.range_ms, rv.window_end)


def _ends(rv: RangeVector, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Index of the first and last sample of every window (clipped where it is empty)."""
    top = max(rv.series.ts.size - 1, 0)
    return np.clip(lo, 0, top), np.clip(hi - 1, 0, top)


def _pair_sums(rv: RangeVector, pair: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum of ``pair[i]`` (a quantity of samples ``i-1, i`` of one series) over every window's
    consecutive pairs, from an inclusive running sum."""
    if pair.size == 0:
        return np.zeros(lo.shape)
    running = np.cumsum(pair)
    first, last = _ends(rv, lo, hi)
    return running[last] - running[first]


def _previous_pairs(rv: RangeVector) -> tuple[np.ndarray, np.ndarray]:
    """For every sample: its value and its predecessor's value (itself for a series' first)."""
    v = rv.series.values
    prev = np.empty_like(v)
    if v.size:
        prev[1:] = v[:-1]
        starts = rv.series.offsets[:-1][np.diff(rv.series.offsets) > 0]
        prev[starts] = v[starts]
    return v, prev


def _blocks(lo: np.ndarray, hi: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]]:
    """Non-empty windows in blocks: (flat window numbers, sample index (r, K), mask (r, K))."""
    flat_lo, flat_n = lo.ravel(), (hi - lo).ravel()
    windows = np.flatnonzero(flat_n > 0)
    if windows.size == 0:
        return
    widest = int(flat_n[windows].max())
    per_block = max(1, _BLOCK_CELLS // widest)
    for a in range(0, windows.size, per_block):
        rows = windows[a:a + per_block]
        n = flat_n[rows]
        k = np.arange(int(n.max()))
        mask = k[None, :] < n[:, None]
        idx = np.where(mask, flat_lo[rows][:, None] + k[None, :], flat_lo[rows][:, None])
        yield rows, idx, mask


def _over_windows(rv: RangeVector, reduce: Callable[[np.ndarray, np.ndarray, np.ndarray],
                                                    np.ndarray]) -> Result:
    """Apply ``reduce(values (r, K), mask, rows)`` to every non-empty window."""
    lo, hi = window_bounds(rv)
    out = np.full(lo.size, np.nan)
    for rows, idx, mask in _blocks(lo, hi):
        out[rows] = reduce(rv.series.values[idx], mask, rows)
    return out.reshape(lo.shape), hi > lo


# --- functions of the window's ends ----------------------------------------------------------

def _extrapolated(rv: RangeVector, counter: bool, per_second: bool) -> Result:
    """rate / increase / delta: Prometheus's extrapolatedRate."""
    ss = rv.series
    lo, hi = window_bounds(rv)
    n = hi - lo
    first, last = _ends(rv, lo, hi)
    first_v, last_v = ss.values[first], ss.values[last]
    first_t, last_t = ss.ts[first], ss.ts[last]
    result = last_v - first_v
    if counter:
        v, prev = _previous_pairs(rv)
        result = result + _pair_sums(rv, np.where(v < prev, prev, 0.0), lo, hi)
    range_start = (rv.window_end - rv.range_ms)[None, :]
    range_end = rv.window_end[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        to_start = (first_t - range_start) / 1000
        to_end = (range_end - last_t) / 1000
        sampled = (last_t - first_t) / 1000
        average = sampled / (n - 1)
        if counter:
            to_zero = sampled * (first_v / result)
            to_start = np.where((result > 0) & (first_v >= 0) & (to_zero < to_start),
                                to_zero, to_start)
        threshold = average * 1.1
        interval = sampled + np.where(to_start < threshold, to_start, average / 2)
        interval = interval + np.where(to_end < threshold, to_end, average / 2)
        result = result * (interval / sampled)
        if per_second:
            result = result / (rv.range_ms / 1000)
    return result, n >= 2


def rate(rv: RangeVector) -> Result:
    return _extrapolated(rv, counter=True, per_second=True)


def increase(rv: RangeVector) -> Result:
    return _extrapolated(rv, counter=True, per_second=False)


def delta(rv: RangeVector) -> Result:
    return _extrapolated(rv, counter=False, per_second=False)


def _instant(rv: RangeVector, per_second: bool) -> Result:
    """irate / idelta: the last two samples of each window."""
    ss = rv.series
    lo, hi = window_bounds(rv)
    top = max(ss.ts.size - 1, 0)
    last, prev = np.clip(hi - 1, 0, top), np.clip(hi - 2, 0, top)
    lv, pv = ss.values[last], ss.values[prev]
    dt = ss.ts[last] - ss.ts[prev]
    if per_second:
        value = np.where(lv < pv, lv, lv - pv)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = value / (dt / 1000)
    else:
        value = lv - pv
    return value, (hi - lo >= 2) & (dt != 0)


def irate(rv: RangeVector) -> Result:
    return _instant(rv, per_second=True)


def idelta(rv: RangeVector) -> Result:
    return _instant(rv, per_second=False)


def resets(rv: RangeVector) -> Result:
    lo, hi = window_bounds(rv)
    v, prev = _previous_pairs(rv)
    return _pair_sums(rv, (v < prev).astype(np.int64), lo, hi).astype(np.float64), hi > lo


def changes(rv: RangeVector) -> Result:
    lo, hi = window_bounds(rv)
    v, prev = _previous_pairs(rv)
    changed = (v != prev) & ~(np.isnan(v) & np.isnan(prev))
    return _pair_sums(rv, changed.astype(np.int64), lo, hi).astype(np.float64), hi > lo


def count_over_time(rv: RangeVector) -> Result:
    lo, hi = window_bounds(rv)
    return (hi - lo).astype(np.float64), hi > lo


def last_over_time(rv: RangeVector) -> Result:
    lo, hi = window_bounds(rv)
    _, last = _ends(rv, lo, hi)
    return rv.series.values[last], hi > lo


def present_over_time(rv: RangeVector) -> Result:
    lo, hi = window_bounds(rv)
    return np.ones(lo.shape), hi > lo


# --- functions of every sample in the window -----------------------------------------------

def sum_over_time(rv: RangeVector) -> Result:
    return _over_windows(rv, lambda w, m, _r: np.where(m, w, 0.0).sum(axis=1))


def avg_over_time(rv: RangeVector) -> Result:
    return _over_windows(rv, lambda w, m, _r: np.where(m, w, 0.0).sum(axis=1) / m.sum(axis=1))


def min_over_time(rv: RangeVector) -> Result:
    return _over_windows(rv, lambda w, m, _r: np.fmin.reduce(np.where(m, w, np.nan), axis=1))


def max_over_time(rv: RangeVector) -> Result:
    return _over_windows(rv, lambda w, m, _r: np.fmax.reduce(np.where(m, w, np.nan), axis=1))


def _variance(w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Population variance; shifted by the window's first value so that a constant window is
    exactly 0, like Prometheus's running (Welford) form."""
    n = m.sum(axis=1)
    d = np.where(m, w - w[:, :1], 0.0)
    mean = d.sum(axis=1) / n
    return np.where(m, (d - mean[:, None]) ** 2, 0.0).sum(axis=1) / n


def stdvar_over_time(rv: RangeVector) -> Result:
    return _over_windows(rv, lambda w, m, _r: _variance(w, m))


def stddev_over_time(rv: RangeVector) -> Result:
    return _over_windows(rv, lambda w, m, _r: np.sqrt(_variance(w, m)))


def quantile_of_sorted(ordered: np.ndarray, n: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Prometheus's quantile of each row's first ``n`` (ascending) values: linear interpolation
    between closest ranks; q < 0 gives -Inf, q > 1 +Inf."""
    rank = q * (n - 1)
    lower = np.maximum(0, np.floor(rank))
    upper = np.minimum(n - 1, lower + 1)
    weight = rank - np.floor(rank)
    rows = np.arange(ordered.shape[0])
    top = max(ordered.shape[1] - 1, 0)  # q outside [0, 1] (answered as -Inf/+Inf below) or NaN
    with np.errstate(invalid="ignore"):
        lo_i = np.clip(np.nan_to_num(lower), 0, top).astype(np.int64)
        up_i = np.clip(np.nan_to_num(upper), 0, top).astype(np.int64)
    with np.errstate(invalid="ignore"):
        value = ordered[rows, lo_i] * (1 - weight) + ordered[rows, up_i] * weight
    value = np.where(q < 0, -np.inf, np.where(q > 1, np.inf, value))
    return np.where(np.isnan(q), np.nan, value)


def quantile_over_time(q: np.ndarray, rv: RangeVector) -> Result:
    steps = rv.window_end.size

    def reduce(w: np.ndarray, m: np.ndarray, rows: np.ndarray) -> np.ndarray:
        ordered = np.sort(np.where(m, w, np.inf), axis=1)
        return quantile_of_sorted(ordered, m.sum(axis=1), q[rows % steps])

    return _over_windows(rv, reduce)


def _exact_sum(terms: np.ndarray) -> np.ndarray:
    """Row sums in extended precision, rounded once to float64."""
    return terms.astype(np.longdouble).sum(axis=1).astype(np.float64)


def _regression(rv: RangeVector, at_eval_time: bool, duration: np.ndarray | None) -> Result:
    """Least squares of value over time (seconds) per window: Prometheus's linearRegression,
    with x relative to the window's first sample (deriv) or to the evaluation time
    (predict_linear); a constant window has slope 0 exactly."""
    ts = rv.series.ts
    steps = rv.window_end.size

    lo, hi = window_bounds(rv)
    out = np.full(lo.size, np.nan)
    for rows, idx, m in _blocks(lo, hi):
        y = rv.series.values[idx]
        t = ts[idx]
        ref = rv.eval_time[rows % steps][:, None] if at_eval_time else t[:, :1]
        x = np.where(m, (t - ref) / 1e3, 0.0)
        y0 = np.where(m, y, 0.0)
        n = m.sum(axis=1).astype(np.float64)
        # Prometheus adds with (Neumaier-)Kahan compensation; extended precision sums of the
        # same float64 terms round to the same doubles
        sum_x, sum_y = _exact_sum(x), _exact_sum(y0)
        sum_xy, sum_x2 = _exact_sum(x * y0), _exact_sum(x * x)
        with np.errstate(divide="ignore", invalid="ignore"):
            cov_xy = sum_xy - sum_x * sum_y / n
            var_x = sum_x2 - sum_x * sum_x / n
            slope = cov_xy / var_x
            intercept = sum_y / n - slope * sum_x / n
        first = y[:, 0]
        constant = np.where(m, y == first[:, None], True).all(axis=1)
        slope = np.where(constant, 0.0, slope)
        intercept = np.where(constant, first, intercept)
        if duration is None:
            out[rows] = slope
        else:
            out[rows] = slope * duration[rows % steps] + intercept
    return out.reshape(lo.shape), (hi - lo) >= 2


def deriv(rv: RangeVector) -> Result:
    return _regression(rv, at_eval_time=False, duration=None)


def predict_linear(rv: RangeVector, seconds: np.ndarray) -> Result:
    return _regression(rv, at_eval_time=True, duration=seconds)


# name -> function(range vector, then the other arguments as (T,) arrays)
RANGE_FUNCTIONS: dict[str, Callable[..., Result]] = {
    "rate": rate,
    "increase": increase,
    "delta": delta,
    "irate": irate,
    "idelta": idelta,
    "resets": resets,
    "changes": changes,
    "deriv": deriv,
    "predict_linear": predict_linear,
    "count_over_time": count_over_time,
    "last_over_time": last_over_time,
    "present_over_time": present_over_time,
    "sum_over_time": sum_over_time,
    "avg_over_time": avg_over_time,
    "min_over_time": min_over_time,
    "max_over_time": max_over_time,
    "stddev_over_time": stddev_over_time,
    "stdvar_over_time": stdvar_over_time,
    "quantile_over_time": quantile_over_time,
}
