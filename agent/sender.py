"""What to publish when: live batches first, back-log oldest first and rate-limited, resends.

No MQTT here: the sender reads sealed batches from a ``BatchSource`` (the buffer store) and hands
``(topic, payload)`` to a ``publish`` callable. A batch is *in flight* from its publication until
the collector acknowledges it (``forget``); at most ``max_inflight`` are. Each pump, while
connected:

1. in-flight batches unacknowledged for ``ack_timeout`` seconds are published again, the same
   bytes (the collector de-duplicates on instance + seq);
2. batches whose newest sample is younger than ``live_window`` seconds are *live*: published at
   once, newest first, on ``/metrics``;
3. the rest is *back-log*: published oldest first on ``/backfill``, at most
   ``backfill_per_second`` (token bucket, burst of one second's worth).

Disconnected, nothing is published and nothing is lost: the batches stay in the buffer. The
runner also stops pumping while no collector says it is online (``presence.py``) and, the
moment one is, calls ``resend_unacknowledged``: every batch in flight becomes due again at
once, through the same live-first, rate-limited order, instead of after its ack timeout.

Batch ids belong to the source's current buffer: when the source's ``generation`` changes (a
corrupt buffer was replaced) the sender forgets every id it holds before using any.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from edgemon.agent.buffer import BatchRef
from edgemon.common.clock import now_ms
from edgemon.protocol import backfill_topic, metrics_topic

__all__ = ["BatchSource", "Sender"]

PAUSE_AFTER_REFUSAL = 1.0  # seconds without publishing after paho refused a message


class BatchSource(Protocol):
    generation: int  # changes whenever the buffer behind the ids is replaced

    def newest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]: ...

    def oldest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]: ...

    def get(self, batch_id: int) -> tuple[BatchRef, bytes] | None: ...

    def mark_published(self, batch_id: int) -> None: ...


class Sender:
    def __init__(self, source: BatchSource, publish: Callable[[str, bytes], bool], *,
                 host_id: str, live_window: float, ack_timeout: float,
                 backfill_per_second: float, max_inflight: int,
                 clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = now_ms) -> None:
        self.source = source
        self._publish = publish
        self.live_topic = metrics_topic(host_id)
        self.backfill_topic = backfill_topic(host_id)
        self.live_window_ms = int(live_window * 1000)
        self.ack_timeout = ack_timeout
        self.rate = backfill_per_second
        self.max_inflight = max_inflight
        self._clock = clock
        self._wall_ms = wall_ms
        self.inflight: dict[int, float] = {}  # batch id -> monotonic time last published
        self._generation = source.generation  # of the buffer the ids in ``inflight`` belong to
        self.published_total = 0
        self.resent_total = 0
        self._burst = max(1.0, backfill_per_second)
        self._tokens = self._burst
        self._refilled = clock()
        self._paused_until = float("-inf")  # after a refused publish, let paho's queue drain

    def forget(self, batch_ids: Iterable[int]) -> None:
        """These batches were acknowledged (or dropped): they are no longer in flight."""
        if self._ids_are_current():
            for batch_id in batch_ids:
                self.inflight.pop(batch_id, None)

    def resend_unacknowledged(self) -> int:
        """A collector is (again) listening: whatever is in flight may have gone nowhere, so
        every unacknowledged batch is due now (live first, back-log at its rate). Returns how
        many were in flight."""
        count = len(self.inflight)
        self.inflight.clear()
        self._paused_until = float("-inf")
        return count

    def _ids_are_current(self) -> bool:
        """False (after forgetting every id) when the buffer behind the ids was replaced."""
        if self.source.generation == self._generation:
            return True
        self._generation = self.source.generation
        self.inflight.clear()
        return False

    def pump(self) -> int:
        """Publish whatever is due now; return how many batches were published."""
        self._ids_are_current()
        now = self._clock()
        if now < self._paused_until:
            return 0
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        # one cutoff for the whole pump: a batch chosen as live is published as live
        cutoff = self._wall_ms() - self.live_window_ms
        sent = 0
        for batch_id, published in sorted(self.inflight.items(), key=lambda item: item[1]):
            if now - published < self.ack_timeout:
                break
            found = self.source.get(batch_id)
            if found is None:  # acknowledged under another id range, or dropped
                del self.inflight[batch_id]
                continue
            if not self._send(*found, now, cutoff):
                return sent
            self.resent_total += 1
            sent += 1
        free = self.max_inflight - len(self.inflight)
        if free > 0:
            for ref in self.source.newest(free, self.inflight):
                if ref.last_ms < cutoff:
                    break
                found = self.source.get(ref.id)
                if found is None or not self._send(*found, now, cutoff):
                    return sent
                sent += 1
        while self._tokens >= 1 and len(self.inflight) < self.max_inflight:
            refs = self.source.oldest(1, self.inflight)
            found = self.source.get(refs[0].id) if refs else None
            if found is None or not self._send(*found, now, cutoff):
                break
            self._tokens -= 1
            sent += 1
        return sent

    def next_due(self) -> float:
        """Monotonic time at which ``pump`` may have something new to do (resend or token)."""
        due = float("inf")
        if self._paused_until > self._clock():
            return self._paused_until
        if self.inflight:
            due = min(self.inflight.values()) + self.ack_timeout
        if self._tokens < 1 and len(self.inflight) < self.max_inflight:
            due = min(due, self._refilled + (1 - self._tokens) / self.rate)
        return due

    def _send(self, ref: BatchRef, payload: bytes, now: float, live_cutoff_ms: int) -> bool:
        live = ref.last_ms >= live_cutoff_ms
        if not self._publish(self.live_topic if live else self.backfill_topic, payload):
            self._paused_until = now + PAUSE_AFTER_REFUSAL
            return False
        if ref.id not in self.inflight:
            self.source.mark_published(ref.id)
        self.inflight[ref.id] = now
        self.published_total += 1
        return True
