"""What one host's agent puts on the wire, seen by an ordinary subscriber: how many of its
batches went out based (SPEC.md §9.1: compressed with dictionary 2) and how many in another
form. Fault tests use it to show that based batches were in play around a fault."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import zstandard

from edgemon.protocol.codec import BASED_DICTIONARY_ID
from edgemon.protocol.topics import backfill_topic, metrics_topic

from .broker import Broker


class WireWatcher:
    """Subscribes (QoS 0, clean session) to ``host``'s metrics and backfill topics; reconnects
    by itself after a broker restart. Use as a context manager or call ``close``."""

    def __init__(self, broker: Broker, host: str) -> None:
        self.based = 0
        self.other = 0
        self._lock = threading.Lock()
        self._topics = [(metrics_topic(host), 0), (backfill_topic(host), 0)]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"wire-{uuid.uuid4().hex[:8]}", clean_session=True)
        self.client.on_connect = lambda c, *_: c.subscribe(self._topics)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            based = (zstandard.get_frame_parameters(message.payload).dict_id
                     == BASED_DICTIONARY_ID)
        except zstandard.ZstdError:
            based = False
        with self._lock:
            if based:
                self.based += 1
            else:
                self.other += 1

    def counts(self) -> tuple[int, int]:
        """(based, other) batches seen so far."""
        with self._lock:
            return self.based, self.other

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> WireWatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
