"""Decoded blobs for the read path: an LRU keyed by the stored bytes, bounded in bytes.

Queries decode the same chunks, block timestamps and rollup rows again and again (a dashboard
refreshes every few seconds; Grafana sends its panels' queries together). ``DecodedCache`` keeps
what a blob decodes to, keyed by the blob itself (plus what else its decoding depends on: a
chunk's block timestamps, a rollup row's bucket width). Nothing needs invalidating: a compaction
that rewrites a window, late data that changes a block, retention that deletes rows all produce
different bytes (or no row at all), so a stale entry can never be hit; it just ages out. A hit
costs reading the blob from the database and hashing it, not decompressing and decoding it.

Only readers use it; compaction decodes what it rewrites once and does not fill the cache.
Thread-safe; the cached arrays are shared between readers and must not be written to.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

__all__ = ["DecodedCache", "size_of"]


def size_of(key: Any, value: Any) -> int:
    """Bytes an entry holds: its key's bytes and its arrays (with a small overhead each)."""
    size = 64
    for part in key if isinstance(key, tuple) else (key,):
        if isinstance(part, bytes | bytearray | memoryview):
            size += len(part)
    items = value.values() if isinstance(value, dict) else (
        value if isinstance(value, tuple) else (value,))
    for item in items:
        if isinstance(item, np.ndarray):
            size += item.nbytes + 112
    return size


class DecodedCache:
    """Least recently used entries first out, at most ``max_bytes`` (0: nothing is kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = size_of(key, value)
        if size > self.max_bytes // 4:  # one huge entry would flush everything else
            return
        _freeze(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._entries[key] = (value, size)
            self.used += size
            while self.used > self.max_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.used -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries)


def _freeze(value: Any) -> None:
    """Cached arrays are shared: make accidental writes fail loudly instead of corrupting."""
    items = value.values() if isinstance(value, dict) else (
        value if isinstance(value, tuple) else (value,))
    for item in items:
        if isinstance(item, np.ndarray):
            item.flags.writeable = False
