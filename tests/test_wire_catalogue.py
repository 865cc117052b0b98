"""Series declared once (protocol SPEC.md §9), end to end: a real agent and a real collector
through a real Mosquitto. Batches name the catalogue the collector acknowledged; a collector that
lost its store answers ``unknown_catalogue`` and gets them inline; back-fill after an outage;
every sample accounted for exactly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgemon.protocol import ProtocolError, expand_samples
from edgemon.protocol.base import base_values, last_values
from edgemon.protocol.catalogue import decode_catalogue, decode_received, is_referencing
from edgemon.protocol.codec import decompress
from edgemon.protocol.topics import catalogue_topic
from tests.support.broker import Broker
from tests.support.processes import Agent, Collector, buffer_meta, stored_samples
from tests.support.waiting import wait_until

HOST = "wire-host"


class Capture:
    """Every message under ``edgemon/v1/<host>/#``, as a third-party reader sees them."""

    def __init__(self, broker: Broker, topic: str = f"edgemon/v1/{HOST}/#") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def of(self, kind: str) -> list[tuple[bytes, bool]]:
        with self.lock:
            return [(p, r) for t, p, r in self.messages if t.endswith("/" + kind) and p]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _counter(collector: Collector, name: str, labels: str = "") -> int:
    text = collector.get("/metrics", raw=True).decode()
    for line in text.splitlines():
        if line.startswith(f"edgemon_collector_{name}{labels} "):
            return int(float(line.split()[-1]))
    return 0


def _referencing(payloads: list[tuple[bytes, bool]]) -> list[bytes]:
    return [p for p, _ in payloads if is_referencing(decompress(p))]


@pytest.fixture
def system(tmp_path: Path, broker: Broker) -> Iterator[tuple[Broker, Collector, Agent, Capture]]:
    capture = Capture(broker)
    collector = Collector(tmp_path / "collector", broker).start()
    agent = Agent(tmp_path / "agent", broker, host_id=HOST, interval=0.2, batch_cycles=2,
                  buffer_extra="ack_timeout_seconds = 3.0")
    agent.start()
    yield broker, collector, agent, capture
    agent.kill()
    collector.kill()
    capture.close()


def _exactly_accounted(collector: Collector, agent: Agent, already_acknowledged: int = 0) -> None:
    """After the agent stopped: every sample it ever buffered is stored (once), or still
    buffered; none dropped."""
    meta = buffer_meta(agent.buffer)
    assert meta["dropped"] == 0, meta
    wait_until(lambda: stored_samples(collector, HOST) == meta["acknowledged"]
               - already_acknowledged, 30, f"stored = acknowledged ({meta})")
    assert meta["acknowledged"] + meta["buffered"] == meta["appended"]


def test_batches_name_the_acknowledged_catalogue_and_third_parties_can_read_them(
        system: tuple[Broker, Collector, Agent, Capture], broker: Broker) -> None:
    _, collector, agent, capture = system
    wait_until(lambda: _counter(collector, "referencing_batches_total") >= 5, 30,
               f"batches naming a catalogue (agent log: {agent.log})")
    assert _counter(collector, "catalogues_stored_total") >= 1
    # The first batches went inline (no catalogue acknowledged yet): both forms reach storage.
    assert len(capture.of("metrics")) > len(_referencing(capture.of("metrics")))
    # A reader that comes later gets the current catalogue, retained, and reads the batches
    # that name it with nothing else (SPEC.md §9).
    late = Capture(broker, catalogue_topic(HOST))
    try:
        wait_until(lambda: late.of("catalogue"), 10, "the retained catalogue")
        payload, retained = late.of("catalogue")[0]
    finally:
        late.close()
    assert retained
    catalogue = decode_catalogue(payload)
    assert catalogue.host == HOST
    # It reads the batches in order, keeping the last values of each (SPEC.md §9.1): a batch
    # that goes on from the one before reads with those.
    lasts: dict[tuple[str, int], dict] = {}
    named = based = 0
    for p, _ in capture.of("metrics"):
        try:
            batch, referencing = decode_received(
                p, {catalogue.id: catalogue}.get,
                lambda i, seq, c: base_values(lasts[(i, seq)], c) if (i, seq) in lasts else None)
        except ProtocolError as exc:  # an older catalogue, or a base that named one
            assert exc.reason in ("unknown_catalogue", "unknown_base"), exc
            continue
        lasts[(batch.instance, batch.seq)] = last_values(batch.metrics)
        assert {s.name for s in expand_samples(batch.to_map())} >= {"load1"}
        named += referencing
        based += b"bvalues" in decompress(p)
    assert named and based, (named, based)
    assert agent.terminate() == 0
    _exactly_accounted(collector, agent)
    assert collector.terminate() == 0


def test_a_collector_that_lost_its_store_gets_every_batch_inline(
        system: tuple[Broker, Collector, Agent, Capture], broker: Broker) -> None:
    _, collector, agent, _capture = system
    wait_until(lambda: _counter(collector, "referencing_batches_total") >= 3, 30,
               "batches naming a catalogue")
    assert collector.terminate() == 0
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] >= 4, 30, "the buffer growing")
    acknowledged_before = buffer_meta(agent.buffer)["acknowledged"]
    for path in collector.db.parent.glob(collector.db.name + "*"):
        path.unlink()  # the store is gone: no catalogue, no sequence numbers
    # ... and the retained catalogue too, so the new collector cannot learn it from the broker
    clear = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    clear.connect("127.0.0.1", broker.port)
    clear.loop_start()
    clear.publish(catalogue_topic(HOST), b"", qos=1, retain=True).wait_for_publish(5)
    clear.loop_stop()
    clear.disconnect()
    collector.token = None  # its tokens went with the store
    collector.start()
    wait_until(lambda: _counter(collector, "rejects_total", '{reason="unknown_catalogue"}') > 0,
               30, "batches naming a catalogue the collector lost")
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] <= 1, 30, "the buffer drained")
    wait_until(lambda: _counter(collector, "catalogues_stored_total") >= 1, 30,
               "the catalogue declared again")
    assert "sending them inline" in agent.output()
    assert agent.terminate() == 0
    _exactly_accounted(collector, agent, acknowledged_before)
    assert collector.terminate() == 0


def test_a_collector_that_lost_its_store_but_reads_the_retained_catalogue_gets_based_batches_inline(
        system: tuple[Broker, Collector, Agent, Capture]) -> None:
    """SPEC.md §9.1: the new collector learns the catalogue from the retained message, but not
    the batch a based batch goes on from: ``unknown_base``, the batch comes again inline, and
    the batches after it go on from what this collector stored."""
    _, collector, agent, capture = system
    wait_until(lambda: sum(b"bvalues" in decompress(p) for p in _referencing(
        capture.of("metrics"))) >= 3, 30, f"based batches (agent log: {agent.log})")
    assert collector.terminate() == 0
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] >= 3, 30, "the buffer growing")
    acknowledged_before = buffer_meta(agent.buffer)["acknowledged"]
    for path in collector.db.parent.glob(collector.db.name + "*"):
        path.unlink()  # the store is gone; the retained catalogue is still on the broker
    collector.token = None
    collector.start()
    wait_until(lambda: _counter(collector, "rejects_total", '{reason="unknown_base"}') > 0, 30,
               "a based batch the new collector cannot resolve")
    seen = len(capture.of("metrics"))
    wait_until(lambda: sum(b"bvalues" in decompress(p) for p, _ in
                           capture.of("metrics")[seen:]) >= 2, 30,
               "based batches again, on what the new collector stored")
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] <= 1, 30, "the buffer drained")
    assert "sending them inline" in agent.output()
    assert agent.terminate() == 0
    _exactly_accounted(collector, agent, acknowledged_before)
    assert collector.terminate() == 0


def test_backfill_after_an_outage_names_the_catalogue_and_loses_nothing(
        system: tuple[Broker, Collector, Agent, Capture]) -> None:
    _, collector, agent, capture = system
    wait_until(lambda: _counter(collector, "referencing_batches_total") >= 2, 30,
               "batches naming a catalogue")
    assert collector.terminate() == 0
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] >= 12, 30, "a back-log")
    collector.start()
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] <= 1, 60, "the back-log drained")
    backfill = capture.of("backfill")
    assert backfill and _referencing(backfill)  # history too names the stored catalogue
    assert _counter(collector, "rejects_total", '{reason="unknown_catalogue"}') == 0
    assert agent.terminate() == 0
    _exactly_accounted(collector, agent)
    assert collector.terminate() == 0
