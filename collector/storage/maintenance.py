"""The storage maintenance thread: compaction, rollups, retention and quarantine, in the
background, outside the ingest pipeline.

A round runs ``Storage.maintain_step`` until the storage reports no work left or the round's
budget (``Storage.maintain_budget_ms``) is spent. When work is left the next round starts at
once, otherwise after ``interval`` seconds. After every step the thread gives way for as long
as the step took (twice that while ``busy()`` says messages wait to be stored): compaction gets
at most half of the time, so the ingest writer gets the storage's write lock and the interpreter
(measured: back to back, compaction starved ingest to a few transactions in 10 s). A failing
step is counted and logged; the next round tries again. ``stats`` is the storage's own report,
read after every round (``/metrics`` reads it without touching the storage). The storage's
gauges for ``/metrics`` (``backlog``, ``disk_bytes``: every ``backlog_interval``; ``tier_bytes``,
a scan: every ``sizes_interval``) are refreshed here too, after a round, so a scrape never reads
the storage; how long the last refresh took is kept beside them.

``should_run()`` gates every step: among collectors sharing a store only the leader maintains it
(collector/cluster/); a collector that is not the leader (or stops being it) skips rounds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgemon.collector.storage.base import Storage, StorageStats
from edgemon.common.clock import now_ms

__all__ = ["MaintenanceRunner", "StorageGauges"]

log = logging.getLogger("edgemon.collector.storage.maintenance")

MIN_PAUSE = 0.002  # seconds given way after every step, however short


@dataclass(frozen=True, slots=True)
class StorageGauges:
    """The storage's last figures for ``/metrics`` (replaced whole: a scrape reads one set)."""

    backlog: dict[str, int] = field(default_factory=dict)
    backlog_ms: int | None = None  # storage clock when read
    disk_bytes: int | None = None
    backlog_at: float | None = None  # monotonic time of the read
    backlog_seconds: float = 0.0  # how long reading took
    tier_bytes: dict[str, int] = field(default_factory=dict)
    sizes_at: float | None = None
    sizes_seconds: float = 0.0

    def with_backlog(self, storage: Storage, now_ms: int, now: float) -> StorageGauges:
        began = time.monotonic()
        backlog, disk = storage.backlog(now_ms), storage.disk_bytes()
        return replace(self, backlog=backlog, backlog_ms=now_ms, disk_bytes=disk, backlog_at=now,
                       backlog_seconds=time.monotonic() - began)

    def with_sizes(self, storage: Storage, now: float) -> StorageGauges:
        began = time.monotonic()
        sizes = storage.tier_bytes()
        return replace(self, tier_bytes=sizes, sizes_at=now,
                       sizes_seconds=time.monotonic() - began)


class MaintenanceRunner:
    """Call ``start()`` once the storage is open and ``stop()`` before closing it."""

    def __init__(self, storage: Storage, *, interval: float = 10.0,
                 busy: Callable[[], bool] = lambda: False,
                 clock_ms: Callable[[], int] = now_ms,
                 backlog_interval: float = 10.0, sizes_interval: float = 120.0,
                 should_run: Callable[[], bool] = lambda: True,
                 idle_pause: float = 1.0, busy_pause: float = 2.0) -> None:
        """``idle_pause``: the pause after a step, as a share of the step's time, while
        nothing waits to be stored (1: half the time); ``busy_pause``: the same while messages
        wait (2: a third of the time). Both are for maintenance sharing the collector's
        interpreter; the compaction process, whose interpreter ingest does not need, gives 0
        for both: it leaves ingest the write lock after each of its transactions instead
        (``SQLStore._give_way``), where a pause per step would hold it to a third of its time
        while ingest runs flat out."""
        self.storage = storage
        self.idle_pause = idle_pause
        self.busy_pause = busy_pause
        self.should_run = should_run
        self.interval = interval
        self.busy = busy
        self.clock_ms = clock_ms
        self.runs = 0  # rounds finished
        self.errors = 0  # rounds that failed
        self.stats = StorageStats()
        self.gauges = StorageGauges()
        self.backlog_interval = backlog_interval
        self.sizes_interval = sizes_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgemon-maintain", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let a round in progress finish (about ``maintain_budget_ms`` at most), then return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.should_run() or not self.run_round():
                self._stop.wait(self.interval)

    def run_round(self) -> bool:
        """One round of bounded steps; whether the storage has work left."""
        deadline = time.monotonic() + self.storage.maintain_budget_ms / 1000
        now = self.clock_ms()
        try:
            while True:
                started = time.monotonic()
                more = self.storage.maintain_step(now)
                if (not more or time.monotonic() >= deadline or self._stop.is_set()
                        or not self.should_run()):
                    break
                took = time.monotonic() - started
                time.sleep(max(MIN_PAUSE,
                               took * (self.busy_pause if self.busy() else self.idle_pause)))
            self.runs += 1
        except Exception:
            self.errors += 1
            log.exception("storage maintenance failed")
            more = False
        try:
            self.stats = self.storage.stats()
        except Exception:
            log.exception("storage stats failed")
        self.refresh_gauges()
        return more

    def refresh_gauges(self, *, force: bool = False) -> None:
        """Read the storage's gauges whose interval has passed (all of them with ``force``)."""
        g, now = self.gauges, time.monotonic()
        try:
            if force or g.backlog_at is None or now - g.backlog_at >= self.backlog_interval:
                self.gauges = g = g.with_backlog(self.storage, self.clock_ms(), now)
            if force or g.sizes_at is None or now - g.sizes_at >= self.sizes_interval:
                self.gauges = g.with_sizes(self.storage, now)
        except Exception:
            log.exception("storage gauges failed")
