"""Back-pressure on the compaction back-log (collector/ingest/backpressure.py).

The rules with a fake clock, then end to end: a real mosquitto, the real collector in-process
and its real SQLite storage with a tiny ``backlog_budget_samples``; paho clients play a host
back-filling and a live host. Compaction is kept from running (pending batches are compacted
after a minute; the maintenance interval is an hour) until the test runs it.
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
from edgemon.collector.ingest.backpressure import BackPressure, fair_level
from edgemon.collector.storage.base import IngestItem, RangeQuery
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


def test_only_the_host_over_its_fair_share_is_held_and_released_as_it_drains() -> None:
    clock = Clock()
    bp = pressure(clock)
    bp.update({"live": 5, "bulk": 80})
    assert not bp.hold("bulk", "i", [1])  # within the budget: nothing is held
    bp.stored("bulk", 30)  # 115 > 100; the fair level is 95
    assert bp.level() == 95
    assert bp.hold("bulk", "i", [2, 3]) and bp.hold("bulk", "i", [4])
    assert not bp.hold("live", "i", [9])  # a live host is not slowed
    assert (bp.held_acks, bp.hosts_held(), bp.held_seqs, bp.acks_held) == (1, 1, 3, 2)
    assert bp.due() == []
    bp.begin_poll()
    bp.update({"live": 5, "bulk": 96})  # compaction took some; still over
    assert bp.due() == []
    bp.begin_poll()
    bp.update({"live": 5, "bulk": 90})  # total 95 <= budget
    [released] = bp.due()
    assert (released.host, released.instance, released.seqs) == ("bulk", "i", [2, 3, 4])
    assert bp.held_acks == 0 and bp.held_seqs == 0 and bp.acks_released_late == 0


def test_a_held_ack_is_released_when_its_host_falls_to_the_fair_level() -> None:
    clock = Clock()
    bp = pressure(clock)
    bp.update({"a": 200, "b": 200})  # uniform overload: both held at 50
    assert bp.hold("a", "i", [1]) and bp.hold("b", "i", [1])
    bp.update({"a": 40, "b": 200})  # a drained below its share (now 60), b did not
    assert [h.host for h in bp.due()] == ["a"]
    assert bp.hosts_held() == 1


def test_a_held_ack_is_released_after_the_maximum_hold() -> None:
    clock = Clock()
    bp = pressure(clock)
    bp.update({"bulk": 500})
    assert bp.hold("bulk", "i", [1])
    clock.now += 19.9
    assert bp.due() == []
    clock.now += 0.1
    assert [h.seqs for h in bp.due()] == [[1]]
    assert bp.acks_released_late == 1


def test_held_acks_are_bounded_and_all_released_at_shutdown() -> None:
    clock = Clock()
    bp = pressure(clock, max_held_seqs=3)
    bp.update({"bulk": 500, "other": 500})
    assert bp.hold("bulk", "i", [1, 2])
    assert not bp.hold("bulk", "i", [3, 4])  # past the cap: published at once
    assert bp.hold("other", "j", [7])
    assert bp.acks_over_cap == 1
    assert sorted((h.host, tuple(h.seqs)) for h in bp.release_all()) == [
        ("bulk", (1, 2)), ("other", (7,))]
    assert bp.held_acks == 0 and bp.held_seqs == 0


def test_a_budget_of_zero_never_holds() -> None:
    bp = pressure(Clock(), budget=0)
    bp.update({"bulk": 10**9})
    bp.stored("bulk", 10**6)
    assert not bp.enabled and not bp.hold("bulk", "i", [1]) and bp.due() == []


def test_what_is_stored_while_the_storage_is_read_is_not_lost_by_the_read() -> None:
    bp = pressure(Clock())
    bp.begin_poll()
    bp.stored("bulk", 150)  # committed while the read ran: the read may not have seen it
    bp.update({})
    assert bp.total == 150 and bp.over("bulk")
    bp.begin_poll()
    bp.update({"bulk": 150})  # the next read sees it: counted once
    assert bp.total == 150
    assert bp.poll_every(0.5, 2.0) == 0.5
    bp.begin_poll()
    bp.update({"bulk": 10})
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

def test_the_storage_tells_the_pending_samples_of_each_host(stores: Stores) -> None:
    st = stores.open(compact_delay_ms=0)
    try:
        assert st.pending_by_host() == {}
        t0 = now_ms() - 3_600_000
        items = [IngestItem(validate_batch(decode(payload)), payload, t0, False)
                 for payload in [make_batch("a", s, t0=t0 + s * 30_000) for s in range(3)]
                 + [make_batch("b", 1, t0=t0)]]
        st.store_batches(items)
        assert st.pending_by_host() == {"a": 3 * SAMPLES, "b": SAMPLES}
        st.compact_all(now_ms())
        assert st.pending_by_host() == {}
    finally:
        st.close()


# --- end to end --------------------------------------------------------------------------------

@pytest.fixture
def make_collector(tmp_path: Path, broker: Broker) -> Iterator[Callable[..., RunningCollector]]:
    started: list[RunningCollector] = []

    def make(**ingest: Any) -> RunningCollector:
        config = CollectorConfig(
            mqtt=MqttConfig(host=broker.host, port=broker.port,
                            client_id=f"collector-{uuid.uuid4().hex[:8]}", keepalive=10),
            # no compaction unless the test runs it
            storage=StorageConfig(path=tmp_path / "data" / "edgemon.db",
                                  maintain_interval_seconds=3600, compaction_process=False),
            http=HttpConfig(port=0, auth="none"),
            ingest=IngestConfig(**ingest))
        started.append(RunningCollector(config, open_default_storage).start())
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
    assert running.metric("edgemon_collector_backlog_pending_samples") == 20 * SAMPLES
    assert running.metric("edgemon_collector_backlog_hosts_held") == 1

    live.publish(metrics_topic("live-01"), make_batch("live-01", 1))
    live.wait_acked(1)  # at once, while the back-filler waits
    assert set(range(1, 21)) - set(bulk.acked()) == held_now
    status, ready = running.get("/readyz")
    assert status == 200 and "acks of 1 host(s) held" in ready["ingest_backpressure"]

    storage = running.collector.storage
    assert storage is not None
    storage.compact_all(now_ms() + storage.compact_delay_ms + 60_000)  # type: ignore[attr-defined]
    wait_until(lambda: set(bulk.acked()) == set(range(1, 21)), TIMEOUT,
               "the held acks released once compaction took the back-log")
    assert running.metric("edgemon_collector_backlog_acks_held") == 0
    assert running.metric("edgemon_collector_backlog_acks_released_late_total") == 0
    assert running.metric("edgemon_collector_backlog_acks_held_total") >= 1
    # every sample stored exactly once; no batch was sent again
    assert running.stats.batches_stored == 21 and running.stats.duplicates == 0
    assert stored_samples(running, "bulk-01") == 20 * SAMPLES
    assert sorted(bulk.acked()) == list(range(1, 21))


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
