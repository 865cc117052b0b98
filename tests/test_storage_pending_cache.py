"""The pending-batch cache (``storage/pending_cache.py``): readers of the not-yet-compacted
back-log (alert rules every cycle, dashboards) decode each pending batch once, and still answer
exactly what a reader without the cache answers — across new batches, compaction, back-fill,
a reused SQLite row id and a second collector on the same database.

Every query here is asked of the cached store and of a second, cache-less reader of the same
database (``pending_cache_mb=0``: the payload path), and the two answers must be equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.storage.base import IngestItem, RangeQuery
from edgemon.collector.storage.batches import read_batch
from edgemon.collector.storage.pending_cache import PendingMetricCache, Projection, project
from edgemon.collector.storage.sql import SQLStorage
from edgemon.protocol import GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support.storages import Stores

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_780_012_800_000  # a UTC midnight
CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
LOAD = MetricDef("load1", GAUGE, "", 2)
HOSTS = ("edge-01", "edge-02", "edge-03")


def item(host: str, seq: int, minute: int, level: int = 0) -> IngestItem:
    """One minute of a host (6 cycles: two CPUs and load), as ingest stores it."""
    b = BatchBuilder()
    start = T0 + minute * MIN
    for k in range(6):
        for cpu in ("0", "1"):
            b.add(start + k * 10_000, CPU, (cpu,), 1000 + seq * 10 + k + level)
        b.add(start + k * 10_000, LOAD, (), 50 + k + level)
    raw = b.build(host=host, instance="i1", seq=seq, sent_ms=start + MIN)
    payload = encode(raw)
    return IngestItem(validate_batch(decode(payload)), payload, start + MIN + 100, False)


def store_all(st: SQLStorage, items: list[IngestItem]) -> None:
    assert all(r.stored for r in st.store_batches(items))


QUERIES = (
    RangeQuery(name=CPU.name, start_ms=T0, end_ms=T0 + HOUR, step_ms=MIN, aggregation="avg",
               group_by=("host",)),
    RangeQuery(name=CPU.name, start_ms=T0, end_ms=T0 + HOUR, step_ms=1, aggregation="last",
               max_points=10**9),
    RangeQuery(name=LOAD.name, start_ms=T0, end_ms=T0 + HOUR, step_ms=MIN, aggregation="max"),
    RangeQuery(name=CPU.name, start_ms=T0, end_ms=T0 + HOUR, step_ms=5 * MIN,
               aggregation="count", hosts=("edge-02",)),
)


def answers(st: SQLStorage) -> list[Any]:
    return [st.query(q) for q in QUERIES]


def same_as_without_cache(st: SQLStorage, stores: Stores) -> list[Any]:
    """The cached store's answers, checked against a cache-less reader of the same data."""
    cold = stores.open(pending_cache_mb=0, compact_delay_ms=0)
    try:
        assert not cold.pending_cache.enabled
        expected = answers(cold)
    finally:
        cold.close()
    got = answers(st)
    assert got == expected
    return got


def test_a_new_batch_is_read_next_cycle_and_only_it_is_decoded(stores: Stores) -> None:
    st = stores.open(compact_delay_ms=0)
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in range(4)])
    same_as_without_cache(st, stores)
    # every batch projected once per metric that was new to the cache (CPU, then load1: the
    # second projection holds both), its payload decoded once
    decoded = st.pending_cache.decoded
    assert decoded == 2 * 12 and st.reader.decoded == 12
    answers(st)
    assert st.pending_cache.decoded == decoded  # a second cycle reads no payload
    assert st.reader.decoded == 12
    store_all(st, [item("edge-02", 5, 4, level=500)])
    got = same_as_without_cache(st, stores)
    # only the new batch, once for both metrics (both are read recently)
    assert st.pending_cache.decoded == decoded + 1 and st.reader.decoded == 13
    newest = max(t for r in got[1] if r.host == "edge-02" for t, _ in r.points)
    assert newest == T0 + 4 * MIN + 50_000
    st.close()


def test_compaction_neither_loses_nor_double_counts_a_cached_batch(stores: Stores) -> None:
    st = stores.open(compact_delay_ms=0)
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in range(6)])
    before = same_as_without_cache(st, stores)
    assert len(st.pending_cache) > 0
    # compaction done by another process (as the collector runs it): this store's cache still
    # holds every batch, but the snapshot lists none of them as pending any more
    other = stores.open(compact_delay_ms=0)
    other.compact_all(T0 + DAY)
    other.close()
    assert stores.sql(st, "SELECT count(*) FROM batches") == 0
    assert same_as_without_cache(st, stores) == before
    st.forget_compacted()
    assert len(st.pending_cache) == 0 and st.pending_cache.used == 0
    # half compacted, half pending: still every sample exactly once
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in range(6, 9)])
    answers(st)
    st.compact_all(T0 + DAY)
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in range(9, 12)])
    got = same_as_without_cache(st, stores)
    counts = {r.host: sum(v for _, v in r.points) for r in st.query(RangeQuery(
        name=CPU.name, start_ms=T0, end_ms=T0 + HOUR, step_ms=HOUR, aggregation="count",
        group_by=("host",)))}
    assert counts == {h: 12 * 6 * 2 for h in HOSTS}
    assert got != before
    st.close()


def test_back_filled_batch_into_an_old_window_is_read(stores: Stores) -> None:
    st = stores.open(compact_delay_ms=0)
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in (0, 1, 2, 5, 6)])
    st.compact_all(T0 + DAY)  # the old minutes are chunks now
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in (7, 8)])
    before = same_as_without_cache(st, stores)
    # the agent's back-log arrives: minutes 3 and 4, before batches already read and cached
    store_all(st, [item("edge-01", m + 1, m, level=300) for m in (3, 4)])
    got = same_as_without_cache(st, stores)
    assert got != before
    minutes = {t // MIN * MIN for r in got[1] if r.host == "edge-01" for t, _ in r.points}
    assert {T0 + 3 * MIN, T0 + 4 * MIN} <= minutes
    st.close()


def test_a_reused_row_id_never_hits_the_old_batch(stores: Stores) -> None:
    st = stores.open(compact_delay_ms=0)
    store_all(st, [item("edge-01", 1, 0)])
    first_id = stores.sql(st, "SELECT max(id) FROM batches")
    answers(st)
    other = stores.open(compact_delay_ms=0)  # compacted elsewhere: no forget here
    other.compact_all(T0 + DAY)
    other.close()
    store_all(st, [item("edge-01", 2, 1, level=700)])
    # SQLite gives an emptied table's next row id 1 again; PostgreSQL never reuses one
    assert stores.backend != "sqlite" or stores.sql(st, "SELECT max(id) FROM batches") \
        == first_id
    same_as_without_cache(st, stores)
    st.close()


def test_batches_another_collector_stores_are_read(stores: Stores) -> None:
    st = stores.open(compact_delay_ms=0)
    store_all(st, [item(h, 1, 0) for h in HOSTS])
    answers(st)
    peer = stores.open(compact_delay_ms=0)  # a second collector on the same database
    store_all(peer, [item(h, 2, 1, level=40) for h in HOSTS])
    peer.close()
    got = same_as_without_cache(st, stores)
    assert {t // MIN * MIN for r in got[1] for t, _ in r.points} == {T0, T0 + MIN}
    st.close()


def test_alert_rules_give_the_same_transitions_with_and_without_the_cache(
        stores: Stores, tmp_path: Path) -> None:
    from edgemon.collector.alerting import AlertEngine, parse_rules

    rules = parse_rules('[[rule]]\nname = "cpu_high"\nkind = "threshold"\n'
                        'metric = "cpu_usage_percent"\nop = ">"\nthreshold = 20\n'
                        'window = "1m"\nfor = "2m"\n')
    st = stores.open(compact_delay_ms=0)
    cold = stores.open(compact_delay_ms=0, pending_cache_mb=0)
    now = [T0]
    engines = [AlertEngine(s, tmp_path / f"alerts-{k}.db", rules=rules,
                           clock_ms=lambda: now[0]) for k, s in enumerate((st, cold))]
    seen: list[list[list[Any]]] = [[], []]
    for m in range(10):
        level = 1500 if 3 <= m < 7 else 0  # above the threshold for minutes 3..6
        store_all(st, [item(h, m + 1, m, level=level if h != "edge-03" else 0)
                       for h in HOSTS])
        if m == 5:
            st.compact_all(T0 + DAY)
        now[0] = T0 + (m + 1) * MIN + 5_000
        for k, engine in enumerate(engines):
            report = engine.run_cycle()
            seen[k].append(sorted((t.host, t.status, t.at_ms) for t in report.transitions))
    assert seen[0] == seen[1]
    assert any(seen[0])  # the rule did fire and resolve
    assert st.pending_cache.decoded > 0
    for engine in engines:
        engine.close()
    st.close()
    cold.close()


def test_the_first_alert_cycle_decodes_each_pending_batch_once(stores: Stores,
                                                               tmp_path: Path) -> None:
    from edgemon.collector.alerting import AlertEngine, parse_rules

    rules = parse_rules('[[rule]]\nname = "cpu_high"\nkind = "threshold"\n'
                        'metric = "cpu_usage_percent"\nthreshold = 20\nwindow = "1m"\n\n'
                        '[[rule]]\nname = "load_high"\nkind = "threshold"\nmetric = "load1"\n'
                        'threshold = 5\nwindow = "1m"\n')
    st = stores.open(compact_delay_ms=0, batch_cache_mb=0)  # every payload read is a decode
    store_all(st, [item(h, m + 1, m) for h in HOSTS for m in range(4)])
    engine = AlertEngine(st, tmp_path / "alerts.db", rules=rules,
                         clock_ms=lambda: T0 + 5 * MIN)
    report = engine.run_cycle()
    assert {name: "error" in r for name, r in report.rules.items()} == \
        {"cpu_high": False, "load_high": False}
    # both rules' metrics from one decode of each batch in the rules' look-back
    assert st.reader.decoded == len(st.pending_cache) >= len(HOSTS)
    engine.close()
    st.close()


def test_memory_bound_and_idle_entries_give_way() -> None:
    columns = read_batch(item("edge-01", 1, 0).payload)
    names = frozenset({CPU.name})
    size = project(columns, names).nbytes + 200
    clock = [0.0]
    cache = PendingMetricCache(size * 3 + 100, idle_s=60, clock=lambda: clock[0])
    for i in range(10):
        cache.fill((i, 1, "i1", i, 0), columns, names)
        assert cache.used <= cache.max_bytes
    assert len(cache) == 3  # full: later batches were not admitted, the cached ones stay
    assert cache.get((0, 1, "i1", 0, 0), CPU.name) is not None
    assert cache.get((0, 1, "i1", 0, 0), LOAD.name) is None  # not projected: a miss
    clock[0] = 30.0
    assert cache.get((1, 1, "i1", 1, 0), CPU.name) is not None
    clock[0] = 70.0  # batches 0 and 2 idle for 60 s or more, batch 1 for 40 s
    cache.fill((5, 1, "i1", 5, 0), columns, names)
    assert cache.get((5, 1, "i1", 5, 0), CPU.name) is not None
    assert cache.get((1, 1, "i1", 1, 0), CPU.name) is not None
    assert cache.get((2, 1, "i1", 2, 0), CPU.name) is None  # gave way
    assert cache.used <= cache.max_bytes
    assert cache.forget([(5, 1, "i1", 5, 0), (1, 1, "i1", 1, 0)]) == 2
    assert PendingMetricCache(0).enabled is False


def test_an_entry_stays_when_its_replacement_finds_no_room() -> None:
    columns = read_batch(item("edge-01", 1, 0).payload)
    narrow, wide = frozenset({CPU.name}), frozenset({CPU.name, LOAD.name})
    size = project(columns, narrow).nbytes + 200
    cache = PendingMetricCache(size * 2 + 100, idle_s=60, clock=lambda: 0.0)
    cache.fill((0, 1, "i1", 0, 0), columns, narrow)
    cache.fill((1, 1, "i1", 1, 0), columns, narrow)
    cache.fill((0, 1, "i1", 0, 0), columns, wide)  # larger, and nothing idle to drop
    assert cache.get((0, 1, "i1", 0, 0), CPU.name) is not None  # the narrow one is kept
    assert cache.used == sum(e[2] for e in cache._entries.values()) <= cache.max_bytes


def _projected(it: IngestItem, *, historical: bool = False) -> IngestItem:
    names = frozenset({CPU.name})
    return IngestItem(it.batch, it.payload, it.received_ms, historical,
                      Projection(names, project(read_batch(it.payload), names)))


def test_ingest_caches_live_batches_only_and_any_number_of_one_hosts(stores: Stores) -> None:
    """A transaction of 1,200 batches of one host (more sequence numbers than one query's
    parameters may hold) caches every live one; a back-fill's batches are left to their first
    reader, not put in front of what readers use now."""
    st = stores.open()
    if stores.backend == "sqlite":  # as an SQLite built with the old default of 999 would have
        import sqlite3

        st._conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # type: ignore[attr-defined]
    live = [_projected(item("edge-01", seq, seq % 600)) for seq in range(1_200)]
    store_all(st, live)
    assert len(st.pending_cache) == 1_200
    back = [_projected(item("edge-02", seq, seq), historical=True) for seq in range(20)]
    store_all(st, back)
    assert len(st.pending_cache) == 1_200
    st.close()


@pytest.mark.parametrize("names", [{CPU.name}, {LOAD.name}, {CPU.name, LOAD.name}, {"none"}])
def test_a_projection_holds_exactly_its_metrics(names: set[str]) -> None:
    columns = read_batch(item("edge-01", 3, 0).payload)
    part = project(columns, names)
    kept = [m for m in columns.metrics if m.name in names]
    assert [m.name for m in part.metrics] == [m.name for m in kept]
    expected_ts, expected_values, labels = [], [], []
    for m in kept:
        lo, hi = int(columns.bounds[m.first]), int(columns.bounds[m.end])
        expected_ts += columns.ts[lo:hi].tolist()
        expected_values += columns.values[lo:hi].tolist()
        labels += columns.labels[m.first:m.end]
    assert part.labels == labels
    assert part.ts.tolist() == expected_ts
    assert part.values.tolist() == expected_values
    assert part.bounds[-1] == len(expected_ts) and part.bounds[0] == 0
    for pm, m in zip(part.metrics, kept, strict=True):
        assert part.entry_sizes(pm.first, pm.end).tolist() == \
            columns.entry_sizes(m.first, m.end).tolist()
