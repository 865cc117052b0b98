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
from collections.abc import Callable

from edgemon.collector.ingest.host_lru import HostBoundedLRU
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
        self._cached: HostBoundedLRU[Catalogue] = HostBoundedLRU(max_series, max_host_series)
        self.misses = 0

    def put(self, catalogue: Catalogue) -> None:
        self._cached.put((catalogue.host, catalogue.id), catalogue, len(catalogue.series))

    def cached(self, host: str, ident: str) -> Catalogue | None:
        """``host``'s catalogue ``ident`` if it is in the cache."""
        return self._cached.hit((host, ident))

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
