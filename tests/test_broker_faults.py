"""The collector's MQTT transport under broker faults, with real Mosquitto (the configuration
``broker-auth mosquitto-conf`` generates) and real processes: it never exits on a transport error,
says when delivery stalls and recovers by itself, keeps its presence right, and the bring-up
command restarts at once. Plus the pure parts: the stall detector and the client set-up."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgemon.collector.broker.auth import AuthDir
from edgemon.collector.ingest.flood_guard import FloodGuard
from edgemon.collector.ingest.stall import StallDetector
from edgemon.common import mqtt_client
from edgemon.protocol.presence import COLLECTOR_STATE_FILTER, decode_collector_state
from tests.support.accounting import assert_exact_accounting
from tests.support.broker import Broker
from tests.support.processes import Agent, Collector
from tests.support.proxy import LossyRelay
from tests.support.waiting import wait_until

HOST = "steady-host"
READER = "watcher"
FAST = "ack_timeout_seconds = 2.0\nbackfill_batches_per_second = 100.0\nmax_inflight = 32"
DEV_UP = Path(__file__).resolve().parent.parent / "packaging" / "dev_up.py"


# --- the stall detector (pure logic, fake clock) ------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detector(bound: float = 10.0) -> tuple[StallDetector, Clock]:
    clock = Clock()
    stall = StallDetector(bound, clock=clock)
    stall.connected(1)
    return stall, clock


def test_a_message_held_unacknowledged_beyond_the_bound_is_a_stall() -> None:
    stall, clock = detector()
    stall.handed_over(1, 7)
    stall.handed_over(1, 8)
    clock.now += 9
    stall.pubacked(1, 8)  # a later one went through: the oldest is still 7
    assert stall.check() is None
    clock.now += 2
    assert stall.check(holding_expected=True) is None  # storage failing: back-pressure
    assert stall.check() == "puback_overdue"
    assert stall.state().oldest_unacked_s == pytest.approx(11)
    assert stall.check() is None  # reported once, then it has a bound to recover...
    clock.now += 10.5
    assert stall.check() == "puback_overdue"  # ...or it is reported (and acted on) again
    assert stall.stalls["puback_overdue"] == 2
    stall.connected(2)  # the reconnect: what the old connection held is the broker's again
    assert stall.state().oldest_unacked_s is None
    assert stall.state().stalled == "puback_overdue"  # until delivery is seen to work
    stall.received()
    assert stall.state().stalled is None


def test_an_unconfirmed_publish_beyond_the_bound_is_a_stall() -> None:
    stall, clock = detector()
    stall.published(41)
    stall.published(42)
    clock.now += 5
    stall.confirmed(41)
    clock.now += 5.5
    assert stall.check() == "broker_puback_overdue"
    stall.connected(2)  # paho re-sends it on the new connection: its clock starts again
    assert stall.state().oldest_unconfirmed_s == 0
    clock.now += 5
    assert stall.check() is None


def test_a_quiet_connection_is_probed_and_silence_after_a_probe_is_a_stall() -> None:
    stall, clock = detector(bound=9.0)
    assert stall.probe_due()  # unproven yet: the first probe goes out at once
    clock.now += 0.1
    stall.received(probe=True)  # it came back: the broker delivers probes to us
    clock.now += 2.9
    assert not stall.probe_due()  # traffic is recent
    clock.now += 0.2
    assert stall.probe_due()  # quiet for a third of the bound: probe
    assert not stall.probe_due()  # one probe at a time
    clock.now += 8
    stall.received()  # something came (the probe or a batch): delivery works
    assert stall.check() is None
    clock.now += 3.1
    assert stall.probe_due()
    clock.now += 9.1
    assert stall.check() == "no_delivery"
    assert stall.state().silence_s == pytest.approx(12.2)
    stall.disconnected()
    assert not stall.probe_due() and stall.check() is None  # nothing to watch while away


def test_probes_the_broker_never_delivers_stop_after_one_false_alarm() -> None:
    """Mosquitto accepts the subscription and the publish of a probe its ACL denies (an ACL from
    before probes existed), then never delivers it."""
    stall, clock = detector(bound=9.0)
    assert stall.probe_due()
    clock.now += 9.5
    assert stall.check() == "no_delivery"  # cannot tell yet: a stall, or a deaf probe
    stall.connected(2)
    assert stall.probe_due()
    clock.now += 9.5
    assert stall.check() is None and not stall.probing  # twice: it is the probe
    assert not stall.probe_due()
    stall.published(7)  # the other signs carry on
    clock.now += 9.5
    assert stall.check() == "broker_puback_overdue"


def test_messages_of_an_older_connection_are_not_watched() -> None:
    stall, clock = detector()
    stall.handed_over(0, 5)  # arrived on connection 0, we are on 1: cannot be PUBACKed
    clock.now += 60
    assert stall.check() != "puback_overdue"


# --- the flood guard (pure logic, fake clock) -----------------------------------------------------

def test_a_host_far_beyond_any_agent_rate_is_left_out_and_let_back_later() -> None:
    clock = Clock()
    guard = FloodGuard(trigger=500, quarantine_s=60, max_quarantine_s=200, clock=clock)
    crossed = [guard.received("noisy") for _ in range(600)]
    assert crossed.count(True) == 1 and crossed.index(True) == 499  # the 500th message
    for _ in range(499):
        guard.received("steady")  # busy but below the trigger
    assert guard.tick() == (["noisy"], [])
    assert guard.isolated() == {"noisy": 60}
    assert not guard.received("noisy")  # left out: not counted again
    clock.now += 1.0
    assert guard.tick() == ([], [])  # a new second: steady's count starts again
    for _ in range(499):
        guard.received("steady")
    clock.now += 59.5
    assert guard.tick() == ([], ["noisy"])
    assert guard.isolated() == {}
    # back at it within the hour: twice as long, then capped
    for expected in (120, 200, 200):
        for _ in range(500):
            guard.received("noisy")
        assert guard.tick() == (["noisy"], [])
        assert guard.isolated() == {"noisy": expected}
        clock.now += expected
        guard.tick()
    assert guard.isolations == 4
    assert not FloodGuard(trigger=0, quarantine_s=60).received("noisy")  # disabled


# --- the client set-up ----------------------------------------------------------------------------

def test_reconnect_delays_are_fully_jittered_within_their_bounds() -> None:
    rng = random.Random(3)
    delays = [mqtt_client.reconnect_delay(attempt, rng.random, base=0.25, cap=30)
              for attempt in range(12) for _ in range(50)]
    assert min(delays) >= mqtt_client.MIN_DELAY and max(delays) <= 30
    assert len({round(d, 3) for d in delays}) > 500  # no lock-step
    first = [mqtt_client.reconnect_delay(0, rng.random, base=0.25, cap=30) for _ in range(200)]
    assert max(first) <= 0.25  # a deliberate reconnect comes back at once


def test_the_shared_client_sets_tcp_nodelay_on_its_socket(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    client = mqtt_client.make_client("nodelay-probe", clean_session=True)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    try:
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert connected.wait(10)
        sock = client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.disconnect()
        client.loop_stop()
        broker.kill()


def test_the_agents_publisher_socket_has_tcp_nodelay(tmp_path: Path) -> None:
    """The agent's own session (not just the shared factory): nothing it sets afterwards takes
    TCP_NODELAY away (issue 18: without it one connection carries about a fifth as much)."""
    import queue

    from edgemon.agent.config import BrokerConfig
    from edgemon.agent.publisher import Publisher

    broker = Broker(tmp_path / "broker").start()
    publisher = Publisher(
        BrokerConfig(broker.host, broker.port, 30, "nodelay-agent", None, None, False, None,
                     None, None, 5.0),
        host_id="nodelay-agent", instance="0123456789abcdef", birth={}, acks=queue.Queue(),
        wake=threading.Event(), max_inflight=4)
    try:
        publisher.start()
        wait_until(lambda: publisher.connected, 10, "the agent's publisher connected")
        sock = publisher._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        publisher.stop()
        broker.kill()


# --- the bring-up command's port check ------------------------------------------------------------

def _load_dev_up() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dev_up", DEV_UP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_port_in_time_wait_is_free_but_a_listening_one_is_not() -> None:
    port_free = _load_dev_up()._port_free
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        assert not port_free(port)  # listening
        conn.close()  # the server side closes first: its end of it sits in TIME_WAIT
        client.recv(1)
        client.close()
    # The old check (bind without SO_REUSEADDR) called such a port taken for about a minute.
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))
    assert port_free(port)


# --- real broker, collector and agent ------------------------------------------------------------

class Fleet:
    """A generated broker auth directory with a collector, the host and a reader."""

    def __init__(self, root: Path) -> None:
        self.auth, collector_pw = AuthDir.init(root / "broker-auth")
        self.passwords = {"edgemon-collector": collector_pw,
                          HOST: self.auth.add(HOST, "host"),
                          READER: self.auth.add(READER, "reader")}

    def login(self, user: str) -> str:
        return f'username = "{user}"\npassword = "{self.passwords[user]}"\n'


@pytest.fixture
def make_system(tmp_path: Path) -> Iterator[Callable[..., tuple[Broker, Collector, Agent]]]:
    """Broker (generated configuration), collector and agent, all with generated credentials.
    ``relay``: the collector reaches the broker through a ``LossyRelay`` (``make.relay``)."""
    started: list[Any] = []

    def make(*, relay: bool = False, mqtt_extra: str = "",
             agent: bool = True) -> tuple[Broker, Collector, Agent]:
        fleet = Fleet(tmp_path)
        broker = Broker(tmp_path / "broker", generated=fleet.auth.path).start()
        started.append(broker)
        port = None
        if relay:
            make.relay = LossyRelay(broker.port)  # type: ignore[attr-defined]
            started.append(make.relay)  # type: ignore[attr-defined]
            port = make.relay.port  # type: ignore[attr-defined]
        collector = Collector(tmp_path / "collector", broker, mqtt_port=port,
                              mqtt_extra=fleet.login("edgemon-collector") + mqtt_extra)
        started.append(collector.start())
        host = Agent(tmp_path / "agent", broker, host_id=HOST, buffer_extra=FAST,
                     broker_extra=fleet.login(HOST))
        if agent:
            started.append(host.start())
            wait_until(lambda: _stored_batches(collector) > 0, 30, f"first data ({host.log})")
        make.fleet = fleet  # type: ignore[attr-defined]
        return broker, collector, host

    yield make
    for thing in reversed(started):
        if isinstance(thing, LossyRelay):
            thing.close()
        else:
            thing.kill()


def _metrics(collector: Collector) -> str:
    return collector.get("/metrics", raw=True).decode()


def _metric(collector: Collector, name: str, labels: str = "") -> float:
    match = re.search(rf"^edgemon_collector_{name}{re.escape(labels)} (\S+)$", _metrics(collector),
                      re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def _stored_batches(collector: Collector) -> float:
    try:
        return _metric(collector, "batches_stored_total")
    except OSError:
        return 0.0


def _levels(collector: Collector) -> list[dict[str, Any]]:
    return collector.log_lines()


def test_broker_killed_and_restarted_at_50_random_instants_under_load(
        make_system: Callable[..., tuple[Broker, Collector, Agent]]) -> None:
    """kill -9 and restart of the broker at 50 random moments while batches, acks and presence
    are in flight: the collector never exits, says each outage once at WARNING (nothing at
    ERROR), and every sample is stored exactly once."""
    broker, collector, agent = make_system()
    rng = random.Random(14)
    agent_restarts = 0
    for i in range(50):
        deadline = time.monotonic() + rng.uniform(0.05, 1.5)
        wait_until(lambda d=deadline: time.monotonic() >= d, 5, "a random moment")
        broker.kill()
        broker.start()
        assert collector.running(), f"collector exited after kill {i + 1}:\n" \
            f"{collector.output()[-3000:]}"
        if not agent.running():
            # Restart=on-failure, as its unit would: this test is about the collector (the
            # agent's own never-exit is the faults suite's); the accounting must stay exact.
            agent_restarts += 1
            agent.start()
    wait_until(lambda: _metric(collector, "mqtt_connected") == 1, 30, "the collector back")
    if not agent.running():
        agent_restarts += 1
        agent.start()
    totals = assert_exact_accounting(collector, agent)
    assert totals["dropped"] == 0, totals
    assert collector.running()
    logged = _levels(collector)
    errors = [line for line in logged if line.get("level") in ("error", "critical")]
    assert errors == [], errors[:5]
    lost = [line for line in logged if line.get("msg", "").startswith("lost the connection")]
    assert 0 < len(lost) <= 50, len(lost)
    assert _metric(collector, "mqtt_connections_total") > 10
    print(f"agent restarts after its own exit: {agent_restarts}")


def test_a_silently_lossy_connection_is_detected_reported_and_reconnected(
        make_system: Callable[..., tuple[Broker, Collector, Agent]]) -> None:
    """The TCP connection stays up but nothing from the broker arrives any more (a broker that
    drops its packets to us): within the bound the collector says so in /readyz, /metrics and
    the log, reconnects, and delivery resumes."""
    _, collector, agent = make_system(relay=True, mqtt_extra="stall_seconds = 3\n")
    relay: LossyRelay = make_system.relay  # type: ignore[attr-defined]
    relay.lose_downstream()
    relay.refusing = True  # the reconnects fail for a while: the stall stays visible
    wait_until(lambda: collector.request("GET", "/readyz", token=None)[0] == 503, 30,
               "/readyz to report the stall")
    doc = json.loads(collector.request("GET", "/readyz", token=None)[2])
    assert doc["mqtt_delivery"] is False, doc
    assert doc["mqtt_stall"] in ("broker_puback_overdue", "no_delivery"), doc
    assert _metric(collector, "mqtt_delivery_stalled") == 1
    assert any(line.get("msg", "").startswith("mqtt delivery stalled")
               for line in _levels(collector))
    before = _stored_batches(collector)
    relay.refusing = False
    wait_until(lambda: collector.request("GET", "/readyz", token=None)[0] == 200, 30,
               "delivery to resume")
    wait_until(lambda: _stored_batches(collector) > before + 5, 30, "batches stored again")
    assert _metric(collector, "mqtt_delivery_stalled") == 0
    stalls = sum(_metric(collector, "mqtt_stalls_total", f'{{reason="{r}"}}')
                 for r in ("puback_overdue", "broker_puback_overdue", "no_delivery"))
    assert stalls >= 1
    assert relay.connections >= 2
    assert_exact_accounting(collector, agent)


def test_an_acl_from_before_presence_still_lets_the_collector_work(
        make_system: Callable[..., tuple[Broker, Collector, Agent]], tmp_path: Path) -> None:
    """A broker whose ACL was generated before the _collectors topics existed refuses the probe
    subscription: the collector still becomes ready, says how to fix it, and does not mistake
    the missing probes for stalls."""
    broker, collector, _ = make_system(agent=False, mqtt_extra="stall_seconds = 1.5\n")
    acl = make_system.fleet.auth.acl_file  # type: ignore[attr-defined]
    acl.write_text("".join(line for line in acl.read_text().splitlines(keepends=True)
                           if "_collectors" not in line))
    broker.reload()
    collector.terminate()
    collector.start()  # ready: wait_until inside checks /readyz
    wait_until(lambda: "broker-auth regenerate" in collector.output(), 15, "the hint")
    deadline = time.monotonic() + 8  # five bounds of quiet: probing gave up long ago
    wait_until(lambda: time.monotonic() >= deadline, 10, "a quiet while")
    assert collector.request("GET", "/readyz", token=None)[0] == 200
    assert _metric(collector, "mqtt_delivery_stalled") == 0
    # one false alarm at most (a deaf probe and a stall look alike once), then no more
    assert _metric(collector, "mqtt_stalls_total", '{reason="no_delivery"}') <= 1
    # the fix the hint names puts the lines back
    assert subprocess.run([sys.executable, "-m", "edgemon.collector.cli", "broker-auth",
                           "regenerate", str(acl.parent)], capture_output=True,
                          timeout=30).returncode == 0
    assert "topic readwrite edgemon/v1/_collectors/#" in acl.read_text()


class PresenceWatcher:
    """A reader subscribed to every collector's presence (retained states included)."""

    def __init__(self, broker: Broker, password: str) -> None:
        self.states: list[tuple[str, bool]] = []
        self.client = mqtt_client.make_client(f"presence-{os.getpid()}", clean_session=True,
                                              username=READER, password=password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(COLLECTOR_STATE_FILTER, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        state = decode_collector_state(message.payload)
        self.states.append((state.collector, state.online))

    def last(self) -> bool | None:
        return self.states[-1][1] if self.states else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_collector_presence_online_offline_and_last_will(
        make_system: Callable[..., tuple[Broker, Collector, Agent]]) -> None:
    broker, collector, _ = make_system(agent=False)
    watcher = PresenceWatcher(broker, make_system.fleet.passwords[READER])  # type: ignore
    try:
        wait_until(lambda: watcher.last() is True, 10, "the retained online state")
        assert watcher.states[-1][0] == "edgemon-collector"
        assert collector.terminate() == 0
        wait_until(lambda: watcher.last() is False, 10, "offline on a clean stop")
        collector.start()
        wait_until(lambda: watcher.last() is True, 10, "online again")
        collector.kill()  # no goodbye: the broker publishes the Last Will
        wait_until(lambda: watcher.last() is False, 10, "the Last Will")
    finally:
        watcher.close()
    # A host may read the presence but never claim to be a collector.
    host = mqtt_client.make_client("forger", clean_session=True, username=HOST,
                                   password=make_system.fleet.passwords[HOST])  # type: ignore
    host.connect(broker.host, broker.port)
    host.loop_start()
    host.publish("edgemon/v1/_collectors/edgemon-collector/state", b'{"v":1}', qos=1,
                 retain=True).wait_for_publish(10)
    host.disconnect()
    host.loop_stop()
    late = PresenceWatcher(broker, make_system.fleet.passwords[READER])  # type: ignore
    try:
        wait_until(lambda: late.states, 10, "the retained state")
        assert late.states == [("edgemon-collector", False)]  # the forgery was not stored
    finally:
        late.close()


def test_dev_up_restarts_at_once_and_keeps_the_credentials_it_generated(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    mqtt_port, http_port = _stable_port(), _stable_port()
    argv = [sys.executable, str(DEV_UP), "--state-dir", str(state), "--mqtt-port",
            str(mqtt_port), "--http-port", str(http_port), "--interval", "1"]
    log = tmp_path / "dev-up.log"

    def run() -> subprocess.Popen[bytes]:
        ups = log.read_text().count("edgemon is up") if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=tmp_path)
        wait_until(lambda: proc.poll() is not None
                   or log.read_text().count("edgemon is up") > ups, 60,
                   f"dev-up to come up ({log})")
        assert proc.poll() is None, log.read_text()[-3000:]
        return proc

    def stop(proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]

    def reader_login() -> tuple[str, str]:
        doc = tomllib.loads((state / "tail.toml").read_text())["mqtt"]
        return doc["username"], doc["password"]

    first = run()
    try:
        login, token = reader_login(), (state / "api-token").read_text()
        # a subscriber configured with those credentials, connected to the first run's broker
        wait_until(lambda: _reader_connects(mqtt_port, *login), 20, "the reader to log in")
    finally:
        stop(first)
    second = run()  # at once: the first run's sockets may sit in TIME_WAIT
    try:
        assert "is taken" not in log.read_text()
        assert reader_login() == login, "the reader's password was rotated"
        assert (state / "api-token").read_text() == token, "the API token was replaced"
        wait_until(lambda: _reader_connects(mqtt_port, *login), 20, "the same reader again")
    finally:
        stop(second)


def _stable_port() -> int:
    """A free port below the kernel's ephemeral range: between the two runs no outgoing
    connection of another process can take it (as one can take a port ``free_port`` found)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def _reader_connects(port: int, username: str, password: str) -> bool:
    client = mqtt_client.make_client("probe", clean_session=True, username=username,
                                     password=password)
    result: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason)
    try:
        client.connect("127.0.0.1", port)
    except OSError:
        return False
    client.loop_start()
    try:
        wait_until(lambda: result, 10, "CONNACK")
        return not result[0].is_failure
    finally:
        client.disconnect()
        client.loop_stop()
