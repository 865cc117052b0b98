"""Alerting across a leader fail-over (issue 20): two real collector processes on ONE PostgreSQL
store keep ONE alert state there (schema ``alerting``: state, history, outbox, silences), and
only the leader evaluates and notifies.

* the leader fires an alert while the webhook receiver is down: the notification waits in the
  shared outbox; kill -9 of the leader; the survivor takes over and delivers that very row
  (the same idempotency key) once, and does not fire the alert again (it reads the state the
  old leader committed);
* the killed collector comes back as a follower; its API shows the leader's evaluations, and a
  silence created through it suppresses the leader's notification for another host (the
  transition is recorded, silenced);
* the resolution of the first alert reaches the receiver once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edgemon.common.clock import now_ms
from edgemon.protocol import BatchBuilder, encode, metrics_topic, to_scaled
from tests.support import postgres
from tests.support.broker import Broker
from tests.support.processes import Collector, cluster_roles, the_leader
from tests.support.stand_in_agent import CPU, StandInAgent
from tests.support.waiting import wait_until
from tests.support.webhook import Webhook

pytestmark = pytest.mark.skipif(postgres.available() is not None,
                                reason=postgres.available() or "")

CHECK, LEASE = 0.2, 1.0  # leader check and lease (seconds)
# the documented take-over bound (pg_leader.py) once PostgreSQL has released the dead leader's
# lock (at once for a killed process: the kernel closes its socket), plus one evaluation
# interval and a delivery retry; generous for a loaded 2-core machine
TAKEOVER = CHECK + LEASE + CHECK + 1.0 + 1.0
HOT, COLD = 90.0, 1.0

RULES = """[settings]
interval = "1s"
settle = "0s"
group_wait = "0s"
retry_initial = "200ms"
retry_max = "500ms"
mqtt = false

[[receiver]]
name = "hook"
url = "{url}"

[[rule]]
name = "cpu-hot"
kind = "threshold"
metric = "cpu_usage_percent"
match = {{ cpu = "total" }}
window = "2s"
threshold = 50
for = "0s"
"""


class Feed:
    """A stand-in agent per host publishing one CPU sample (``value[host]``) every 0.3 s."""

    def __init__(self, broker: Broker, hosts: tuple[str, ...]) -> None:
        self.agents = {h: StandInAgent(broker, h) for h in hosts}
        self.value = dict.fromkeys(hosts, COLD)
        self._seq = dict.fromkeys(hosts, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for host, agent in self.agents.items():
                builder = BatchBuilder()
                now = now_ms()
                builder.add(now - 100, CPU, ("total",), to_scaled(self.value[host], 2))
                self._seq[host] += 1
                agent.publish(metrics_topic(host), encode(builder.build(
                    host=host, instance="inst-1", seq=self._seq[host], sent_ms=now)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for agent in self.agents.values():
            agent.close()


class Group:
    """Two collectors (a, b) on one PostgreSQL store, each with its own broker session."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.broker = Broker(tmp_path / "broker").start()
        self.webhook = Webhook().start()
        rules = tmp_path / "rules.toml"
        rules.write_text(RULES.format(url=self.webhook.url))
        self.collectors = {name: self._collector(tmp_path / name, name, rules)
                           for name in ("a", "b")}

    def _collector(self, workdir: Path, name: str, rules: Path) -> Collector:
        collector = Collector(
            workdir, self.broker, mqtt_extra=f'client_id = "collector-{name}"\n',
            extra=f"\n[cluster]\nleader_check_seconds = {CHECK}\n"
                  f"leader_lease_seconds = {LEASE}\n\n[alerting]\nrules_path = \"{rules}\"\n")
        text = collector.config.read_text()
        collector.config.write_text(
            text.replace("[storage]\n", f'[storage]\nurl = "{self.url}"\n', 1))
        return collector

    def roles(self) -> dict[str, str]:
        return cluster_roles(self.collectors)

    def leader(self) -> str | None:
        return the_leader(self.collectors)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(statement).fetchall()

    def delivered(self, host: str, status: str) -> list[dict[str, Any]]:
        return [a for a in self.webhook.alerts()
                if a["labels"].get("host") == host and a["status"] == status]

    def close(self) -> None:
        for collector in self.collectors.values():
            collector.kill()
        self.webhook.stop()
        self.broker.kill()


@pytest.fixture
def group(tmp_path: Path, postgres_url: str) -> Iterator[Group]:
    g = Group(tmp_path, postgres_url)
    yield g
    g.close()


def test_a_fail_over_while_an_alert_fires_notifies_each_transition_once(group: Group) -> None:
    for collector in group.collectors.values():
        collector.start()
    wait_until(lambda: group.leader() is not None, 15, "one leader")
    leader = group.leader()
    assert leader is not None
    follower = "b" if leader == "a" else "a"
    feed = Feed(group.broker, ("h1", "h2"))
    try:
        # 1. the leader fires while the receiver is down: the row waits in the shared outbox
        group.webhook.status = 503
        feed.value["h1"] = HOT

        def pending_firing() -> list[str]:
            rows = group.sql("SELECT body FROM alerting.outbox WHERE receiver = 'hook' "
                             "AND state = 'pending'")
            return [json.loads(body)["idempotencyKey"] for (body,) in rows
                    if json.loads(body)["labels"]["host"] == "h1"]

        wait_until(lambda: pending_firing() and group.webhook.refused > 0, 20,
                   "a firing notification the leader could not deliver")
        [key] = pending_firing()

        # 2. kill -9 the leader; the receiver comes back; the survivor delivers that row
        group.collectors[leader].kill()
        killed_at = time.monotonic()
        group.webhook.status = 200
        wait_until(lambda: group.delivered("h1", "firing"), 10 + TAKEOVER,
                   "the survivor delivers the pending notification")
        took = time.monotonic() - killed_at
        assert group.leader() == follower
        # the survivor goes on evaluating from the stored state: h1 fires on, not again
        cycles = group.sql("SELECT last_eval_ms FROM alerting.rule_state")[0][0]
        wait_until(lambda: group.sql("SELECT last_eval_ms FROM alerting.rule_state")[0][0]
                   > cycles + 2000, 20, "the survivor evaluates")
        assert [a["idempotencyKey"] for a in group.delivered("h1", "firing")] == [key]
        assert group.sql("SELECT status FROM alerting.history WHERE host = 'h1' "
                         "ORDER BY id") == [("firing",)]

        # 3. the killed collector rejoins as a follower; a silence made through it holds
        group.collectors[leader].start()
        wait_until(lambda: group.roles() == {leader: "follower", follower: "leader"}, 15,
                   "the old leader rejoins as a follower")
        # its rules API shows the leader's evaluations (from the store), not its own
        rejoined = now_ms()
        wait_until(lambda: group.sql("SELECT last_eval_ms FROM alerting.rule_state")[0][0]
                   > rejoined + 1500, 20, "the leader evaluates on")
        stored = group.sql("SELECT last_eval_ms FROM alerting.rule_state")[0][0]
        [rule] = group.collectors[leader].get("/edgemon/api/v1/rules")["rules"]
        assert rule["health"]["last_eval_ms"] >= stored and rule["health"]["active"] == 1, rule
        status, _, body = group.collectors[leader].request(
            "POST", "/edgemon/api/v1/silences", headers={"Content-Type": "application/json"},
            body=json.dumps({"matchers": [{"name": "host", "value": "h2"}],
                             "duration": "1h", "createdBy": "test",
                             "comment": "maintenance"}).encode())
        assert status == 201, body
        feed.value["h2"] = HOT
        history = "/edgemon/api/v1/alerts/history?host=h2"
        wait_until(lambda: group.collectors[leader].get(history)["history"], 20,
                   "h2 fires on the leader")
        [h2] = group.collectors[leader].get(history)["history"]
        assert h2["status"] == "firing" and h2["silenced"] and not h2["notified"], h2

        # 4. h1 cools down: the resolution reaches the receiver once
        feed.value["h1"] = COLD
        wait_until(lambda: group.delivered("h1", "resolved"), 20, "the resolution")
        cycles = group.sql("SELECT last_eval_ms FROM alerting.rule_state")[0][0]
        wait_until(lambda: group.sql("SELECT last_eval_ms FROM alerting.rule_state")[0][0]
                   > cycles + 2000, 20, "more cycles")
    finally:
        feed.close()
    assert len(group.delivered("h1", "firing")) == 1
    assert len(group.delivered("h1", "resolved")) == 1
    assert group.delivered("h2", "firing") == []
    keys = [a["idempotencyKey"] for a in group.webhook.alerts()]
    assert len(keys) == len(set(keys)) == 2, keys
    assert group.sql("SELECT status FROM alerting.history WHERE host = 'h1' ORDER BY id") == [
        ("firing",), ("resolved",)]
    assert group.sql("SELECT count(*) FROM alerting.outbox WHERE state = 'pending'") == [(0,)]
    print(f"the survivor delivered the pending notification {took:.1f} s after kill -9")
