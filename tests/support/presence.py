"""Collector presence from a test client: the retained state a collector publishes (SPEC.md),
for tests and benchmarks that drive an agent without a collector that publishes it."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt

from edgemon.protocol.presence import collector_state_topic, encode_collector_state

from .broker import Broker


def publish_collector_state(broker: Broker, collector_id: str, *, online: bool,
                            retain: bool = True) -> None:
    """Publish one collector's state (QoS 1, retained by default); return once PUBACKed."""
    _publish(broker, collector_state_topic(collector_id),
             encode_collector_state(collector_id, online=online, ts_ms=int(time.time() * 1000)),
             retain=retain)


def clear_collector_state(broker: Broker, collector_id: str) -> None:
    """Remove the retained state (an empty retained message), as if no collector had spoken."""
    _publish(broker, collector_state_topic(collector_id), b"", retain=True)


def _publish(broker: Broker, topic: str, payload: bytes, *, retain: bool) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        if not info.is_published():
            raise TimeoutError(f"{topic}: not acknowledged by the broker")
    finally:
        client.disconnect()
        client.loop_stop()
