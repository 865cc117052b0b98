"""A hostile flood beside a well-behaved agent, with real processes: Mosquitto, the collector and
the agent; the flooder is a paho client in the test publishing garbage, decompression and msgpack
bombs, valid-looking batches that must not be stored, and messages on invented host topics.

The good host loses nothing (exact accounting against its buffer), every flood message is counted
by reason in /metrics, and the collector's peak memory stays within a bound derived from its own
resident size before the flood.

Then a flood at the broker's maximum rate from a host with valid credentials, on a broker with
exactly the generated configuration: delivery from the good host never stops (the flooder is
left out of the collector's subscriptions, so the broker's queue for the collector never fills
with it), every received message is acknowledged to the broker in time, nothing is lost.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest
import zstandard
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.collector.broker.auth import AuthDir
from edgemon.protocol.limits import MAX_DECOMPRESSED_BYTES
from tests.support.accounting import assert_exact_accounting
from tests.support.broker import Broker
from tests.support.flood import RawFlooder
from tests.support.processes import Agent, Collector, buffer_meta, stored_samples
from tests.support.waiting import wait_until

GOOD = "good-host"
FLOOD = "flood-host"
CORPUS = Path(__file__).parent / "fuzz_corpus"
FLOOD_SECONDS = 5.0
FLOOD_RATE = 1000  # messages/s offered: ten times the flooding host's limit (100/s)

pytestmark = pytest.mark.slow


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of ``pid`` in KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def has_data(collector: Collector) -> bool:
    try:
        return bool(collector.get(f"/edgemon/api/v1/hosts/{GOOD}/series")["series"])
    except OSError:  # 404 until the host is known
        return False


def metric_samples(collector: Collector, name: str) -> dict[str, float]:
    """``{labels text: value}`` of one metric of /metrics."""
    text = collector.get("/metrics", raw=True).decode()
    out = {}
    for match in re.finditer(rf"^edgemon_collector_{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[match.group(1) or ""] = float(match.group(2))
    return out


def rejects_by_reason(collector: Collector) -> Counter[str]:
    return Counter({re.search(r'reason="([^"]+)"', k).group(1): int(v)  # type: ignore[union-attr]
                    for k, v in metric_samples(collector, "rejects_total").items()})


def flood_payloads() -> list[tuple[str, bytes, str]]:
    """(topic, payload, what) of the flood, every one a message the collector must reject."""
    now = int(time.time() * 1000)
    topic = f"edgemon/v1/{FLOOD}/metrics"
    zstd = zstandard.ZstdCompressor(level=3)
    # Valid-looking and sizeable (20,000 samples), but claiming to be the good host.
    entries = [[[str(s)], 0, [1000 + s] + [7] * 9] for s in range(2000)]
    impostor = zstd.compress(msgpack.packb({
        "v": 1, "host": GOOD, "instance": "impostor", "seq": 1, "sent": now,
        "t": [now - 60_000] + [1000] * 9, "metrics": [["cpu_x", "gauge", "", 0, ["s"], entries]]}))
    future = zstd.compress(msgpack.packb({
        "v": 1, "host": FLOOD, "instance": "f", "seq": 1, "sent": now, "t": [now + 86_400_000],
        "metrics": [["m", "gauge", "", 0, [], [[[], 0, [1]]]]]}))
    corpus = [(topic, (CORPUS / f"{name}.bin").read_bytes(), name) for name in (
        "zstd_bomb_64mib", "zstd_declares_1tib", "msgpack_empty_array_bomb",
        "msgpack_string_bomb", "too_many_samples", "msgpack_deep_unknown_key", "value_nan")]
    return [
        (topic, b"\x00garbage" * 25, "garbage"),
        (topic, impostor, "impostor"),
        (topic, future, "future"),
        (f"edgemon/v1/{FLOOD}/status", b"[" * 20_000, "json bomb"),
        *corpus,
    ]


class Flooder:
    """Publishes the flood (QoS 1) at ``FLOOD_RATE`` messages/s for ``seconds``."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(2000)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.sent: Counter[str] = Counter()
        self.published = 0

    def run(self, seconds: float) -> None:
        payloads = flood_payloads()
        started = time.monotonic()
        deadline = started + seconds
        i = 0
        last: mqtt.MQTTMessageInfo | None = None
        while time.monotonic() < deadline:
            ahead = started + i / FLOOD_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the flood, not waiting for a condition
            if i % 10 == 9:  # an invented host name: the rate limiter's table must not grow
                topic, payload, what = f"edgemon/v1/invented-{i}/metrics", b"\x01junk", "invented"
            else:
                topic, payload, what = payloads[i % len(payloads)]
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # our own queue is full: let it drain
                time.sleep(0.005)
                continue
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
            self.sent[what] += 1
            self.published += 1
            last = info
            i += 1
        if last is not None:
            last.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Broker, Collector, Agent]]:
    started: list[object] = []
    # A queue deep enough for the whole flood: the broker delivers every message, so the
    # collector's counts can be checked against what was published.
    broker = Broker(tmp_path / "broker", max_queued_messages=100_000).start()
    started.append(broker)
    # Every flood message must reach the collector to be counted: no leaving the flooder out
    # at the broker here (that is the max-rate test below, on a secured broker).
    collector = Collector(tmp_path / "collector", broker,
                          mqtt_extra="flood_trigger_per_second = 0\n").start()
    started.append(collector)
    agent = Agent(tmp_path / "agent", broker, host_id=GOOD, interval=0.1, batch_cycles=2,
                  buffer_extra="ack_timeout_seconds = 2.0\nmax_inflight = 32").start()
    started.append(agent)
    yield broker, collector, agent
    for thing in reversed(started):
        thing.kill()  # type: ignore[attr-defined]


def test_flood_is_rejected_counted_and_bounded_while_the_good_host_loses_nothing(
        system: tuple[Broker, Collector, Agent]) -> None:
    broker, collector, agent = system
    assert collector.proc is not None
    pid = collector.proc.pid
    wait_until(lambda: has_data(collector), 30, "the good host's first data")
    # Baseline: the collector warmed up on the good host's traffic alone.
    time.sleep(1.0)  # a second of ordinary ingest, not a wait for a condition
    baseline = status_kib(pid)

    flooder = Flooder(broker)
    hwm_during: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            hwm_during.append(status_kib(pid)["VmRSS"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        flooder.run(FLOOD_SECONDS)
    finally:
        flooder.close()
    assert flooder.published > 1000, f"the flood was too thin to prove anything: {flooder.sent}"

    # Every flood message is rejected and counted (the good host's rejects stay 0).
    def flood_counted() -> bool:
        return sum(rejects_by_reason(collector).values()) >= flooder.published
    wait_until(flood_counted, 60, f"{flooder.published} flood messages counted")
    sampling.set()
    sampler.join()
    reasons = rejects_by_reason(collector)
    assert sum(reasons.values()) == flooder.published, (reasons, flooder.sent)
    assert reasons["rate_limited"] > 0, reasons
    for reason in ("not_zstd", "decompressed_too_large", "host_mismatch", "future_timestamp",
                   "not_json"):
        assert reasons[reason] > 0, (reason, reasons)
    by_host = metric_samples(collector, "host_rejects_total")
    assert not any(f'host="{GOOD}"' in k for k in by_host), by_host
    assert metric_samples(collector, "rate_limit_hosts")[""] <= 10_000

    # The good host: everything it buffered is stored, exactly once, and nothing was dropped.
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] <= 2, 60, "the good buffer to drain")
    assert agent.terminate() == 0, agent.output()[-2000:]
    meta = buffer_meta(agent.buffer)
    assert meta["dropped"] == 0, meta
    expected = meta["appended"] - meta["buffered"]
    wait_until(lambda: stored_samples(collector, GOOD) == expected, 30,
               f"stored == appended - buffered ({meta})")

    # Memory: the peak resident size stays within a bound derived from the baseline. One
    # message in decoding may take ~2x the decompressed limit (packed bytes and the unpacker's
    # copy) plus its decoded batch; allow four limits on top of 1.5x the baseline. Before the
    # bounded decoder, one 400-byte msgpack bomb alone built over 500 MB.
    peak = max(status_kib(pid)["VmHWM"], *hwm_during)
    bound = int(baseline["VmRSS"] * 1.5) + 4 * MAX_DECOMPRESSED_BYTES // 1024
    print(f"collector RSS baseline {baseline['VmRSS'] // 1024} MiB, peak {peak // 1024} MiB, "
          f"bound {bound // 1024} MiB; flood {flooder.published} messages: {dict(reasons)}")
    assert peak <= bound, f"peak {peak} KiB > bound {bound} KiB (baseline {baseline})"


# --- a flood at the broker's maximum rate cannot stall delivery (generated broker config) -------

FLOODER = "flooder-host"


def _valid_batch(host: str) -> bytes:
    now = int(time.time() * 1000)
    entries = [[[str(s)], 0, [1000 + s] + [7] * 9] for s in range(20)]
    return zstandard.ZstdCompressor(level=3).compress(msgpack.packb({
        "v": 1, "host": host, "instance": "replayed", "seq": 1, "sent": now,
        "t": [now - 60_000] + [1000] * 9, "metrics": [["cpu_x", "gauge", "", 0, ["s"], entries]]}))


def _flood(flooder: RawFlooder, seconds: float, sent: Any) -> None:
    sent.value = flooder.run(seconds)


@pytest.fixture
def secured_system(tmp_path: Path) -> Iterator[tuple[Broker, Collector, Agent, str]]:
    """Broker with exactly the generated configuration, collector and good agent logged in;
    the flooding host's password (a legitimate user of its own)."""
    auth, collector_pw = AuthDir.init(tmp_path / "broker-auth")
    good_pw, flood_pw = auth.add(GOOD, "host"), auth.add(FLOODER, "host")
    started: list[object] = []
    broker = Broker(tmp_path / "broker", generated=auth.path).start()
    started.append(broker)
    collector = Collector(tmp_path / "collector", broker, mqtt_extra=(
        f'username = "edgemon-collector"\npassword = "{collector_pw}"\nstall_seconds = 5\n'))
    started.append(collector.start())
    agent = Agent(tmp_path / "agent", broker, host_id=GOOD, interval=0.1, batch_cycles=2,
                  buffer_extra="ack_timeout_seconds = 2.0\nmax_inflight = 32",
                  broker_extra=f'username = "{GOOD}"\npassword = "{good_pw}"\n').start()
    started.append(agent)
    yield broker, collector, agent, flood_pw
    for thing in reversed(started):
        thing.kill()  # type: ignore[attr-defined]


def test_a_max_rate_flood_from_an_authenticated_host_cannot_stall_delivery(
        secured_system: tuple[Broker, Collector, Agent, str]) -> None:
    broker, collector, agent, flood_pw = secured_system
    wait_until(lambda: has_data(collector), 30, "the good host's first data")
    flooder = RawFlooder(broker.port, FLOODER, flood_pw, _valid_batch(FLOODER))
    ages: list[float] = []
    watching = threading.Event()

    def watch() -> None:  # how old the good host's newest stored batch gets, all along
        while not watching.wait(0.25):
            newest = metric_samples(collector, "host_last_received_timestamp_seconds").get(
                f'{{host="{GOOD}"}}', 0.0)
            ages.append(time.time() - newest)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sent = multiprocessing.Value("q", 0)
    flooding = multiprocessing.Process(target=_flood, args=(flooder, FLOOD_SECONDS * 3, sent))
    try:  # in a process of its own: as fast as the broker reads, not paced by this test
        flooding.start()
        flooding.join(FLOOD_SECONDS * 3 + 30)
        deadline = time.monotonic() + 3
        wait_until(lambda: time.monotonic() >= deadline, 5, "3 s of traffic after the flood")
    finally:
        watching.set()
        watcher.join()
        flooding.kill()
    assert sent.value > 50_000, f"the flood was too thin to prove anything: {sent.value}"
    # Delivery never stopped: the good host's data stayed fresh during the flood and after.
    assert len(ages) > 20 and max(ages) < 3.0, max(ages)
    # The flooder was left out at the broker; nobody else was.
    isolated = metric_samples(collector, "mqtt_flood_isolated_seconds")
    assert set(isolated) == {f'{{host="{FLOODER}"}}'}, isolated
    assert metric_samples(collector, "mqtt_flood_isolations_total")[""] == 1
    # Every message was acknowledged to the broker in time: no held message went overdue. (A
    # packet the broker dropped before the flooder was left out may still show up as a stall of
    # another reason, repaired within the bound: the freshness above bounds its cost.)
    stalls = metric_samples(collector, "mqtt_stalls_total")
    assert stalls['{reason="puback_overdue"}'] == 0, stalls
    assert collector.request("GET", "/readyz", token=None)[0] == 200
    # The good host lost nothing and nothing was stored twice.
    totals = assert_exact_accounting(collector, agent)
    assert totals["dropped"] == 0, totals
    print(f"max-rate flood: {sent.value} messages in {FLOOD_SECONDS * 3:.0f} s, good host's "
          f"newest data at most {max(ages):.2f} s old, stalls {stalls}")
