"""The decoded series catalogues ingest resolves referencing batches with (SPEC.md §9).

A bounded cache in front of the storage's catalogue table: at most ``MAX_CACHED_SERIES`` series
over all hosts (least recently used go first); a miss reads the stored message and decodes it
again (a catalogue the storage no longer has is unknown: its batches are answered
``unknown_catalogue``). Keys are (host, id): a host can only ever reach its own catalogues.
Used from the writer thread only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from edgemon.collector.storage.base import Storage
from edgemon.protocol import ProtocolError
from edgemon.protocol.catalogue import Catalogue, decode_catalogue

__all__ = ["MAX_CACHED_SERIES", "CatalogueCache"]

log = logging.getLogger("edgemon.collector.ingest.catalogues")

MAX_CACHED_SERIES = 500_000  # about 100 MB of decoded label values at worst


class CatalogueCache:
    def __init__(self, storage: Storage, max_series: int = MAX_CACHED_SERIES) -> None:
        self.storage = storage
        self.max_series = max_series
        self._cached: OrderedDict[tuple[str, str], Catalogue] = OrderedDict()
        self._series = 0
        self.misses = 0

    def put(self, catalogue: Catalogue) -> None:
        key = (catalogue.host, catalogue.id)
        old = self._cached.pop(key, None)
        if old is not None:
            self._series -= len(old.series)
        self._cached[key] = catalogue
        self._series += len(catalogue.series)
        while self._series > self.max_series and len(self._cached) > 1:
            _, gone = self._cached.popitem(last=False)
            self._series -= len(gone.series)

    def get(self, host: str, ident: str) -> Catalogue | None:
        """``host``'s catalogue ``ident``, or None if the storage does not keep it."""
        found = self._cached.get((host, ident))
        if found is not None:
            self._cached.move_to_end((host, ident))
            return found
        self.misses += 1
        try:
            payload = self.storage.catalogue(host, ident)
        except Exception:  # unknown then: the agent re-sends inline, nothing is lost
            log.exception("could not read catalogue %s of %s", ident, host)
            return None
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
