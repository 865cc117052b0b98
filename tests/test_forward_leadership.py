"""Forwarding is singleton work (issue 20): among collectors that share a store only the leader
sends. Two forwarding services over one store (two handles on one SQLite file, as two
collectors on one PostgreSQL store), one leading: the follower sends nothing; when leadership
moves, the new leader goes on from the cursor in the store and the receiver (Debian's
victoria-metrics on loopback) has every sample once, none re-sent. And in the collector
(``CollectorService._follow_leadership``, collector/app.py, over a real broker): forwarding
pauses when leadership goes, what is stored meanwhile is sent when it comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemon.collector.app import open_default_storage
from edgemon.collector.cluster import Leadership
from edgemon.collector.config import (
    CollectorConfig,
    ForwardConfig,
    HttpConfig,
    MqttConfig,
    StorageConfig,
)
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.common.clock import now_ms
from edgemon.protocol import decode, metrics_topic
from edgemon.protocol.schema import validate_batch
from tests.support.broker import Broker
from tests.support.forwarding import Fleet, Running, config
from tests.support.stand_in_agent import TIMEOUT, StandInAgent, make_batch
from tests.support.tsdb import VICTORIA, VictoriaMetrics
from tests.support.waiting import wait_until
from tests.test_collector_ingest import RunningCollector

pytestmark = pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")

SAMPLES = validate_batch(decode(make_batch("h", 0))).sample_count  # per stand-in batch


def test_only_the_leader_forwards_and_a_new_leader_resumes_at_the_cursor(tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    stores = [SQLiteStorage(tmp_path / "edgemon.db", compact_delay_ms=0) for _ in range(2)]
    leading = {"a": True, "b": False}
    a = Running(stores[0], config(vm.write_url, max_samples_per_request=40),
                encode_in_process=False, leading=lambda: leading["a"])
    b = Running(stores[1], config(vm.write_url, max_samples_per_request=40),
                encode_in_process=False, leading=lambda: leading["b"])
    try:
        assert a.service.running and not b.service.running

        def position() -> object:
            [p] = [p for p in stores[1].forward_positions() if p.name == "rx"]
            return p

        def caught_up() -> bool:
            p = position()
            return p.pending_batches == 0 and p.seq == p.head  # type: ignore[attr-defined]

        fleet = Fleet(hosts=2)
        start = now_ms() // 1000 * 1000 - 600_000
        stores[1].store_batches(fleet.batches(start, 6))  # stored by the follower, sent by a
        wait_until(caught_up, 30, "the leader sends what the follower stored")
        assert b.service.forwarders == [] and b.service.status() == []
        sent_by_a = a.service.forwarders[0].counters.requests
        assert sent_by_a > 0

        # leadership moves: a pauses (cursor kept in the store), b resumes from it
        leading["a"] = False
        a.pause()
        leading["b"] = True
        b.resume()
        assert b.service.running and not a.service.running
        stores[0].store_batches(fleet.batches(start + 300_000, 6))
        wait_until(caught_up, 30, "the new leader sends the rest")
        assert a.service.forwarders[0].counters.requests == sent_by_a, "a follower sent"
        assert b.service.forwarders[0].counters.requests > 0
        p = position()
        assert p.sent == fleet.total() and p.resent == 0 and p.skipped == 0  # type: ignore
        assert vm.export('{fleet="test"}') == fleet.want()

        # a resume while already leading, or a pause while following, changes nothing
        b.resume()
        a.pause()
        assert len(b.service.forwarders) == 1 and b.service.running
    finally:
        a.close()
        b.close()
        for store in stores:
            store.close()
        vm.terminate()


class SwitchedLeadership(Leadership):
    """Leadership the test hands out and takes back (the real election is tested in
    test_cluster_leader.py); tells the collector as PostgresLeader does."""

    kind = "switched"

    def __init__(self) -> None:
        super().__init__()
        self._leading = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.set(False)

    def set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            self._changed(leading)

    def is_leader(self) -> bool:
        return self._leading


def test_the_collector_forwards_only_while_it_leads(tmp_path: Path, broker: Broker) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    leadership = SwitchedLeadership()
    config = CollectorConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port, client_id="c1", keepalive=10),
        storage=StorageConfig(path=tmp_path / "c1" / "edgemon.db"),
        http=HttpConfig(port=0, auth="none"),
        forward=(ForwardConfig(url=vm.write_url, name="vm", retry_initial_seconds=0.05,
                               retry_max_seconds=0.5),))
    leadership.set(True)
    running = RunningCollector(config, open_default_storage,
                               leadership_factory=lambda _cfg: leadership).start()
    agent = StandInAgent(broker, "h1")
    service = running.collector
    base = now_ms() - 3_600_000

    def send(seqs: range) -> None:
        for seq in seqs:
            agent.publish(metrics_topic("h1"), make_batch("h1", seq, t0=base + seq * 30_000))
        wait_until(lambda: set(seqs) <= set(agent.acked()), TIMEOUT, "acks")

    def forwarded() -> int:
        return sum(len(samples) for samples in vm.export('{host="h1"}').values())

    try:
        assert service.forward is not None
        # the first leader opens the cursor (``start = "now"``: from then on)
        wait_until(lambda: service.forward.running, TIMEOUT, "forwarding on the leader")
        send(range(10))
        wait_until(lambda: forwarded() == 10 * SAMPLES, 30, "the leader forwards the log")
        leadership.set(False)
        wait_until(lambda: not service.forward.running, TIMEOUT, "forwarding paused")
        requests = service.forward.forwarders[0].counters.requests
        send(range(10, 20))  # stored by a follower: logged, not sent
        assert service.forward.forwarders[0].counters.requests == requests, "sent as follower"
        assert forwarded() == 10 * SAMPLES
        leadership.set(True)
        wait_until(lambda: forwarded() == 20 * SAMPLES, 30, "forwarding resumed at the cursor")
        [position] = service.storage.forward_positions()  # type: ignore[union-attr]
        assert position.sent == 20 * SAMPLES and position.resent == 0
    finally:
        agent.close()
        running.stop()
        vm.terminate()


def test_forwarding_starts_after_the_store_failed_as_leadership_came(tmp_path: Path,
                                                                    broker: Broker) -> None:
    """The database drops the connection just as this collector becomes leader: opening the
    cursors (and then trimming them) fails once each. Forwarding is not left off (or marked
    running with no sender) until leadership next changes: the collector tries again."""
    leadership = SwitchedLeadership()
    config = CollectorConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port, client_id="c1", keepalive=10),
        storage=StorageConfig(path=tmp_path / "c1" / "edgemon.db"),
        http=HttpConfig(port=0, auth="none"),
        forward=(ForwardConfig(url="http://127.0.0.1:9/api/v1/write", name="vm"),))
    failures = {"forward_open": 1, "forward_trim": 1}

    def flaky_storage(cfg: StorageConfig) -> object:
        storage = open_default_storage(cfg)
        for name in failures:
            real = getattr(storage, name)

            def once(*args: object, _name: str = name, _real: object = real) -> object:
                if failures[_name]:
                    failures[_name] -= 1
                    raise ConnectionError(f"{_name}: the server closed the connection")
                return _real(*args)  # type: ignore[operator]
            setattr(storage, name, once)
        return storage

    running = RunningCollector(config, flaky_storage,  # type: ignore[arg-type]
                               leadership_factory=lambda _cfg: leadership).start()
    service = running.collector
    try:
        assert service.forward is not None and not service.forward.running
        leadership.set(True)
        wait_until(lambda: service.forward.running and len(service.forward.forwarders) == 1,
                   20, "forwarding started after the failed attempts")
        assert failures == {"forward_open": 0, "forward_trim": 0}
    finally:
        running.stop()
