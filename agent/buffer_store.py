"""The buffer as the runner sees it: disk trouble is logged and survived, never raised.

- The buffer cannot be opened (directory missing or read-only, disk full): cycles are held in
  memory and opening is retried with back-off (1 s doubling to 60 s).
- A write fails (disk full, filesystem remounted read-only, I/O error): the same, except the
  open buffer is simply tried again at the next call.
- SQLite reports corruption while running: the file is moved aside (``buffer.quarantine``, kept,
  never deleted) and a fresh buffer is opened; ``generation`` changes, which tells the sender
  (the only holder of batch ids) that its ids mean nothing any more. The fresh buffer goes on
  from this instance's last sequence number, so a new batch never reuses one the collector has
  already stored (it would be acknowledged as a duplicate and lost).

Memory holds at most ``memory_cycles`` cycles; past that the oldest is dropped and counted, and
the count is added to the buffer's persisted total as soon as the buffer takes writes again.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from edgemon.agent.buffer import BatchRef, Buffer
from edgemon.agent.buffer_file import EMPTY_STATS, BufferStats, is_corruption, quarantine
from edgemon.agent.families import Reading
from edgemon.common.logs import Throttle

__all__ = ["BufferStore"]

T = TypeVar("T")
log = logging.getLogger("edgemon.agent.buffer")

RETRY_FIRST, RETRY_MAX = 1.0, 60.0


class BufferStore:
    """Wraps the Buffer ``open_buffer(first_seq)`` opens; every method returns a neutral value
    on disk errors. ``first_seq``: the lowest sequence number the buffer may seal next."""

    def __init__(self, open_buffer: Callable[[int], Buffer], *, memory_cycles: int = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._open_buffer = open_buffer
        self._clock = clock
        self.memory_cycles = memory_cycles
        self.buffer: Buffer | None = None
        self.generation = 0  # +1 whenever a (new) buffer is opened
        self.last_sealed_seq: int | None = None  # this instance's, across buffer replacements
        self.errors_total = 0
        self.recoveries_total = 0
        self.recovered_from: list[Path] = []
        self._memory: deque[tuple[int, list[Reading]]] = deque()
        self._memory_drops = 0  # samples dropped from memory, not yet in the buffer's total
        self._retry_at = float("-inf")
        self._retry_delay = RETRY_FIRST
        self._failing = False
        self._throttle = Throttle(60.0, clock)

    # ---- what the runner calls ---------------------------------------------------------------

    def append(self, ts_ms: int, readings: list[Reading]) -> None:
        """Queue one cycle and write every queued cycle the buffer will take, oldest first."""
        self._memory.append((ts_ms, readings))
        self._call("append", self._write_memory, None)
        while len(self._memory) > self.memory_cycles:
            _ts, dropped = self._memory.popleft()
            self._memory_drops += len(dropped)

    def seal(self, now_ms: int) -> list[BatchRef]:
        refs = self._call("seal", lambda buffer: buffer.seal(now_ms), [])
        self._note_sealed(self.buffer)
        return refs

    def ack(self, instance: str, ranges: Iterable[tuple[int, int]], now_ms: int) -> list[int]:
        return self._call("ack", lambda buffer: buffer.ack(instance, ranges, now_ms), [])

    def mark_published(self, batch_id: int) -> None:
        self._call("mark_published", lambda buffer: buffer.mark_published(batch_id), None)

    def reject(self, instance: str, ranges: Iterable[tuple[int, int]], reason: str = ""
               ) -> tuple[list[int], int, list[int]]:
        return self._call("reject", lambda buffer: buffer.reject(instance, ranges, reason),
                          ([], 0, []))

    def bases_acked(self, instance: str, ranges: Iterable[tuple[int, int]]) -> None:
        self._call("ack", lambda buffer: buffer.bases_acked(instance, ranges), None)

    def catalogues_acked(self, idents: Iterable[str]) -> None:
        self._call("ack", lambda buffer: buffer.catalogues_acked(idents), None)

    def newest_catalogue(self) -> tuple[str, bool] | None:
        return self._call("read", lambda buffer: buffer.newest_catalogue(), None)

    def catalogue_metrics(self, ident: str) -> list[list[Any]] | None:
        return self._call("read", lambda buffer: buffer.catalogue_metrics(ident), None)

    def enforce_budget(self, now_ms: int) -> int:
        return self._call("enforce_budget", lambda buffer: buffer.enforce_budget(now_ms), 0)

    def newest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]:
        return self._call("read", lambda buffer: buffer.newest(limit, exclude), [])

    def oldest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]:
        return self._call("read", lambda buffer: buffer.oldest(limit, exclude), [])

    def get(self, batch_id: int) -> tuple[BatchRef, bytes] | None:
        return self._call("read", lambda buffer: buffer.get(batch_id), None)

    def stats(self) -> BufferStats:
        """The buffer's statistics, counting samples dropped from memory (not yet written to
        the buffer's counters) as appended and dropped already."""
        stats = self._call("stats", lambda buffer: buffer.stats(), EMPTY_STATS)
        return stats._replace(
            appended_samples_total=stats.appended_samples_total + self._memory_drops,
            dropped_samples_total=stats.dropped_samples_total + self._memory_drops)

    @property
    def memory_depth(self) -> int:
        """Cycles held in memory because the buffer would not take them."""
        return len(self._memory)

    def close(self) -> None:
        if self.buffer is not None:
            self._call("close", lambda buffer: buffer.close(), None)
            self.buffer = None

    # ---- internals -------------------------------------------------------------------------

    def _write_memory(self, buffer: Buffer) -> None:
        while self._memory:
            ts_ms, readings = self._memory[0]
            buffer.append(ts_ms, readings)
            self._memory.popleft()
        if self._memory_drops:
            buffer.count_lost_before_buffering(self._memory_drops)
            self._memory_drops = 0

    def _call(self, what: str, action: Callable[[Buffer], T], default: T) -> T:
        buffer = self.buffer or self._try_open()
        if buffer is None:
            return default
        try:
            result = action(buffer)
        except (sqlite3.Error, OSError) as exc:
            self._failed(what, exc)
            return default
        if self._failing:
            self._failing = False
            log.warning("buffer works again", extra={"path": str(buffer.path)})
        return result

    def _try_open(self) -> Buffer | None:
        if self._clock() < self._retry_at:
            return None
        first_seq = 0 if self.last_sealed_seq is None else self.last_sealed_seq + 1
        try:
            buffer = self._open_buffer(first_seq)
        except (sqlite3.Error, OSError) as exc:
            self._retry_at = self._clock() + self._retry_delay
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)
            self._failed("open", exc)
            return None
        self._retry_delay = RETRY_FIRST
        self.buffer = buffer
        self.generation += 1
        self._note_sealed(buffer)
        if buffer.recovered_from is not None:
            self.recoveries_total += 1
            self.recovered_from.append(buffer.recovered_from)
        return buffer

    def _note_sealed(self, buffer: Buffer | None) -> None:
        if buffer is not None and buffer.last_sealed_seq is not None:
            self.last_sealed_seq = max(self.last_sealed_seq or 0, buffer.last_sealed_seq)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors_total += 1
        self._failing = True
        buffer = self.buffer
        if buffer is not None and is_corruption(exc):
            self.buffer = None
            with contextlib.suppress(sqlite3.Error):
                buffer.close()
            try:
                moved = quarantine(buffer.path)
            except OSError as move_error:  # Buffer.open will find it corrupt and try again
                self._retry_at = self._clock() + self._retry_delay
                log.error("buffer is corrupt (%s) and cannot be moved aside: %s", exc,
                          move_error, extra={"path": str(buffer.path)})
                return
            self.recoveries_total += 1
            self.recovered_from.append(moved)
            self._retry_at = float("-inf")
            log.error("buffer is corrupt (%s): moved aside to %s; starting a fresh buffer", exc,
                      moved, extra={"path": str(buffer.path), "moved_to": str(moved)})
            return
        suppressed = self._throttle()
        if suppressed is not None:
            extra: dict[str, Any] = {"operation": what, "error": str(exc),
                                     "memory_cycles": len(self._memory),
                                     "suppressed": suppressed}
            log.error("buffer %s failed: %s; holding %d cycles in memory (at most %d)", what,
                      exc, len(self._memory), self.memory_cycles, extra=extra)
