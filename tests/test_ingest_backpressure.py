"""Back-pressure on the compaction back-log (collector/ingest/backpressure.py).

The rules with a fake clock, then end to end: a real mosquitto, the real collector in-process
and its real SQLite storage with a tiny ``backlog_budget_samples``; paho clients play a host
back-filling and a live host. Compaction is kept from running (the maintenance interval is an
hour) until the test runs it, and batches are due for it as soon as they are stored
(``step_samples`` 1: every host is due in full) unless a test wants them young (the defaults).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.app import open_default_storage
from edgemon.collector.config import (
    CollectorConfig,
    ConfigError,
    HttpConfig,
    IngestConfig,
    MqttConfig,
    StorageConfig,
    load_config,
)
from edgemon.collector.ingest.backpressure import BackPressure, Figures, fair_level
from edgemon.collector.storage.base import DueBacklog, IngestItem, RangeQuery, Storage
from edgemon.common.clock import now_ms
from edgemon.protocol import backfill_topic, decode, metrics_topic
from edgemon.protocol.schema import validate_batch
from tests.support.broker import Broker
from tests.support.stand_in_agent import TIMEOUT, make_batch
from tests.support.stand_in_agent import StandInAgent as Agent
from tests.support.storages import Stores
from tests.support.waiting import wait_until
from tests.test_collector_ingest import RunningCollector

SAMPLES = 6  # per batch of make_batch (3 timestamps, 2 series)

# --- the rules ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fair_level_is_the_water_filling_level() -> None:
    assert fair_level([10, 20], 30) == math.inf  # all of it fits: nobody is cut
    assert fair_level([], 0) == math.inf
    # one back-filler beside quiet hosts: only it is cut, at what the others leave
    assert fair_level([5, 5, 1000], 100) == 90
    # a uniform overload: everyone is cut at an equal share
    assert fair_level([50, 50, 50, 50], 100) == 25
    for pending, budget in (([1, 7, 30, 30, 200], 60), ([3, 3, 3, 90, 1000], 50),
                            ([100] * 7, 10)):
        level = fair_level(pending, budget)
        assert sum(min(p, level) for p in pending) == pytest.approx(budget)
        assert level < max(pending)


def pressure(clock: Clock, budget: int = 100, **options: Any) -> BackPressure:
    return BackPressure(budget=budget, max_hold_s=20.0, clock=clock, **options)


STEP = 10**9  # no host is due in full by its size unless a test says so


def aged(hosts: dict[str, int], step: int = STEP) -> DueBacklog:
    """A read of the back-log where every pending sample is old enough for compaction."""
    return DueBacklog(step, {host: (n, n) for host, n in hosts.items()})


def test_only_the_host_over_its_fair_share_is_held_and_released_as_it_drains() -> None:
    clock = Clock()
    bp = pressure(clock)
    bp.update(aged({"live": 5, "bulk": 80}, step=100))
    assert not bp.hold("bulk", "i", [1])  # within the budget: nothing is held
    bp.stored("bulk", 30)  # bulk due in full (110 >= step): 115 > 100; the fair level is 95
    assert bp.level() == 95
    assert bp.hold("bulk", "i", [2, 3]) and bp.hold("bulk", "i", [4])
    assert not bp.hold("live", "i", [9])  # a live host is not slowed
    assert (bp.held_acks, bp.hosts_held(), bp.held_seqs, bp.acks_held) == (1, 1, 3, 2)
    assert bp.due() == []
    bp.begin_poll()
    bp.update(aged({"live": 5, "bulk": 96}))  # compaction took some; still over
    assert bp.due() == []
    bp.begin_poll()
    bp.update(aged({"live": 5, "bulk": 90}))  # total 95 <= budget
    [released] = bp.due()
    assert (released.host, released.instance, released.seqs) == ("bulk", "i", [2, 3, 4])
    assert bp.held_acks == 0 and bp.held_seqs == 0 and bp.acks_released_late == 0


def test_a_held_ack_is_released_when_its_host_falls_to_the_fair_level() -> None:
    clock = Clock()
    bp = pressure(clock)
    bp.update(aged({"a": 200, "b": 200}))  # uniform overload: both held at 50
    assert bp.hold("a", "i", [1]) and bp.hold("b", "i", [1])
    bp.update(aged({"a": 40, "b": 200}))  # a drained below its share (now 60), b did not
    assert [h.host for h in bp.due()] == ["a"]
    assert bp.hosts_held() == 1


def test_a_held_ack_is_released_after_the_maximum_hold() -> None:
    clock = Clock()
    bp = pressure(clock)
    bp.update(aged({"bulk": 500}))
    assert bp.hold("bulk", "i", [1])
    clock.now += 19.9
    assert bp.due() == []
    clock.now += 0.1
    assert [h.seqs for h in bp.due()] == [[1]]
    assert bp.acks_released_late == 1


def test_other_threads_read_the_figures_published_last_not_the_live_state() -> None:
    """``/metrics`` renders on an executor thread: it reads ``seen``, replaced whole by the
    event loop's ``refresh``, never the dicts the event loop changes meanwhile."""
    bp = pressure(Clock())
    assert bp.seen == Figures(100)
    bp.update(aged({"live": 5, "bulk": 120}, step=1000))
    assert bp.hold("bulk", "i", [7, 8])
    assert bp.seen == Figures(100)  # not yet published
    before = bp.seen
    bp.refresh()
    assert before == Figures(100)  # the old object is never changed
    assert bp.seen == Figures(100, due_samples=125, pending_samples=125,
                              fair_level_samples=95.0, acks_held=1, hosts_held=1,
                              acks_held_total=1)


def test_held_acks_are_bounded_and_all_released_at_shutdown() -> None:
    clock = Clock()
    bp = pressure(clock, max_held_seqs=3)
    bp.update(aged({"bulk": 500, "other": 500}))
    assert bp.hold("bulk", "i", [1, 2])
    assert not bp.hold("bulk", "i", [3, 4])  # past the cap: published at once
    assert bp.hold("other", "j", [7])
    assert bp.acks_over_cap == 1
    assert sorted((h.host, tuple(h.seqs)) for h in bp.release_all()) == [
        ("bulk", (1, 2)), ("other", (7,))]
    assert bp.held_acks == 0 and bp.held_seqs == 0


def test_a_budget_of_zero_never_holds() -> None:
    bp = pressure(Clock(), budget=0)
    bp.update(aged({"bulk": 10**9}))
    bp.stored("bulk", 10**6)
    assert not bp.enabled and not bp.hold("bulk", "i", [1]) and bp.due() == []


def test_young_batches_are_never_due() -> None:
    # budget 60: far less than what is pending; none of it is old enough
    bp = pressure(Clock(), budget=60)
    bp.update(DueBacklog(100, {"bulk": (90, 0), "live": (5, 0)}))
    bp.stored("bulk", 9)  # 99 pending, still under step_samples: young, not due
    bp.stored("new", 50)  # a host the read did not see
    assert (bp.pending_total, bp.due_total) == (154, 0)
    assert bp.level() == math.inf
    assert not bp.hold("bulk", "i", [1]) and not bp.hold("new", "i", [1])
    # a minute later the same batches are old: due, and the fillers are held
    bp.begin_poll()
    bp.update(DueBacklog(100, {"bulk": (99, 99), "live": (5, 5), "new": (50, 50)}))
    assert bp.due_total == 154 and bp.hold("bulk", "i", [2]) and not bp.hold("live", "i", [1])


def test_a_host_at_step_samples_is_due_in_full_young_or_not() -> None:
    bp = pressure(Clock(), budget=100)
    # compaction takes "big" whole at once; of "small" only what is old enough
    bp.update(DueBacklog(100, {"big": (150, 0), "small": (99, 20)}))
    assert (bp.pending_total, bp.due_total) == (249, 170)
    assert bp.hold("big", "i", [1]) and not bp.hold("small", "i", [1])


def test_between_reads_only_what_a_host_due_in_full_stores_is_due() -> None:
    bp = pressure(Clock(), budget=100)
    bp.update(DueBacklog(100, {"full": (120, 0), "part": (60, 30), "old": (50, 50)}))
    assert bp.due_total == 200
    bp.stored("full", 10)  # due in full already: due at once
    assert bp.due_total == 210
    bp.stored("old", 10)  # young batch of a host not due in full: not due
    assert bp.due_total == 210
    bp.stored("part", 39)  # 99 pending: still not due in full
    assert bp.due_total == 210
    bp.stored("part", 1)  # 100 = step_samples: compaction would take it whole now
    assert bp.due_total == 210 - 30 + 100
    assert bp.pending_total == 120 + 60 + 50 + 10 + 10 + 40


def test_a_storage_that_cannot_tell_holds_nothing() -> None:
    bp = pressure(Clock(), budget=100)
    bp.update(aged({"bulk": 500}, step=100))
    assert bp.hold("bulk", "i", [1])
    bp.begin_poll()
    bp.update(None)  # the read failed
    bp.stored("bulk", 10**6)
    assert bp.due_total == 0 and not bp.hold("bulk", "i", [2])
    assert [h.seqs for h in bp.due()] == [[1]]


def test_what_is_stored_while_the_storage_is_read_is_not_lost_by_the_read() -> None:
    bp = pressure(Clock())
    bp.update(aged({}, step=100))
    bp.begin_poll()
    bp.stored("bulk", 150)  # committed while the read ran: the read may not have seen it
    bp.update(aged({}, step=100))
    assert bp.due_total == 150 and bp.over("bulk")  # at step_samples: due in full
    bp.begin_poll()
    bp.update(DueBacklog(100, {"bulk": (150, 0)}))  # the next read sees it: counted once
    assert bp.due_total == 150 and bp.pending_total == 150
    assert bp.poll_every(0.5, 2.0) == 0.5
    bp.begin_poll()
    bp.update(aged({"bulk": 10}, step=100))
    assert bp.poll_every(0.5, 2.0) == 2.0


def test_the_settings_are_validated_and_overridable_from_the_environment(tmp_path: Path) -> None:
    config = load_config(None, environ={"EDGEMON_COLLECTOR_INGEST_BACKLOG_BUDGET_SAMPLES": "5000",
                                        "EDGEMON_COLLECTOR_INGEST_BACKLOG_MAX_HOLD_SECONDS": "7"})
    assert config.ingest.backlog_budget_samples == 5000
    assert config.ingest.backlog_max_hold_seconds == 7
    assert IngestConfig().backlog_budget_samples == 3_000_000
    for bad in ("-1", "x"):
        with pytest.raises(ConfigError):
            load_config(None, environ={"EDGEMON_COLLECTOR_INGEST_BACKLOG_BUDGET_SAMPLES": bad})
    with pytest.raises(ConfigError):  # would outlast the agents' ack timeout
        load_config(None, environ={"EDGEMON_COLLECTOR_INGEST_BACKLOG_MAX_HOLD_SECONDS": "60"})


# --- the storage's side ------------------------------------------------------------------------

def test_the_storage_tells_the_due_samples_of_each_host(stores: Stores) -> None:
    step = 4 * SAMPLES
    st = stores.open(step_samples=step)  # compact_delay_ms: the default minute
    try:
        assert st.due_by_host() == DueBacklog(step, {})
        now, old = now_ms(), now_ms() - 3_600_000

        def item(host: str, seq: int, received: int) -> IngestItem:
            payload = make_batch(host, seq, t0=old + seq * 30_000)
            return IngestItem(validate_batch(decode(payload)), payload, received, False)

        st.store_batches([item("a", s, old) for s in range(3)]  # received an hour ago
                         + [item("a", 3, now)]  # ... and one just now
                         + [item("b", 1, now)]  # young: not due
                         + [item("c", s, now) for s in range(4)])  # young, but step_samples
        assert st.due_by_host() == DueBacklog(step, {"a": (4 * SAMPLES, 3 * SAMPLES),
                                                     "b": (SAMPLES, 0),
                                                     "c": (4 * SAMPLES, 0)})
        st.compact_all(now_ms() + 120_000)
        assert st.due_by_host() == DueBacklog(step, {})
    finally:
        st.close()


# --- end to end --------------------------------------------------------------------------------

@pytest.fixture
def make_collector(tmp_path: Path, broker: Broker) -> Iterator[Callable[..., RunningCollector]]:
    started: list[RunningCollector] = []

    def make(due_at_once: bool = True, **ingest: Any) -> RunningCollector:
        """A collector; ``due_at_once``: every host with a batch pending is due for compaction
        in full (its storage's ``step_samples`` 1), as it would be a minute later."""

        def open_storage(storage_config: StorageConfig) -> Storage:
            storage = open_default_storage(storage_config)
            if due_at_once:
                storage.step_samples = 1  # type: ignore[attr-defined]
            return storage

        config = CollectorConfig(
            mqtt=MqttConfig(host=broker.host, port=broker.port,
                            client_id=f"collector-{uuid.uuid4().hex[:8]}", keepalive=10),
            # no compaction unless the test runs it
            storage=StorageConfig(path=tmp_path / "data" / "edgemon.db",
                                  maintain_interval_seconds=3600, compaction_process=False),
            http=HttpConfig(port=0, auth="none"),
            ingest=IngestConfig(**ingest))
        started.append(RunningCollector(config, open_storage).start())
        return started[-1]

    yield make
    for running in started:
        running.stop()


T0 = now_ms() - 3_600_000


def backfill(agent: Agent, seqs: range) -> None:
    for seq in seqs:  # each batch 30 s after the one before: no two share a timestamp
        agent.publish(backfill_topic(agent.host), make_batch(agent.host, seq, t0=T0 + seq * 30_000))


def stored_samples(running: RunningCollector, host: str) -> int:
    storage = running.collector.storage
    assert storage is not None
    total = 0
    for metric in ("cpu_usage_percent", "load1"):
        for series in storage.query(RangeQuery(metric, T0, now_ms(), 3_600_000,
                                               aggregation="count", hosts=(host,))):
            total += int(sum(p[1] for p in series.points if p[1] is not None))
    return total


def test_a_back_filling_host_waits_for_compaction_while_a_live_host_does_not(
        make_collector: Callable[..., RunningCollector],
        agents: Callable[[str], Agent]) -> None:
    # 60 samples: ten batches. The hold (50 s) outlasts every wait here: what is released in
    # this test is released because compaction took the back-log.
    running = make_collector(backlog_budget_samples=60, backlog_max_hold_seconds=50)
    bulk, live = agents("bulk-01"), agents("live-01")
    backfill(bulk, range(1, 21))
    wait_until(lambda: running.stats.batches_stored == 20, TIMEOUT, "20 batches stored")
    wait_until(lambda: running.metric("edgemon_collector_backlog_acks_held") == 1, TIMEOUT,
               "the back-filler's ack held")
    held_now = set(range(1, 21)) - set(bulk.acked())
    assert held_now, "some of the back-filler's batches are stored and not acknowledged yet"
    assert running.metric("edgemon_collector_backlog_due_samples") == 20 * SAMPLES
    assert running.metric("edgemon_collector_backlog_pending_samples") == 20 * SAMPLES
    assert running.metric("edgemon_collector_backlog_hosts_held") == 1

    live.publish(metrics_topic("live-01"), make_batch("live-01", 1))
    live.wait_acked(1)  # at once, while the back-filler waits
    assert set(range(1, 21)) - set(bulk.acked()) == held_now
    status, ready = running.get("/readyz")
    assert status == 200 and "acks of 1 host(s) held" in ready["ingest_backpressure"]

    storage = running.collector.storage
    assert storage is not None
    storage.compact_all(now_ms() + storage.compact_delay_ms)  # type: ignore[attr-defined]
    wait_until(lambda: set(bulk.acked()) == set(range(1, 21)), TIMEOUT,
               "the held acks released once compaction took the back-log")
    assert running.metric("edgemon_collector_backlog_acks_held") == 0
    assert running.metric("edgemon_collector_backlog_acks_released_late_total") == 0
    assert running.metric("edgemon_collector_backlog_acks_held_total") >= 1
    # every sample stored exactly once; no batch was sent again
    assert running.stats.batches_stored == 21 and running.stats.duplicates == 0
    assert stored_samples(running, "bulk-01") == 20 * SAMPLES
    assert sorted(bulk.acked()) == list(range(1, 21))


def test_batches_too_young_for_compaction_hold_nothing(
        make_collector: Callable[..., RunningCollector],
        agents: Callable[[str], Agent]) -> None:
    # the default compact_delay_ms: compaction would take none of these batches yet, so they
    # are no back-log of it, however far over the budget they are
    running = make_collector(due_at_once=False, backlog_budget_samples=30,
                             backlog_max_hold_seconds=50)
    bulk = agents("bulk-03")
    backfill(bulk, range(1, 21))
    wait_until(lambda: set(bulk.acked()) == set(range(1, 21)), TIMEOUT, "every ack, at once")
    wait_until(lambda: running.metric("edgemon_collector_backlog_pending_samples")
               == 20 * SAMPLES, TIMEOUT, "the back-log read")
    assert running.metric("edgemon_collector_backlog_due_samples") == 0
    assert running.metric("edgemon_collector_backlog_acks_held_total") == 0


def test_a_held_ack_goes_out_after_the_maximum_hold_and_at_shutdown(
        make_collector: Callable[..., RunningCollector],
        agents: Callable[[str], Agent]) -> None:
    running = make_collector(backlog_budget_samples=30, backlog_max_hold_seconds=1)
    bulk = agents("bulk-02")
    backfill(bulk, range(1, 11))
    wait_until(lambda: set(bulk.acked()) == set(range(1, 11)), TIMEOUT,
               "every ack, the held ones after a second")
    assert running.metric("edgemon_collector_backlog_acks_released_late_total") >= 1
    assert running.stats.duplicates == 0
    running.stop()

    # held for longer than the test: stopping the collector publishes them (they are stored)
    again = make_collector(backlog_budget_samples=30, backlog_max_hold_seconds=50)
    backfill(bulk, range(11, 21))
    wait_until(lambda: again.stats.batches_stored == 10, TIMEOUT, "10 batches stored")
    wait_until(lambda: again.metric("edgemon_collector_backlog_acks_held") == 1, TIMEOUT,
               "an ack held")
    assert set(range(11, 21)) - set(bulk.acked())
    again.stop()
    wait_until(lambda: set(bulk.acked()) == set(range(1, 21)), TIMEOUT,
               "the held acks published at shutdown")
    assert again.stats.batches_stored == 10 and again.stats.duplicates == 0
    assert sorted(bulk.acked()) == list(range(1, 21))  # each once
