"""Counters of rejected messages (and of series dropped from stored batches) by reason and host,
with rate-limited logging.

A misbehaving or hostile publisher can send garbage at any rate and on any number of invented
host topics: counting must stay cheap and bounded, and the log must not become the attack. Each
host is logged at most once per ``log_interval`` seconds (the line says how many were suppressed);
at most ``max_hosts`` distinct hosts are tracked, the rest are counted as host ``"_other"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from edgemon.common.logs import Throttle

__all__ = ["OTHER_HOST", "Rejects"]

OTHER_HOST = "_other"
UNKNOWN_HOST = "_unknown"  # the topic did not name a valid host

log = logging.getLogger("edgemon.collector.ingest.rejects")


class Rejects:
    def __init__(self, *, log_interval: float = 60.0, max_hosts: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log_interval = log_interval
        self.max_hosts = max_hosts
        self._clock = clock
        self._lock = threading.Lock()
        self._by_reason: Counter[str] = Counter()
        self._by_host_reason: Counter[tuple[str, str]] = Counter()
        self._hosts: set[str] = set()
        self._series_by_reason: Counter[str] = Counter()
        self._series_by_host_reason: Counter[tuple[str, str]] = Counter()
        self._throttles: dict[str, Throttle] = {}  # per tracked host (and _other): bounded

    def record(self, reason: str, host: str | None, detail: str = "") -> None:
        """Count one rejected message; log it unless this host was logged recently."""
        with self._lock:
            host = self._tracked(host)
            self._by_reason[reason] += 1
            self._by_host_reason[(host, reason)] += 1
            suppressed = self._log_now(host)
        if suppressed is not None:
            log.warning("rejected message from %s: %s%s", host, reason,
                        f": {detail}" if detail else "",
                        extra={"host": host, "reason": reason,
                               "suppressed_since_last": suppressed})

    def record_series(self, reason: str, host: str, count: int, detail: str = "") -> None:
        """Count ``count`` series dropped for ``reason`` from a batch whose other series were
        stored (``detail`` names one); logged like ``record``, sharing its per-host limit."""
        with self._lock:
            host = self._tracked(host)
            self._series_by_reason[reason] += count
            self._series_by_host_reason[(host, reason)] += count
            suppressed = self._log_now(host)
        if suppressed is not None:
            log.warning("dropped %d series of a batch from %s: %s%s", count, host, reason,
                        f": {detail}" if detail else "",
                        extra={"host": host, "reason": reason, "series": count,
                               "suppressed_since_last": suppressed})

    def _tracked(self, host: str | None) -> str:
        """The host to count under (holding the lock)."""
        host = host or UNKNOWN_HOST
        if host not in self._hosts:
            if len(self._hosts) >= self.max_hosts:
                return OTHER_HOST
            self._hosts.add(host)
        return host

    def _log_now(self, host: str) -> int | None:
        """How many lines of ``host`` were suppressed since its last one, or None to suppress
        this one too (holding the lock)."""
        throttle = self._throttles.get(host)
        if throttle is None:
            throttle = self._throttles[host] = Throttle(self.log_interval, self._clock)
        return throttle()

    def by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_reason)

    def by_host_reason(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._by_host_reason)

    def series_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._series_by_reason)

    def series_by_host_reason(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._series_by_host_reason)

    def total(self) -> int:
        with self._lock:
            return sum(self._by_reason.values())
