"""A least-recently-used map keyed by (host, name) with two bounds on the summed entry sizes:
over all hosts, and per host. A host over its own share pushes out its own oldest entries first,
so one host cannot push out everyone else's (the catalogue and base caches, SPEC.md §6)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["HostBoundedLRU"]

V = TypeVar("V")
Key = tuple[str, str]


class HostBoundedLRU(Generic[V]):
    def __init__(self, max_size: int, max_host_size: int) -> None:
        self.max_size = max_size
        self.max_host_size = max_host_size
        self._entries: OrderedDict[Key, tuple[V, int]] = OrderedDict()
        self.size = 0
        self._host_size: dict[str, int] = {}
        self._host_keys: dict[str, OrderedDict[Key, None]] = {}  # each host's, oldest first

    def get(self, key: Key) -> V | None:
        """The value under ``key`` (its place in the order unchanged), or None."""
        held = self._entries.get(key)
        return None if held is None else held[0]

    def hit(self, key: Key) -> V | None:
        """The value under ``key``, now the most recently used, or None."""
        held = self._entries.get(key)
        if held is None:
            return None
        self._entries.move_to_end(key)
        self._host_keys[key[0]].move_to_end(key)
        return held[0]

    def put(self, key: Key, value: V, size: int) -> None:
        """Keep ``value`` (counted as ``size``) under ``key``, then push out the least recently
        used: the host's own while it is over its share, anyone's while all are over."""
        host = key[0]
        self.drop(key)
        self._entries[key] = (value, size)
        self.size += size
        self._host_size[host] = self._host_size.get(host, 0) + size
        own = self._host_keys.setdefault(host, OrderedDict())
        own[key] = None
        while self._host_size[host] > self.max_host_size and len(own) > 1:
            self.drop(next(iter(own)))  # the host's own least recently used, never ``key``
        while self.size > self.max_size and len(self._entries) > 1:
            self.drop(next(iter(self._entries)))

    def drop(self, key: Key) -> None:
        gone = self._entries.pop(key, None)
        if gone is None:
            return
        self.size -= gone[1]
        host = key[0]
        own = self._host_keys[host]
        del own[key]
        if own:
            self._host_size[host] -= gone[1]
        else:
            del self._host_size[host], self._host_keys[host]

    def clear(self) -> None:
        self._entries.clear()
        self._host_size.clear()
        self._host_keys.clear()
        self.size = 0

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
