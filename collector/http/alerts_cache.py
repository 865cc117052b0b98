"""What the alert endpoints build from the alert state, kept until that state changes.

With every host of a site down, each refresh of the alerts page or of Prometheus'
``/api/v1/alerts`` read and converted 10,000 rows. Here a value is built once and served again
while both hold:

* the store committed no write transaction since (``AlertStore.writes``, bumped after each
  commit and read here before building: a write that commits meanwhile makes the next reader
  build again, it is never hidden behind an older count);
* the clock has not reached the next start or end of a silence (an alert's ``silenced_by``
  changes with the clock alone), nor gone back.

A shared store (PostgreSQL: other collectors write it) is read every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["AlertStateCache", "state_cache"]

T = TypeVar("T")
Build = Callable[[int, list[dict[str, Any]]], T]  # (now_ms, the silences not yet ended)
_FOREVER = 2**63 - 1


@dataclass(frozen=True)
class _Entry:
    writes: int
    since_ms: int
    until_ms: int
    value: Any


class AlertStateCache:
    """Values by key (at most ``size``), each built by ``build(now_ms, silences)``."""

    def __init__(self, engine: Any, size: int = 32) -> None:
        self.engine = engine
        self.size = size
        self.builds = 0  # how many times a value was built (tests, diagnostics)
        self._entries: OrderedDict[Any, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, build: Build[T]) -> T:
        """The value of ``key``: kept, or built now (blocking: reads the store)."""
        store = self.engine.store
        writes = store.writes  # before reading anything
        now = self.engine.clock_ms()
        if not store.shared:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.writes == writes and \
                        entry.since_ms <= now < entry.until_ms:
                    self._entries.move_to_end(key)
                    return entry.value  # type: ignore[no-any-return]
        silences = store.silences(now)
        value = build(now, silences)
        self.builds += 1
        if store.shared:
            return value
        until = min([s["starts_ms"] for s in silences if s["starts_ms"] > now] +
                    [s["ends_ms"] for s in silences if s["ends_ms"] > now], default=_FOREVER)
        with self._lock:
            self._entries[key] = _Entry(writes, now, until, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


_CACHES_LOCK = threading.Lock()
_ATTRIBUTE = "_alert_state_cache"


def state_cache(engine: Any) -> AlertStateCache:
    """The one cache of ``engine`` (the alerting API, Prometheus' API and the dashboard share
    it), kept on the engine itself: it goes when the engine goes."""
    with _CACHES_LOCK:
        cache: AlertStateCache | None = getattr(engine, _ATTRIBUTE, None)
        if cache is None:
            cache = AlertStateCache(engine)
            setattr(engine, _ATTRIBUTE, cache)
        return cache
