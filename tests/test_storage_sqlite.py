"""Storage against a brute-force numpy reference computed from the generated samples, on both
backends (SQLite and PostgreSQL: the ``stores`` fixture), which must give the same answers.

Every query is checked at every stage of a batch's life: pending (only in ``batches``), L0
compacted (blocks in open windows), and fully compacted (merged blocks + 1m/1h rollups), and at
every tier whose buckets divide the step, which must all give the same numbers.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import IngestItem, QueryTooLarge, RangeQuery, SeriesResult
from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support.storages import BACKENDS, Stores

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_780_012_800_000  # 2026-05-29 00:00 UTC: a day boundary, so windows and tiers align
INTERVAL = 10_000

CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
TEMP = MetricDef("temperature_celsius", GAUGE, "celsius", 1)
NET = MetricDef("net_bytes_total", COUNTER, "bytes", 0, ("iface",))
METRICS = {m.name: m for m in (CPU, TEMP, NET)}


# -- data -------------------------------------------------------------------------------------

@dataclass
class Fleet:
    """Generated samples by series, and the batches that carry them."""

    samples: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[tuple[int, int]]] = field(
        default_factory=dict)
    items: list[IngestItem] = field(default_factory=list)

    def add_batches(self, host: str, instance: str, first_seq: int, start_ms: int, cycles: int,
                    rng: np.random.Generator, per_batch: int = 6, *, resets: bool = True,
                    historical: bool = False, labels: Iterable[str] = ("0", "1"),
                    jitter: int = 20) -> list[IngestItem]:
        """``cycles`` sampling cycles of ``host`` from ``start_ms``, ``per_batch`` per batch."""
        out = []
        seq = first_seq
        state = self._state(host)
        for lo in range(0, cycles, per_batch):
            b = BatchBuilder()
            for k in range(lo, min(lo + per_batch, cycles)):
                t = start_ms + k * INTERVAL + int(rng.integers(0, jitter + 1))
                for cpu in labels:
                    if rng.random() < 0.05:  # holes: a series missing from a cycle
                        continue
                    v = int(rng.integers(0, 10_001))
                    self._add(b, host, t, CPU, (cpu,), v)
                self._add(b, host, t, TEMP, (), int(rng.normal(450, 30)))
                for iface in ("eth0", "wlan0"):
                    key = (host, iface)
                    if resets and rng.random() < 0.03:
                        state[key] = int(rng.integers(0, 1000))  # reboot: counter restarts
                    else:
                        state[key] = state.get(key, 10**12) + int(rng.integers(0, 5_000_000))
                    self._add(b, host, t, NET, (iface,), state[key])
            raw = b.build(host=host, instance=instance, seq=seq, sent_ms=t + 1_000)
            payload = encode(raw)
            out.append(IngestItem(validate_batch(decode(payload)), payload, t + 1_500,
                                  historical))
            seq += 1
        self.items += out
        return out

    _states: dict[str, dict[Any, int]] = field(default_factory=dict)

    def _state(self, host: str) -> dict[Any, int]:
        return self._states.setdefault(host, {})

    def _add(self, b: BatchBuilder, host: str, t: int, m: MetricDef, labels: tuple[str, ...],
             v: int) -> None:
        b.add(t, m, labels, v)
        key = (host, m.name, tuple(zip(m.label_keys, labels, strict=True)))
        self.samples.setdefault(key, []).append((t, v))


def make_items(host: str, seq: int, points: list[tuple[int, MetricDef, tuple[str, ...], int]],
               historical: bool = False, instance: str = "i1",
               received_ms: int | None = None) -> IngestItem:
    b = BatchBuilder()
    for t, m, labels, v in points:
        b.add(t, m, labels, v)
    t_max = max(p[0] for p in points)
    payload = encode(b.build(host=host, instance=instance, seq=seq, sent_ms=t_max + 1000))
    return IngestItem(validate_batch(decode(payload)), payload,
                      received_ms if received_ms is not None else t_max + 1500, historical)


# -- reference --------------------------------------------------------------------------------

def reference(fleet: Fleet, q: RangeQuery) -> dict[tuple[Any, ...], list[tuple[int, float]]]:
    """The expected points of ``q``, by (host or None, sorted label items), from raw samples."""
    step = q.step_ms
    A = q.start_ms - q.start_ms % step
    B = -(-q.end_ms // step) * step
    m = METRICS[q.name]
    series = {}
    for (host, name, labels), pts in fleet.samples.items():
        if name != q.name or any(dict(labels).get(k) != v for k, v in q.labels.items()):
            continue
        if q.hosts and host not in q.hosts:
            continue
        by_ts: dict[int, int] = {}
        for t, v in pts:
            by_ts[t] = v  # the later one wins
        series[(host, labels)] = sorted(by_ts.items())
    groups: dict[tuple[Any, ...], list[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for host, labels in series:
        if q.group_by is None:
            key: tuple[Any, ...] = (host, labels)
        else:
            d = dict(labels)
            key = (host if "host" in q.group_by else None,
                   tuple((k, d.get(k, "")) for k in q.group_by if k != "host"))
        groups.setdefault(key, []).append((host, labels))
    div = 10 ** m.scale
    out = {}
    for key, members in groups.items():
        per_step: dict[int, list[Any]] = {}
        if q.rate:
            for member in members:
                pts = [(t, v) for t, v in series[member] if A - step <= t < B]
                last_of: dict[int, int] = {}  # step -> index of its last sample
                for i, (t, _) in enumerate(pts):
                    last_of[t - t % step] = i
                steps = sorted(last_of)
                for prev, cur in itertools.pairwise(steps):
                    i0, i1 = last_of[prev], last_of[cur]
                    inc = 0
                    for j in range(i0 + 1, i1 + 1):
                        d = pts[j][1] - pts[j - 1][1]
                        inc += pts[j][1] if (m.kind == COUNTER and d < 0) else d
                    dt = pts[i1][0] - pts[i0][0]
                    if cur >= A:
                        per_step.setdefault(cur, []).append(inc / div / (dt / 1000))
            agg = {"sum": sum, "avg": lambda r: sum(r) / len(r), "min": min, "max": max,
                   "count": len}[q.aggregation]
            out[key] = sorted((s, float(agg(r))) for s, r in per_step.items())
            continue
        for member in members:
            for t, v in series[member]:
                if A <= t < B:
                    per_step.setdefault(t - t % step, []).append((t, v))
        pts_out = []
        for s, tv in sorted(per_step.items()):
            vals = np.array([v for _, v in tv], dtype=np.int64)
            if q.aggregation == "avg":
                x = sum(int(v) for v in vals) / len(vals) / div
            elif q.aggregation == "sum":
                x = sum(int(v) for v in vals) / div
            elif q.aggregation == "min":
                x = int(vals.min()) / div
            elif q.aggregation == "max":
                x = int(vals.max()) / div
            elif q.aggregation == "count":
                x = float(len(vals))
            elif q.aggregation == "last":
                x = max(tv)[1] / div
            else:
                x = float(np.percentile(vals, 95)) / div
            pts_out.append((s, x))
        out[key] = pts_out
    return {k: v for k, v in out.items() if v}


def as_dict(results: list[SeriesResult]) -> dict[tuple[Any, ...], list[tuple[int, float]]]:
    return {(r.host, tuple(sorted(r.labels.items()))): r.points for r in results}


def assert_matches(results: list[SeriesResult], expected: dict[tuple[Any, ...], Any],
                   rel: float = 1e-9) -> None:
    got = as_dict(results)
    exp = {(k[0], tuple(sorted(k[1]))): v for k, v in expected.items()}
    assert set(got) == set(exp)
    for key, points in exp.items():
        have = got[key]
        assert [p[0] for p in have] == [p[0] for p in points], key
        for (t, a), (_, b) in zip(have, points, strict=True):
            assert math.isfinite(a)
            assert a == pytest.approx(b, rel=rel, abs=1e-9), (key, t)


Opener = Callable[..., SQLStorage]


@pytest.fixture
def store(stores: Stores) -> Opener:
    """Opens this test's store (the same one each call) on the backend under test."""
    def open_store(**opts: Any) -> SQLStorage:
        opts.setdefault("compact_delay_ms", 0)
        return stores.open(**opts)

    return open_store


def q(name: str, start: int, end: int, step: int, **kw: Any) -> RangeQuery:
    return RangeQuery(name=name, start_ms=start, end_ms=end, step_ms=step, **kw)


# -- fixtures ---------------------------------------------------------------------------------

SPAN = 6 * HOUR


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    f = Fleet()
    rng = np.random.default_rng(42)
    for h, host in enumerate(("web-01", "web-02", "db-01")):
        f.add_batches(host, f"inst{h}", 0, T0 + h * 7_000, SPAN // INTERVAL, rng)
    return f


def _stage(stores: Stores, fleet: Fleet, stage: str) -> SQLStorage:
    st = stores.open(compact_delay_ms=0)
    rng = np.random.default_rng(1)
    items = list(fleet.items)
    rng.shuffle(items)  # arrival order is not time order
    for i in range(0, len(items), 97):
        st.store_batches(items[i:i + 97])
    if stage == "l0":
        st.close_grace_ms = 10 * DAY  # no window closes: blocks stay L0/merged, no rollups
        st.compact_all(T0 + SPAN)
        assert st.backlog()["dirty_windows"] > 0
    elif stage == "rolled":
        st.compact_all(T0 + SPAN + DAY)
        assert st.backlog(T0 + SPAN + DAY) == {
            "pending_batches": 0, "pending_samples": 0, "dirty_windows": 0,
            "closable_windows": 0}
    else:
        assert st.backlog()["pending_batches"] == len(items)
    return st


STAGES = ("pending", "l0", "rolled")
AGGS = ("avg", "min", "max", "sum", "count", "last")


@pytest.fixture(scope="module", params=list(itertools.product(BACKENDS, STAGES)),
                ids="-".join)
def staged(request: pytest.FixtureRequest, fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[SQLStorage]:
    backend, stage = request.param
    server = request.getfixturevalue("postgres_server") if backend == "postgres" else None
    st = _stage(Stores(backend, tmp_path_factory.mktemp(stage), server), fleet, stage)
    yield st
    st.close()


# -- aggregation at every tier and stage ------------------------------------------------------

@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("tier,step", [("raw", 5 * MIN), ("1m", 5 * MIN), ("1h", HOUR),
                                       ("auto", 2 * HOUR), ("raw", 37_000), ("auto", 4 * MIN)])
def test_aggregations_match_reference(staged: SQLStorage, fleet: Fleet, agg: str, tier: str,
                                      step: int) -> None:
    query = q("cpu_usage_percent", T0 + 13 * MIN, T0 + SPAN - 7 * MIN, step, aggregation=agg,
              tier=tier)
    got = staged.query(query)
    assert got, "no data"
    if tier != "auto":
        assert {r.tier for r in got} == {tier}
    assert_matches(got, reference(fleet, query))


def test_auto_tier_picks_coarsest_dividing_tier(staged: SQLStorage) -> None:
    tiers = {step: staged.query(q("temperature_celsius", T0, T0 + SPAN, step))[0].tier
             for step in (10_000, 90_000, 5 * MIN, HOUR, 3 * HOUR)}
    assert tiers == {10_000: "raw", 90_000: "raw", 5 * MIN: "1m", HOUR: "1h", 3 * HOUR: "1h"}


def test_p95_raw_only(staged: SQLStorage, fleet: Fleet) -> None:
    query = q("cpu_usage_percent", T0, T0 + SPAN, 15 * MIN, aggregation="p95")
    got = staged.query(query)
    assert {r.tier for r in got} == {"raw"}
    assert_matches(got, reference(fleet, query))
    with pytest.raises(ValueError, match="p95"):
        staged.query(q("cpu_usage_percent", T0, T0 + SPAN, HOUR, aggregation="p95", tier="1h"))


@pytest.mark.parametrize("tier,step", [("raw", 2 * MIN), ("1m", 2 * MIN), ("1h", HOUR),
                                       ("raw", INTERVAL), ("raw", 45_000)])
@pytest.mark.parametrize("how", ["sum", "avg", "max"])
def test_counter_rate_with_resets(staged: SQLStorage, fleet: Fleet, tier: str, step: int,
                                  how: str) -> None:
    n_resets = sum(1 for pts in fleet.samples.values()
                   for (_, a), (_, b) in itertools.pairwise(pts) if b < a)
    assert n_resets > 20  # the data really has resets, inside and across buckets
    query = q("net_bytes_total", T0 + 9 * MIN, T0 + SPAN, step, rate=True, tier=tier,
              aggregation=how, group_by=("host",) if how != "max" else None)
    got = staged.query(query)
    assert_matches(got, reference(fleet, query))
    assert all(v >= 0 for r in got for _, v in r.points)  # resets never give negative rates


@pytest.mark.parametrize("agg", (*AGGS, "p95"))
def test_rate_per_series_ignores_aggregation(staged: SQLStorage, fleet: Fleet,
                                             agg: str) -> None:
    """Without group_by there is one rate per series, whatever the aggregation says (the
    alerting engine passes its rule's aggregation along with rate=True)."""
    query = q("net_bytes_total", T0, T0 + SPAN, HOUR, rate=True, aggregation=agg)
    got = staged.query(query)
    assert {r.tier for r in got} == {"1h"}
    assert_matches(got, reference(fleet, q("net_bytes_total", T0, T0 + SPAN, HOUR, rate=True)))
    if agg in ("last", "p95"):
        with pytest.raises(ValueError, match="rates of a group"):
            staged.query(q("net_bytes_total", T0, T0 + SPAN, HOUR, rate=True, aggregation=agg,
                           group_by=("host",)))


def test_gauge_rate_is_derivative(staged: SQLStorage, fleet: Fleet) -> None:
    query = q("temperature_celsius", T0, T0 + SPAN, HOUR, rate=True, tier="1h")
    assert_matches(staged.query(query), reference(fleet, query))


@pytest.mark.parametrize("group_by", [("host",), ("cpu",), (), ("host", "cpu")])
@pytest.mark.parametrize("agg", ["avg", "max", "sum", "count", "last"])
@pytest.mark.parametrize("tier", ["raw", "1h"])
def test_group_by(staged: SQLStorage, fleet: Fleet, group_by: tuple[str, ...], agg: str,
                  tier: str) -> None:
    query = q("cpu_usage_percent", T0, T0 + SPAN, HOUR, aggregation=agg, group_by=group_by,
              tier=tier)
    got = staged.query(query)
    assert_matches(got, reference(fleet, query))
    for r in got:
        assert (r.host is None) == ("host" not in group_by)
        assert set(r.labels) == {k for k in group_by if k != "host"}


def test_host_globs_and_labels(staged: SQLStorage, fleet: Fleet) -> None:
    query = q("cpu_usage_percent", T0, T0 + SPAN, HOUR, hosts=("web-*",), labels={"cpu": "1"})
    got = staged.query(query)
    assert {(r.host, r.labels["cpu"]) for r in got} == {("web-01", "1"), ("web-02", "1")}
    assert_matches(got, reference(fleet, q("cpu_usage_percent", T0, T0 + SPAN, HOUR,
                                           hosts=("web-01", "web-02"), labels={"cpu": "1"})))
    assert staged.query(q("cpu_usage_percent", T0, T0 + SPAN, HOUR, hosts=("nope",))) == []
    assert staged.query(q("no_such_metric", T0, T0 + SPAN, HOUR)) == []


def test_series_listing(staged: SQLStorage, fleet: Fleet) -> None:
    listed = staged.series()
    assert len(listed) == len(fleet.samples)
    for s in listed:
        pts = fleet.samples[(s.host, s.name, tuple(sorted(s.labels.items())))]
        assert (s.first_ms, s.last_ms) == (min(pts)[0], max(pts)[0])
    assert {s.name for s in staged.series(host="db-01", name="net_bytes_total")} == {
        "net_bytes_total"}
    assert {s.host for s in staged.series(host="db-01")} == {"db-01"}


# -- write path -------------------------------------------------------------------------------

def test_duplicates_stored_once(store: Opener) -> None:
    f = Fleet()
    items = f.add_batches("h1", "a", 0, T0, 60, np.random.default_rng(0))
    st = store()
    first = st.store_batches(items)
    assert all(r.stored for r in first)
    total = sum(r.samples for r in first)

    def count() -> float:
        return sum(v for r in st.query(q("cpu_usage_percent", T0, T0 + HOUR, HOUR,
                                          aggregation="count", group_by=())) for _, v in r.points)

    before = count()
    again = st.store_batches(items[:3] + items[:3])  # repeated, even within one call
    assert [r.stored for r in again] == [False] * 6
    assert [r.samples for r in again] == [r.samples for r in first[:3]] * 2
    assert count() == before
    st.compact_all(T0 + DAY)
    assert st.store_batches(items)[5].stored is False  # still known after compaction
    st.compact_all(T0 + DAY)
    assert count() == before
    assert sum(r.samples for r in first) == total
    assert Stores.sql(st, "SELECT count(*) FROM batches") == 0
    st.close()


def test_same_batch_twice_in_one_call_mixed_with_new(store: Opener) -> None:
    st = store()
    a = make_items("h", 1, [(T0, TEMP, (), 1)])
    b = make_items("h", 2, [(T0 + INTERVAL, TEMP, (), 2)])
    assert [r.stored for r in st.store_batches([a, b, a])] == [True, True, False]
    assert st.store_batches([]) == []
    st.close()


def test_gaps(store: Opener) -> None:
    st = store()
    items = {s: make_items("h", s, [(T0 + s * INTERVAL, TEMP, (), s)]) for s in range(20)}
    st.store_batches([items[s] for s in (0, 1, 2, 5, 9, 10, 11, 19)])
    st.store_batches([make_items("h", 3, [(T0, TEMP, (), 1)], instance="other"),
                      make_items("h", 7, [(T0, TEMP, (), 1)], instance="other")])
    gaps = st.gaps()
    assert [(g.instance, g.first_missing, g.last_missing) for g in gaps] == [
        ("i1", 3, 4), ("i1", 6, 8), ("i1", 12, 18), ("other", 4, 6)]
    st.store_batches([items[s] for s in (3, 4, 6, 7, 8)])  # the missing ones arrive late
    assert [(g.first_missing, g.last_missing) for g in st.gaps("h")] == [(12, 18), (4, 6)]
    assert st.gaps("unknown") == []
    st.close()


def test_out_of_order_and_backfill_update_rollups(store: Opener) -> None:
    """Live data is rolled up first; older batches arrive afterwards (backfill), and batches
    for already rolled-up windows arrive late: every tier must match the reference."""
    f = Fleet()
    rng = np.random.default_rng(7)
    old = f.add_batches("edge", "b", 0, T0, 4 * HOUR // INTERVAL, rng, historical=True)
    live = f.add_batches("edge", "b", len(old), T0 + 4 * HOUR, 4 * HOUR // INTERVAL, rng)
    st = store()
    st.store_batches(live)
    st.compact_all(T0 + 9 * HOUR)  # live windows closed and rolled up
    late_mid = old[len(old) // 2:]
    st.store_batches(late_mid[::-1])  # newest of the backlog first, in reverse
    st.compact_all(T0 + 9 * HOUR)
    st.store_batches(old[:len(old) // 2])
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + 9 * HOUR)
        for tier, step in (("raw", HOUR), ("1m", 30 * MIN), ("1h", HOUR)):
            for agg in ("avg", "min", "max", "sum", "count", "last"):
                query = q("cpu_usage_percent", T0, T0 + 8 * HOUR, step, aggregation=agg,
                          tier=tier)
                assert_matches(st.query(query), reference(f, query))
            query = q("net_bytes_total", T0, T0 + 8 * HOUR, step, rate=True, tier=tier)
            assert_matches(st.query(query), reference(f, query))
    st.close()


def test_late_sample_inside_rolled_up_bucket(store: Opener) -> None:
    """A single sample arriving after its minute's bucket was rolled up changes that bucket."""
    st = store()
    st.store_batches([make_items("h", 1, [(T0 + 1_000, TEMP, (), 100),
                                          (T0 + 50_000, TEMP, (), 300)])])
    st.compact_all(T0 + DAY)
    st.store_batches([make_items("h", 2, [(T0 + 20_000, TEMP, (), 500)])])
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + DAY)
        for agg, want in (("max", 50.0), ("avg", 30.0), ("count", 3.0), ("last", 30.0),
                          ("min", 10.0), ("sum", 90.0)):
            got = st.query(q("temperature_celsius", T0, T0 + MIN, MIN, aggregation=agg,
                             tier="1m"))
            assert got[0].points == [(T0, want)], (stage, agg)
    st.close()


def test_duplicate_timestamp_last_received_wins(store: Opener) -> None:
    st = store()
    st.store_batches([make_items("h", 1, [(T0, TEMP, (), 100), (T0 + INTERVAL, TEMP, (), 7)])])
    st.store_batches([make_items("h", 2, [(T0, TEMP, (), 200)])])  # same series, same time
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + DAY)
        got = st.query(q("temperature_celsius", T0, T0 + MIN, MIN, aggregation="max"))
        assert got[0].points == [(T0, 20.0)]
        got = st.query(q("temperature_celsius", T0, T0 + MIN, MIN, aggregation="count"))
        assert got[0].points == [(T0, 2.0)]
    st.close()


def test_big_counters_sum_exactly(store: Opener) -> None:
    """Sums beyond 2**63 do not wrap; counters keep every digit."""
    st = store()
    big = (1 << 62) + 12345
    pts = [(T0 + i * INTERVAL, NET, ("eth0",), big + i) for i in range(6)]
    st.store_batches([make_items("h", 1, pts)])
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + DAY)
        for tier in ("raw", "1m"):
            got = st.query(q("net_bytes_total", T0, T0 + MIN, MIN, aggregation="sum", tier=tier))
            assert got[0].points[0][1] == float(sum(p[3] for p in pts))
            got = st.query(q("net_bytes_total", T0, T0 + MIN, MIN, aggregation="last",
                             tier=tier))
            assert got[0].points[0][1] == float(big + 5)
    st.close()


def test_scale_change_is_rescaled(store: Opener) -> None:
    old = MetricDef("temperature_celsius", GAUGE, "celsius", 1)
    new = MetricDef("temperature_celsius", GAUGE, "celsius", 3)
    st = store()
    st.store_batches([make_items("h", 1, [(T0, old, (), 215)])])
    st.compact_all(T0 + 1)
    st.store_batches([make_items("h", 2, [(T0 + INTERVAL, new, (), 21_650)])])
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + DAY)
        got = st.query(q("temperature_celsius", T0, T0 + MIN, INTERVAL, aggregation="last"))
        assert got[0].points == [(T0, 21.5), (T0 + INTERVAL, 21.6)]  # 21.650 -> 21.6 (even)
    st.close()


# -- hosts ------------------------------------------------------------------------------------

def test_hosts_status_and_clock_offset(store: Opener) -> None:
    st = store()
    assert st.hosts() == []
    items = [make_items("h1", s, [(T0 + s * INTERVAL, TEMP, (), s)],
                        received_ms=T0 + s * INTERVAL + 1000 + 250 * (s == 3)) for s in range(5)]
    st.store_batches(items)
    (h,) = st.hosts()
    assert (h.host, h.online, h.instance, h.instances, h.last_status_ms) == (
        "h1", True, "i1", 1, None)
    assert h.last_seen_ms == T0 + 4 * INTERVAL + 1000
    assert h.clock_offset_ms == 0  # received - sent: 1000 - 1000, one outlier ignored (median)
    st.record_status("h1", "i1", False, T0 + HOUR, T0 + HOUR)
    assert not st.hosts()[0].online
    st.record_status("h1", "i2", True, T0 + 2 * HOUR, T0 + 2 * HOUR)
    st.record_status("h1", "i1", False, T0 + HOUR, T0 + 2 * HOUR + 5)  # old instance's will
    h = st.hosts()[0]
    assert (h.online, h.instance, h.instances, h.last_status_ms) == (True, "i2", 2, T0 + 2 * HOUR)
    st.record_status("h1", "i2", False, T0 + 2 * HOUR, T0 + 3 * HOUR)
    assert not st.hosts()[0].online
    st.record_status("new-host", "x", True, T0, T0)
    assert [x.host for x in st.hosts()] == ["h1", "new-host"]
    # historical batches are not used for the clock offset
    st.store_batches([make_items("h1", 9, [(T0, TEMP, (), 1)], historical=True,
                                 received_ms=T0 + 99 * DAY)])
    assert st.hosts()[0].clock_offset_ms == 0
    st.close()


# -- limits and validation --------------------------------------------------------------------

def test_query_validation_and_limits(staged: SQLStorage) -> None:
    with pytest.raises(ValueError, match="start_ms must be before end_ms"):
        staged.query(q("cpu_usage_percent", T0 + 5, T0 + 5, MIN))
    with pytest.raises(ValueError, match="step_ms must be > 0"):
        staged.query(q("cpu_usage_percent", T0, T0 + HOUR, 0))
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        staged.query(q("cpu_usage_percent", T0, T0 + HOUR, MIN, aggregation="median"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown tier '5m'"):
        staged.query(q("cpu_usage_percent", T0, T0 + HOUR, MIN, tier="5m"))  # type: ignore[arg-type]
    with pytest.raises(QueryTooLarge, match="fewer hosts"):
        staged.query(q("cpu_usage_percent", T0, T0 + HOUR, MIN, max_series=5))
    with pytest.raises(QueryTooLarge, match="larger step"):
        staged.query(q("cpu_usage_percent", T0, T0 + SPAN, INTERVAL, max_points=1000))
    # grouping makes it fit
    got = staged.query(q("cpu_usage_percent", T0, T0 + SPAN, 30 * MIN, max_series=6,
                         max_points=12, group_by=()))
    assert len(got) == 1 and len(got[0].points) == 12


def test_nan_never_leaks(store: Opener) -> None:
    st = store()
    extreme = [(T0, NET, ("e",), (1 << 63) - 1), (T0 + 1, NET, ("e",), 0),
               (T0 + 2, NET, ("e",), (1 << 63) - 1)]
    st.store_batches([make_items("h", 1, extreme)])
    for stage in ("pending", "compacted"):
        if stage == "compacted":
            st.compact_all(T0 + DAY)
        for agg in (*AGGS, "p95"):
            for rate in (False, True):
                if rate and agg in ("last", "p95"):
                    continue
                for r in st.query(q("net_bytes_total", T0 - 5, T0 + 5, 1, aggregation=agg,
                                    rate=rate, group_by=() if rate else None)):
                    assert all(math.isfinite(v) for _, v in r.points)
    st.close()


# -- retention --------------------------------------------------------------------------------

def test_retention_per_tier(store: Opener) -> None:
    f = Fleet()
    rng = np.random.default_rng(3)
    for day in range(4):  # 2 hours of data on each of 4 days
        f.add_batches("h", "r", day * 1000, T0 + day * DAY, 2 * HOUR // INTERVAL, rng)
    st = store(raw_retention_ms=DAY, rollup_1m_retention_ms=2 * DAY,
               rollup_1h_retention_ms=40 * DAY)
    st.store_batches(f.items)
    now = T0 + 3 * DAY + 12 * HOUR
    st.compact_all(now)
    cut = {"raw": T0 + 2 * DAY + 12 * HOUR, "1m": T0 + DAY, "1h": T0 - 40 * DAY}
    for tier, step in (("raw", HOUR), ("1m", HOUR), ("1h", HOUR)):
        got = st.query(q("temperature_celsius", T0, T0 + 4 * DAY, step, tier=tier,
                         aggregation="count"))
        kept = {t for t, _ in got[0].points}
        want = {t for t, _ in reference(f, q("temperature_celsius", T0, T0 + 4 * DAY, step,
                                             aggregation="count"))[("h", ())]}
        assert kept == {t for t in want if t >= cut[tier]}, tier
    # auto picks the finest tier still holding the start
    for start, tier in ((3 * DAY, "raw"), (2 * DAY, "1m"), (0, "1h")):
        got = st.query(q("temperature_celsius", T0 + start, T0 + 4 * DAY, INTERVAL,
                         max_points=10**6))
        assert got[0].tier == tier
    # a late batch for a window whose raw data expired still reaches the rollups it belongs to
    late = make_items("h", 99_999, [(T0 + 2 * DAY + HOUR + 5, TEMP, (), 999)], historical=True)
    st.store_batches([late])
    day2 = q("temperature_celsius", T0 + 2 * DAY, T0 + 2 * DAY + 2 * HOUR, HOUR, tier="1m",
             aggregation="max")
    for _ in ("pending", "compacted"):
        assert st.query(day2)[0].points[1] == (T0 + 2 * DAY + HOUR, 99.9)
        st.compact_all(now)
    assert Stores.sql(st, "SELECT min(window_ms) FROM blocks") >= cut["raw"]
    st.close()


def test_retention_never_moves_back(store: Opener) -> None:
    f = Fleet()
    f.add_batches("h", "r", 0, T0, 60, np.random.default_rng(0))
    st = store(raw_retention_ms=DAY)
    st.store_batches(f.items)
    st.compact_all(T0 + 3 * DAY)
    st.close()
    st = store(raw_retention_ms=30 * DAY)  # configured longer later: data is gone
    st.compact_all(T0 + 3 * DAY)
    assert st.query(q("temperature_celsius", T0, T0 + HOUR, MIN, tier="raw")) == []
    assert st.query(q("temperature_celsius", T0, T0 + HOUR, MIN))[0].tier == "1m"
    st.close()


# -- maintenance, threads, factory ------------------------------------------------------------

def test_maintain_is_bounded_and_catches_up(store: Opener, fleet: Fleet) -> None:
    st = store(step_samples=5_000, maintain_budget_ms=0)
    st.store_batches(fleet.items)
    pending = st.backlog()["pending_samples"]
    st.maintain(T0 + SPAN + DAY)
    left = st.backlog()["pending_samples"]
    assert 0 < left < pending  # one bounded step only (budget 0)
    steps = st.compact_all(T0 + SPAN + DAY)
    assert steps > 5
    assert st.backlog(T0 + SPAN + DAY) == {"pending_batches": 0, "pending_samples": 0,
                                           "dirty_windows": 0, "closable_windows": 0}
    query = q("cpu_usage_percent", T0, T0 + SPAN, HOUR, tier="1h")
    assert_matches(st.query(query), reference(fleet, query))
    st.close()


def test_compact_all_drains_one_host_over_many_steps(store: Opener) -> None:
    f = Fleet()
    f.add_batches("solo", "s", 0, T0, 3 * HOUR // INTERVAL, np.random.default_rng(5))
    st = store(step_samples=500, close_grace_ms=10 * DAY)
    st.store_batches(f.items)
    assert st.compact_all(T0 + 3 * HOUR) > 10
    assert st.backlog()["pending_batches"] == 0
    query = q("net_bytes_total", T0, T0 + 3 * HOUR, 10 * MIN, aggregation="last")
    assert_matches(st.query(query), reference(f, query))
    st.close()


def test_compaction_waits_for_delay(store: Opener) -> None:
    st = store(compact_delay_ms=60_000)
    item = make_items("h", 1, [(T0, TEMP, (), 1)], received_ms=T0)
    st.store_batches([item])
    st.maintain(T0 + 59_999)
    assert st.backlog()["pending_batches"] == 1
    st.maintain(T0 + 60_000)
    assert st.backlog()["pending_batches"] == 0
    st.close()


def test_reads_during_writes_see_consistent_snapshots(store: Opener, fleet: Fleet) -> None:
    """A reader thread counting samples while the writer stores and compacts never sees a
    sample twice or lose one: counts only grow, and end at the total."""
    st = store(step_samples=3_000)
    total = sum(1 for k, p in fleet.samples.items() if k[1] == "temperature_celsius"
                for t, _ in p if t < T0 + SPAN)
    query = q("temperature_celsius", T0, T0 + SPAN, SPAN, aggregation="count", group_by=())
    done = threading.Event()
    seen: list[float] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not done.is_set():
                got = st.query(query)
                seen.append(got[0].points[0][1] if got else 0.0)
            seen.append(st.query(query)[0].points[0][1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(0, len(fleet.items), 40):
            st.store_batches(fleet.items[i:i + 40])
            st.maintain_step(T0 + (i // 40) * 20 * MIN)
        st.compact_all(T0 + SPAN + DAY)
    finally:
        done.set()
        t.join()
    assert not errors
    assert len(seen) > 2
    assert all(a <= b for a, b in itertools.pairwise(seen))
    assert seen[-1] == total
    st.close()


def test_range_query_checks_itself_when_built() -> None:
    """The boundary type refuses what no backend can answer, before any backend sees it."""
    ok = {"name": "m", "start_ms": 0, "end_ms": HOUR, "step_ms": MIN}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"aggregation": "median"}, "unknown aggregation 'median'; one of avg, min, max"),
        ({"tier": "5m"}, "unknown tier '5m'; one of auto, raw, 1m, 1h"),
        ({"step_ms": -MIN}, "step_ms must be > 0"),
        ({"end_ms": 0}, "start_ms must be before end_ms"),
        ({"max_points": 0}, "must be > 0"),
        ({"aggregation": "p95", "tier": "1m"}, "p95 needs raw samples"),
        ({"rate": True, "aggregation": "last", "group_by": ()}, "rates of a group combine"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            RangeQuery(**{**ok, **change})
    # one rate per series has nothing to combine: whatever the aggregation, a sum of one
    per_series = RangeQuery(**ok, aggregation="p95", rate=True)  # type: ignore[arg-type]
    assert per_series.combine_by == "sum"
    assert RangeQuery(**ok, aggregation="max").combine_by == "max"  # type: ignore[arg-type]


def test_open_storage(tmp_path: Path) -> None:
    st = open_storage(tmp_path / "a" / "b.db", raw_retention_ms=DAY)
    assert isinstance(st, SQLiteStorage) and st.retention["raw"] == DAY
    st.close()
    st = open_storage(f"sqlite:///{tmp_path}/c.db")
    assert Path(st.path) == tmp_path / "c.db"  # type: ignore[attr-defined]
    st.close()
    with pytest.raises(ValueError, match="scheme"):
        open_storage("mysql://x/y")
    with pytest.raises(ValueError, match="needs a file path"):
        open_storage(":memory:")
    with pytest.raises(RuntimeError, match="closed"):
        st.hosts()


def test_label_filter_when_the_last_batch_has_no_matching_series(store: Opener) -> None:
    """A raw query whose label filter leaves a batch with no entry at all (found by fuzzing:
    it used to fail with IndexError)."""
    st = store()
    st.store_batches([make_items("h", 1, [(T0, NET, ("one",), 5)])])
    st.store_batches([make_items("h", 2, [(T0 + INTERVAL, NET, ("two",), 9)])])
    got = st.query(q("net_bytes_total", T0, T0 + MIN, MIN, aggregation="max", tier="raw",
                     labels={"iface": "one"}))
    assert [(r.labels, r.points) for r in got] == [({"iface": "one"}, [(T0, 5.0)])]
    st.close()


def test_close_waits_for_a_query_running_in_another_thread(tmp_path: Path) -> None:
    """Closing a SQLite connection that another thread is stepping a statement on frees the
    statement under it and crashes the process (seen when a dashboard read was still running in
    an executor thread as the collector shut down). ``close()`` waits for running transactions
    and refuses new ones."""
    storage = SQLiteStorage(tmp_path / "c.db")
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def query() -> None:
        try:
            with storage._read() as db:
                inside.set()
                assert release.wait(10)
                assert db.execute("SELECT count(*) FROM hosts").fetchone() == (0,)
        except BaseException as e:  # reported below
            errors.append(e)

    reader = threading.Thread(target=query)
    reader.start()
    assert inside.wait(10)
    closer = threading.Thread(target=storage.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive(), "close() returned while a transaction was still running"
    with pytest.raises(RuntimeError, match="closed"):
        storage.hosts()  # a new transaction is refused at once, not queued behind close()
    release.set()
    reader.join(10)
    closer.join(10)
    assert not closer.is_alive() and not errors
    with pytest.raises(RuntimeError, match="closed"):
        storage.hosts()
