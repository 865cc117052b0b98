"""The storage maintenance thread (``storage/maintenance.py``) over a real store (SQLite and
PostgreSQL): background compaction, bounded rounds, failures counted and survived, a clean
stop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from edgemon.collector.storage.base import IngestItem
from edgemon.collector.storage.maintenance import MaintenanceRunner
from edgemon.protocol import GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support.storages import Stores
from tests.support.waiting import wait_until

T0 = 1_780_012_800_000
HOUR = 3_600_000
TIMEOUT = 20.0
LOAD = MetricDef("load1", GAUGE, "", 2)


def items(host: str, count: int) -> list[IngestItem]:
    out = []
    for seq in range(count):
        builder = BatchBuilder()
        for k in range(6):
            builder.add(T0 + (seq * 6 + k) * 10_000, LOAD, (), 100 + k)
        payload = encode(builder.build(host=host, instance="i1", seq=seq,
                                       sent_ms=T0 + (seq + 1) * 60_000))
        out.append(IngestItem(validate_batch(decode(payload)), payload, T0 + seq * 60_000,
                              False))
    return out


class Counting:
    """In front of the real store: counts maintenance steps; a step can be made to fail or to
    wait."""

    def __init__(self, location: str, **opts: Any) -> None:
        super().__init__(location, **opts)  # type: ignore[call-arg]
        self.steps = 0
        self.fail_next = 0
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def maintain_step(self, now_ms: int) -> bool:
        self.steps += 1
        if self.hold is not None:
            self.holding.set()
            self.hold.wait(TIMEOUT)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk on fire")
        return super().maintain_step(now_ms)  # type: ignore[misc, no-any-return]


def counting(stores: Stores, **opts: Any) -> Any:
    return stores.open(mixin=Counting, **opts)


def test_compacts_in_the_background_until_stopped(stores: Stores) -> None:
    st = counting(stores, compact_delay_ms=0, step_samples=60)
    runner = MaintenanceRunner(st, interval=0.05, clock_ms=lambda: T0 + 3 * HOUR)
    runner.start()
    try:
        st.store_batches(items("web-01", 40))
        wait_until(lambda: st.backlog(T0 + 3 * HOUR)["pending_batches"] == 0, TIMEOUT,
                   "background compaction")
        wait_until(lambda: runner.runs >= 2, TIMEOUT, "more rounds")
    finally:
        runner.stop()
    # 10 batches (60 samples) per step; a step no longer holds the write lock throughout, so
    # the batches can land during the first step, which then compacts some of them
    assert runner.errors == 0 and st.steps >= 40 // 10
    assert runner.stats.quarantined == {}
    st.close()


def test_a_round_is_bounded_by_the_budget(stores: Stores) -> None:
    """With no budget, a round is one step; the runner says work is left until it is not."""
    st = counting(stores, compact_delay_ms=0, step_samples=60,
                         maintain_budget_ms=0)
    st.store_batches(items("web-01", 30))
    runner = MaintenanceRunner(st, clock_ms=lambda: T0 + 3 * HOUR)
    rounds = 0
    while runner.run_round():
        rounds += 1
        assert st.steps == rounds
    assert st.steps == rounds + 1 >= 3  # 180 samples, 60 per step; the last finds no more
    assert st.backlog()["pending_batches"] == 0
    st.close()


def test_a_failing_round_is_counted_logged_and_survived(stores: Stores,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    st = counting(stores, compact_delay_ms=0)
    st.store_batches(items("web-01", 5))
    st.fail_next = 2
    runner = MaintenanceRunner(st, interval=0.05, clock_ms=lambda: T0 + 3 * HOUR)
    runner.start()
    try:
        wait_until(lambda: st.backlog()["pending_batches"] == 0, TIMEOUT,
                   "compaction after the failures")
    finally:
        runner.stop()
    assert runner.errors == 2 and runner.runs >= 1
    assert sum("storage maintenance failed" in r.getMessage() for r in caplog.records) == 2
    st.close()


def test_stop_lets_the_round_in_progress_finish(stores: Stores) -> None:
    st = counting(stores)
    st.hold = threading.Event()
    runner = MaintenanceRunner(st, interval=0.05, clock_ms=lambda: T0)
    runner.start()
    assert st.holding.wait(TIMEOUT)
    seen_when_stopped: list[int] = []

    def stop() -> None:
        runner.stop()
        seen_when_stopped.append(runner.runs)

    stopper = threading.Thread(target=stop)
    stopper.start()
    wait_until(runner._stop.is_set, TIMEOUT, "stop requested")
    st.hold.set()  # only now can the step (and the round) finish
    stopper.join(TIMEOUT)
    assert seen_when_stopped == [1]  # stop() returned after the round, not before
    st.close()


@pytest.mark.parametrize(("busy_pause", "factor"), [(2.0, 2.0), (0.0, 0.0)])
def test_the_pause_after_a_step_while_messages_wait_is_the_runners_own(
        monkeypatch: pytest.MonkeyPatch, busy_pause: float, factor: float) -> None:
    """In the collector's interpreter maintenance pauses twice each step's time while messages
    wait; the compaction process (``busy_pause`` 0) pauses only the least pause: it gives the
    write lock way per transaction instead."""
    from edgemon.collector.storage import maintenance

    class Steps:
        maintain_budget_ms = 60_000
        left = 3

        def maintain_step(self, now: int) -> bool:
            clock[0] += 0.5  # each step takes half a second
            self.left -= 1
            return self.left > 0

        def stats(self) -> Any:
            return maintenance.StorageStats()

    clock = [0.0]
    pauses: list[float] = []
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(maintenance.time, "sleep", pauses.append)
    runner = MaintenanceRunner(Steps(), busy=lambda: True,  # type: ignore[arg-type]
                               busy_pause=busy_pause, idle_pause=0.0,
                               backlog_interval=1e9, sizes_interval=1e9)
    runner.refresh_gauges = lambda **_: None  # type: ignore[method-assign]
    runner.run_round()
    assert pauses == [max(maintenance.MIN_PAUSE, 0.5 * factor)] * 2
