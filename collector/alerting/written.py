"""Which alert rows an evaluation cycle writes: ``WrittenRows`` remembers, for one rule, when
each row of its ``SeriesTable`` was last written to the store and whether its value, watermark
or last data time moved since.

A row is written in the cycle that changes what must be current in the store (a new or
resolved alert, status, timers, ``notified``; every row under a new rule object, i.e. after a
reload or a restore, as labels, fingerprint and annotations may differ; a row that jumped over
a hole, so that a restart does not find that hole again). A row whose only news is its value,
watermark or last data time is written at most every ``ALERT_REFRESH_MS``: readers of the store
see those up to that (plus a cycle) old. ``collector/alerting/README.md`` says what follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemon.collector.alerting.state import SeriesTable

__all__ = ["ALERT_REFRESH_MS", "WrittenRows"]

ALERT_REFRESH_MS = 60_000
_STATE = ("status", "notified", "active_since", "fired_at", "clearing_since")


@dataclass
class WrittenRows:
    """What the store holds of one rule's rows (by row of its ``SeriesTable``)."""

    written_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # -1: never
    lagging: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # moved since
    rule: Any = None  # the rule object the rows were written under
    _writing: np.ndarray | None = None  # rows the cycle being committed writes
    _moved: np.ndarray | None = None  # rows whose value, watermark or last data time moved

    def due(self, rule: Any, before: SeriesTable, table: SeriesTable, now: int,
            hole_keys: Iterable[str], *, moves_at_once: bool = False) -> np.ndarray:
        """Which rows of ``table`` (the cycle's state; ``before``: the committed one) the store
        must get now. ``moves_at_once``: a moved value, watermark or last data time is due at
        once, not after ``ALERT_REFRESH_MS``."""
        n = len(table)
        due = np.ones(n, dtype=bool)
        self._moved = None
        if self.rule is not rule:
            return due
        m = min(len(before), n)
        written = _fit(self.written_ms, m, -1)
        moved = ((table.wm[:m] != before.wm[:m]) | (table.last_data[:m] != before.last_data[:m])
                 | ~((table.value[:m] == before.value[:m])
                     | (np.isnan(table.value[:m]) & np.isnan(before.value[:m]))))
        self._moved = np.flatnonzero(moved)
        changed = (written < 0) | ((_fit(self.lagging, m, False) | moved)
                                   & (now - written >= ALERT_REFRESH_MS))
        if moves_at_once:
            changed |= moved
        for name in _STATE:
            changed |= getattr(table, name)[:m] != getattr(before, name)[:m]
        due[:m] = changed
        for key in hole_keys:
            row = table.index.get(key)
            if row is not None:
                due[row] = True
        return due

    def writing(self, rows: np.ndarray) -> None:
        """The rows the cycle hands to the store (known as written once committed)."""
        self._writing = rows

    def committed(self, rule: Any, rows: int, now: int) -> None:
        """After the cycle's commit (``rows``: the table's length)."""
        self.written_ms = _fit(self.written_ms, rows, -1)
        self.lagging = _fit(self.lagging, rows, False)
        if self._moved is not None:
            self.lagging[self._moved] = True
        if self._writing is not None:
            self.written_ms[self._writing] = now
            self.lagging[self._writing] = False
        self._writing = self._moved = None
        self.rule = rule


def _fit(a: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """``a`` cut or padded with ``fill`` to length ``n`` (a copy when padded)."""
    if a.size >= n:
        return a[:n] if a.size > n else a
    out = np.full(n, fill, dtype=a.dtype)
    out[:a.size] = a
    return out
