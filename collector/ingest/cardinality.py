"""Cardinality bound per host: how many distinct series one host may have, and how fast new ones.

A series is a metric name with its label values. Per host the collector remembers the series it
saw in the last ``ACTIVE_MS`` (24 h) and admits a series it does not know only while

* the host has fewer than ``max_series`` active series, and
* the host's allowance of new series is not used up. A host (first seen by this process, so also
  after a restart) starts with an allowance of ``max_series``, which then refills at
  ``max_new_per_hour`` per hour, up to ``max_new_per_hour``.

A refused series is dropped from its batch and counted ("series_limit" or "new_series_limit");
the host's known series keep flowing, and ``snapshot()`` shows the host over its limit for an
hour after the last refusal (``/edgemon/api/v1/hosts``).

Memory: one dict entry (a 64-bit hash and a timestamp, about 100 bytes) per active series of each
host, so at most ``max_series`` x hosts entries; expired series are swept every 10 minutes, and a
host's state is freed when none are left. Known series are never refused; only a hash collision
(2^-64 per pair) could let an unknown series pass as known.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["ACTIVE_MS", "OVER_LIMIT_MS", "HostCardinality", "SeriesLimits"]

ACTIVE_MS: Final = 24 * 3_600_000  # a series not seen for this long no longer counts
OVER_LIMIT_MS: Final = 3_600_000  # a host shows as over its limit this long after a refusal
_PRUNE_EVERY_MS: Final = 600_000
_HOUR_MS: Final = 3_600_000


@dataclass(frozen=True, slots=True)
class HostCardinality:
    """What the API shows of one host."""

    active_series: int
    max_series: int
    max_new_series_per_hour: int
    over_limit: bool
    rejected_series_total: int
    last_rejected_ms: int | None


@dataclass(slots=True)
class _Host:
    seen: dict[int, int]  # hash of (name, label values) -> last seen, ms
    allowance: float  # new series this host may still add
    refilled_ms: int
    rejected: int = 0
    last_rejected_ms: int | None = None


class SeriesLimits:
    """Admits or refuses the series of each batch; thread-safe (writer thread and API readers)."""

    def __init__(self, max_series: int, max_new_per_hour: int) -> None:
        self.max_series = max_series
        self.max_new_per_hour = max_new_per_hour
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()
        self._swept_ms = 0

    def admit(self, host: str, series: Iterable[tuple[str, tuple[str, ...]]],
              now_ms: int) -> dict[tuple[str, tuple[str, ...]], str]:
        """Mark ``series`` of ``host`` as seen at ``now_ms``; those refused, with their reason
        ("series_limit" or "new_series_limit")."""
        keys = {hash(key): key for key in series}
        return {keys[h]: reason for h, reason in self.admit_hashes(host, keys, now_ms).items()}

    def admit_hashes(self, host: str, hashes: Iterable[int], now_ms: int) -> dict[int, str]:
        """``admit`` for series given by a 64-bit hash each (ingest workers: ``examine.py``)."""
        refused: dict[int, str] = {}
        with self._lock:
            if now_ms - self._swept_ms >= _PRUNE_EVERY_MS:
                self._sweep(now_ms)
            state = self._hosts.get(host)
            if state is None:
                state = self._hosts[host] = _Host({}, float(self.max_series), now_ms)
            self._refill(state, now_ms)
            seen = state.seen
            for h in hashes:
                if h in seen:
                    seen[h] = now_ms
                elif len(seen) >= self.max_series:
                    refused[h] = "series_limit"
                elif state.allowance < 1:
                    refused[h] = "new_series_limit"
                else:
                    state.allowance -= 1
                    seen[h] = now_ms
            if refused:
                state.rejected += len(refused)
                state.last_rejected_ms = now_ms
        return refused

    def snapshot(self, now_ms: int) -> dict[str, HostCardinality]:
        with self._lock:
            return {host: HostCardinality(
                active_series=sum(1 for t in s.seen.values() if now_ms - t < ACTIVE_MS),
                max_series=self.max_series, max_new_series_per_hour=self.max_new_per_hour,
                over_limit=s.last_rejected_ms is not None
                and now_ms - s.last_rejected_ms < OVER_LIMIT_MS,
                rejected_series_total=s.rejected, last_rejected_ms=s.last_rejected_ms)
                for host, s in self._hosts.items()}

    @property
    def hosts_tracked(self) -> int:
        return len(self._hosts)

    def _refill(self, state: _Host, now_ms: int) -> None:
        elapsed = now_ms - state.refilled_ms
        if elapsed <= 0:
            return
        state.refilled_ms = now_ms
        if state.allowance < self.max_new_per_hour:
            state.allowance = min(float(self.max_new_per_hour),
                                  state.allowance + elapsed * self.max_new_per_hour / _HOUR_MS)

    def _sweep(self, now_ms: int) -> None:
        """Forget expired series; forget hosts with none left and no recent refusal."""
        self._swept_ms = now_ms
        cutoff = now_ms - ACTIVE_MS
        for host, state in list(self._hosts.items()):
            if any(t < cutoff for t in state.seen.values()):
                state.seen = {h: t for h, t in state.seen.items() if t >= cutoff}
            if not state.seen and (state.last_rejected_ms is None
                                   or now_ms - state.last_rejected_ms >= OVER_LIMIT_MS):
                del self._hosts[host]
