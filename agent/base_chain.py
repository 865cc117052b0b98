"""Whether the buffer's next sealed batch may go on from the one before it (protocol SPEC.md
§9.1, ``BUFFER.md`` "Bases"): the chain's state, in memory only (a restart is a new instance,
whose first batch has no base).

The newest sealed batch of this instance is remembered with its last values; the next batch is
sealed based on it once a collector that resolves bases acknowledged it. Refused as
``unknown_base``, the next batches go without a base for a while (1, 2, 4 ... 64 batches), and
the pause starts again from 1 once a collector acknowledged a based batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edgemon.protocol.base import SeriesKey, last_values, rebase

__all__ = ["BaseChain"]

PENDING_WINDOW = 4096  # based seqs remembered while their outcome is not known


class BaseChain:
    """The base chain of one agent instance (``Buffer`` owns one)."""

    def __init__(self) -> None:
        # the newest sealed batch: its seq, its last values, and whether a collector that
        # resolves bases acknowledged it
        self._newest: tuple[int, dict[SeriesKey, int], bool] | None = None
        self._pause = 0  # batches still sealed without a base after an unknown_base
        self._unknown = 0  # unknown_base answers since a based batch was last stored
        self._pending: set[int] = set()  # seqs sealed based whose outcome is not known yet

    def sealed(self, seq: int, inline_metrics: list[list[Any]]) -> None:
        """Batch ``seq`` was encoded (``inline_metrics``: its inline form's): the next may go
        on from it once it is acknowledged."""
        self._newest = (seq, last_values(inline_metrics), False)

    def based(self, referencing: dict[str, Any], metrics: list[list[Any]], seq: int
              ) -> dict[str, Any]:
        """The referencing batch ``seq`` going on from the batch before it when a collector
        that resolves bases acknowledged that one, else ``referencing`` as it is."""
        if self._pause > 0:
            self._pause -= 1
            return referencing
        if self._newest is None or self._newest[0] != seq - 1 or not self._newest[2]:
            return referencing
        based = rebase(referencing, metrics, self._newest[1], seq - 1)
        if based is None:
            return referencing
        self._pending = {s for s in self._pending if s > seq - PENDING_WINDOW}
        self._pending.add(seq)
        return based

    def acked(self, ranges: Iterable[tuple[int, int]]) -> None:
        """A collector that resolves bases stored these batches (inclusive seq ranges)."""
        ranges = list(ranges)
        if self._newest is not None and any(first <= self._newest[0] <= last
                                            for first, last in ranges):
            self._newest = (self._newest[0], self._newest[1], True)
        resolved = {s for s in self._pending if any(a <= s <= b for a, b in ranges)}
        if resolved:  # the collector resolved a based batch: an unknown_base was a passing thing
            self._pending -= resolved
            self._unknown = 0

    def refused(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The collector lacks bases (``unknown_base`` for these ranges): none for a while."""
        ranges = list(ranges)
        self._unknown += 1
        self._pause = 2 ** min(self._unknown - 1, 6)
        self._pending = {s for s in self._pending if not any(a <= s <= b for a, b in ranges)}
