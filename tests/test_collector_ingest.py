"""Collector ingest end to end: a real mosquitto, the real collector (in-process, uvloop, HTTP on a
free port) and the real SQLite storage; a paho client plays the agent and listens for acks.

A few tests use the in-memory fake storage where they need a storage that fails or stalls on
command (storage outages, shutdown drain, back-pressure); the broker and network stay real.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from edgemon.collector.app import CollectorService, open_default_storage
from edgemon.collector.config import (
    CollectorConfig,
    HttpConfig,
    IngestConfig,
    MqttConfig,
    StorageConfig,
)
from edgemon.collector.http.documents import query_csv
from edgemon.collector.ingest.cardinality import ACTIVE_MS, SeriesLimits
from edgemon.collector.ingest.rejects import OTHER_HOST, Rejects
from edgemon.collector.storage.base import RangeQuery, SeriesResult, Storage
from edgemon.common.clock import now_ms
from edgemon.protocol import (
    GAUGE,
    BatchBuilder,
    MetricDef,
    backfill_topic,
    encode,
    encode_status,
    metrics_topic,
    status_topic,
)
from tests.support.broker import Broker
from tests.support.fake_storage import MemoryStorage
from tests.support.stand_in_agent import CPU, TIMEOUT, make_batch
from tests.support.stand_in_agent import StandInAgent as Agent
from tests.support.waiting import wait_until


class RunningCollector:
    """The collector on its own uvloop in a background thread, as `edgemon-collector run`."""

    def __init__(self, config: CollectorConfig, storage_factory: Callable[..., Storage],
                 **options: Any) -> None:
        """``options``: more CollectorService arguments (e.g. ``leadership_factory``)."""
        self.collector = CollectorService(config, storage_factory=storage_factory, **options)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._thread, daemon=True)

    def start(self) -> RunningCollector:
        self.thread.start()
        assert self._started.wait(TIMEOUT), "collector did not start"
        if self._error is not None:
            raise self._error
        wait_until(lambda: self.collector.mqtt and self.collector.mqtt.ready, TIMEOUT,
                   "collector connected and subscribed")
        return self

    def _thread(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.collector.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            await self.collector.stop()
            return
        self._started.set()
        await self._stop.wait()
        await self.collector.stop()

    def stop(self, timeout: float = 30) -> None:
        if self.thread.is_alive() and self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "collector did not stop"

    def get(self, path: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.collector.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
                status = resp.status
                ctype = resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            body, status, ctype = exc.read().decode(), exc.code, exc.headers.get_content_type()
        return status, json.loads(body) if ctype == "application/json" else body

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        status, text = self.get("/metrics")
        assert status == 200
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                       if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    @property
    def stats(self) -> Any:
        assert self.collector.pipeline is not None
        return self.collector.pipeline.stats


@pytest.fixture
def make_config(tmp_path: Path, broker: Broker) -> Callable[..., CollectorConfig]:
    client_id = f"collector-{uuid.uuid4().hex[:8]}"

    def make(**ingest: Any) -> CollectorConfig:
        return CollectorConfig(
            mqtt=MqttConfig(host=broker.host, port=broker.port, client_id=client_id,
                            keepalive=10),
            storage=StorageConfig(path=tmp_path / "data" / "edgemon.db",
                                  maintain_interval_seconds=0.2),
            http=HttpConfig(port=0, auth="none"),  # API auth: tests/test_api_auth.py
            ingest=IngestConfig(**ingest),
        )

    return make


@pytest.fixture
def real_storage_factory() -> Callable[..., Storage]:
    """The real SQLite backend, as `edgemon-collector run` opens it."""
    return open_default_storage


@pytest.fixture
def collector(make_config: Callable[..., CollectorConfig],
              real_storage_factory: Callable[..., Storage]) -> Iterator[RunningCollector]:
    running = RunningCollector(make_config(), real_storage_factory).start()
    yield running
    running.stop()


def test_valid_batch_is_stored_then_acked_and_a_resend_is_acked_but_not_stored(
        collector: RunningCollector, agents: Callable[[str], Agent]) -> None:
    agent = agents("web-01")
    t0 = now_ms() - 60_000
    payload = make_batch("web-01", 7, t0=t0)
    agent.publish(metrics_topic("web-01"), payload)
    agent.wait_acked(7)
    assert collector.stats.batches_stored == 1 and collector.stats.samples_stored == 6
    storage = collector.collector.storage
    assert storage is not None
    hosts = {h.host: h for h in storage.hosts()}
    assert hosts["web-01"].last_seen_ms is not None

    agent.publish(metrics_topic("web-01"), payload)  # the agent resends byte for byte
    agent.wait_acked(7, times=2)
    assert collector.stats.batches_stored == 1 and collector.stats.duplicates == 1
    assert collector.metric("edgemon_collector_duplicates_total") == 1
    assert collector.metric("edgemon_collector_batches_stored_total") == 1
    # the samples exist once, not twice
    result = storage.query(RangeQuery("cpu_usage_percent", t0, t0 + 30_000, 10_000,
                                      aggregation="count", hosts=("web-01",)))
    assert [p[1] for s in result for p in s.points] == [1, 1, 1]


def test_garbage_from_one_host_does_not_block_another(
        collector: RunningCollector, agents: Callable[[str], Agent]) -> None:
    bad, good = agents("host-a"), agents("host-b")
    bad.publish(metrics_topic("host-a"), b"\x00this is not zstd")
    bad.publish(metrics_topic("host-a"), bytes(range(256)) * 50)
    good.publish(metrics_topic("host-b"), make_batch("host-b", 1))
    good.wait_acked(1)
    wait_until(lambda: collector.metric("edgemon_collector_rejects_total",
                                        reason="not_zstd") == 2, TIMEOUT, "2 rejects counted")
    assert collector.metric("edgemon_collector_host_rejects_total", host="host-a",
                            reason="not_zstd") == 2
    assert bad.acks == []
    # and the collector carries on for host-a once it behaves
    bad.publish(metrics_topic("host-a"), make_batch("host-a", 5))
    bad.wait_acked(5)
    assert bad.acked() == [5]


@pytest.mark.parametrize(("reason", "payload"), [
    ("host_mismatch", lambda: make_batch("web-02", 1, payload_host="web-99")),
    ("future_timestamp", lambda: make_batch("web-02", 1, t0=now_ms() + 3_600_000)),
    ("past_timestamp", lambda: make_batch("web-02", 1, t0=now_ms() - 40 * 86_400_000)),
    ("schema", lambda: encode({"v": 1, "host": "web-02", "instance": "inst-1", "seq": 1,
                               "sent": 1, "t": [], "metrics": []})),
])
def test_invalid_batch_is_rejected_counted_and_refused_to_its_agent(
        collector: RunningCollector, agents: Callable[[str], Agent], reason: str,
        payload: Callable[[], bytes]) -> None:
    agent = agents("web-02")
    agent.publish(metrics_topic("web-02"), payload())
    # Messages are handled in order: once seq 2 is acked, seq 1 was handled (and not acked).
    agent.publish(metrics_topic("web-02"), make_batch("web-02", 2))
    agent.wait_acked(2)
    assert agent.acked() == [2]
    # the agent learns that seq 1 will never be stored: it drops it and counts it
    wait_until(lambda: agent.rejected() == [(1, reason)], TIMEOUT, "seq 1 refused")
    assert collector.metric("edgemon_collector_rejects_total", reason=reason) == 1
    assert collector.stats.batches_stored == 1


def test_backfill_is_stored_as_history_and_acked(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    storage = MemoryStorage()
    running = RunningCollector(make_config(), lambda _c: storage).start()
    try:
        agent = agents("web-03")
        agent.publish(backfill_topic("web-03"), make_batch("web-03", 3, t0=now_ms() - 86_400_000))
        agent.publish(metrics_topic("web-03"), make_batch("web-03", 4))
        agent.wait_acked(4)
        assert agent.acked() == [3, 4]
        assert storage.items[("web-03", "inst-1", 3)].historical is True
        assert storage.items[("web-03", "inst-1", 4)].historical is False
        assert running.stats.batches_stored == 2
    finally:
        running.stop()


def test_status_birth_and_death_show_in_hosts(collector: RunningCollector,
                                              agents: Callable[[str], Agent]) -> None:
    agent = agents("edge-7")

    def online() -> bool | None:
        status, doc = collector.get("/edgemon/api/v1/hosts")
        assert status == 200
        return {h["host"]: h["online"] for h in doc["hosts"]}.get("edge-7")

    agent.publish(status_topic("edge-7"),
                  encode_status(online=True, instance="i-9", timestamp_ms=now_ms()), retain=True)
    wait_until(lambda: online() is True, TIMEOUT, "edge-7 online")
    _, doc = collector.get("/edgemon/api/v1/hosts")
    assert {h["host"]: h for h in doc["hosts"]}["edge-7"]["instance"] == "i-9"
    agent.publish(status_topic("edge-7"),
                  encode_status(online=False, instance="i-9", timestamp_ms=now_ms() + 1),
                  retain=True)
    wait_until(lambda: online() is False, TIMEOUT, "edge-7 offline")
    agent.publish(status_topic("edge-7"), b"{not json", retain=False)
    wait_until(lambda: collector.metric("edgemon_collector_rejects_total", reason="not_json")
               == 1, TIMEOUT, "bad status counted")


def test_http_endpoints_of_a_running_collector(collector: RunningCollector,
                                               agents: Callable[[str], Agent]) -> None:
    agent = agents("web-04")
    agent.publish(metrics_topic("web-04"), make_batch("web-04", 1))
    agent.wait_acked(1)
    assert collector.get("/healthz")[0] == 200
    status, doc = collector.get("/readyz")
    assert (status, doc) == (200, {"ready": True, "mqtt": True, "mqtt_delivery": True,
                                   "storage": True})
    assert collector.metric("edgemon_collector_queue_depth") == 0
    assert collector.metric("edgemon_collector_mqtt_connected") == 1
    assert abs(collector.metric("edgemon_collector_host_lag_seconds", host="web-04")) < 60
    status, doc = collector.get("/edgemon/api/v1/query?metric=load1&host=nosuch")
    assert status == 404
    status, doc = collector.get("/edgemon/api/v1/query?metric=cpu_usage_percent&host=web-04"
                                "&start=now-5m&step=10s&agg=last")
    assert status == 200, doc
    assert [s["host"] for s in doc["series"]] == ["web-04"]
    assert len(doc["series"][0]["points"]) == 3
    status, doc = collector.get("/edgemon/api/v1/hosts/web-04/series")
    assert status == 200 and {s["name"] for s in doc["series"]} == {"cpu_usage_percent",
                                                                     "load1"}


# --- delivery guarantees (fake storage that fails or stalls on command) ------------------------

def test_no_puback_before_commit_so_the_broker_redelivers(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    """Storage down: nothing is acknowledged; after a restart the broker delivers it again."""
    broken = MemoryStorage()
    broken.fail_next_stores = 10**9
    first = RunningCollector(make_config(), lambda _c: broken).start()
    agent = agents("web-05")
    agent.publish(metrics_topic("web-05"), make_batch("web-05", 11))
    wait_until(lambda: len(broken.store_calls) >= 3, TIMEOUT, "store retried")
    assert first.get("/readyz")[0] == 503  # storage refuses writes: not ready
    assert first.stats.messages == 0 and agent.acks == []
    first.stop()  # leaves the message unacknowledged in our persistent session

    healthy = MemoryStorage()
    second = RunningCollector(make_config(), lambda _c: healthy).start()
    try:
        agent.wait_acked(11)
        assert ("web-05", "inst-1", 11) in healthy.items
    finally:
        second.stop()


def test_storage_recovers_without_losing_or_reordering(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    storage = MemoryStorage()
    storage.fail_next_stores = 4
    running = RunningCollector(make_config(), lambda _c: storage).start()
    try:
        agent = agents("web-06")
        for seq in (1, 2, 3):
            agent.publish(metrics_topic("web-06"), make_batch("web-06", seq))
        for seq in (1, 2, 3):
            agent.wait_acked(seq)
        assert sorted(k[2] for k in storage.items) == [1, 2, 3]
        assert running.stats.storage_retries >= 1 and running.stats.storage_errors == 0
    finally:
        running.stop()


def test_poison_batch_is_rejected_the_rest_stored(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    storage = MemoryStorage()

    def poison(items: list[Any]) -> None:
        if any(i.batch.seq == 13 for i in items):
            raise ValueError("storage cannot take seq 13")

    storage.before_store = poison
    gate = threading.Event()
    running = RunningCollector(make_config(), lambda _c: storage).start()
    try:
        agent = agents("web-07")
        # hold the writer so both batches land in one transaction
        storage.before_store = lambda items: (gate.wait(TIMEOUT), poison(items))  # type: ignore
        agent.publish(metrics_topic("web-07"), make_batch("web-07", 12))
        wait_until(lambda: running.collector.inbox and running.collector.inbox.held == 1,
                   TIMEOUT, "first batch held")
        agent.publish(metrics_topic("web-07"), make_batch("web-07", 13))
        agent.publish(metrics_topic("web-07"), make_batch("web-07", 14))
        wait_until(lambda: running.collector.inbox.held == 3, TIMEOUT, "3 held")
        gate.set()
        agent.wait_acked(14)
        assert sorted(agent.acked()) == [12, 14]
        wait_until(lambda: running.metric("edgemon_collector_rejects_total",
                                          reason="storage_error") == 1, TIMEOUT, "poison")
    finally:
        gate.set()
        running.stop()


def test_shutdown_drains_queue_and_acks_everything(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    storage = MemoryStorage()
    gate = threading.Event()
    storage.before_store = lambda _items: gate.wait(TIMEOUT)  # type: ignore
    running = RunningCollector(make_config(max_batch_per_txn=1), lambda _c: storage).start()
    agent = agents("web-08")
    for seq in (1, 2, 3):
        agent.publish(metrics_topic("web-08"), make_batch("web-08", seq))
    wait_until(lambda: running.collector.inbox.held == 3, TIMEOUT, "3 messages held")
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    wait_until(lambda: running.collector.inbox.closed, TIMEOUT, "stop begun")
    gate.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert sorted(agent.acked()) == [1, 2, 3]  # acks were flushed before the disconnect
    assert storage.closed and len(storage.items) == 3

    # Nothing was left for the broker to redeliver: the next message is the first one seen.
    fresh = MemoryStorage()
    again = RunningCollector(make_config(), lambda _c: fresh).start()
    try:
        agent.publish(metrics_topic("web-08"), make_batch("web-08", 4))
        agent.wait_acked(4)
        assert again.stats.messages == 1 and list(fresh.items) == [("web-08", "inst-1", 4)]
    finally:
        again.stop()


def test_backpressure_bounds_memory_and_loses_nothing(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    storage = MemoryStorage()
    held: list[int] = []
    running: RunningCollector | None = None

    def slow(_items: list[Any]) -> None:
        assert running is not None and running.collector.inbox is not None
        held.append(running.collector.inbox.held)
        time.sleep(0.05)

    storage.before_store = slow
    running = RunningCollector(make_config(queue_max=3, max_batch_per_txn=1),
                               lambda _c: storage).start()
    try:
        agent = agents("web-09")
        for seq in range(1, 13):
            agent.client.publish(metrics_topic("web-09"), make_batch("web-09", seq), qos=1)
        wait_until(lambda: set(agent.acked()) == set(range(1, 13)), 30, "all 12 acked")
        assert max(held) <= 3
        assert sorted(k[2] for k in storage.items) == list(range(1, 13))
        assert running.collector.mqtt is not None
        assert running.collector.mqtt.refused > 0  # the bound was hit...
        assert running.collector.mqtt.redelivery_reconnects > 0  # ...and recovered from
    finally:
        running.stop()


def test_reconnects_after_broker_restart_and_keeps_its_session(
        make_config: Callable[..., CollectorConfig], real_storage_factory: Callable[..., Storage],
        broker: Broker, agents: Callable[[str], Agent]) -> None:
    """Broker restarts: the collector reconnects with back-off. Collector down: the broker queues
    for its persistent session and delivers when it is back (same client id, same database)."""
    running = RunningCollector(make_config(), real_storage_factory).start()
    try:
        mqtt_ingest = running.collector.mqtt
        assert mqtt_ingest is not None and mqtt_ingest.generation == 1
        broker.restart()
        wait_until(lambda: mqtt_ingest.generation == 2 and mqtt_ingest.ready, TIMEOUT,
                   "collector reconnected and subscribed")
        agent = agents("web-10")
        agent.publish(metrics_topic("web-10"), make_batch("web-10", 1))
        agent.wait_acked(1)
    finally:
        running.stop()

    agent.publish(metrics_topic("web-10"), make_batch("web-10", 2))  # nobody there: queued
    again = RunningCollector(make_config(), real_storage_factory).start()
    try:
        agent.wait_acked(2)
        agent.publish(metrics_topic("web-10"), make_batch("web-10", 1))  # resend after restart
        agent.wait_acked(1, times=2)
        assert again.stats.batches_stored == 1 and again.stats.duplicates == 1
    finally:
        again.stop()


def test_rejects_are_counted_by_reason_and_host_and_logged_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    rejects = Rejects(clock=lambda: clock[0], max_hosts=2)
    with caplog.at_level(logging.WARNING, logger="edgemon.collector.ingest.rejects"):
        for _ in range(5):
            rejects.record("not_zstd", "a")
        rejects.record("schema", "b")
        rejects.record("schema", "c")  # a third host: counted as _other
        rejects.record("bad_topic", None)
        clock[0] = 61.0
        rejects.record("schema", "a")
    assert rejects.by_reason() == {"not_zstd": 5, "schema": 3, "bad_topic": 1}
    assert rejects.by_host_reason()[("a", "not_zstd")] == 5
    assert rejects.by_host_reason()[(OTHER_HOST, "schema")] == 1
    assert rejects.by_host_reason()[(OTHER_HOST, "bad_topic")] == 1
    per_host = [r.host for r in caplog.records]  # type: ignore[attr-defined]
    assert per_host == ["a", "b", OTHER_HOST, "a"]
    assert caplog.records[-1].suppressed_since_last == 4  # type: ignore[attr-defined]


# --- hygiene at the boundary: implausible series, cardinality, exports, status clock ------------

def _batch_of(host: str, seq: int, series: list[tuple[MetricDef, tuple[str, ...], int]],
              t0: int | None = None) -> bytes:
    """One batch of ``(metric, label values, scaled value)`` samples at ``t0``."""
    b = BatchBuilder()
    t0 = t0 if t0 is not None else now_ms() - 60_000
    for metric, labels, value in series:
        b.add(t0, metric, labels, value)
    return encode(b.build(host=host, instance="inst-1", seq=seq, sent_ms=now_ms()))


def _series_names(collector: RunningCollector, host: str) -> set[tuple[str, tuple[str, ...]]]:
    status, doc = collector.get(f"/edgemon/api/v1/hosts/{host}/series")
    assert status == 200
    return {(s["name"], tuple(s["labels"].values())) for s in doc["series"]}


def test_series_no_real_host_sends_are_dropped_counted_and_the_rest_stored(
        collector: RunningCollector, agents: Callable[[str], Agent]) -> None:
    agent = agents("odd-01")
    used = MetricDef("memory_used_bytes", GAUGE, "bytes")
    iface = MetricDef("network_received_bytes_total", "counter", "bytes", 0, ("iface",))
    payload = _batch_of("odd-01", 1, [
        (CPU, ("total",), 1250),  # 12.5 %: fine
        (CPU, ("1",), 15_000),  # 150 %
        (used, (), -1),  # negative bytes
        (iface, ("eth0",), 10**12),  # fine
        (iface, ("eth\x00evil",), 5),  # a NUL in a label value
        (MetricDef("__proto__", GAUGE, ""), (), 1),  # a reserved name
        (MetricDef("agent_memory_rss_bytes", "counter", "bytes"), (), 1),  # not the agent's
    ])
    agent.publish(metrics_topic("odd-01"), payload)
    agent.wait_acked(1)
    assert agent.rejected() == []  # the batch is stored: its good series are not lost
    assert _series_names(collector, "odd-01") == {
        ("cpu_usage_percent", ("total",)), ("network_received_bytes_total", ("eth0",))}
    for reason in ("percent_out_of_range", "negative_value", "not_printable"):
        assert collector.metric("edgemon_collector_series_rejects_total", reason=reason) == 1
    assert collector.metric("edgemon_collector_series_rejects_total", reason="reserved_name") == 2
    assert collector.metric("edgemon_collector_host_series_rejects_total", host="odd-01",
                            reason="reserved_name") == 2
    assert collector.metric("edgemon_collector_rejects_total", reason="schema") == 0


def test_a_host_over_its_series_bound_keeps_its_series_and_shows_over_its_limit(
        make_config: Callable[..., CollectorConfig], agents: Callable[[str], Agent]) -> None:
    running = RunningCollector(make_config(max_series_per_host=20), open_default_storage).start()
    try:
        greedy, calm = agents("greedy-1"), agents("calm-1")
        disk = MetricDef("disk_used_bytes", GAUGE, "bytes", 0, ("mount",))
        old = [(disk, (f"/m{i}",), 1000 + i) for i in range(15)]
        greedy.publish(metrics_topic("greedy-1"), _batch_of("greedy-1", 1, old))
        calm.publish(metrics_topic("calm-1"), _batch_of("calm-1", 1, old))
        greedy.wait_acked(1)
        calm.wait_acked(1)
        new = [(disk, (f"/new{i}",), 7) for i in range(10)]
        t1 = now_ms() - 30_000
        greedy.publish(metrics_topic("greedy-1"), _batch_of("greedy-1", 2, old + new, t0=t1))
        greedy.wait_acked(2)
        stored = _series_names(running, "greedy-1")
        assert len(stored) == 20 and {(disk.name, (f"/m{i}",)) for i in range(15)} <= stored
        assert running.metric("edgemon_collector_host_series_rejects_total", host="greedy-1",
                              reason="series_limit") == 5
        # the host's known series keep flowing
        storage = running.collector.storage
        assert storage is not None
        result = storage.query(RangeQuery("disk_used_bytes", t1, t1 + 1, 1000, hosts=("greedy-1",),
                                          labels={"mount": "/m3"}, tier="raw"))
        assert [p[1] for s in result for p in s.points] == [1003]
        status, doc = running.get("/edgemon/api/v1/hosts")
        assert status == 200
        hosts = {h["host"]: h for h in doc["hosts"]}
        assert hosts["greedy-1"]["over_limit"] is True
        assert hosts["greedy-1"]["series"]["active"] == 20
        assert hosts["greedy-1"]["series"]["rejected_total"] == 5
        assert hosts["calm-1"]["over_limit"] is False
        assert hosts["calm-1"]["series"]["active"] == 15
    finally:
        running.stop()


def test_exports_treat_label_values_as_untrusted_text(
        collector: RunningCollector, agents: Callable[[str], Agent]) -> None:
    agent = agents("sheet-1")
    mount = MetricDef("disk_usage_percent", GAUGE, "percent", 2, ("mount",))
    hostile = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
               "<script>alert(1)</script>", "a,b \"quoted\""]
    t0 = now_ms() - 60_000
    agent.publish(metrics_topic("sheet-1"), _batch_of(
        "sheet-1", 1, [(mount, (v,), 1000 + i) for i, v in enumerate(hostile)], t0=t0))
    agent.wait_acked(1)
    query = (f"/edgemon/api/v1/query?metric=disk_usage_percent&host=sheet-1&start={t0 - 1000}"
             f"&end={t0 + 1000}&step=1s&tier=raw")
    status, text = collector.get(query + "&format=csv")
    assert status == 200
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["timestamp_ms", "time", "host", "mount", "value"]
    cells = sorted(r[3] for r in rows[1:])
    assert cells == sorted(("'" + v if v[0] in "=+-@" else v) for v in hostile)
    status, body = collector.get(query + "&format=json")
    assert status == 200
    raw = urllib.request.urlopen(f"http://127.0.0.1:{collector.collector.http_port}{query}",
                                 timeout=5).read().decode()
    assert "<script>" not in raw and "\\u003cscript\\u003e" in raw
    assert sorted(s["labels"]["mount"] for s in body["series"]) == sorted(hostile)


def test_csv_cells_that_start_a_formula_or_break_a_row_are_neutralised() -> None:
    results = [SeriesResult(host="h", name="m", labels={"k": v}, kind="gauge", unit="",
                            points=[(1000, 1.0)])
               for v in ("\tcmd", "\r=1+1", "a\rb", "a\nb", "plain", "-1")]
    text = query_csv(results)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [r[3] for r in rows[1:]] == ["'\tcmd", "'\r=1+1", "a\rb", "a\nb", "plain", "'-1"]
    assert text.count("\r\n") == len(rows)  # one record per line: the CR and LF are quoted


def test_status_times_are_held_to_the_batches_clock_window(
        collector: RunningCollector, agents: Callable[[str], Agent]) -> None:
    agent = agents("clock-1")

    def host() -> dict[str, Any] | None:
        return {h["host"]: h for h in collector.get("/edgemon/api/v1/hosts")[1]["hosts"]}.get(
            "clock-1")

    ahead = encode_status(online=True, instance="i-1", timestamp_ms=2**63 - 1)
    ancient = encode_status(online=True, instance="i-1", timestamp_ms=now_ms() - 40 * 86_400_000)
    agent.publish(status_topic("clock-1"), ahead)
    agent.publish(status_topic("clock-1"), ancient)
    wait_until(lambda: collector.metric("edgemon_collector_host_rejects_total", host="clock-1",
                                        reason="future_timestamp") == 1
               and collector.metric("edgemon_collector_host_rejects_total", host="clock-1",
                                    reason="past_timestamp") == 1, TIMEOUT, "both refused")
    assert host() is None  # nothing recorded
    agent.publish(status_topic("clock-1"),
                  encode_status(online=True, instance="i-1", timestamp_ms=now_ms()))
    wait_until(lambda: (host() or {}).get("online") is True, TIMEOUT, "birth recorded")
    # A Last Will is composed when the agent connects, possibly long before it is published.
    agent.publish(status_topic("clock-1"), encode_status(
        online=False, instance="i-1", timestamp_ms=now_ms() - 40 * 86_400_000))
    wait_until(lambda: (host() or {}).get("online") is False, TIMEOUT, "old Last Will applied")


def test_series_bound_allowance_refills_per_hour_and_series_expire_after_a_day() -> None:
    limits = SeriesLimits(max_series=20, max_new_per_hour=4)
    hour = 3_600_000
    first = [("m", (str(i),)) for i in range(10)]
    churn = [("m", (f"c{i}",)) for i in range(12)]
    assert limits.admit("h", first, 0) == {}  # a new host may bring up to 20 at once
    assert limits.admit("h", churn, 1) == {churn[10]: "series_limit",
                                           churn[11]: "series_limit"}
    assert limits.admit("h", first, 12 * hour) == {}  # known series always pass
    # A day on, the churn series (unseen since) expired; new ones come at 4 per hour.
    day = ACTIVE_MS + 10
    late = [("m", (f"late{i}",)) for i in range(6)]
    refused = limits.admit("h", late, day)
    assert sorted(refused.values()) == ["new_series_limit"] * 2
    again = [("m", ("again",))]
    assert limits.admit("h", again, day + 1) == {again[0]: "new_series_limit"}
    assert limits.admit("h", again, day + hour // 4 + 1) == {}  # one refilled
    snap = limits.snapshot(day + hour // 4 + 1)["h"]
    assert (snap.active_series, snap.over_limit, snap.rejected_series_total) == (15, True, 5)
    assert limits.snapshot(day + 2 * hour)["h"].over_limit is False  # an hour without refusal
    # a host whose series all expired is forgotten
    assert limits.admit("other", [("m", ("x",))], 3 * ACTIVE_MS) == {}
    assert limits.hosts_tracked == 1


def test_dropped_series_are_counted_by_reason_and_host_apart_from_messages() -> None:
    rejects = Rejects(clock=lambda: 0.0)
    rejects.record_series("negative_value", "a", 3, "m: -1 is negative")
    rejects.record_series("negative_value", "b", 1)
    rejects.record("schema", "a")
    assert rejects.series_by_reason() == {"negative_value": 4}
    assert rejects.series_by_host_reason() == {("a", "negative_value"): 3,
                                               ("b", "negative_value"): 1}
    assert rejects.by_reason() == {"schema": 1}
