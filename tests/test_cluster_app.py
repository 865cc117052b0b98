"""The collector's singleton work follows leadership (collector/app.py): two collectors
contending through a real PostgreSQL advisory lock, each with a real broker session; only the
leader maintains storage and evaluates alerts, its role shows in /metrics, the cluster API and
its presence; when the leader's database session ends the other takes the work over."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.collector.app import open_default_storage
from edgemon.collector.cluster.pg_leader import PostgresLeader
from edgemon.collector.config import CollectorConfig, HttpConfig, MqttConfig, StorageConfig
from edgemon.protocol.presence import COLLECTOR_STATE_FILTER, decode_collector_state
from tests.support import postgres
from tests.support.broker import Broker
from tests.support.waiting import wait_until
from tests.test_cluster_leader import terminate
from tests.test_collector_ingest import RunningCollector

pytestmark = pytest.mark.skipif(postgres.available() is not None,
                                reason=postgres.available() or "")

TIMEOUT = 20


def start_collector(tmp_path: Path, broker: Broker, url: str, name: str) -> RunningCollector:
    config = CollectorConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port, client_id=name, keepalive=10),
        storage=StorageConfig(path=tmp_path / name / "edgemon.db", maintain_interval_seconds=0.1),
        http=HttpConfig(port=0, auth="none"))
    return RunningCollector(config, open_default_storage, leadership_factory=lambda cfg: (
        PostgresLeader(url, collector_id=cfg.mqtt.presence_id, check_s=0.1, lease_s=0.6))
    ).start()


@pytest.fixture
def presence(broker: Broker) -> Iterator[dict[str, Any]]:
    """The latest presence document of every collector, as a reader sees it."""
    states: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{uuid.uuid4().hex[:6]}")
    client.on_message = lambda _c, _u, m: states.update(
        {json.loads(m.payload)["collector"]: decode_collector_state(m.payload)})
    client.connect(broker.host, broker.port)
    client.subscribe(COLLECTOR_STATE_FILTER, qos=1)
    client.loop_start()
    yield states
    client.disconnect()
    client.loop_stop()


def role_of(states: dict[str, Any], name: str) -> str | None:
    state = states.get(name)
    return state.role if state is not None and state.online else None


def test_only_the_leader_runs_singleton_work_and_the_other_takes_over(
        tmp_path: Path, broker: Broker, postgres_url: str,
        presence: dict[str, Any]) -> None:
    collectors = {name: start_collector(tmp_path, broker, postgres_url, name)
                  for name in ("col-a", "col-b")}
    try:
        wait_until(lambda: any(c.collector.leadership.is_leader()  # type: ignore[union-attr]
                               for c in collectors.values()), TIMEOUT, "a leader")
        leader_name = next(n for n, c in collectors.items()
                           if c.collector.leadership.is_leader())  # type: ignore[union-attr]
        follower_name = next(n for n in collectors if n != leader_name)
        leader, follower = collectors[leader_name], collectors[follower_name]

        def works(c: RunningCollector) -> bool:
            alerting = c.collector.alerting
            return alerting is not None and alerting.running

        wait_until(lambda: works(leader), TIMEOUT, "alert evaluation on the leader")
        runs = leader.collector.maintenance.runs  # type: ignore[union-attr]
        wait_until(lambda: leader.collector.maintenance.runs > runs,  # type: ignore[union-attr]
                   TIMEOUT, "maintenance on the leader")
        assert not works(follower) and follower.collector.maintenance.runs == 0  # type: ignore[union-attr]
        assert leader.metric("edgemon_cluster_leader") == 1
        assert follower.metric("edgemon_cluster_leader") == 0
        status, doc = follower.get("/edgemon/api/v1/cluster")
        assert status == 200 and doc["role"] == "follower" and doc["collector"] == follower_name
        assert doc["election"]["kind"] == "postgresql" and doc["election"]["state"] == "follower"
        wait_until(lambda: role_of(presence, leader_name) == "leader"
                   and role_of(presence, follower_name) == "follower", TIMEOUT, "roles")
        # the follower still serves the alerting API (its engine stays open)
        assert follower.get("/edgemon/api/v1/alerts")[0] == 200

        terminate(postgres_url, leader_name)
        wait_until(lambda: works(follower) and not works(leader), TIMEOUT, "the take-over")
        wait_until(lambda: follower.collector.maintenance.runs > 0,  # type: ignore[union-attr]
                   TIMEOUT, "maintenance on the new leader")
        assert follower.metric("edgemon_cluster_leader") == 1
        assert leader.metric("edgemon_cluster_leader") == 0
        assert leader.metric("edgemon_cluster_leader_changes_total") == 2
        wait_until(lambda: role_of(presence, follower_name) == "leader"
                   and role_of(presence, leader_name) == "follower", TIMEOUT, "roles swapped")
        assert leader.get("/edgemon/api/v1/alerts")[0] == 200
    finally:
        for c in collectors.values():
            c.stop()
