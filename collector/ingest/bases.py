"""The last values of each agent instance's newest batch: what a based batch goes on from
(protocol SPEC.md §9.1).

Every batch the pipeline decodes (inline or resolved, before any series is screened out: what
the agent sent) leaves the last value of each of its series here, under (host, instance), the
newest seq of an instance only. A based batch names its base by seq; a miss (a collector that
restarted, an instance pushed out, another collector of a shared group that saw the base) reads
the stored batch back from the storage while it is still pending. Either way the batch's check
decides: values that are not the ones the agent built on (a base stored with series screened
out) make the batch ``unknown_base``, and the agent sends it again inline. Nothing here is
needed for a stored batch to be read: batches are stored resolved.

Bounded: at most ``MAX_CACHED_SERIES`` series over all instances (least recently used go first),
and at most ``MAX_HOST_SERIES`` of one host's instances (its own least recently used go first: a
host inventing instances pushes out its own bases, never everyone else's, whose based batches
would then each cost a read of the store).
One per examiner (``examine.py``): the writer thread's, or each ingest worker process's, which
sees every batch of the hosts routed to it (``workers.py``). ``load(host, instance, seq)`` reads
a stored batch (the storage, in-process); without it (a worker) a miss raises ``NeedBase`` and
the collector supplies the stored batch with the next try (``supplied``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from edgemon.collector.ingest.catalogues import read_stored
from edgemon.collector.ingest.host_lru import HostBoundedLRU
from edgemon.protocol import ProtocolError, decode_batch
from edgemon.protocol.base import base_values, last_values

if TYPE_CHECKING:
    from edgemon.protocol.catalogue import Catalogue

__all__ = ["MAX_CACHED_SERIES", "BaseCache", "NeedBase"]

log = logging.getLogger("edgemon.collector.ingest.bases")

MAX_CACHED_SERIES = 200_000  # about 40 MB of keys and values at worst
MAX_HOST_SERIES = 70_000  # one host's share: its largest valid batch (65,536 series) fits

Lasts = dict[tuple[str, tuple[str, ...]], int]
BaseKey = tuple[str, str, int]  # host, instance, seq


class NeedBase(Exception):
    """A worker's cache lacks a base: the collector reads it from the storage and asks again."""

    def __init__(self, key: BaseKey) -> None:
        super().__init__(*key)
        self.key = key


class BaseCache:
    def __init__(self, load: Callable[[str, str, int], bytes | None] | None = None,
                 max_series: int = MAX_CACHED_SERIES,
                 max_host_series: int = MAX_HOST_SERIES) -> None:
        self.load = load
        self._cached: HostBoundedLRU[tuple[int, Lasts]] = HostBoundedLRU(max_series,
                                                                         max_host_series)
        self.misses = 0
        self.storage_reads = 0

    def put(self, host: str, instance: str, seq: int, metrics: list[list[object]]) -> None:
        """Remember the last values of a decoded batch's ``metrics`` if it is the newest of its
        instance seen here."""
        key = (host, instance)
        held = self._cached.get(key)
        if held is not None and held[0] >= seq:
            return
        lasts = last_values(metrics)  # type: ignore[arg-type]
        self._cached.put(key, (seq, lasts), len(lasts))

    def lookup(self, host: str, instance: str, seq: int, catalogue: Catalogue,
               supplied: Mapping[BaseKey, bytes | None] | None = None) -> list[int] | None:
        """The last value in batch ``seq`` of ``host``'s ``instance`` of every series of
        ``catalogue`` (0 where that batch has none), or None if neither this cache nor the
        storage has that batch (``NeedBase`` if it must be asked for: no ``load``)."""
        held = self._cached.get((host, instance))
        if held is not None and held[0] == seq:
            self._cached.hit((host, instance))
            lasts = held[1]
        else:
            key = (host, instance, seq)
            if supplied is not None and key in supplied:
                payload = supplied[key]
            elif self.load is None:
                raise NeedBase(key)
            else:
                payload = read_stored(self.load, *key)
            self.misses += 1
            found = None if payload is None else self._lasts(key, payload)
            if found is None:
                return None
            lasts = found
        return base_values(lasts, catalogue)

    def _lasts(self, key: BaseKey, payload: bytes) -> Lasts | None:
        host, instance, seq = key
        self.storage_reads += 1
        try:
            return last_values(decode_batch(payload).metrics)
        except ProtocolError:  # it was checked when stored: a damaged row is an unknown one
            log.error("stored batch %s/%s of %s does not decode", instance, seq, host)
            return None

