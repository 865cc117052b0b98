"""Per-series alert state as numpy columns, and the vectorised state machine.

One ``SeriesTable`` per rule holds a row per (host, labels) series ever evaluated::

    inactive --condition--> pending --held for `for`--> firing --clear held for
    keep_firing_for--> resolved (= inactive again); pending --condition gone--> inactive

``advance`` applies one evaluation instant to many rows at once. Times are sample times
(ms since the epoch), never the wall clock, except where a rule is about absence of data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "FIRING",
    "INACTIVE",
    "PENDING",
    "STATUS",
    "RawTransition",
    "SeriesTable",
    "advance",
    "expire_stale",
    "series_key",
]

INACTIVE, PENDING, FIRING = 0, 1, 2
STATUS = ("inactive", "pending", "firing")
NONE = np.int64(-1)  # "no time" in the int64 time columns

_I64 = ("active_since", "fired_at", "clearing_since", "wm", "last_data", "ewma_n")
_F64 = ("value", "ewma_mean", "ewma_var")


def series_key(host: str, labels: dict[str, str]) -> str:
    """``web-01`` or ``web-01{device="sda1",mount="/"}`` (labels sorted): stable and readable."""
    if not labels:
        return host
    return host + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class RawTransition(NamedTuple):
    row: int
    frm: int  # INACTIVE / PENDING / FIRING
    to: int
    at_ms: int  # the sample time it happened at
    value: float
    reason: str = ""  # "", "no data", "rule removed", ...


@dataclass
class SeriesTable:
    """Columns indexed by row; ``index`` maps a series key to its row."""

    keys: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    labels: list[dict[str, str]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    notified: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    active_since: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fired_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    clearing_since: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    wm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # newest eval time
    last_data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ewma_n: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    value: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    ewma_mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    ewma_var: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # the last K step values of each series (regression rules), slot = step number % K
    ring_t: np.ndarray | None = None  # int64 [capacity, K] step starts, -1 = empty
    ring_v: np.ndarray | None = None  # float64 [capacity, K]
    raw_index: dict[Any, int] = field(default_factory=dict)  # storage's label order -> row
    _last_hosts: list[str] | None = None
    _last_labels: list[dict[str, str]] | None = None
    _last_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def copy(self) -> SeriesTable:
        """An independent copy (lists and arrays; the label dicts are shared, never mutated)."""
        out = SeriesTable(list(self.keys), list(self.hosts), list(self.labels), dict(self.index))
        for name in ("status", "notified", *_I64, *_F64):
            setattr(out, name, getattr(self, name).copy())
        if self.ring_t is not None and self.ring_v is not None:
            out.ring_t, out.ring_v = self.ring_t.copy(), self.ring_v.copy()
        out.raw_index = dict(self.raw_index)
        out._last_hosts, out._last_labels = self._last_hosts, self._last_labels
        out._last_rows = self._last_rows
        return out

    def baselines(self) -> dict[str, Any]:
        """The EWMA baselines of every row as plain data (JSON), for ``restore_baselines``."""
        n = len(self)
        return {"keys": self.keys, "hosts": self.hosts, "labels": self.labels,
                "wm": self.wm[:n].tolist(), "n": self.ewma_n[:n].tolist(),
                "mean": self.ewma_mean[:n].tolist(), "var": self.ewma_var[:n].tolist()}

    def restore_baselines(self, saved: dict[str, Any]) -> None:
        """Add the rows of ``baselines()`` output (after a restart)."""
        for i, key in enumerate(saved.get("keys", [])):
            row = self.add(key, saved["hosts"][i], saved["labels"][i], int(saved["wm"][i]))
            self.ewma_n[row] = saved["n"][i]
            self.ewma_mean[row] = saved["mean"][i]
            self.ewma_var[row] = saved["var"][i]
            self.last_data[row] = int(saved["wm"][i])

    def ensure_ring(self, k: int) -> None:
        """Give every row a ring of ``k`` step slots (emptied if ``k`` changed)."""
        cap = self.status.size
        if self.ring_t is None or self.ring_t.shape[1] != k or self.ring_t.shape[0] < cap:
            t = np.full((cap, k), -1, dtype=np.int64)
            v = np.full((cap, k), np.nan)
            if self.ring_t is not None and self.ring_v is not None \
                    and self.ring_t.shape[1] == k:
                t[: self.ring_t.shape[0]] = self.ring_t
                v[: self.ring_v.shape[0]] = self.ring_v
            self.ring_t, self.ring_v = t, v

    def _grow(self, n: int) -> None:
        old = self.status.size
        if n <= old:
            return
        size = max(n, old * 2, 64)

        def grown(a: np.ndarray, fill: float | int | bool) -> np.ndarray:
            b = np.full(size, fill, dtype=a.dtype)
            b[:old] = a
            return b

        self.status = grown(self.status, INACTIVE)
        self.notified = grown(self.notified, False)
        for name in _I64:
            setattr(self, name, grown(getattr(self, name), 0 if name == "ewma_n" else NONE))
        for name in _F64:
            setattr(self, name, grown(getattr(self, name), np.nan if name == "value" else 0.0))
        if self.ring_t is not None:
            self.ensure_ring(self.ring_t.shape[1])

    def view(self) -> SeriesTable:
        """Arrays trimmed to the used rows (capacity hidden)."""
        n = len(self.keys)
        out = SeriesTable(self.keys, self.hosts, self.labels, self.index)
        for name in ("status", "notified", *_I64, *_F64):
            setattr(out, name, getattr(self, name)[:n])
        return out

    def add(self, key: str, host: str, labels: dict[str, str], wm: int = -1) -> int:
        row = self.index.get(key)
        if row is not None:
            return row
        row = len(self.keys)
        self._grow(row + 1)
        self.keys.append(key)
        self.hosts.append(host)
        self.labels.append(labels)
        self.index[key] = row
        self.wm[row] = wm
        return row

    def rows(self, hosts: list[str], labels: list[dict[str, str]], wm: int = -1) -> np.ndarray:
        """Rows of these series (host, labels), adding new ones with watermark ``wm``.

        Fast path: the storage usually lists the same series in the same order every cycle;
        two list comparisons (in C) then replace a dictionary lookup per series."""
        if hosts == self._last_hosts and labels == self._last_labels:
            return self._last_rows.copy()
        raw = self.raw_index
        out = np.empty(len(hosts), dtype=np.int64)
        for i, (host, lb) in enumerate(zip(hosts, labels, strict=True)):
            key = (host, *lb, *lb.values())  # label order as the storage gives it
            row = raw.get(key)
            if row is None:
                row = self.add(series_key(host, lb), host, lb, wm)
                raw[key] = row
            out[i] = row
        self._last_hosts, self._last_labels, self._last_rows = hosts, labels, out.copy()
        return out

    def active_rows(self) -> np.ndarray:
        return np.flatnonzero(self.status[: len(self.keys)] != INACTIVE)


def advance(table: SeriesTable, rows: np.ndarray, t: np.ndarray | int, trigger: np.ndarray,
            clear: np.ndarray, value: np.ndarray, for_ms: int, keep_ms: int,
            ) -> list[RawTransition]:
    """Apply one evaluation to ``rows`` (distinct) at sample time(s) ``t``; mutates ``table``.

    ``trigger``: the firing condition holds; ``clear``: the (hysteresis) clear condition holds.
    A row that becomes pending and already satisfies ``for`` (``for`` = 0) fires at once and
    yields one transition inactive -> firing.
    """
    if rows.size == 0:
        return []
    t = np.broadcast_to(np.asarray(t, dtype=np.int64), rows.shape)
    value = np.asarray(value, dtype=np.float64)
    before = table.status[rows].copy()
    status = before.copy()

    start = (before == INACTIVE) & trigger
    table.active_since[rows[start]] = t[start]
    status[start] = PENDING

    pending = status == PENDING
    since = table.active_since[rows]
    fire = pending & trigger & (t - since >= for_ms)
    cancel = pending & ~trigger
    status[fire] = FIRING
    status[cancel] = INACTIVE
    table.fired_at[rows[fire]] = t[fire]
    table.clearing_since[rows[fire]] = NONE
    table.active_since[rows[cancel]] = NONE

    was_firing = before == FIRING
    clearing = was_firing & clear
    holding = was_firing & ~clear
    table.clearing_since[rows[holding]] = NONE
    cs = table.clearing_since[rows]
    begin = clearing & (cs == NONE)
    cs = np.where(begin, t, cs)
    table.clearing_since[rows[begin]] = t[begin]
    resolve = clearing & (t - cs >= keep_ms)
    status[resolve] = INACTIVE
    done = rows[resolve]
    table.active_since[done] = NONE
    table.clearing_since[done] = NONE

    table.status[rows] = status
    table.value[rows] = value
    changed = np.flatnonzero(status != before)
    out: list[RawTransition] = []
    for i in changed.tolist():
        frm, to = int(before[i]), int(status[i])
        out.append(RawTransition(int(rows[i]), frm, to, int(t[i]), float(value[i])))
    return out


def expire_stale(table: SeriesTable, now_ms: int, stale_ms: int) -> list[RawTransition]:
    """Active rows whose newest data is older than ``stale_ms``: pending ones go inactive,
    firing ones resolve (reason "no data"), at ``now_ms``. Mutates ``table``."""
    n = len(table.keys)
    status = table.status[:n]
    last = table.last_data[:n]
    rows = np.flatnonzero((status != INACTIVE) & (last >= 0) & (now_ms - last > stale_ms))
    out = []
    for row in rows.tolist():
        out.append(RawTransition(row, int(status[row]), INACTIVE, now_ms,
                                 float(table.value[row]), "no data"))
    table.status[rows] = INACTIVE
    table.active_since[rows] = NONE
    table.clearing_since[rows] = NONE
    return out
