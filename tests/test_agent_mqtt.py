"""The agent against a real mosquitto: birth/LWT, batches, end-to-end acks, resends, outages,
and what it does when collectors say (through their retained presence) whether they listen."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import pytest

from edgemon.agent.buffer import read_stats
from edgemon.agent.config import AgentConfig, load_config
from edgemon.agent.families import Collect
from edgemon.agent.publisher import Publisher, idle_wake
from edgemon.agent.runner import Runner
from edgemon.protocol import (
    COUNTER,
    MetricDef,
    decode,
    decode_status,
    encode_ack,
    encode_status,
    expand_samples,
    parse_topic,
)
from edgemon.protocol.schema import validate_batch
from tests.support.broker import Broker
from tests.support.presence import clear_collector_state, publish_collector_state
from tests.support.waiting import wait_until

HOST = "test-host"
TICKS = MetricDef("test_ticks_total", COUNTER, "", 0, ("source",))


class Message(NamedTuple):
    kind: str  # metrics, backfill, status
    payload: bytes
    retained: bool


class FakeCollector:
    """Subscribes to one host's topics like the collector; acks when told to (or always)."""

    def __init__(self, broker: Broker, *, auto_ack: bool = False,
                 persistent: bool = False) -> None:
        self.auto_ack = auto_ack
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # persistent: the broker queues for us while we are away, like the real collector
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe(
            [(f"edgemon/v1/{HOST}/{kind}", 1) for kind in ("metrics", "backfill", "status")])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, "test subscriber subscribed")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        kind = parse_topic(msg.topic).kind
        with self._lock:
            self.messages.append(Message(kind, msg.payload, bool(msg.retain)))
        if self.auto_ack and kind != "status":
            batch = decode(msg.payload)
            self.ack(batch["instance"], [batch["seq"]])

    def ack(self, instance: str, seqs: list[int]) -> None:
        self.client.publish(f"edgemon/v1/{HOST}/ack", encode_ack(instance=instance, seqs=seqs),
                            qos=1)

    def batches(self, *kinds: str) -> list[tuple[str, dict[str, Any], bytes]]:
        with self._lock:
            messages = list(self.messages)
        return [(m.kind, decode(m.payload), m.payload) for m in messages
                if m.kind in (kinds or ("metrics", "backfill"))]

    def statuses(self) -> list[dict[str, Any]]:
        with self._lock:
            return [decode_status(m.payload) for m in self.messages if m.kind == "status"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(broker: Broker) -> Iterator[FakeCollector]:
    c = FakeCollector(broker)
    yield c
    c.close()


def retained_status(broker: Broker) -> dict[str, Any] | None:
    """The retained message on the status topic, as a new subscriber would get it."""
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(msg.payload)
        done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *args: None
    client.connect(broker.host, broker.port)
    client.subscribe(f"edgemon/v1/{HOST}/status", qos=1)
    client.loop_start()
    try:
        done.wait(2)
    finally:
        client.disconnect()
        client.loop_stop()
    return decode_status(got[0]) if got else None


def environ(tmp_path: Path, broker: Broker, **extra: str) -> dict[str, str]:
    env = {
        "EDGEMON_AGENT_HOST_ID": HOST,
        "EDGEMON_AGENT_BROKER_HOST": broker.host,
        "EDGEMON_AGENT_BROKER_PORT": str(broker.port),
        "EDGEMON_AGENT_BROKER_KEEPALIVE": "5",
        "EDGEMON_AGENT_BROKER_RECONNECT_MAX_SECONDS": "0.3",
        "EDGEMON_AGENT_INTERVAL_SECONDS": "0.1",
        "EDGEMON_AGENT_BATCH_CYCLES": "3",
        "EDGEMON_AGENT_BUFFER_PATH": str(tmp_path / "agent" / "buffer.db"),
        "EDGEMON_AGENT_BUFFER_ACK_TIMEOUT_SECONDS": "30",
    }
    env.update({f"EDGEMON_AGENT_{k.upper()}": v for k, v in extra.items()})
    return env


def ticks() -> Collect:
    counter = itertools.count()
    return lambda: [(TICKS, ("fake",), next(counter))]


@contextmanager
def running(config: AgentConfig) -> Iterator[Runner]:
    """The agent's runner in a thread, with a fake family; stopped (and checked) at the end."""
    runner = Runner(config, collectors={"ticks": ticks()})
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="agent")
    thread.start()
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(10)
        assert not thread.is_alive(), "the agent did not stop within 10 s"
        assert not errors, errors


def stored_seqs(path: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT instance, seq FROM batches ORDER BY id").fetchall()
    finally:
        db.close()


def test_birth_batches_and_deletion_only_on_end_to_end_ack(tmp_path: Path, broker: Broker,
                                                           collector: FakeCollector) -> None:
    config = load_config(None, environ=environ(tmp_path, broker))
    path = config.buffer.path
    with running(config) as agent:
        birth = wait_until(lambda: retained_status(broker), 10, "a retained birth message")
        assert (birth["state"], birth["instance"], birth["interval_s"]) == (
            "online", agent.instance, 0.1)

        live = wait_until(lambda: len(collector.batches("metrics")) >= 6 and
                          collector.batches("metrics"), 15, "six live batches")
        seqs = [batch["seq"] for _kind, batch, _raw in live]
        assert seqs == sorted(seqs) and seqs[0] == 0
        for _kind, batch, _raw in live:
            validate_batch(batch)
            assert (batch["host"], batch["instance"]) == (HOST, agent.instance)
        names = {s.name for _k, batch, _r in live for s in expand_samples(batch)}
        assert {"test_ticks_total", "agent_buffer_batches", "agent_cycle_duration_seconds",
                "agent_dropped_samples_total", "agent_memory_rss_bytes"} <= names
        ticks_seen = [s.value for _k, b, _r in live for s in expand_samples(b)
                      if s.name == "test_ticks_total"]
        assert ticks_seen == list(range(len(ticks_seen)))  # every cycle, in order

        # The broker PUBACKed seq 0 long before it delivered seq 5; the agent still keeps it.
        assert (agent.instance, 0) in stored_seqs(path)
        collector.ack(agent.instance, [0, 1, 2])
        wait_until(lambda: not {(agent.instance, s) for s in (0, 1, 2)} & set(stored_seqs(path)),
                   10, "acknowledged batches deleted")
        assert (agent.instance, 3) in stored_seqs(path)  # not acknowledged: kept
    assert read_stats(path).pending_cycles == 0  # sealed on the way out
    assert retained_status(broker)["state"] == "offline"  # type: ignore[index]


def test_unacknowledged_batches_are_resent_byte_for_byte(tmp_path: Path, broker: Broker,
                                                         collector: FakeCollector) -> None:
    config = load_config(None, environ=environ(tmp_path, broker,
                                               buffer_ack_timeout_seconds="0.5"))
    with running(config) as agent:
        def resent() -> tuple[bytes, bytes] | None:
            first: dict[int, bytes] = {}
            for _kind, batch, raw in collector.batches():
                if batch["seq"] in first:
                    return first[batch["seq"]], raw
                first[batch["seq"]] = raw
            return None

        original, again = wait_until(resent, 15, "a batch published twice")
        assert original == again
        seq = decode(original)["seq"]
        collector.ack(agent.instance, [seq])
        wait_until(lambda: (agent.instance, seq) not in stored_seqs(config.buffer.path), 10,
                   "the resent batch deleted after its ack")
        assert agent.sender.resent_total >= 1


def stored_ticks(path: Path) -> list[int]:
    """test_ticks_total values in the batches still in the buffer."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        payloads = [row[0] for row in db.execute("SELECT payload FROM batches")]
    finally:
        db.close()
    return [int(s.value) for p in payloads for s in expand_samples(decode(p))
            if s.name == "test_ticks_total"]


def test_an_outage_is_backfilled_oldest_first_and_nothing_is_lost(tmp_path: Path,
                                                                  broker: Broker) -> None:
    collector = FakeCollector(broker, auto_ack=True, persistent=True)
    broker.stop()  # the agent starts with no broker at all
    config = load_config(None, environ=environ(tmp_path, broker,
                                               buffer_backfill_batches_per_second="20",
                                               buffer_ack_timeout_seconds="2"))
    path = config.buffer.path
    try:
        with running(config) as agent:
            wait_until(lambda: path.exists() and read_stats(path).batches >= 8, 15,
                       "eight batches buffered while the broker is down")
            broker.start()
            backfill = wait_until(lambda: len(collector.batches("backfill")) >= 6 and
                                  collector.batches("backfill"), 15, "the back-log")
            assert [b["seq"] for _k, b, _r in backfill][:6] == list(range(6))  # oldest first
            assert collector.batches("metrics"), "live batches go on /metrics meanwhile"

            broker.kill()  # again, the hard way: whatever it held in memory is gone
            wait_until(lambda: not agent.publisher.connected, 10, "agent saw the broker die")
            broker.start()
            wait_until(lambda: agent.publisher.reconnects >= 1, 10, "agent reconnected")
            after = len(collector.batches())
            wait_until(lambda: len(collector.batches()) > after + 3, 15, "batches after restart")
    finally:
        collector.close()
    received = [int(s.value) for _k, b, _r in collector.batches() for s in expand_samples(b)
                if s.name == "test_ticks_total"]
    kept = stored_ticks(path)
    every = set(received) | set(kept)
    assert every == set(range(max(every) + 1))  # every cycle reached the collector or is kept
    stats = read_stats(path)
    assert (stats.pending_cycles, stats.dropped_samples_total) == (0, 0)


def test_agent_process_kill_publishes_the_last_will(tmp_path: Path, broker: Broker,
                                                    collector: FakeCollector) -> None:
    agent = subprocess.Popen([sys.executable, "-m", "edgemon.agent.cli", "run"],
                             env={**os.environ, **environ(tmp_path, broker)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        online = wait_until(lambda: [s for s in collector.statuses() if s["state"] == "online"],
                            15, "the agent's birth message")[0]
        wait_until(lambda: collector.batches("metrics"), 15, "a batch from the agent process")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        offline = wait_until(lambda: [s for s in collector.statuses() if s["state"] == "offline"],
                             10, "the Last Will")[0]
    finally:
        agent.kill()
        agent.wait()
    assert (offline["instance"], offline["reason"]) == (online["instance"], "connection_lost")
    assert retained_status(broker) == offline


def test_sigterm_stops_the_agent_cleanly_within_seconds(tmp_path: Path, broker: Broker,
                                                        collector: FakeCollector) -> None:
    path = tmp_path / "agent" / "buffer.db"
    env = environ(tmp_path, broker, batch_cycles="100")  # nothing sealed before the signal
    agent = subprocess.Popen([sys.executable, "-m", "edgemon.agent.cli", "run"],
                             env={**os.environ, **env},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: collector.statuses(), 15, "the agent's birth message")
        wait_until(lambda: path.exists() and read_stats(path).pending_cycles >= 3, 15,
                   "three cycles sampled")
        agent.send_signal(signal.SIGTERM)
        stdout, stderr = agent.communicate(timeout=5)
    finally:
        agent.kill()
        agent.wait()
    assert agent.returncode == 0, stderr
    logs = [json.loads(line) for line in stdout.splitlines()]
    ours = [entry for entry in logs if entry["logger"] == "edgemon.agent"]
    assert [entry["msg"] for entry in ours][-2:] == ["agent stopping", "agent stopped"]
    cycles = ours[-2]["cycles"]
    last = wait_until(lambda: [s for s in collector.statuses() if s["state"] == "offline"],
                      5, "the offline status")[-1]
    assert last["reason"] == "shutdown"
    # the death message names the newest batch the instance sealed: every one reached us
    assert last["last_seq"] == max(b["seq"] for _k, b, _r in collector.batches()
                                   if b["instance"] == last["instance"])
    # every cycle was sealed and published before the process exited
    assert read_stats(path).pending_cycles == 0
    times = {s.timestamp_ms for _k, b, _r in collector.batches() for s in expand_samples(b)}
    assert len(times) == cycles >= 3
    names = {s.name for _k, b, _r in collector.batches() for s in expand_samples(b)}
    assert {"cpu_usage_percent", "memory_used_bytes", "agent_buffer_bytes"} <= names


def seqs_received(collector: FakeCollector, instance: str) -> list[int]:
    return [b["seq"] for _k, b, _r in collector.batches() if b["instance"] == instance]


def test_no_collector_online_holds_batches_and_its_return_sends_the_backlog_at_once(
        tmp_path: Path, broker: Broker, collector: FakeCollector) -> None:
    """Nobody acknowledges here and the ack timeout is 60 s: whatever goes out twice within
    seconds was re-sent because a collector came (back) online."""
    publish_collector_state(broker, "c1", online=True)
    config = load_config(None, environ=environ(tmp_path, broker,
                                               buffer_ack_timeout_seconds="60",
                                               buffer_backfill_batches_per_second="50"))
    path = config.buffer.path
    with running(config) as agent:
        wait_until(lambda: len(seqs_received(collector, agent.instance)) >= 3, 15,
                   "batches while a collector is online")
        assert agent.publisher.presence.online_collectors() == ["c1"]

        publish_collector_state(broker, "c1", online=False)  # as its Last Will would
        wait_until(lambda: not agent.publisher.presence.publishing_allowed, 10,
                   "the agent to learn that no collector is online")
        held_from = (agent.store.last_sealed_seq or 0) + 1  # nothing from here on may go out
        sent_before = seqs_received(collector, agent.instance)
        wait_until(lambda: (agent.store.last_sealed_seq or 0) >= held_from + 5, 15,
                   "batches sealed while no collector is online")
        assert max(seqs_received(collector, agent.instance)) < held_from, "published into void"
        assert read_stats(path).dropped_samples_total == 0

        came_back = time.monotonic()
        publish_collector_state(broker, "c1", online=True)
        last_held = agent.store.last_sealed_seq or 0

        def everything_again() -> bool:
            seen = seqs_received(collector, agent.instance)
            resent = all(seen.count(seq) >= 2 for seq in sent_before)
            return resent and set(range(held_from, last_held + 1)) <= set(seen)

        wait_until(everything_again, 10, "in-flight batches re-sent and the held ones sent")
        took = time.monotonic() - came_back
    assert took < 10 < 60  # the ack timeout would have taken a minute
    after = [(kind, b["seq"]) for kind, b, _r in collector.batches()
             if b["instance"] == agent.instance][len(sent_before):]
    backfilled = [seq for kind, seq in after if kind == "backfill"]
    assert backfilled[:len(sent_before)] == sorted(sent_before)  # the back-log oldest first


def test_an_agent_that_sees_no_presence_publishes_and_resends_on_its_ack_timeout(
        tmp_path: Path, broker: Broker, collector: FakeCollector) -> None:
    """An older collector publishes no presence: the agent behaves as before."""
    config = load_config(None, environ=environ(tmp_path, broker,
                                               buffer_ack_timeout_seconds="1"))
    with running(config) as agent:
        wait_until(lambda: any(seqs_received(collector, agent.instance).count(seq) >= 2
                               for seq in seqs_received(collector, agent.instance)), 15,
                   "a batch re-sent after its ack timeout")
        assert not agent.publisher.presence.seen
        # a collector that said offline and then vanished from the broker: as if never seen
        publish_collector_state(broker, "old", online=False)
        wait_until(lambda: not agent.publisher.presence.publishing_allowed, 10, "offline seen")
        clear_collector_state(broker, "old")
        wait_until(lambda: agent.publisher.presence.publishing_allowed, 10, "state cleared")
        count = len(seqs_received(collector, agent.instance))
        wait_until(lambda: len(seqs_received(collector, agent.instance)) > count + 2, 10,
                   "publishing again")


def test_invalid_presence_is_ignored_and_counted(tmp_path: Path, broker: Broker,
                                                 collector: FakeCollector) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for payload in (b"not json", b'{"v":1,"state":"maybe","collector":"c","ts":1}',
                    json.dumps({"v": 1, "state": "offline", "collector": "c",
                                "ts": -5}).encode()):
        client.publish("edgemon/v1/_collectors/c/state", payload, qos=1,
                       retain=True).wait_for_publish(5)
        if payload == b"not json":
            client.publish("edgemon/v1/_collectors/bad id!/state", b"{}", qos=1,
                           retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    config = load_config(None, environ=environ(tmp_path, broker))
    with running(config) as agent:
        wait_until(lambda: agent.publisher.presence.invalid_total >= 1, 10, "counted")
        assert agent.publisher.presence.publishing_allowed  # nothing valid: as if none seen
        wait_until(lambda: seqs_received(collector, agent.instance), 10, "batches published")


def test_the_network_thread_sleeps_while_idle_and_still_sends_at_once(
        tmp_path: Path, broker: Broker, collector: FakeCollector) -> None:
    """paho's thread wakes for traffic, not every second (its default): at keepalive 60 it may
    sleep 15 s; a publish from the agent's thread still goes out at once."""
    assert (idle_wake(60), idle_wake(5)) == (15.0, 1.25)
    config = load_config(None, environ=environ(tmp_path, broker, broker_keepalive="60"))
    publisher = Publisher(config.broker, host_id=HOST, instance="idle", birth={},
                          acks=queue.Queue(), wake=threading.Event(), max_inflight=4)
    client = publisher._client
    wakes: list[float] = []
    loop_misc = client.loop_misc  # what paho's loop runs after every select(), traffic or not

    def counted() -> Any:
        wakes.append(time.monotonic())
        return loop_misc()

    client.loop_misc = counted  # type: ignore[method-assign]
    publisher.start()
    try:
        wait_until(lambda: collector.statuses(), 10, "the birth message")
        wait_until(lambda: publisher.drain(0.1), 10, "the birth PUBACKed")
        quiet_from = time.monotonic()
        time.sleep(2.5)  # measuring the absence of wake-ups: paho's default makes two here
        assert len([t for t in wakes if t >= quiet_from]) <= 1, wakes
        sent = time.monotonic()
        assert publisher.publish(f"edgemon/v1/{HOST}/status",
                                 encode_status(online=True, instance="idle", timestamp_ms=1))
        wait_until(lambda: len(collector.statuses()) >= 2, 5, "the publish, before a wake-up")
        assert time.monotonic() - sent < idle_wake(60) / 2
    finally:
        publisher.stop()
