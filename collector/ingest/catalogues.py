"""The decoded series catalogues ingest resolves referencing batches with (SPEC.md §9).

A bounded cache in front of the storage's catalogue table (``load``; in an ingest worker
process there is none: the collector supplies a missing catalogue's stored message, ``take``):
at most ``MAX_CACHED_SERIES`` series over all hosts (least recently used go first), and at most
``MAX_HOST_SERIES`` of one host (its own least recently used go first: a host declaring many
large catalogues pushes out its own, not everyone else's); a miss reads the stored message and
decodes it again (a catalogue the storage no longer has is unknown: its batches are answered
``unknown_catalogue``). Keys are (host, id): a host can only ever reach its own catalogues.
Used from one thread only (the writer thread, or an ingest worker process's).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from edgemon.protocol import ProtocolError
from edgemon.protocol.catalogue import Catalogue, decode_catalogue

__all__ = ["MAX_CACHED_SERIES", "CatalogueCache", "read_stored"]

log = logging.getLogger("edgemon.collector.ingest.catalogues")

MAX_CACHED_SERIES = 500_000  # about 100 MB of decoded label values at worst
MAX_HOST_SERIES = 70_000  # one host's share: its largest valid catalogue (65,536 series) fits


class CatalogueCache:
    def __init__(self, load: Callable[[str, str], bytes | None] | None,
                 max_series: int = MAX_CACHED_SERIES,
                 max_host_series: int = MAX_HOST_SERIES) -> None:
        self.load = load  # (host, id) -> the stored catalogue message, or None
        self.max_series = max_series
        self.max_host_series = max_host_series
        self._cached: OrderedDict[tuple[str, str], Catalogue] = OrderedDict()
        self._series = 0
        self._host_series: dict[str, int] = {}
        self.misses = 0

    def put(self, catalogue: Catalogue) -> None:
        host = catalogue.host
        key = (host, catalogue.id)
        self._drop(key)
        self._cached[key] = catalogue
        self._series += len(catalogue.series)
        self._host_series[host] = self._host_series.get(host, 0) + len(catalogue.series)
        if self._host_series[host] > self.max_host_series:
            for other in [k for k in self._cached if k[0] == host and k != key]:
                self._drop(other)
                if self._host_series[host] <= self.max_host_series:
                    break
        while self._series > self.max_series and len(self._cached) > 1:
            self._drop(next(iter(self._cached)))

    def _drop(self, key: tuple[str, str]) -> None:
        gone = self._cached.pop(key, None)
        if gone is not None:
            self._series -= len(gone.series)
            left = self._host_series[key[0]] - len(gone.series)
            if left:
                self._host_series[key[0]] = left
            else:
                del self._host_series[key[0]]

    def cached(self, host: str, ident: str) -> Catalogue | None:
        """``host``'s catalogue ``ident`` if it is in the cache."""
        found = self._cached.get((host, ident))
        if found is not None:
            self._cached.move_to_end((host, ident))
        return found

    def get(self, host: str, ident: str) -> Catalogue | None:
        """``host``'s catalogue ``ident``, or None if the storage does not keep it."""
        found = self.cached(host, ident)
        if found is not None or self.load is None:
            return found
        self.misses += 1
        return self.take(host, ident, read_stored(self.load, host, ident))

    def take(self, host: str, ident: str, payload: bytes | None) -> Catalogue | None:
        """Cache ``host``'s catalogue ``ident`` from its stored message (None: not stored)."""
        if payload is None:
            return None
        try:
            catalogue = decode_catalogue(payload)
        except ProtocolError:  # it was checked when stored: a damaged row is an unknown one
            log.error("stored catalogue %s of %s does not decode", ident, host)
            return None
        if catalogue.host != host or catalogue.id != ident:
            return None
        self.put(catalogue)
        return catalogue


def read_stored(load: Callable[..., bytes | None], *key: object) -> bytes | None:
    """``load(*key)``: a stored catalogue or batch a message refers to; None when the storage
    does not have it or cannot read it now (then the message's referent is unknown: its agent
    re-sends it inline, nothing is lost)."""
    try:
        return load(*key)
    except Exception:
        log.exception("could not read %s %r from the storage",
                      getattr(load, "__name__", "a stored message"), key)
        return None
