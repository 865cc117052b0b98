"""The fleet at a glance: every host's state and current figures, kept in memory.

Asking storage for "the newest CPU, memory, disk and network figures of 10,000 hosts" costs
seconds (a query per metric over every host's recent samples), far too slow for a page that
refreshes every few seconds. So the collector keeps those figures up to date as batches are
stored (``FleetState.observe``, called by ``ObservedStorage`` in the writer thread: a few
microseconds per batch), fills them from storage once at start (``seed``, in small slices of
hosts on the read pool), and the summary endpoint only sorts, filters and slices a snapshot of
them (``FleetView``), rebuilt at most once a second.

What a row holds (``None`` where a host has not sent the metric):

- state: ``offline`` (its agent said goodbye, or its Last Will was published), ``stale``
  (online by birth/death messages, but no batch for ``stale_after_ms``), or ``online``;
- cpu: ``cpu_usage_percent{cpu="total"}``; memory: ``memory_usage_percent``; disk: the fullest
  mount's ``disk_usage_percent`` (and that mount); network: the sum over interfaces of the
  received and sent byte rates, from the last two samples of each counter;
- agent health: ``agent_buffer_samples`` (back-log), dropped samples (``agent_dropped_samples_
  total`` minus those delivered later), the clock offset storage measured on live batches;
- firing alerts, from the alert engine.

Everything a host sends is bounded here too: at most ``MAX_LABELLED`` mounts and interfaces per
host are tracked, so a host sending thousands of label values costs only its own rows.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from edgemon.collector.storage.base import HostInfo, IngestItem, RangeQuery, Storage, StoreResult

__all__ = [
    "COLUMNS",
    "STATES",
    "FleetState",
    "FleetView",
    "ObservedStorage",
    "filter_rows",
]

STALE_AFTER_MS = 180_000  # three batch periods of an agent with the default settings
RATE_HORIZON_MS = 300_000  # a mount or interface not reported for this long no longer counts
MAX_LABELLED = 64
STATES = ("online", "stale", "offline")

CPU = "cpu_usage_percent"
MEMORY = "memory_usage_percent"
DISK = "disk_usage_percent"
NET_RX = "network_received_bytes_total"
NET_TX = "network_sent_bytes_total"
BACKLOG = "agent_buffer_samples"
DROPPED = "agent_dropped_samples_total"
DELIVERED = "agent_dropped_then_delivered_samples_total"
WATCHED = frozenset({CPU, MEMORY, DISK, NET_RX, NET_TX, BACKLOG, DROPPED, DELIVERED})
_SINGLE = {MEMORY: "memory", BACKLOG: "backlog", DROPPED: "dropped", DELIVERED: "delivered"}

# Sortable and filterable columns of a row: name -> kind ("text" or "number").
COLUMNS: dict[str, str] = {
    "host": "text", "state": "text", "last_seen_ms": "number", "newest_sample_ms": "number",
    "cpu_percent": "number", "memory_percent": "number", "disk_percent": "number",
    "net_bytes_per_s": "number", "alerts_firing": "number", "backlog_samples": "number",
    "dropped_samples": "number", "clock_offset_ms": "number",
}

Reading = tuple[int, float]  # (sample time ms, value)


@dataclass(slots=True)
class _Counter:
    ts: int
    value: float | None  # None: seeded from a stored rate, no raw value yet
    rate: float | None


@dataclass(slots=True)
class HostFigures:
    """The newest figures of one host (mutated under ``FleetState``'s lock only)."""

    cpu: Reading | None = None
    memory: Reading | None = None
    backlog: Reading | None = None
    dropped: Reading | None = None
    delivered: Reading | None = None
    disks: dict[str, Reading] = field(default_factory=dict)
    net: dict[tuple[str, str], _Counter] = field(default_factory=dict)
    newest_ms: int | None = None  # newest sample time of any metric
    received_ms: int | None = None  # newest batch stored (receive time)


def _newer(old: Reading | None, ts: int) -> bool:
    return old is None or ts > old[0]


class FleetState:
    """Current figures per host, updated from stored batches and seeded from storage."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostFigures] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change
        self.listeners: list[Callable[[str, int | None, int], None]] = []

    def figures(self, host: str) -> HostFigures | None:
        return self._hosts.get(host)

    def copy(self) -> dict[str, HostFigures]:
        with self._lock:
            return {h: HostFigures(f.cpu, f.memory, f.backlog, f.dropped, f.delivered,
                                   dict(f.disks), dict(f.net), f.newest_ms, f.received_ms)
                    for h, f in self._hosts.items()}

    # --- from stored batches (writer thread) --------------------------------------------------

    def observe(self, items: Sequence[IngestItem], results: Sequence[StoreResult]) -> None:
        """Take the watched metrics' newest values from batches just stored."""
        changed: dict[str, tuple[int | None, int]] = {}
        with self._lock:
            for item, result in zip(items, results, strict=False):
                if not result.stored:
                    continue
                batch = item.batch
                fig = self._hosts.get(batch.host)
                if fig is None:
                    fig = self._hosts[batch.host] = HostFigures()
                times = list(accumulate(batch.t))
                for name, _kind, _unit, scale, keys, entries in batch.metrics:
                    if name in WATCHED:
                        self._take(fig, name, 10.0 ** -scale, keys, entries, times)
                if fig.newest_ms is None or times[-1] > fig.newest_ms:
                    fig.newest_ms = times[-1]
                fig.received_ms = max(fig.received_ms or 0, item.received_ms)
                changed[batch.host] = (fig.newest_ms, fig.received_ms)
            if changed:
                self.version += 1
        for host, (newest, received) in changed.items():
            for listener in self.listeners:
                listener(host, newest, received)

    def _take(self, fig: HostFigures, name: str, factor: float, keys: list[str],
              entries: list[Any], times: list[int]) -> None:
        for labels, offset, deltas in entries:
            ts = times[offset + len(deltas) - 1]
            value = sum(deltas) * factor
            if name == CPU:
                if dict(zip(keys, labels, strict=False)).get("cpu") == "total" and \
                        _newer(fig.cpu, ts):
                    fig.cpu = (ts, value)
            elif name == DISK:
                mount = dict(zip(keys, labels, strict=False)).get("mount", "")
                if (mount in fig.disks or len(fig.disks) < MAX_LABELLED) and \
                        _newer(fig.disks.get(mount), ts):
                    fig.disks[mount] = (ts, value)
            elif name in (NET_RX, NET_TX):
                iface = dict(zip(keys, labels, strict=False)).get("iface", "")
                key = (name, iface)
                stored = fig.net.get(key)
                if stored is None and len(fig.net) >= 2 * MAX_LABELLED:
                    continue
                if stored is not None and ts <= stored.ts:
                    continue  # back-fill older than what we have
                before = stored
                if len(deltas) > 1:
                    before = _Counter(times[offset + len(deltas) - 2],
                                      value - deltas[-1] * factor, None)
                fig.net[key] = _Counter(ts, value, _rate(before, ts, value))
            else:
                attr = _SINGLE[name]
                if not keys and _newer(getattr(fig, attr), ts):
                    setattr(fig, attr, (ts, value))

    def forget_except(self, hosts: set[str], idle_ms: int, now_ms: int) -> None:
        """Drop figures of hosts storage no longer knows, once nothing came from them for
        ``idle_ms`` (retention removed them; keeps memory bounded by the live fleet)."""
        with self._lock:
            gone = [h for h, f in self._hosts.items()
                    if h not in hosts and (f.received_ms or 0) < now_ms - idle_ms]
            for h in gone:
                del self._hosts[h]

    def status_changed(self, host: str) -> None:
        """A birth or death message was stored: the next snapshot must look again."""
        with self._lock:
            self.version += 1

    # --- from storage (read pool, once at start) ----------------------------------------------

    def seed(self, storage: Storage, hosts: Sequence[str], now_ms: int,
             window_ms: int = RATE_HORIZON_MS) -> None:
        """Fill in what storage holds for ``hosts`` over the last ``window_ms``: one query per
        watched metric for these hosts only. Values already taken from newer batches win."""
        if not hosts:
            return

        def query(name: str, agg: str = "last", labels: dict[str, str] | None = None,
                  rate: bool = False, by_host: bool = True) -> list[Any]:
            # a rate spans two samples in neighbouring non-empty steps: short steps find them
            step = 10_000 if rate else 60_000
            q = RangeQuery(name=name, start_ms=now_ms - window_ms, end_ms=now_ms + 1,
                           step_ms=step, aggregation=agg,  # type: ignore[arg-type]
                           hosts=tuple(hosts), labels=labels or {}, rate=rate,
                           group_by=("host",) if by_host else None,
                           max_series=len(hosts) * (2 * MAX_LABELLED + 1),
                           max_points=10**8)
            return storage.query(q)

        found: dict[str, list[tuple[str, str, Reading]]] = {}
        for name, labels in ((CPU, {"cpu": "total"}), (MEMORY, None), (BACKLOG, None),
                             (DROPPED, None), (DELIVERED, None)):
            for r in query(name, labels=labels):
                if r.host and r.points:
                    found.setdefault(r.host, []).append((name, "", _last(r.points)))
        for r in query(DISK, by_host=False):
            if r.host and r.points:
                found.setdefault(r.host, []).append((DISK, r.labels.get("mount", ""),
                                                     _last(r.points)))
        for name in (NET_RX, NET_TX):
            for r in query(name, agg="sum", rate=True, by_host=False):
                if r.host and r.points:
                    found.setdefault(r.host, []).append((name, r.labels.get("iface", ""),
                                                         _last(r.points)))
        with self._lock:
            for host, readings in found.items():
                fig = self._hosts.get(host)
                if fig is None:
                    fig = self._hosts[host] = HostFigures()
                for name, label, (ts, value) in readings:
                    self._seed_one(fig, name, label, ts, value)
                    if fig.newest_ms is None or ts > fig.newest_ms:
                        fig.newest_ms = ts
            self.version += 1

    @staticmethod
    def _seed_one(fig: HostFigures, name: str, label: str, ts: int, value: float) -> None:
        if name == DISK:
            if len(fig.disks) < MAX_LABELLED and _newer(fig.disks.get(label), ts):
                fig.disks[label] = (ts, value)
        elif name in (NET_RX, NET_TX):
            key = (name, label)
            if key not in fig.net and len(fig.net) < 2 * MAX_LABELLED:
                fig.net[key] = _Counter(ts, None, value)
        else:
            attr = "cpu" if name == CPU else _SINGLE[name]
            if _newer(getattr(fig, attr), ts):
                setattr(fig, attr, (ts, value))


def _last(points: list[tuple[int, float]]) -> Reading:
    ts, value = points[-1]
    return int(ts), float(value)


def _rate(before: _Counter | None, ts: int, value: float) -> float | None:
    """Per-second increase since ``before``; a decrease is a counter reset (a reboot): the
    increase is then the new value, as storage computes rates. Without a raw value before (a
    rate seeded from storage), the seeded rate stands until the next sample."""
    if before is None:
        return None
    if before.value is None or ts <= before.ts:
        return before.rate
    increase = value - before.value if value >= before.value else value
    return increase * 1000.0 / (ts - before.ts)


# --- the storage wrapper ---------------------------------------------------------------------

class ObservedStorage:
    """A ``Storage`` that tells ``FleetState`` about every batch and status it stores.

    Everything else passes through unchanged to the wrapped storage."""

    def __init__(self, storage: Storage, state: FleetState) -> None:
        self._storage = storage
        self._state = state

    @property
    def wrapped(self) -> Storage:
        return self._storage

    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        results = self._storage.store_batches(items)
        try:
            self._state.observe(items, results)
        except Exception:  # the dashboard's figures must never fail an ingest write
            logging.getLogger("edgemon.collector.http.fleet").exception(
                "fleet figures not updated from a stored batch")
        return results

    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int, last_seq: int | None = None) -> None:
        self._storage.record_status(host, instance, online, timestamp_ms, received_ms, last_seq)
        self._state.status_changed(host)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


# --- rows, sorting, filtering ----------------------------------------------------------------

def host_state(info: HostInfo, last_seen_ms: int | None, now_ms: int, stale_after_ms: int) -> str:
    if not info.online:
        return "offline"
    if last_seen_ms is None or now_ms - last_seen_ms > stale_after_ms:
        return "stale"
    return "online"


def make_row(info: HostInfo, fig: HostFigures | None, firing: int, now_ms: int,
             stale_after_ms: int) -> dict[str, Any]:
    fig = fig or HostFigures()
    last_seen = max(info.last_seen_ms or 0, fig.received_ms or 0) or None
    newest = fig.newest_ms
    horizon = (newest or 0) - RATE_HORIZON_MS
    disk_mount, disk = None, None
    for mount, (ts, value) in fig.disks.items():
        if ts >= horizon and (disk is None or value > disk):
            disk_mount, disk = mount, value
    rx = _net_sum(fig, NET_RX, horizon)
    tx = _net_sum(fig, NET_TX, horizon)
    dropped = None
    if fig.dropped is not None:
        dropped = max(0.0, fig.dropped[1] - (fig.delivered[1] if fig.delivered else 0.0))
    return {
        "host": info.host,
        "state": host_state(info, last_seen, now_ms, stale_after_ms),
        "online": info.online,
        "instance": info.instance,
        "last_seen_ms": last_seen,
        "last_status_ms": info.last_status_ms,
        "newest_sample_ms": newest,
        "cpu_percent": _value(fig.cpu),
        "memory_percent": _value(fig.memory),
        "disk_percent": disk,
        "disk_mount": disk_mount,
        "net_rx_bytes_per_s": rx,
        "net_tx_bytes_per_s": tx,
        "net_bytes_per_s": None if rx is None and tx is None else (rx or 0.0) + (tx or 0.0),
        "alerts_firing": firing,
        "backlog_samples": _value(fig.backlog),
        "dropped_samples": dropped,
        "clock_offset_ms": info.clock_offset_ms,
    }


def _value(reading: Reading | None) -> float | None:
    return None if reading is None else reading[1]


def _net_sum(fig: HostFigures, name: str, horizon: int) -> float | None:
    rates = [c.rate for (n, _), c in fig.net.items()
             if n == name and c.rate is not None and c.ts >= horizon]
    return sum(rates) if rates else None


def _sort_key(column: str) -> Callable[[dict[str, Any]], Any]:
    if COLUMNS[column] == "text":
        return lambda r: (r[column] or "").lower()
    return lambda r: r[column]


def sorted_rows(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    """Rows by ``column`` (then host name); rows without a value last in either order."""
    by_name = sorted(rows, key=lambda r: r["host"])
    if column == "host":
        return by_name[::-1] if descending else by_name
    key = _sort_key(column)
    present = [r for r in by_name if r[column] is not None]
    missing = [r for r in by_name if r[column] is None]
    present.sort(key=key, reverse=descending)
    return present + missing


@dataclass(frozen=True, slots=True)
class RowFilter:
    text: str = ""  # substring of the host name (case-insensitive), or a glob with * ? [
    states: frozenset[str] = frozenset()  # empty: every state
    minimum: tuple[tuple[str, float], ...] = ()
    maximum: tuple[tuple[str, float], ...] = ()
    host: str | None = None  # exactly this host

    def matcher(self) -> Callable[[dict[str, Any]], bool]:
        text = self.text.lower()
        glob = any(c in text for c in "*?[")

        def ok(r: dict[str, Any]) -> bool:
            if self.host is not None and r["host"] != self.host:
                return False
            if self.states and r["state"] not in self.states:
                return False
            if text:
                name = r["host"].lower()
                if not (fnmatch.fnmatchcase(name, text) if glob else text in name):
                    return False
            return all(r[col] is not None and r[col] >= bound for col, bound in self.minimum) \
                and all(r[col] is not None and r[col] <= bound for col, bound in self.maximum)

        return ok


def filter_rows(rows: Iterable[dict[str, Any]], f: RowFilter) -> list[dict[str, Any]]:
    if not (f.text or f.states or f.minimum or f.maximum or f.host):
        return list(rows)
    ok = f.matcher()
    return [r for r in rows if ok(r)]


@dataclass(slots=True)
class Snapshot:
    """Every host's row at one moment, sorted by host; other orders are cached on first use."""

    rows: list[dict[str, Any]]
    generated_ms: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    orders: dict[tuple[str, bool], list[dict[str, Any]]] = field(default_factory=dict)

    def ordered(self, column: str, descending: bool) -> list[dict[str, Any]]:
        key = (column, descending)
        order = self.orders.get(key)
        if order is None:
            order = self.orders[key] = sorted_rows(self.rows, column, descending)
        return order


class FleetView:
    """Snapshots of every host's row. The first call builds one; after that a call never waits:
    it gets the newest snapshot, and when host records and firing alerts are due (every
    ``hosts_max_age_s``) or figures changed (at most every ``max_age_s``), one refresh runs in
    the background (``background=False``: in the caller, for tests)."""

    def __init__(self, state: FleetState, hosts: Callable[[], list[HostInfo]],
                 firing: Callable[[], dict[str, int]], clock_ms: Callable[[], int],
                 stale_after_ms: int = STALE_AFTER_MS, max_age_s: float = 1.0,
                 hosts_max_age_s: float = 5.0, background: bool = True) -> None:
        self.state = state
        self._hosts_source = hosts
        self._firing_source = firing
        self.clock_ms = clock_ms
        self.stale_after_ms = stale_after_ms
        self.max_age_s = max_age_s
        self.hosts_max_age_s = hosts_max_age_s
        self.background = background
        self._lock = threading.Lock()  # one refresh at a time
        self._hosts: list[HostInfo] = []
        self._firing: dict[str, int] = {}
        self._hosts_at = -math.inf
        self._built_at = -math.inf
        self._built_version: int | None = None
        self._snapshot: Snapshot | None = None
        self._refreshing = False

    def snapshot(self) -> Snapshot:
        """The newest snapshot (blocking only for the very first: call it in the read pool)."""
        current = self._snapshot
        if current is None:
            with self._lock:
                if self._snapshot is None:
                    self._refresh()
            assert self._snapshot is not None
            return self._snapshot
        if self._due() and not self._refreshing:
            if not self.background:
                with self._lock:
                    self._refresh()
                return self._snapshot
            self._refreshing = True
            threading.Thread(target=self._refresh_in_background, name="edgemon-fleet-view",
                             daemon=True).start()
        return current

    def snapshot_nowait(self) -> Snapshot | None:
        """The newest snapshot without ever blocking (None before the first is built)."""
        return None if self._snapshot is None else self.snapshot()

    def _due(self) -> bool:
        now = time.monotonic()
        return (now - self._hosts_at >= self.hosts_max_age_s
                or (self.state.version != self._built_version
                    and now - self._built_at >= self.max_age_s))

    def _refresh_in_background(self) -> None:
        try:
            with self._lock:
                self._refresh()
        except Exception:
            logging.getLogger("edgemon.collector.http.fleet").exception(
                "fleet snapshot not refreshed")
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._hosts_at >= self.hosts_max_age_s:
            self._hosts = self._hosts_source()
            self._firing = self._firing_source()
            self._hosts_at = now
            self._built_version = None
            self.state.forget_except({h.host for h in self._hosts}, 86_400_000,
                                     self.clock_ms())
        version = self.state.version
        if self._built_version is None or (version != self._built_version
                                           and now - self._built_at >= self.max_age_s):
            self._snapshot = self._build()
            self._built_version = version
            self._built_at = now

    def _build(self) -> Snapshot:
        figures = self.state.copy()
        now_ms = self.clock_ms()
        rows = [make_row(h, figures.get(h.host), self._firing.get(h.host, 0), now_ms,
                         self.stale_after_ms) for h in self._hosts]
        rows.sort(key=lambda r: r["host"])
        counts = dict.fromkeys(STATES, 0)
        for r in rows:
            counts[r["state"]] += 1
        return Snapshot(rows, now_ms, counts)
