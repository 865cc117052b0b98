"""A stand-in agent for collector tests: a paho client that publishes batches with QoS 1 and
records the acknowledgements it receives, and ``make_batch`` to build valid batches."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.common.clock import now_ms
from edgemon.protocol import (
    GAUGE,
    Ack,
    BatchBuilder,
    MetricDef,
    ack_topic,
    decode_ack,
    encode,
    to_scaled,
)

from .broker import Broker
from .waiting import wait_until

__all__ = ["CPU", "LOAD", "TIMEOUT", "StandInAgent", "make_batch"]

CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
LOAD = MetricDef("load1", GAUGE, "", 2)
TIMEOUT = 10.0


def make_batch(host: str, seq: int, *, instance: str = "inst-1", payload_host: str | None = None,
               t0: int | None = None, n: int = 3, sent: int | None = None) -> bytes:
    b = BatchBuilder()
    t0 = t0 if t0 is not None else now_ms() - 60_000
    for i in range(n):
        b.add(t0 + i * 10_000, CPU, ("total",), to_scaled(10.0 + i + seq / 100, 2))
        b.add(t0 + i * 10_000, LOAD, (), to_scaled(0.5, 2))
    return encode(b.build(host=payload_host or host, instance=instance, seq=seq,
                          sent_ms=sent if sent is not None else now_ms()))


class StandInAgent:
    """A stand-in agent: publishes QoS 1 and records the acknowledgements it receives."""

    def __init__(self, broker: Broker, host: str, *, password: str | None = None) -> None:
        """``password``: connect as the broker user ``host`` (a broker with broker-auth)."""
        self.host = host
        self.acks: list[Ack] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"agent-{host}-{uuid.uuid4().hex[:6]}")
        if password is not None:
            self.client.username_pw_set(host, password)
        self.client.on_message = lambda _c, _u, m: self.acks.append(decode_ack(m.payload))
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(ack_topic(host), qos=1)
        assert self._subscribed.wait(TIMEOUT), "agent did not subscribe"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)

    def acked(self, instance: str = "inst-1") -> list[int]:
        """Every acked seq, in arrival order, repeats included."""
        return [s for ack in list(self.acks) if ack.instance == instance
                for first, last in ack.acked for s in range(first, last + 1)]

    def rejected(self, instance: str = "inst-1") -> list[tuple[int, str]]:
        """Every (seq, reason) the collector refused for good."""
        return [(s, ack.reason) for ack in list(self.acks) if ack.instance == instance
                for first, last in ack.rejected for s in range(first, last + 1)]

    def wait_acked(self, seq: int, times: int = 1, instance: str = "inst-1") -> None:
        wait_until(lambda: self.acked(instance).count(seq) >= times, TIMEOUT,
                   f"ack #{times} of seq {seq} for {self.host}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
