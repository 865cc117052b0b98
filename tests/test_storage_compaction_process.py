"""Compaction in its own process (``storage/compaction_process.py``), on both backends: it
compacts beside the parent's handle on the store, reports its rounds, is started again when it
dies in the middle of a step, and that death loses nothing and stores nothing twice.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.storage.compaction_process import CompactionProcess
from tests.support.storages import Stores
from tests.support.waiting import wait_until
from tests.test_storage_crash import _check, _fleet, _stored_samples
from tests.test_storage_sqlite import DAY, HOUR, INTERVAL, MIN, T0, TEMP, make_items, q

TIMEOUT = 120.0
# the test data is months old: keep every tier, and compact at once
OPTIONS = {"compact_delay_ms": 0, "raw_retention_ms": 3000 * DAY,
           "rollup_1m_retention_ms": 3000 * DAY, "rollup_1h_retention_ms": 3000 * DAY,
           "step_samples": 5_000, "txn_samples": 1_000}


def _options(stores: Stores) -> dict[str, object]:
    return {**OPTIONS, **({"pool_size": 2} if stores.backend == "postgres" else {})}


def _started(stores: Stores) -> tuple[Any, Any, CompactionProcess]:
    """The fleet stored, pending; the parent's handle; the compaction process, started."""
    fleet = _fleet()
    st = stores.open(**_options(stores))
    st.store_batches(fleet.items)
    proc = CompactionProcess(stores.location, _options(stores), st, interval=0.05)
    proc.start()
    return fleet, st, proc


def _all_there(st: Any, fleet: Any) -> None:
    """Every sample once, physically and through queries; then the handle is closed."""
    assert _stored_samples(st) == sum(len(p) for p in fleet.samples.values())
    _check(st, fleet)
    st.close()


def _done(st: object) -> bool:
    backlog = st.backlog()  # type: ignore[attr-defined]
    return backlog["pending_batches"] == 0 and backlog["dirty_windows"] == 0


def test_the_process_compacts_and_reports(stores: Stores) -> None:
    fleet, st, proc = _started(stores)
    try:
        wait_until(lambda: _done(st) and proc.runs > 0, TIMEOUT, "compaction in the child")
        wait_until(lambda: proc.gauges.backlog.get("pending_batches") == 0, TIMEOUT,
                   "the child's gauges")
        assert proc.errors == 0 and proc.restarts == 0
    finally:
        proc.stop()
    assert proc.pid is None  # the child has ended
    _all_there(st, fleet)


def test_a_killed_compaction_process_is_restarted_and_loses_nothing(
        stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first child SIGKILLs itself at the 25th chunk row of an L0 transaction (the kill
    hook, once); the supervisor counts it, starts another, which finishes the work."""
    killed = tmp_path / "killed"
    monkeypatch.setenv("EDGEMON_STORAGE_TEST_KILL", "l0:25")
    monkeypatch.setenv("EDGEMON_STORAGE_TEST_KILL_ONCE", str(killed))
    fleet, st, proc = _started(stores)
    try:
        wait_until(lambda: proc.restarts >= 1 and _done(st), TIMEOUT,
                   "a restarted child finishing the compaction")
        assert killed.exists()
        assert proc.errors >= 1  # the death is counted as a failed round
    finally:
        proc.stop()
    _all_there(st, fleet)


def test_a_child_killed_from_outside_is_restarted(stores: Stores) -> None:
    """kill -9 of the child at whatever point it is: counted, started again, nothing lost."""
    fleet, st, proc = _started(stores)
    try:
        wait_until(lambda: proc.pid, TIMEOUT, "the child")
        first = proc.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: proc.pid not in (None, first) and _done(st), TIMEOUT,
                   "another child finishing the compaction")
        assert proc.errors >= 1 and proc.restarts >= 1
    finally:
        proc.stop()
    _all_there(st, fleet)


def test_two_compaction_processes_on_one_store_compact_each_sample_once(
        stores: Stores) -> None:
    """Two collectors' compaction processes on one store at once (a fail-over's overlap, or two
    that both believe they lead): every step re-reads under the store's write lock what it
    takes, so the work is shared, never done twice, and nothing is lost."""
    fleet, st, first = _started(stores)
    second = CompactionProcess(stores.location, _options(stores), st, interval=0.05)
    second.start()
    try:
        wait_until(lambda: _done(st) and first.runs > 0 and second.runs > 0, TIMEOUT,
                   "both processes compacting the one store")
        assert first.errors == 0 and second.errors == 0
        assert first.restarts == 0 and second.restarts == 0
    finally:
        first.stop()
        second.stop()
    _all_there(st, fleet)


def test_a_series_another_compactor_deleted_is_made_again_not_written_to(
        stores: Stores) -> None:
    """Compactor ``a`` knows a series (its id cached); ``b``, on the same store, deletes it
    when all its samples expired; the host then sends that series again and ``a`` compacts it:
    the samples go to a series that exists, not to the deleted id (where no query finds them)."""
    opts = {"compact_delay_ms": 0, "raw_retention_ms": DAY, "rollup_1m_retention_ms": DAY,
            "rollup_1h_retention_ms": DAY}
    a, b = stores.open(**opts), stores.open(**opts)
    try:
        a.store_batches([make_items("h", 0, [(T0 + i * INTERVAL, TEMP, (), 200 + i)
                                             for i in range(6)])])
        a.compact_all(T0 + HOUR)
        later = T0 + 10 * DAY
        b.compact_all(later)  # every tier expired: the series goes
        assert Stores.sql(b, "SELECT count(*) FROM series") == 0
        a.store_batches([make_items("h", 1, [(later + i * INTERVAL, TEMP, (), 300 + i)
                                             for i in range(6)])])
        a.compact_all(later + HOUR)
        assert Stores.sql(b, "SELECT count(*) FROM batches") == 0
        got = b.query(q("temperature_celsius", later, later + HOUR, MIN, tier="raw",
                        aggregation="count"))
        assert [sum(v for _, v in r.points) for r in got] == [6]
    finally:
        a.close()
        b.close()


def test_the_parents_caches_are_pruned_at_most_every_forget_interval(tmp_path: Path) -> None:
    """Pruning the parent's caches of pending batches reads every cached batch's identity:
    after a round report at most once per ``FORGET_INTERVAL_S``, not after every round."""
    from edgemon.collector.storage import compaction_process as cp
    from edgemon.collector.storage.base import StorageStats
    from edgemon.collector.storage.maintenance import StorageGauges
    from edgemon.collector.storage.sqlite import SQLiteStorage

    store = SQLiteStorage(str(tmp_path / "e.db"))
    calls: list[int] = []
    store.forget_compacted = lambda: calls.append(1) or 0  # type: ignore[method-assign]
    try:
        proc = cp.CompactionProcess(str(tmp_path / "e.db"), {}, store)
        for _ in range(5):
            proc._report((True, StorageStats(), StorageGauges()))
        assert len(calls) == 1 and proc.runs == 5
        proc._next_forget = 0.0  # the interval passed
        proc._report((True, StorageStats(), StorageGauges()))
        assert len(calls) == 2
    finally:
        store.close()
