"""Two collector processes in one MQTT 5 shared group on a real Mosquitto with the generated
ACL (broker-auth): each batch goes to exactly one of them and is acknowledged once to the
agent that sent it; a collector killed with -9 loses its share to the survivor once the broker
has dropped its session; it rejoins when it comes back.

Each collector here keeps its own SQLite file (single_node = true: the PostgreSQL store the
group is meant for is a separate piece of work), so what each one stored shows how the broker
split the batches."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.collector.broker.auth import AuthDir
from edgemon.protocol import metrics_topic
from edgemon.protocol.presence import COLLECTOR_STATE_FILTER, decode_collector_state
from tests.support.accounting import accounting
from tests.support.broker import Broker
from tests.support.processes import Collector
from tests.support.stand_in_agent import TIMEOUT, StandInAgent, make_batch
from tests.support.waiting import wait_until

GROUP = "edgemon-test-6b1f0c9d2e4a"
EXPIRY = 1  # seconds: the broker drops a dead collector's session this long after it went


class Cluster:
    """A broker with generated users and two collectors (a, b) in one shared group."""

    def __init__(self, tmp_path: Path) -> None:
        self.auth, password_a = AuthDir.init(tmp_path / "auth", collector="collector-a")
        self.passwords = {"collector-a": password_a,
                          "collector-b": self.auth.add("collector-b", "collector"),
                          "h1": self.auth.add("h1", "host"), "h2": self.auth.add("h2", "host")}
        self.broker = Broker(tmp_path / "broker", generated=tmp_path / "auth").start()
        self.collectors = {name: self._collector(tmp_path, name) for name in ("a", "b")}

    def _collector(self, tmp_path: Path, name: str) -> Collector:
        user = f"collector-{name}"
        return Collector(
            tmp_path / name, self.broker,
            mqtt_extra=f'protocol = "5"\nclient_id = "{user}"\nusername = "{user}"\n'
                       f'password = "{self.passwords[user]}"\n',
            extra=f'\n[cluster]\nshared_group = "{GROUP}"\nsingle_node = true\n'
                  f"session_expiry_seconds = {EXPIRY}\n")

    def stored(self, name: str, host: str) -> set[int]:
        doc = accounting(self.collectors[name], host)
        return {seq for instance in doc["instances"] if instance["instance"] == "inst-1"
                for lo, hi in instance["seq_ranges"] for seq in range(lo, hi + 1)}

    def close(self) -> None:
        for collector in self.collectors.values():
            if collector.running():
                collector.kill()
        self.broker.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    c = Cluster(tmp_path)
    yield c
    c.close()


def send(agent: StandInAgent, seqs: range | list[int]) -> None:
    for seq in seqs:
        agent.publish(metrics_topic(agent.host), make_batch(agent.host, seq))


def acked_soon(agent: StandInAgent, seq: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seq in agent.acked():
            return True
        time.sleep(0.02)
    return False


def test_a_shared_group_splits_batches_and_survives_a_killed_collector(cluster: Cluster) -> None:
    a, b = cluster.collectors["a"].start(), cluster.collectors["b"].start()
    agents = [StandInAgent(cluster.broker, h, password=cluster.passwords[h]) for h in ("h1", "h2")]
    try:
        # 1. both in the group: every batch to exactly one collector, acked once to its agent
        send(agents[0], range(40))
        send(agents[1], range(40))
        for agent in agents:
            wait_until(lambda agent=agent: set(agent.acked()) == set(range(40)), TIMEOUT,
                       f"acks for {agent.host}")
        for agent in agents:
            assert sorted(agent.acked()) == list(range(40)), "a batch acked twice"
            in_a, in_b = cluster.stored("a", agent.host), cluster.stored("b", agent.host)
            assert in_a.isdisjoint(in_b) and in_a | in_b == set(range(40))
            assert len(in_a) >= 10 and len(in_b) >= 10, (in_a, in_b)  # round-robin: both work

        status = a.get("/edgemon/api/v1/cluster")
        assert status["role"] == "leader" and status["shared_group"] is True
        assert status["store"] == "sqlite" and status["election"]["kind"] == "single"
        assert "\nedgemon_cluster_leader 1.0\n" in a.get("/metrics", raw=True).decode()
        assert GROUP not in a.get("/metrics", raw=True).decode()  # the group name is a secret
        assert "$share/<group>/edgemon/v1/+/metrics" in a.output() and GROUP not in a.output()

        # 2. kill -9 b: its session lingers for EXPIRY s and swallows its share; batches sent
        # meanwhile are never acknowledged (their agent sends them again); then a gets them all
        b.kill()
        h1 = agents[0]
        seq, orphans, streak = 40, [], 0
        deadline = time.monotonic() + 30
        while streak < 10:
            assert time.monotonic() < deadline, f"b's share never moved to a ({orphans})"
            send(h1, [seq])
            if acked_soon(h1, seq, 1.0):
                streak += 1
            else:
                orphans.append(seq)
                streak = 0
            seq += 1
        send(h1, range(seq, seq + 30))
        wait_until(lambda: set(range(seq, seq + 30)) <= set(h1.acked()), TIMEOUT,
                   "acks from the survivor")
        assert set(range(seq, seq + 30)) <= cluster.stored("a", "h1")
        # the agent re-sends what was never acknowledged: the survivor stores and acks it
        send(h1, orphans)
        wait_until(lambda: set(range(seq + 30)) <= set(h1.acked()), TIMEOUT, "every ack")
        assert sorted(h1.acked()) == list(range(seq + 30)), "a batch acked twice"

        # 3. b comes back and takes its share again
        before = cluster.stored("a", "h1")
        b.start()
        end = seq + 30
        send(h1, range(end, end + 20))
        wait_until(lambda: set(range(end, end + 20)) <= set(h1.acked()), TIMEOUT, "acks")
        to_b = cluster.stored("b", "h1") & set(range(end, end + 20))
        to_a = (cluster.stored("a", "h1") - before) & set(range(end, end + 20))
        assert to_b and to_a and to_a.isdisjoint(to_b) and to_a | to_b == set(range(end, end + 20))
    finally:
        for agent in agents:
            agent.close()


def test_both_collectors_say_online_with_their_role(cluster: Cluster) -> None:
    cluster.collectors["a"].start()
    cluster.collectors["b"].start()
    states: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="h1", protocol=mqtt.MQTTv5)
    client.username_pw_set("h1", cluster.passwords["h1"])
    client.on_message = lambda _c, _u, m: states.update(
        {json.loads(m.payload)["collector"]: decode_collector_state(m.payload)})
    client.connect(cluster.broker.host, cluster.broker.port)
    client.subscribe(COLLECTOR_STATE_FILTER, qos=1)
    client.loop_start()
    try:
        wait_until(lambda: {"collector-a", "collector-b"} <= set(states), TIMEOUT, "presence")
        assert all(s.online and s.role == "leader" for s in states.values()), states
    finally:
        client.disconnect()
        client.loop_stop()


def test_on_mosquitto_a_member_without_read_access_swallows_its_share(tmp_path: Path) -> None:
    """Why the group name is the collectors' secret (SCALING.md): Mosquitto's acl_file cannot
    refuse a SUBSCRIBE, so a host that names the group joins it, and the broker then drops the
    messages it picks for that member (read denied) instead of giving them to a collector."""
    auth, password = AuthDir.init(tmp_path / "auth", collector="collector-a")
    host_password = auth.add("h1", "host")
    broker = Broker(tmp_path / "broker", generated=tmp_path / "auth").start()
    fence = "edgemon/v1/_collectors/collector-a/probe"  # the collector's own, not shared
    received: dict[str, list[bytes]] = {"collector-a": [], "h1": []}
    subacks: list[int] = []
    clients = []
    try:
        for user, secret in (("collector-a", password), ("h1", host_password)):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user,
                                 protocol=mqtt.MQTTv5)
            client.username_pw_set(user, secret)
            client.on_message = lambda _c, _u, m, user=user: received[user].append(m.payload)
            client.on_subscribe = lambda _c, _u, mid, _rc, _p: subacks.append(mid)
            client.connect(broker.host, broker.port)
            client.loop_start()
            clients.append(client)
        collector, host = clients

        def subscribe(client: mqtt.Client, topics: list[str]) -> None:
            _rc, mid = client.subscribe([(t, 1) for t in topics])
            wait_until(lambda: mid in subacks, TIMEOUT, f"SUBACK for {topics}")

        def publish_ten_then_fence(first: int) -> list[bytes]:
            """The ten messages the collector got (the fence follows them to it, in order)."""
            for i in range(first, first + 10):
                host.publish("edgemon/v1/h1/metrics", b"%d" % i, qos=1).wait_for_publish(5)
            collector.publish(fence, b"fence-%d" % first, qos=1)
            wait_until(lambda: b"fence-%d" % first in received["collector-a"], TIMEOUT, "fence")
            got = [m for m in received["collector-a"] if not m.startswith(b"fence")]
            received["collector-a"].clear()
            return got

        wait_until(lambda: all(c.is_connected() for c in clients), TIMEOUT, "connected")
        subscribe(collector, [f"$share/{GROUP}/edgemon/v1/+/metrics", fence])
        subscribe(host, ["$share/edgemon-another-group-1234/edgemon/v1/+/metrics"])
        # the host named another group: the collector's group gets everything
        assert publish_ten_then_fence(0) == [b"%d" % i for i in range(10)]
        subscribe(host, [f"$share/{GROUP}/edgemon/v1/+/metrics"])
        # the host joined the collector's group: half went to it and were dropped (read denied)
        assert len(publish_ten_then_fence(10)) == 5
        assert received["h1"] == []
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.kill()
