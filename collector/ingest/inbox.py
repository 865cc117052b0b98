"""The bounded hand-off from paho's network thread to the ingest pipeline on the event loop:
``RawMessage`` (one message as received) and ``Inbox`` (counted until released after its PUBACK).
See ``mqtt.py`` for the delivery contract they serve.

One host's share of it is bounded too (``host_share``): a host holding that many messages gets no
more in (``MqttIngest`` drops them as ``rate_limited``), so a flooding host can neither fill the
inbox, which would refuse every host's messages, nor put more than its share into one group that
another host's message waits for."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["Inbox", "RawMessage", "host_of"]


def host_of(topic: str) -> str:
    """The host part of an ``edgemon/v1/<host>/...`` topic, unchecked ("" for any other)."""
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 3 and parts[0] == "edgemon" else ""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as received; ``payload`` is empty when ``size`` exceeds any valid payload."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received_ms: int
    generation: int  # which connection it arrived on (PUBACK only on that one)
    size: int


class Inbox:
    """Bounded hand-off from the paho thread to the event loop, counted until released.

    ``offer`` (any thread) admits a message only if the messages and bytes *held* (queued or being
    stored, not yet released) stay within the bounds; ``release`` (after the PUBACK) frees them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_messages: int,
                 max_bytes: int, host_share: int = 0) -> None:
        self._loop = loop
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.host_share = host_share  # messages one host may hold (0: no bound of its own)
        self._held_by: dict[str, int] = {}
        self._lock = threading.Lock()
        self._held = 0
        self._held_bytes = 0
        self._closed = False
        self._queue: deque[RawMessage] = deque()
        self._ready = asyncio.Event()

    def offer(self, msg: RawMessage) -> bool:
        with self._lock:
            if self._closed:
                return False
            if self._held >= self.max_messages or (
                    self._held and self._held_bytes + len(msg.payload) > self.max_bytes):
                return False
            self._held += 1
            self._held_bytes += len(msg.payload)
            host = host_of(msg.topic)
            self._held_by[host] = self._held_by.get(host, 0) + 1
        try:
            self._loop.call_soon_threadsafe(self._put, msg)
        except RuntimeError:  # the loop is closed: we are shutting down
            self.release([msg])
            return False
        return True

    def over_share(self, topic: str) -> bool:
        """Whether the host of ``topic`` already holds its share (``host_share``)."""
        return self.host_share > 0 and self._held_by.get(host_of(topic), 0) >= self.host_share

    def _put(self, msg: RawMessage) -> None:
        self._queue.append(msg)
        self._ready.set()

    async def get_many(self, limit: int, timeout: float | None = None) -> list[RawMessage]:
        """Up to ``limit`` queued messages; waits up to ``timeout`` for the first ([] if none)."""
        if not self._queue:
            if self.closed:
                return []
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        out: list[RawMessage] = []
        while self._queue and len(out) < limit:
            out.append(self._queue.popleft())
        return out

    def release(self, msgs: list[RawMessage]) -> None:
        with self._lock:
            self._held -= len(msgs)
            self._held_bytes -= sum(len(m.payload) for m in msgs)
            for m in msgs:
                host = host_of(m.topic)
                if (left := self._held_by.get(host, 0) - 1) > 0:
                    self._held_by[host] = left
                else:
                    self._held_by.pop(host, None)

    def oldest_received_ms(self) -> int | None:
        """When the oldest message still queued arrived (None: none queued); for /metrics."""
        try:
            return self._queue[0].received_ms
        except IndexError:
            return None

    def close(self) -> None:
        """Refuse every new message from now on; wake a waiting ``get_many``."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def held(self) -> int:
        return self._held

    @property
    def held_bytes(self) -> int:
        return self._held_bytes
