"""The storage read path that PromQL uses: ``query_arrays`` and the decoded-blob cache.

``query_arrays`` must give exactly what ``query`` gives (the reference-checked path, see
test_storage_sqlite.py), at every stage of a batch's life, including the per-series shortcuts
(raw samples at a 1 ms step, one rollup bucket per step). The decoded cache is keyed by the
stored bytes, so rewritten windows (late data, compaction) can never answer from a stale entry:
checked against a second storage object on the same file with the cache turned off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgemon.collector.storage.base import QueryTooLarge, RangeQuery, SeriesArrays, Storage
from edgemon.collector.storage.decoded import DecodedCache
from edgemon.collector.storage.sql import queries as sql_queries
from edgemon.collector.storage.sqlite import SQLiteStorage
from tests.support.storages import Stores
from tests.test_storage_sqlite import (
    DAY,
    HOUR,
    INTERVAL,
    MIN,
    SPAN,
    T0,
    TEMP,
    Fleet,
    Opener,
    _stage,
    fleet,  # noqa: F401 (fixture)
    make_items,
    q,
    reference,
    staged,  # noqa: F401 (fixture)
    store,  # noqa: F401 (fixture)
)

TIER_MS = {"1m": MIN, "1h": HOUR}


def read(name: str, start: int, end: int, step: int, **kw: Any) -> RangeQuery:
    """A query without size limits, as the PromQL engine sends them (it has its own)."""
    return q(name, start, end, step, max_series=2**62, max_points=2**62, **kw)


QUERIES = [
    # PromQL's reads: every raw sample, one rollup bucket's value per step
    read("cpu_usage_percent", T0 - 1, T0 + SPAN, 1, aggregation="last", tier="raw"),
    read("net_bytes_total", T0, T0 + SPAN, 1, aggregation="last", tier="raw",
      hosts=("web-01",)),
    read("cpu_usage_percent", T0, T0 + SPAN, MIN, aggregation="last", tier="1m"),
    read("cpu_usage_percent", T0, T0 + SPAN, MIN, aggregation="max", tier="1m",
      labels={"cpu": "1"}),
    read("net_bytes_total", T0, T0 + SPAN, MIN, aggregation="min", tier="1m"),
    read("temperature_celsius", T0, T0 + SPAN, HOUR, aggregation="last", tier="1h",
      hosts=("web-*",)),
    # everything else goes through the bucket algebra
    read("cpu_usage_percent", T0, T0 + SPAN, 5 * MIN, aggregation="avg", tier="raw"),
    read("net_bytes_total", T0, T0 + SPAN, 5 * MIN, rate=True, tier="1m"),
    read("cpu_usage_percent", T0, T0 + SPAN, 10 * MIN, aggregation="p95"),
    read("cpu_usage_percent", T0, T0 + SPAN, 30 * MIN, aggregation="sum", group_by=("host",)),
    read("cpu_usage_percent", T0, T0 + SPAN, MIN, aggregation="last", hosts=("nobody",)),
]


def as_points(results: list[SeriesArrays]) -> dict[tuple[Any, ...], list[tuple[int, float]]]:
    return {(r.host, tuple(sorted(r.labels.items()))): list(zip(
        r.starts.tolist(), r.values.tolist(), strict=True)) for r in results}


def as_dict(results: list[Any]) -> dict[tuple[Any, ...], list[tuple[int, float]]]:
    return {(r.host, tuple(sorted(r.labels.items()))): r.points for r in results}


@pytest.mark.parametrize("query", QUERIES, ids=lambda x: f"{x.name}-{x.tier}-{x.step_ms}")
def test_query_arrays_equal_query(staged: SQLiteStorage,  # noqa: F811 (the fixture)
                                  query: RangeQuery) -> None:
    expected = staged.query(query)
    got = staged.query_arrays(query)
    assert as_points(got) == as_dict(expected)  # the same floats, bit for bit
    assert [(r.host, r.labels, r.kind, r.unit, r.tier) for r in got] == [
        (r.host, r.labels, r.kind, r.unit, r.tier) for r in expected]
    for r in got:
        assert r.starts.dtype == np.int64 and r.values.dtype == np.float64
        assert (np.diff(r.starts) > 0).all()
    # the interface's default (what a backend without its own gets) agrees too
    assert as_points(Storage.query_arrays(staged, query)) == as_points(got)


def test_queries_of_one_page_in_one_transaction_answer_as_each_alone(
        staged: SQLiteStorage) -> None:  # noqa: F811 (the fixture)
    """What a host page asks (every metric of one host, counters as rates, so two read
    ranges): ``query_arrays_many`` shares the series rows and pending batches it reads between
    the queries, and still answers each exactly as ``query_arrays`` alone, a query over
    another host or a label, and the error of a query over its limit, in order."""
    end = T0 + SPAN
    page = []
    for start, step in ((end - 15 * MIN, 10_000), (T0, 5 * MIN), (T0, HOUR)):
        page += [read("cpu_usage_percent", start, end, step, hosts=("web-01",)),
                 read("net_bytes_total", start, end, step, hosts=("web-01",), rate=True,
                      aggregation="sum"),
                 read("temperature_celsius", start, end, step, hosts=("web-01",)),
                 read("cpu_usage_percent", start, end, step, hosts=("web-01",),
                      labels={"cpu": "1"}),
                 read("net_bytes_total", start, end, step, hosts=("db-01",), rate=True,
                      aggregation="sum"),
                 q("cpu_usage_percent", start, end, step, hosts=("web-01",), max_series=1)]
    answers = staged.query_arrays_many(page)
    assert len(answers) == len(page)
    for query, got in zip(page, answers, strict=True):
        if query.max_series == 1:
            with pytest.raises(QueryTooLarge) as alone:
                staged.query_arrays(query)
            assert isinstance(got, QueryTooLarge) and str(got) == str(alone.value)
            continue
        assert not isinstance(got, ValueError), got
        expected = staged.query_arrays(query)
        assert expected, query  # the page reads data, not only empty answers
        assert as_points(got) == as_points(expected)
        assert [(r.host, r.labels, r.kind, r.unit, r.tier) for r in got] == [
            (r.host, r.labels, r.kind, r.unit, r.tier) for r in expected]
    # the interface's default (one query after another) agrees too
    assert [as_points(a) if isinstance(a, list) else str(a)
            for a in Storage.query_arrays_many(staged, page)] == [
        as_points(a) if isinstance(a, list) else str(a) for a in answers]


@pytest.mark.parametrize("query", [x for x in QUERIES if x.tier in ("1m", "1h")
                                   and x.group_by is None and x.step_ms == TIER_MS[x.tier]],
                         ids=lambda x: f"{x.name}-{x.aggregation}-{x.tier}")
def test_buckets_read_as_stored_agree_with_the_bucket_algebra(
        staged: SQLiteStorage, query: RangeQuery,  # noqa: F811 (the fixture)
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of rollups as stored takes only the bucket column it picks; where two buckets
    share a start (never seen in practice) it reads every column again and coarsens them:
    forced here, both ways give the same floats."""
    as_stored = as_points(staged.query_arrays(query))
    monkeypatch.setattr(sql_queries, "_distinct_starts", lambda _buckets: False)
    assert as_points(staged.query_arrays(query)) == as_stored


def test_raw_samples_at_one_millisecond_are_the_stored_samples(
        staged: SQLiteStorage, fleet: Fleet) -> None:  # noqa: F811 (the fixtures)
    query = read("temperature_celsius", T0, T0 + SPAN, 1, aggregation="last", tier="raw")
    expected = {(h, tuple(sorted(labels))): points
                for (h, labels), points in reference(fleet, query).items()}
    assert as_points(staged.query_arrays(query)) == expected


def test_repeated_reads_decode_once(stores: Stores,
                                    fleet: Fleet) -> None:  # noqa: F811 (the fixture)
    st = _stage(stores, fleet, "rolled")
    try:
        query = read("cpu_usage_percent", T0, T0 + SPAN, MIN, aggregation="last", tier="1m")
        raw = read("cpu_usage_percent", T0, T0 + SPAN, 1, aggregation="last", tier="raw")
        first = (as_points(st.query_arrays(query)), as_points(st.query_arrays(raw)))
        assert len(st.decoded) > 0
        misses = st.decoded.misses
        again = (as_points(st.query_arrays(query)), as_points(st.query_arrays(raw)))
        assert again == first
        assert st.decoded.misses == misses  # every blob came from the cache
        assert st.decoded.hits > 0
    finally:
        st.close()


def test_rewritten_windows_never_answer_from_the_cache(
        store: Opener, stores: Stores) -> None:  # noqa: F811 (the fixture)
    """Late samples land in windows already compacted and rolled up, then compaction rewrites
    them: a reader with a warm cache sees exactly what a reader without a cache sees."""
    st = store()
    cold = stores.open(decoded_cache_mb=0)  # a second reader of the same store, no cache
    points = [(T0 + k * INTERVAL, TEMP, (), 100 + k % 50) for k in range(2 * HOUR // INTERVAL)]
    st.store_batches([make_items("h", 1, points)])
    st.compact_all(T0 + DAY)
    queries = [read("temperature_celsius", T0, T0 + 2 * HOUR, 1, aggregation="last", tier="raw"),
               read("temperature_celsius", T0, T0 + 2 * HOUR, MIN, aggregation="max", tier="1m"),
               read("temperature_celsius", T0, T0 + 2 * HOUR, HOUR, aggregation="max",
                    tier="1h")]
    before = [as_points(st.query_arrays(x)) for x in queries]
    late = [(T0 + k * INTERVAL + 5_000, TEMP, (), 900 + k) for k in range(0, 700, 7)]
    st.store_batches([make_items("h", 2, late)])
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + DAY)
        for x, old in zip(queries, before, strict=True):
            warm = as_points(st.query_arrays(x))
            assert warm == as_points(cold.query_arrays(x)), (stage, x.tier)
            assert warm == as_dict(cold.query(x)), (stage, x.tier)
            assert warm != old, (stage, x.tier)  # the late samples are visible
    assert len(cold.decoded) == 0
    cold.close()
    st.close()


def test_decoded_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = DecodedCache(16_000)
    blobs = [bytes([i]) * 100 for i in range(10)]
    for b in blobs[:3]:
        cache.put(("chunk", b), (np.zeros(100, dtype=np.int64), np.zeros(100, dtype=np.int64)))
    assert cache.get(("chunk", blobs[0])) is not None  # now the most recently used
    for b in blobs[3:]:
        cache.put(("chunk", b), (np.zeros(100, dtype=np.int64), np.zeros(100, dtype=np.int64)))
        assert cache.used <= cache.max_bytes
    assert cache.get(("chunk", blobs[1])) is None  # the oldest untouched ones left
    assert cache.get(("chunk", blobs[-1])) is not None
    hit = cache.get(("chunk", blobs[-1]))
    with pytest.raises(ValueError):
        hit[0][0] = 1  # shared between readers: read-only
    cache.put(("huge",), np.zeros(10_000, dtype=np.int64))  # over a quarter: not kept
    assert cache.get(("huge",)) is None
    off = DecodedCache(0)
    off.put(("chunk", b"x"), np.zeros(1))
    assert len(off) == 0 and off.get(("chunk", b"x")) is None
