"""Two real collector processes on ONE shared PostgreSQL store (issue 20), in one MQTT 5 shared
group on a real Mosquitto with the generated ACL, fed by stand-in agents:

* every batch goes to one collector and is stored once; the accounting API of either
  collector (one store) holds every acknowledged sample exactly once;
* exactly one collector leads at any moment (polled through the cluster API all along);
* kill -9 of the leader mid-stream: the follower takes leadership over and all the traffic;
  what the agent had no acknowledgement for it sends again, and in the end the store holds
  every batch once (accounting and the query path agree) — nothing lost, nothing twice;
* the killed collector comes back as a follower.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgemon.collector.broker.auth import AuthDir
from edgemon.protocol import decode, metrics_topic
from edgemon.protocol.schema import validate_batch
from tests.support import postgres
from tests.support.accounting import accounting
from tests.support.broker import Broker
from tests.support.processes import Collector, cluster_roles, the_leader
from tests.support.stand_in_agent import TIMEOUT, StandInAgent, make_batch
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(postgres.available() is not None,
                                reason=postgres.available() or "")

GROUP = "edgemon-test-pg-5c0e19a7b3d2"
EXPIRY = 1  # seconds the broker keeps a dead collector's session (and its share)
CHECK, LEASE = 0.2, 1.0  # leader check and lease (seconds): take-over within ~2 leases
SAMPLES = validate_batch(decode(make_batch("h", 0))).sample_count  # per stand-in batch


class SharedStore:
    """A broker with generated users, two collectors (a, b) in one shared group, one store."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.auth, password_a = AuthDir.init(tmp_path / "auth", collector="collector-a")
        self.passwords = {"collector-a": password_a,
                          "collector-b": self.auth.add("collector-b", "collector"),
                          "h1": self.auth.add("h1", "host"), "h2": self.auth.add("h2", "host")}
        self.broker = Broker(tmp_path / "broker", generated=tmp_path / "auth").start()
        self.collectors = {name: self._collector(tmp_path, name, url) for name in ("a", "b")}
        self.double_leaders: list[dict[str, str]] = []
        self.roles_seen: list[dict[str, str]] = []
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def _collector(self, tmp_path: Path, name: str, url: str) -> Collector:
        user = f"collector-{name}"
        collector = Collector(
            tmp_path / name, self.broker,
            mqtt_extra=f'protocol = "5"\nclient_id = "{user}"\nusername = "{user}"\n'
                       f'password = "{self.passwords[user]}"\n',
            extra=f'\n[cluster]\nshared_group = "{GROUP}"\n'
                  f"session_expiry_seconds = {EXPIRY}\nleader_check_seconds = {CHECK}\n"
                  f"leader_lease_seconds = {LEASE}\n")
        text = collector.config.read_text()
        collector.config.write_text(text.replace("[storage]\n", f'[storage]\nurl = "{url}"\n', 1))
        return collector

    def roles(self) -> dict[str, str]:
        """The role each running collector states now (a dead or busy one is left out)."""
        return cluster_roles(self.collectors)

    def leader(self) -> str | None:
        return the_leader(self.collectors)

    def watch(self) -> None:
        """Poll both roles until ``close()``; two leaders in one poll is recorded."""
        def run() -> None:
            while not self._watching.wait(0.1):
                roles = self.roles()
                self.roles_seen.append(roles)
                if list(roles.values()).count("leader") > 1:
                    self.double_leaders.append(roles)
        self._watcher = threading.Thread(target=run, daemon=True)
        self._watcher.start()

    def stored(self, via: str, host: str) -> tuple[set[int], dict]:  # type: ignore[type-arg]
        doc = accounting(self.collectors[via], host)
        seqs = {seq for instance in doc["instances"] if instance["instance"] == "inst-1"
                for lo, hi in instance["seq_ranges"] for seq in range(lo, hi + 1)}
        return seqs, doc

    def batches_stored(self, name: str) -> float:
        text = self.collectors[name].get("/metrics", raw=True).decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("edgemon_collector_batches_stored_total"))

    def close(self) -> None:
        self._watching.set()
        if self._watcher is not None:
            self._watcher.join(5)
        for collector in self.collectors.values():
            if collector.running():
                collector.kill()
        self.broker.kill()


@pytest.fixture
def shared(tmp_path: Path, postgres_url: str) -> Iterator[SharedStore]:
    s = SharedStore(tmp_path, postgres_url)
    yield s
    s.close()


BASE_MS = (int(time.time()) - 3 * 3600) * 1000
PAYLOADS: dict[tuple[str, int], bytes] = {}


def send(agent: StandInAgent, seqs: range | list[int]) -> None:
    """Batch ``seq`` of a host is always the same bytes (an agent sends the same batch again),
    its samples 30 s after those of ``seq - 1``: every sample has a (series, time) of its own."""
    for seq in seqs:
        payload = PAYLOADS.setdefault((agent.host, seq), make_batch(
            agent.host, seq, t0=BASE_MS + seq * 30_000, sent=BASE_MS + seq * 30_000 + 25_000))
        agent.publish(metrics_topic(agent.host), payload)


def test_two_collectors_one_postgres_store_survive_a_killed_leader(shared: SharedStore) -> None:
    a = shared.collectors["a"].start()
    shared.collectors["b"].start()
    wait_until(lambda: shared.leader() is not None, 15, "one leader")
    shared.watch()
    agents = [StandInAgent(shared.broker, h, password=shared.passwords[h]) for h in ("h1", "h2")]
    try:
        # 1. both in the group, one store: every batch stored once, acked once, both work
        for agent in agents:
            send(agent, range(40))
        for agent in agents:
            wait_until(lambda agent=agent: set(agent.acked()) == set(range(40)), TIMEOUT,
                       f"acks for {agent.host}")
            assert sorted(agent.acked()) == list(range(40)), "a batch acked twice"
            for via in ("a", "b"):  # either collector serves the whole shared store
                seqs, doc = shared.stored(via, agent.host)
                assert seqs == set(range(40)) and doc["samples"] == 40 * SAMPLES, doc
                assert doc["range"]["samples"] == doc["samples"] and doc["range"]["exact"]
        assert shared.batches_stored("a") >= 10 and shared.batches_stored("b") >= 10
        assert shared.batches_stored("a") + shared.batches_stored("b") == 80
        status = a.get("/edgemon/api/v1/cluster")
        assert status["store"] == "postgresql" and status["election"]["kind"] != "single"

        # 2. kill -9 the leader while h1 streams; the agent sends again what was not acked
        leader = shared.leader()
        assert leader is not None
        follower = "b" if leader == "a" else "a"
        h1 = agents[0]
        total = 240
        killed_at = 0.0
        for seq in range(40, total):
            send(h1, [seq])
            if seq == 100:
                shared.collectors[leader].kill()
                killed_at = time.monotonic()
            time.sleep(0.01)
        wait_until(lambda: shared.leader() == follower, 5 * LEASE + 10, "the survivor to lead")
        took_over = time.monotonic() - killed_at  # at most this (the stream took a while)

        def resend_unacked() -> bool:
            missing = sorted(set(range(total)) - set(h1.acked()))
            if missing:
                send(h1, missing)
                time.sleep(0.5)
            return not missing

        wait_until(resend_unacked, 45, "every batch acknowledged by the survivor")
        assert set(h1.acked()) == set(range(total))
        seqs, doc = shared.stored(follower, "h1")
        assert seqs == set(range(total)), "a batch lost"
        assert doc["samples"] == total * SAMPLES, "a sample lost or stored twice"
        assert doc["range"]["samples"] == doc["samples"] and doc["range"]["exact"], doc["range"]

        # 3. the killed collector comes back as a follower; still one leader
        shared.collectors[leader].start()
        wait_until(lambda: shared.roles() == {leader: "follower", follower: "leader"}, 10,
                   "the old leader rejoins as a follower")
        send(agents[1], range(40, 60))
        wait_until(lambda: set(range(60)) <= set(agents[1].acked()), TIMEOUT, "acks for h2")
        seqs, doc = shared.stored(leader, "h2")
        assert seqs == set(range(60)) and doc["samples"] == 60 * SAMPLES
    finally:
        for agent in agents:
            agent.close()
    assert not shared.double_leaders, shared.double_leaders
    assert any(list(r.values()).count("leader") == 1 for r in shared.roles_seen)
    print(f"survivor leading at most {took_over:.1f} s after kill -9 of the leader")
