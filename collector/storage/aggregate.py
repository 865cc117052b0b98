"""Vectorised, exact aggregation of samples and rollup buckets (numpy, int64 throughout).

Values stay scaled integers until the very end. Sums are int64 modulo 2**64 (numpy wraps) and
are made exact again by ``bounded_sums``/``exact_sums`` from the bounds count*min <= sum <=
count*max of each series' step, so a counter summed over many buckets never drifts and never
overflows silently.

A *bucket set* is a dict of equal-length int64 arrays: ``sid`` (series index), ``start`` (bucket
or step start, ms) and ``BUCKET_COLS``: count, sum, min, max, last_ts, last_v, and for counters
first_v and corr, the counter-reset correction of the pairs of consecutive samples inside the
bucket (a decrease is a reset: the pair's increase is the new value, not the difference, so corr
adds the value before the reset). For gauges first_v = last_v and corr = 0 (never used, and free
to store). Rollup tiers store exactly these columns, so any step that is a whole number of
buckets aggregates to the same numbers from raw samples or from rollups, rate included.

Rate of a step = increase from the last sample of the series' previous non-empty step to its
last sample in this step, divided by the time between those two samples (a query fetches one
step before its start for this).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BUCKET_COLS",
    "Buckets",
    "bounded_sums",
    "bucketize",
    "coarsen",
    "combine",
    "concat_buckets",
    "empty_buckets",
    "exact_sums",
    "merge_buckets",
    "percentile_steps",
    "rates",
    "sort_dedupe",
    "sort_index",
    "take",
]

BUCKET_COLS = ("count", "sum", "min", "max", "first_v", "last_ts", "last_v", "corr")
_ALL = ("sid", "start", *BUCKET_COLS)
Buckets = dict[str, np.ndarray]  # a bucket set: equal-length int64 columns named _ALL (a
# reader's may hold only the columns it asked for)
_I64 = np.int64
_TWO64 = float(2**64)


def empty_buckets() -> Buckets:
    return {c: np.empty(0, dtype=_I64) for c in _ALL}


def concat_buckets(parts: list[Buckets]) -> Buckets:
    parts = [p for p in parts if p["sid"].size]
    if not parts:
        return empty_buckets()
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def take(buckets: Buckets, index: np.ndarray) -> Buckets:
    """The buckets at ``index``, of every column ``buckets`` has (all, or some a reader
    asked for)."""
    return {c: a[index] for c, a in buckets.items()}


def sort_index(sid: np.ndarray, ts: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Indices sorting by (sid, ts, order). Uses a stable sort of one combined int64 key, which
    is very fast on the nearly sorted data that chunks and rollup rows come in; falls back to
    lexsort if the key could overflow or ``order`` is not already ascending among ties."""
    n = sid.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    t0, t1 = int(ts.min()), int(ts.max())
    span = t1 - t0 + 1
    if span < (1 << 62) // (int(sid.max()) + 1) and int(sid.min()) >= 0:
        key = sid * span + (ts - t0)
        idx = np.argsort(key, kind="stable")
        if order is None:
            return idx
        k = key[idx]
        ties = np.flatnonzero(k[1:] == k[:-1])
        if ties.size == 0 or (order[idx[ties + 1]] >= order[idx[ties]]).all():
            return idx
    keys = (ts, sid) if order is None else (order, ts, sid)
    return np.lexsort(keys)


def sort_dedupe(sid: np.ndarray, ts: np.ndarray, val: np.ndarray,
                order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort samples by (sid, ts); of samples with the same (sid, ts) keep the highest ``order``
    (the one received last)."""
    if sid.size == 0:
        return sid, ts, val
    if ((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (ts[1:] > ts[:-1]))).all():
        return sid, ts, val  # already in order, no repeats (one series from its chunks)
    idx = sort_index(sid, ts, order)
    sid, ts, val = sid[idx], ts[idx], val[idx]
    keep = np.ones(sid.size, dtype=bool)
    keep[:-1] = (sid[1:] != sid[:-1]) | (ts[1:] != ts[:-1])
    if keep.all():
        return sid, ts, val
    return sid[keep], ts[keep], val[keep]


def _ends(s: np.ndarray, n: int) -> np.ndarray:
    """``np.r_[s[1:], n]``: where each run starting at ``s`` ends (np.r_ parses its index in
    Python on every call, several times a query)."""
    return np.concatenate((s[1:], (n,)))


def _bounds(s: np.ndarray, n: int) -> np.ndarray:
    """``np.r_[s, n]``: run starts and the end of the last run."""
    return np.concatenate((s, (n,)))


def _segments(*keys: np.ndarray) -> np.ndarray:
    """Start index of every run of equal keys (arrays already sorted by those keys)."""
    n = keys[0].size
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def _floor(ts: np.ndarray, width: int) -> np.ndarray:
    return ts - np.mod(ts, width)


def bucketize(sid: np.ndarray, ts: np.ndarray, val: np.ndarray, counter: np.ndarray,
              width: int) -> Buckets:
    """Buckets of ``width`` ms (epoch-aligned) from samples sorted by (sid, ts), no repeats.

    ``counter[sid]`` says whether a series is a counter (decreases are resets)."""
    if sid.size == 0:
        return empty_buckets()
    start = _floor(ts, width)
    s = _segments(sid, start)
    e = _ends(s, sid.size) - 1
    is_counter = counter[sid]
    with np.errstate(over="ignore"):
        corr = np.zeros_like(val)
        reset = np.zeros(sid.size, dtype=bool)
        reset[1:] = is_counter[1:] & (val[1:] < val[:-1])
        reset[s] = False
        corr[1:][reset[1:]] = val[:-1][reset[1:]]
        last_v = val[e]
        return {
            "sid": sid[s],
            "start": start[s],
            "count": np.diff(_bounds(s, sid.size)).astype(_I64),
            "sum": np.add.reduceat(val, s),
            "min": np.minimum.reduceat(val, s),
            "max": np.maximum.reduceat(val, s),
            "first_v": np.where(is_counter[s], val[s], last_v),
            "last_ts": ts[e],
            "last_v": last_v,
            "corr": np.add.reduceat(corr, s),
        }


def _reduce(buckets: Buckets, s: np.ndarray, counter: np.ndarray) -> Buckets:
    """Combine runs (starting at ``s``) of buckets sorted by (sid, new start, last_ts)."""
    n = buckets["sid"].size
    first_row = np.zeros(n, dtype=bool)
    first_row[s] = True
    e = _ends(s, n) - 1
    with np.errstate(over="ignore"):
        # a reset between two parts: the later part starts below where the earlier one ended
        cross = np.zeros(n, dtype=_I64)
        reset = np.zeros(n, dtype=bool)
        reset[1:] = counter[buckets["sid"][1:]] & (buckets["first_v"][1:] < buckets["last_v"][:-1])
        reset &= ~first_row
        cross[1:][reset[1:]] = buckets["last_v"][:-1][reset[1:]]
        last_v = buckets["last_v"][e]
        return {
            "sid": buckets["sid"][s],
            "start": buckets["start"][s],
            "count": np.add.reduceat(buckets["count"], s),
            "sum": np.add.reduceat(buckets["sum"], s),
            "min": np.minimum.reduceat(buckets["min"], s),
            "max": np.maximum.reduceat(buckets["max"], s),
            "first_v": np.where(counter[buckets["sid"][s]], buckets["first_v"][s], last_v),
            "last_ts": buckets["last_ts"][e],
            "last_v": last_v,
            "corr": np.add.reduceat(buckets["corr"], s) + np.add.reduceat(cross, s),
        }


def coarsen(buckets: Buckets, width: int, counter: np.ndarray) -> Buckets:
    """Buckets sorted by (sid, start) -> buckets of ``width`` ms. Exact: the parts of one new
    bucket follow each other in time, so pairs of samples across them are known."""
    if buckets["sid"].size == 0:
        return empty_buckets()
    buckets = dict(buckets)
    buckets["start"] = _floor(buckets["start"], width)
    return _reduce(buckets, _segments(buckets["sid"], buckets["start"]), counter)


def merge_buckets(first: Buckets, second: Buckets,
                  counter: np.ndarray) -> Buckets:
    """Union of two bucket sets; buckets with the same (sid, start) are combined.

    count, sum, min, max and last are exact; first_v and the reset correction are exact unless
    the two parts' samples interleave in time (then the pairs across them are approximated)."""
    both = concat_buckets([first, second])
    if both["sid"].size == 0:
        return both
    idx = np.lexsort((both["last_ts"], both["start"], both["sid"]))
    both = take(both, idx)
    return _reduce(both, _segments(both["sid"], both["start"]), counter)


def rates(steps: Buckets, counter: np.ndarray,
          divisor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-second rate of each step of ``steps`` (sorted by (sid, start)) and a validity mask.

    rate = increase from the series' previous step's last sample to this step's last sample /
    time between them; a series' first step has none. ``divisor[sid]`` is 10**scale."""
    n = steps["sid"].size
    if n == 0:
        return np.empty(0), np.empty(0, dtype=bool)
    sid = steps["sid"]
    ok = np.zeros(n, dtype=bool)
    ok[1:] = sid[1:] == sid[:-1]
    num = np.zeros(n, dtype=_I64)
    den = np.zeros(n, dtype=_I64)
    with np.errstate(over="ignore"):
        last, prev = steps["last_v"][1:], steps["last_v"][:-1]
        reset = counter[sid[1:]] & (steps["first_v"][1:] < prev)
        num[1:] = last - prev + np.where(reset, prev, 0) + steps["corr"][1:]
        den[1:] = steps["last_ts"][1:] - steps["last_ts"][:-1]
    ok &= den > 0
    out = np.zeros(n)
    out[ok] = (num[ok].astype(np.float64) / divisor[sid[ok]]) / (den[ok] / 1000.0)
    ok &= np.isfinite(out)
    return out, ok


def exact_sums(wrapped: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """Float value of sums kept modulo 2**64, given estimates within 2**63 of the true sums.

    true = wrapped + k * 2**64 with k from the estimate; computed as hi32 * 2**32 + lo32 so that
    the result is rounded once (correctly rounded, like float(int))."""
    k = np.rint((approx - wrapped.astype(np.float64)) / _TWO64)
    high = (wrapped >> 32).astype(np.float64) + k * 2.0**32  # exact: small integers
    return high * 2.0**32 + (wrapped & 0xFFFFFFFF).astype(np.float64)


def bounded_sums(wrapped: np.ndarray, count: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> np.ndarray:
    """``exact_sums`` of count values between lo and hi (exact while count * (hi - lo) < 2**64:
    a bucket or a step of one series)."""
    mid = count * (lo.astype(np.float64) / 2 + hi.astype(np.float64) / 2)
    return exact_sums(wrapped, mid)


def combine(steps: Buckets, group: np.ndarray, gscale: np.ndarray,
            scale: np.ndarray, counter: np.ndarray, aggregation: str,
            rate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-(series, step) partials -> (group, step start, value) of every non-empty group step.

    Series of one group are pooled: avg = sum of all samples / their count, last = the sample
    with the latest timestamp (ties: the largest), min/max/sum/count over all samples. With
    ``rate``, each series' rate per step is combined by ``aggregation`` (sum, avg, min, max or
    count of series). ``group[sid]``, ``gscale[group]`` and ``scale[sid]`` map series to groups
    and scales; values are rescaled to the group's scale before pooling."""
    n = steps["sid"].size
    if n == 0:
        return np.empty(0, dtype=_I64), np.empty(0, dtype=_I64), np.empty(0)
    sid = steps["sid"]
    g = group[sid]
    if rate:
        r, ok = rates(steps, counter, 10.0 ** scale)
        g, start, r = g[ok], steps["start"][ok], r[ok]
        if g.size == 0:
            return g, start, r
        idx = np.lexsort((start, g))
        g, start, r = g[idx], start[idx], r[idx]
        s = _segments(g, start)
        if aggregation == "sum":
            v = np.add.reduceat(r, s)
        elif aggregation == "avg":
            v = np.add.reduceat(r, s) / np.diff(_bounds(s, g.size))
        elif aggregation == "min":
            v = np.minimum.reduceat(r, s)
        elif aggregation == "max":
            v = np.maximum.reduceat(r, s)
        elif aggregation == "count":
            v = np.diff(_bounds(s, g.size)).astype(np.float64)
        else:
            raise ValueError(f"aggregation {aggregation!r} cannot combine rates")
        return g[s], start[s], v
    idx = np.lexsort((steps["start"], g))
    g = g[idx]
    start = steps["start"][idx]
    s = _segments(g, start)
    gs = g[s]
    div = 10.0 ** gscale[gs]
    if aggregation == "count":
        return gs, start[s], np.add.reduceat(steps["count"][idx], s).astype(np.float64)
    factor = (10 ** (gscale[g] - scale[sid[idx]])).astype(_I64)
    with np.errstate(over="ignore"):
        if aggregation in ("sum", "avg"):
            count = steps["count"][idx]
            sums = steps["sum"][idx] * factor
            # each series' step sum is pinned by its own min/max; the group's by their total
            each = bounded_sums(sums, count, steps["min"][idx] * factor, steps["max"][idx] * factor)
            exact = exact_sums(np.add.reduceat(sums, s), np.add.reduceat(each, s))
            if aggregation == "sum":
                return gs, start[s], exact / div
            return gs, start[s], exact / np.add.reduceat(count, s) / div
        if aggregation == "min":
            return gs, start[s], np.minimum.reduceat(steps["min"][idx] * factor, s) / div
        if aggregation == "max":
            return gs, start[s], np.maximum.reduceat(steps["max"][idx] * factor, s) / div
        if aggregation == "last":
            last_v = steps["last_v"][idx] * factor
            first_row = np.zeros(g.size, dtype=bool)
            first_row[s] = True
            seg = np.cumsum(first_row) - 1
            pick = np.lexsort((last_v, steps["last_ts"][idx], seg))
            e = pick[_ends(s, g.size) - 1]
            return gs, start[s], last_v[e] / div
    raise ValueError(f"unknown aggregation {aggregation!r}")


def percentile_steps(sid: np.ndarray, ts: np.ndarray, val: np.ndarray, group: np.ndarray,
                     gscale: np.ndarray, scale: np.ndarray, step: int,
                     q: float = 95.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q-th percentile (linear interpolation, as numpy's default) of the pooled samples of each
    group and step."""
    if sid.size == 0:
        return np.empty(0, dtype=_I64), np.empty(0, dtype=_I64), np.empty(0)
    g = group[sid]
    with np.errstate(over="ignore"):
        v = val * (10 ** (gscale[g] - scale[sid])).astype(_I64)
    start = _floor(ts, step)
    idx = np.lexsort((v, start, g))
    g, start, v = g[idx], start[idx], v[idx]
    s = _segments(g, start)
    n = np.diff(_bounds(s, g.size))
    pos = (n - 1) * (q / 100.0)
    lo = np.floor(pos).astype(_I64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    below = v[s + lo].astype(np.float64)
    above = v[s + hi].astype(np.float64)
    out = below + (above - below) * frac
    return g[s], start[s], out / 10.0 ** gscale[g[s]]
