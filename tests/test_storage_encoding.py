"""Exact round trips of the storage encodings, and the bucket algebra behind the rollup tiers."""

from __future__ import annotations

import numpy as np
import pytest

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.batches import rescale
from edgemon.collector.storage.encoding import (
    ROLLUP_COLUMNS,
    decode_chunks,
    decode_rollups,
    decode_times,
    encode_chunks,
    encode_rollups,
    encode_times,
    encode_times_many,
    unzigzag,
    zigzag,
)

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _values(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    if kind == 0:
        return rng.integers(I64_MIN, I64_MAX, n, dtype=np.int64, endpoint=True)
    if kind == 1:
        return (np.cumsum(rng.integers(0, 10_000, n)) + 10**15).astype(np.int64)
    if kind == 2:
        return np.full(n, rng.integers(-5, 5), dtype=np.int64)
    return np.array([I64_MIN, I64_MAX, 0, -1, 1, I64_MAX, I64_MIN][:n] + [0] * max(0, n - 7),
                    dtype=np.int64)


def test_zigzag_round_trip() -> None:
    x = np.array([0, -1, 1, -2, 2, I64_MIN, I64_MAX], dtype=np.int64)
    assert zigzag(x).tolist() == [0, 1, 2, 3, 4, 2**64 - 1, 2**64 - 2]
    assert (unzigzag(zigzag(x)) == x).all()


@pytest.mark.parametrize("seed", range(40))
def test_times_and_chunks_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nb = int(rng.integers(1, 300))
    if seed % 5 == 0:
        block = np.unique(rng.integers(1, I64_MAX, nb, dtype=np.int64))
    else:
        block = 1_780_000_000_000 + np.cumsum(rng.integers(1, 20_000, nb))
    assert (decode_times(encode_times(block)) == block).all()
    values, starts, ends, masks, expect = [], [], [], [], []
    pos = 0
    for k in range(int(rng.integers(1, 6))):
        have = rng.random(block.size) < (1.0 if k == 0 else 0.6)
        if not have.any():
            have[-1] = True
        v = _values(rng, int(have.sum()), (seed + k) % 4)
        values.append(v)
        starts.append(pos)
        pos += v.size
        ends.append(pos)
        masks.append(None if have.all() else np.packbits(have).tobytes())
        expect.append((block[have], v))
    blobs = encode_chunks(np.concatenate(values), np.array(starts), np.array(ends), masks)
    for blob, (ts, v) in zip(blobs, expect, strict=True):
        got_ts, got_v, _ = decode_chunks([blob], [block])
        assert (got_ts == ts).all() and (got_v == v).all()
    ts, v, sizes = decode_chunks(blobs, [block] * len(blobs))
    assert sizes.tolist() == [e.size for e in values]
    assert (ts == np.concatenate([e[0] for e in expect])).all()
    assert (v == np.concatenate(values)).all()


@pytest.mark.parametrize("seed", range(20))
def test_blobs_built_together_equal_blobs_built_one_by_one(seed: int) -> None:
    """The batched builders (all segments laid out in one buffer) give each segment exactly
    the bytes it gets alone: block times, chunks (with and without bitmaps), rollup rows."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, int(rng.integers(1, 30)))
    ends = np.cumsum(sizes)
    starts = ends - sizes
    values = _values(rng, int(ends[-1]), seed % 4)
    masks = [None if rng.random() < 0.6 else rng.bytes(int(rng.integers(1, 6)))
             for _ in sizes]
    together = encode_chunks(values, starts, ends, masks)
    alone = [encode_chunks(values[s:e], np.array([0]), np.array([e - s]), [m])[0]
             for s, e, m in zip(starts.tolist(), ends.tolist(), masks, strict=True)]
    assert together == alone
    ts = np.concatenate([np.sort(rng.choice(1 << 40, n, replace=False)) + (1 << 61) * (seed % 2)
                         for n in sizes.tolist()]).astype(np.int64)
    assert encode_times_many(ts, starts, ends) == [encode_times(ts[s:e]) for s, e in
                                                   zip(starts.tolist(), ends.tolist(),
                                                       strict=True)]


def test_chunk_rejects_wrong_block() -> None:
    (blob,) = encode_chunks(np.array([1, 2, 3]), np.array([0]), np.array([3]), [None])
    with pytest.raises(ValueError, match="does not match its block"):
        decode_chunks([blob], [np.array([1, 2], dtype=np.int64)])


@pytest.mark.parametrize("seed", range(30))
def test_rollups_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bucket, window = (60_000, 86_400_000) if seed % 2 else (3_600_000, 30 * 86_400_000)
    parts, windows, starts, pos = [], [], [], 0
    for _ in range(int(rng.integers(1, 5))):
        w0 = int(rng.integers(600, 700)) * window
        n = int(rng.integers(1, min(200, window // bucket)))
        start = w0 + np.sort(rng.choice(window // bucket, n, replace=False)) * bucket
        cols = {c: _values(rng, n, seed % 4) for c in ROLLUP_COLUMNS}
        cols["start"] = start
        cols["last_ts"] = start + rng.integers(0, bucket, n)
        parts.append(cols)
        windows.append(w0)
        starts.append(pos)
        pos += n
    both = {c: np.concatenate([p[c] for p in parts]) for c in ROLLUP_COLUMNS}
    blobs = encode_rollups(both, np.array(starts), np.array(windows), bucket)
    got, sizes = decode_rollups(blobs, bucket)
    assert sizes.tolist() == [p["start"].size for p in parts]
    for c in ROLLUP_COLUMNS:
        assert (got[c] == both[c]).all(), c
    empty, sizes = decode_rollups([], bucket)
    assert sizes.size == 0 and all(v.size == 0 for v in empty.values())


def test_rescale() -> None:
    x = np.array([215, 21650, 21750, -21650, 5], dtype=np.int64)
    assert rescale(x, 3, 1).tolist() == [2, 216, 218, -216, 0]  # half to even
    assert rescale(x, 1, 3).tolist() == [21500, 2165000, 2175000, -2165000, 500]
    assert rescale(x, 2, 2) is x


def test_exact_sums_beyond_int64() -> None:
    vals = [(1 << 62) + i * 2**40 for i in range(9)]  # 9 values near 2**62: sum > 2**65
    a = np.array(vals, dtype=np.int64)
    with np.errstate(over="ignore"):
        wrapped = np.add.reduce(a, keepdims=True)
    assert int(wrapped[0]) != sum(vals)
    got = agg.bounded_sums(wrapped, np.array([9]), a.min(keepdims=True), a.max(keepdims=True))
    assert got[0] == float(sum(vals))
    neg = np.full(5, -(1 << 62), dtype=np.int64)
    with np.errstate(over="ignore"):
        wrapped = np.add.reduce(neg, keepdims=True)
    got = agg.bounded_sums(wrapped, np.array([5]), neg[:1], neg[:1])
    assert got[0] == float(-5 * (1 << 62))
    # many series: each step sum fits, the group total wraps several times
    parts = np.array([(1 << 62) - 7 * i for i in range(40)], dtype=np.int64)
    with np.errstate(over="ignore"):
        total = np.add.reduce(parts, keepdims=True)
    each = agg.bounded_sums(parts, np.ones(40, dtype=np.int64), parts, parts)
    assert agg.exact_sums(total, each.sum(keepdims=True))[0] == float(sum(parts.tolist()))


@pytest.mark.parametrize("seed", range(25))
def test_buckets_compose(seed: int) -> None:
    """Buckets of 1 min coarsened to 1 h equal 1 h buckets made from the samples directly, and
    merging two disjoint halves equals bucketing everything: the rollup algebra is exact."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    sid = np.sort(rng.integers(0, 4, n))
    ts = np.zeros(n, dtype=np.int64)
    for s in range(4):
        m = sid == s
        ts[m] = np.sort(rng.choice(10 * 3_600_000, int(m.sum()), replace=False)) + 10**12
    val = rng.integers(0, 1000, n)
    counter = np.array([True, False, True, True])
    val[sid == 0] = np.cumsum(val[sid == 0])  # a counter rising, with a few resets
    val[(sid == 0) & (rng.random(n) < 0.01)] = 3
    direct = agg.bucketize(sid, ts, val, counter, 3_600_000)
    via = agg.coarsen(agg.bucketize(sid, ts, val, counter, 60_000), 3_600_000, counter)
    for c in direct:
        assert (direct[c] == via[c]).all(), c
    half = ts < 10**12 + 5 * 3_600_000 + int(rng.integers(-10**6, 10**6))
    for width in (60_000, 3_600_000):
        whole = agg.bucketize(sid, ts, val, counter, width)
        a = agg.bucketize(sid[half], ts[half], val[half], counter, width)
        b = agg.bucketize(sid[~half], ts[~half], val[~half], counter, width)
        merged = agg.merge_buckets(a, b, counter)
        for c in whole:
            assert (whole[c] == merged[c]).all(), (width, c)


def test_rates_handle_resets() -> None:
    counter = np.array([True])
    ts = np.array([0, 10, 20, 30, 40, 50], dtype=np.int64) * 1000
    val = np.array([100, 200, 50, 80, 10, 30], dtype=np.int64)  # resets before 50 and 10
    sid = np.zeros(6, dtype=np.int64)
    p = agg.bucketize(sid, ts, val, counter, 20_000)  # steps [0,20) [20,40) [40,60)
    r, ok = agg.rates(p, counter, np.array([1.0]))
    assert ok.tolist() == [False, True, True]
    assert r[1] == pytest.approx((50 + 30) / 20)  # 200 -> 50 (reset: +50) -> 80
    assert r[2] == pytest.approx((10 + 20) / 20)  # 80 -> 10 (reset: +10) -> 30
