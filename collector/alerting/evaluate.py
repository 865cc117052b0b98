"""Pure evaluation: (rule, series data, state) -> (new state, transitions). No I/O.

Series data is what one storage query returns for every host at once (``SeriesData``, built
with ``from_results`` from ``Storage.query`` output or ``from_arrays`` from plain numpy arrays):
one point per step, ``(step start ms, value)``. A point's *evaluation time* is the end of its
step (start + step). Each series is evaluated in sample-time order, once per step:

* a step is evaluated when the series has a point in a later step (its data is complete; agents
  send samples in order) or, failing that, ``settle`` ms after the step ended;
* steps at or before the series' watermark (newest step already evaluated) are skipped;
* a jump over missing steps leaves a *hole*; if back-filled data fills it later, the engine
  replays it with ``replay_holes``: those transitions are history only, never notifications.

Every function copies the state it is given and returns the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from edgemon.collector.alerting.rules import (
    AnomalyRule,
    DiskFullEtaRule,
    HostDownRule,
    RateRule,
    ThresholdRule,
)
from edgemon.collector.alerting.state import (
    FIRING,
    INACTIVE,
    NONE,
    RawTransition,
    SeriesTable,
    advance,
    expire_stale,
    series_key,
)
from edgemon.collector.storage.base import HostInfo, SeriesResult

__all__ = [
    "EvalResult",
    "Hole",
    "SeriesData",
    "evaluate_disk_eta",
    "evaluate_host_down",
    "evaluate_series",
    "from_arrays",
    "from_results",
    "replay_holes",
    "stale_after_ms",
]


@dataclass
class SeriesData:
    """Flattened query result: series ``sid[i]`` has value ``value[i]`` in the step starting
    at ``start[i]``. Points are grouped by series and sorted by time within a series."""

    hosts: list[str]
    labels: list[dict[str, str]]
    sid: np.ndarray  # int64, index into hosts / labels
    start: np.ndarray  # int64 ms
    value: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.sid.size)

    @property
    def nseries(self) -> int:
        return len(self.hosts)


def from_results(results: list[SeriesResult]) -> SeriesData:
    """Flatten ``Storage.query`` results (one per series) without a Python loop per point."""
    n = len(results)
    hosts = [r.host or "" for r in results]
    labels = [r.labels for r in results]
    counts = np.fromiter((len(r.points) for r in results), dtype=np.int64, count=n)
    total = int(counts.sum()) if n else 0
    flat = np.fromiter(chain.from_iterable(chain.from_iterable(r.points for r in results)),
                       dtype=np.float64, count=2 * total)
    sid = np.repeat(np.arange(n, dtype=np.int64), counts)
    start = flat[0::2].astype(np.int64)
    value = flat[1::2].copy()
    return _sorted(SeriesData(hosts, labels, sid, start, value))


def from_arrays(keys: list[tuple[str, dict[str, str]]], sid: np.ndarray, start: np.ndarray,
                value: np.ndarray) -> SeriesData:
    """Series data from numpy arrays; ``keys[i]`` = (host, labels) of series ``i``."""
    return _sorted(SeriesData([h for h, _ in keys], [lb for _, lb in keys],
                              np.asarray(sid, dtype=np.int64), np.asarray(start, dtype=np.int64),
                              np.asarray(value, dtype=np.float64)))


def _sorted(data: SeriesData) -> SeriesData:
    if data.sid.size > 1:
        ok = (np.diff(data.sid) > 0) | ((np.diff(data.sid) == 0) & (np.diff(data.start) > 0))
        if not ok.all():
            order = np.lexsort((data.start, data.sid))
            data.sid, data.start, data.value = (data.sid[order], data.start[order],
                                                data.value[order])
    finite = np.isfinite(data.value)
    if not finite.all():
        data.sid, data.start, data.value = data.sid[finite], data.start[finite], data.value[finite]
    return data


@dataclass
class Hole:
    """Steps (from_ms, to_ms] of one series that were skipped because no data had arrived.

    ``seed`` is the series' state before the hole (a one-row table); ``cursor`` the newest
    evaluation time replayed so far."""

    key: str
    host: str
    labels: dict[str, str]
    from_ms: int
    to_ms: int
    cursor: int
    seed: dict[str, Any]
    progress_ms: int = -1  # wall clock of its creation or of the last replayed point

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "host": self.host, "labels": self.labels,
                "from_ms": self.from_ms, "to_ms": self.to_ms, "cursor": self.cursor,
                "seed": self.seed, "progress_ms": self.progress_ms}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Hole:
        return cls(d["key"], d["host"], d["labels"], int(d["from_ms"]), int(d["to_ms"]),
                   int(d["cursor"]), d["seed"], int(d.get("progress_ms", -1)))


@dataclass
class EvalResult:
    state: SeriesTable
    transitions: list[RawTransition]
    holes: list[Hole] = field(default_factory=list)
    evaluated: int = 0  # series evaluated at least once in this call
    newest_ms: int = -1  # newest evaluation time processed


def stale_after_ms(rule: Any, settle_ms: int) -> int:
    """How long an active alert may go without data before it resolves ("no data")."""
    if rule.stale_after is not None:
        return int(rule.stale_after)
    step = int(getattr(rule, "step_ms", 60_000))
    return max(3 * step, 300_000) + settle_ms


def _complete(data: SeriesData, step_ms: int, now_ms: int, settle_ms: int) -> np.ndarray:
    """Mask of points whose step is complete: a later point of the series exists, or the step
    ended at least ``settle_ms`` ago."""
    n = data.sid.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    has_next = np.zeros(n, dtype=bool)
    has_next[:-1] = data.sid[1:] == data.sid[:-1]
    return has_next | (data.start + step_ms <= now_ms - settle_ms)


def _seed_of(table: SeriesTable, row: int) -> dict[str, Any]:
    return {"status": int(table.status[row]), "active_since": int(table.active_since[row]),
            "fired_at": int(table.fired_at[row]),
            "clearing_since": int(table.clearing_since[row]),
            "value": float(table.value[row]) if np.isfinite(table.value[row]) else None,
            "ewma_n": int(table.ewma_n[row]), "ewma_mean": float(table.ewma_mean[row]),
            "ewma_var": float(table.ewma_var[row])}


# --- per-step conditions ---------------------------------------------------------------------

def _compare(op: str, values: np.ndarray, threshold: float) -> np.ndarray:
    if op == ">":
        return values > threshold
    if op == ">=":
        return values >= threshold
    if op == "<":
        return values < threshold
    return values <= threshold


def _threshold_step(rule: ThresholdRule | RateRule, table: SeriesTable, rows: np.ndarray,
                    t: np.ndarray, values: np.ndarray) -> list[RawTransition]:
    trigger = _compare(rule.op, values, rule.threshold)
    clear_at = rule.threshold if rule.clear_threshold is None else rule.clear_threshold
    clear = ~_compare(rule.op, values, clear_at)
    return advance(table, rows, t, trigger, clear, values, rule.for_, rule.keep_firing_for)


def _anomaly_step(rule: AnomalyRule, table: SeriesTable, rows: np.ndarray, t: np.ndarray,
                  values: np.ndarray) -> list[RawTransition]:
    n = table.ewma_n[rows]
    mean = table.ewma_mean[rows]
    var = table.ewma_var[rows]
    sd = np.maximum(np.sqrt(np.maximum(var, 0.0)), rule.min_stddev)
    sd = np.maximum(sd, 1e-9 * np.abs(mean) + 1e-12)
    dev = values - mean
    if rule.direction == "up":
        signed = dev
    elif rule.direction == "down":
        signed = -dev
    else:
        signed = np.abs(dev)
    ready = n >= rule.min_history
    trigger = ready & (signed > rule.k * sd)
    clear_k = rule.k if rule.clear_k is None else rule.clear_k
    clear = ~ready | (signed <= clear_k * sd)
    out = advance(table, rows, t, trigger, clear, values, rule.for_, rule.keep_firing_for)
    # EWMA update; an out-of-band value counts clipped to the band, so one outlier barely moves
    # the baseline but a lasting level change is learnt within a few dozen steps.
    first = n == 0
    band = rule.k * sd
    x = np.where(ready, np.clip(values, mean - band, mean + band), values)
    diff = x - mean
    incr = rule.alpha * diff
    new_mean = np.where(first, values, mean + incr)
    new_var = np.where(first, 0.0, (1.0 - rule.alpha) * (var + diff * incr))
    table.ewma_mean[rows] = new_mean
    table.ewma_var[rows] = new_var
    table.ewma_n[rows] = n + 1
    return out


def _step_function(rule: Any) -> Any:
    if isinstance(rule, ThresholdRule | RateRule):
        return _threshold_step
    if isinstance(rule, AnomalyRule):
        return _anomaly_step
    raise TypeError(f"no per-step evaluation for {rule.kind}")


def _run_steps(rule: Any, table: SeriesTable, rows: np.ndarray, ends: np.ndarray,
               values: np.ndarray) -> list[RawTransition]:
    """Feed points (rows[i], ends[i], values[i]) in time order, one vectorised call per
    distinct evaluation time (a row appears at most once per time)."""
    step = _step_function(rule)
    if rows.size == 0:
        return []
    order = np.lexsort((rows, ends))
    rows, ends, values = rows[order], ends[order], values[order]
    cuts = np.flatnonzero(np.diff(ends)) + 1
    out: list[RawTransition] = []
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, rows.size].tolist(), strict=True):
        out += step(rule, table, rows[a:b], ends[a:b], values[a:b])
    return out


# --- rules over step series ------------------------------------------------------------------

def evaluate_series(rule: ThresholdRule | RateRule | AnomalyRule, data: SeriesData,
                    state: SeriesTable, now_ms: int, *, settle_ms: int,
                    default_wm: int = -1, record_holes: bool = True) -> EvalResult:
    """Threshold, rate and anomaly rules: every complete, not yet evaluated step in order.

    ``default_wm``: the watermark given to series seen for the first time (after a restart:
    the rule's last evaluated time, so nothing is evaluated twice)."""
    table = state.copy()
    step_ms = rule.step_ms
    rows_of_series = table.rows(data.hosts, data.labels, default_wm)
    complete = _complete(data, step_ms, now_ms, settle_ms)
    prow = rows_of_series[data.sid]
    ends = data.start + step_ms
    new = complete & (ends > table.wm[prow])
    prow, ends, values = prow[new], ends[new], data.value[new]
    holes: list[Hole] = []
    if prow.size:
        # the first new point of each series: did it jump over missing steps?
        first = np.ones(prow.size, dtype=bool)
        first[1:] = prow[1:] != prow[:-1]
        frows, fends = prow[first], ends[first]
        wm = table.wm[frows]
        gap = (wm >= 0) & (fends - step_ms > wm)
        if record_holes:
            for row, end in zip(frows[gap].tolist(), fends[gap].tolist(), strict=True):
                w = int(table.wm[row])
                holes.append(Hole(table.keys[row], table.hosts[row], table.labels[row], w,
                                  end - step_ms, w, _seed_of(table, row), now_ms))
    transitions = _run_steps(rule, table, prow, ends, values)
    newest = -1
    if prow.size:
        last = np.ones(prow.size, dtype=bool)
        last[:-1] = prow[1:] != prow[:-1]
        table.wm[prow[last]] = ends[last]
        table.last_data[prow[last]] = ends[last]
        newest = int(ends.max())
    transitions += expire_stale(table, now_ms, stale_after_ms(rule, settle_ms))
    evaluated = int(np.unique(prow).size) if prow.size else 0
    return EvalResult(table, transitions, holes, evaluated, newest)


def replay_holes(rule: ThresholdRule | RateRule | AnomalyRule, data: SeriesData,
                 holes: list[Hole], now_ms: int = -1,
                 ) -> tuple[list[Hole], list[tuple[Hole, RawTransition]]]:
    """Evaluate back-filled points inside holes, each hole from its own seed state.

    Returns the holes still open (cursor advanced) and the transitions, each with its hole.
    A hole is closed when replayed to its end; an alert still open at that point is closed in
    history at the hole's end ("end of back-fill"): from there the live evaluation rules.
    """
    if not holes:
        return [], []
    step_ms = rule.step_ms
    table = SeriesTable()
    by_key: dict[str, list[int]] = {}
    for i, hole in enumerate(holes):
        row = table.add(f"{i}", hole.host, hole.labels, hole.cursor)
        seed = hole.seed
        table.status[row] = seed["status"]
        table.active_since[row] = seed["active_since"]
        table.fired_at[row] = seed["fired_at"]
        table.clearing_since[row] = seed["clearing_since"]
        table.value[row] = np.nan if seed["value"] is None else seed["value"]
        table.ewma_n[row] = seed.get("ewma_n", 0)
        table.ewma_mean[row] = seed.get("ewma_mean", 0.0)
        table.ewma_var[row] = seed.get("ewma_var", 0.0)
        by_key.setdefault(hole.key, []).append(row)
    rows: list[int] = []
    ends: list[int] = []
    values: list[float] = []
    canon = [series_key(h, lb) for h, lb in zip(data.hosts, data.labels, strict=True)]
    starts, vals, sids = data.start.tolist(), data.value.tolist(), data.sid.tolist()
    for s, v, sid in zip(starts, vals, sids, strict=True):
        for row in by_key.get(canon[sid], ()):
            hole = holes[row]
            end = s + step_ms
            if hole.cursor < end <= hole.to_ms:
                rows.append(row)
                ends.append(end)
                values.append(v)
    r = np.asarray(rows, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    transitions = _run_steps(rule, table, r, e, np.asarray(values, dtype=np.float64))
    out = [(holes[t.row], t) for t in transitions]
    still_open: list[Hole] = []
    for row, hole in enumerate(holes):
        mine = e[r == row]
        cursor = max(hole.cursor, int(mine.max())) if mine.size else hole.cursor
        if cursor >= hole.to_ms:
            status = int(table.status[row])
            if status != hole.seed["status"] and status != INACTIVE:
                out.append((hole, RawTransition(row, status, INACTIVE, hole.to_ms,
                                                float(table.value[row]), "end of back-fill")))
            continue
        progress = now_ms if cursor > hole.cursor else hole.progress_ms
        still_open.append(Hole(hole.key, hole.host, hole.labels, hole.from_ms, hole.to_ms,
                               cursor, _seed_of(table, row), progress))
    return still_open, out


def evaluate_disk_eta(rule: DiskFullEtaRule, data: SeriesData, state: SeriesTable,
                      now_ms: int, *, settle_ms: int, default_wm: int = -1) -> EvalResult:
    """Least-squares line through each series' complete steps in the window; the value is the
    predicted hours until ``full_at`` (0 when already there, inf when not rising).

    The last window/step step values of every series are kept in the state (a ring), so a
    cycle needs only the new steps from storage (the whole window once after a start)."""
    table = state.copy()
    step = rule.step_ms
    k = -(-rule.window // step)
    rows_of_series = table.rows(data.hosts, data.labels, default_wm)
    table.ensure_ring(k)
    assert table.ring_t is not None and table.ring_v is not None
    complete = _complete(data, step, now_ms, settle_ms)
    sid, start, val = data.sid[complete], data.start[complete], data.value[complete]
    transitions: list[RawTransition] = []
    evaluated = 0
    newest = -1
    if sid.size:
        prow = rows_of_series[sid]
        slot = (start // step) % k
        table.ring_t[prow, slot] = start
        table.ring_v[prow, slot] = val
        last_end = np.full(data.nseries, -1, dtype=np.int64)
        np.maximum.at(last_end, sid, start + step)
        due = np.flatnonzero(last_end > table.wm[rows_of_series])
        if due.size:
            r, e = rows_of_series[due], last_end[due]
            t = table.ring_t[r]
            v = table.ring_v[r]
            ends = t + step
            ok = (t >= 0) & (ends <= e[:, None]) & (ends > e[:, None] - rule.window) \
                & np.isfinite(v)
            x = np.where(ok, (ends - e[:, None]) / 3_600_000.0, 0.0)  # hours, <= 0
            y = np.where(ok, v, 0.0)
            cnt = ok.sum(axis=1).astype(np.float64)
            sx, sy = x.sum(axis=1), y.sum(axis=1)
            sxx, sxy = (x * x).sum(axis=1), (x * y).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                den = cnt * sxx - sx * sx
                slope = (cnt * sxy - sx * sy) / den  # per hour
                intercept = (sy - slope * sx) / cnt  # fitted value at the newest end (x = 0)
                eta = np.where(slope > 0, (rule.full_at - intercept) / slope, np.inf)
            eta = np.where(intercept >= rule.full_at, 0.0, eta)
            enough = (cnt >= rule.min_points) & (den > 0)
            r, e, eta = r[enough], e[enough], eta[enough]
            within = rule.within / 3_600_000
            clear_within = (rule.clear_within or rule.within) / 3_600_000
            transitions = advance(table, r, e, eta <= within, eta > clear_within, eta,
                                  rule.for_, rule.keep_firing_for)
            table.wm[r] = e
            table.last_data[r] = e
            evaluated = int(r.size)
            newest = int(e.max()) if e.size else -1
    transitions += expire_stale(table, now_ms, stale_after_ms(rule, settle_ms))
    return EvalResult(table, transitions, [], evaluated, newest)


@dataclass
class HostArrays:
    """``Storage.hosts()`` as columns (built once per cycle, shared by host_down rules)."""

    hosts: list[str]
    online: np.ndarray  # bool
    last_seen: np.ndarray  # int64 ms, -1 = never
    last_status: np.ndarray  # int64 ms, -1 = never


def host_arrays(infos: list[HostInfo]) -> HostArrays:
    n = len(infos)
    online = np.fromiter((h.online for h in infos), dtype=bool, count=n)
    seen = np.fromiter((-1 if h.last_seen_ms is None else h.last_seen_ms for h in infos),
                       dtype=np.int64, count=n)
    status = np.fromiter((-1 if h.last_status_ms is None else h.last_status_ms for h in infos),
                         dtype=np.int64, count=n)
    return HostArrays([h.host for h in infos], online, seen, status)


def evaluate_host_down(rule: HostDownRule, hosts: HostArrays, state: SeriesTable, now_ms: int,
                       *, started_ms: int, selected: np.ndarray | None = None) -> EvalResult:
    """Down = a death message (``on_death``) or no data for ``no_data_for``, counted from
    ``started_ms`` at the earliest (a collector that was itself down sees old last_seen times
    for every host: that is not an outage of the fleet). Evaluated at ``now_ms``: absence of
    data has no sample time. Hosts silent for ``forget_after`` are dropped (resolved)."""
    table = state.copy()
    names = hosts.hosts
    sel = np.ones(len(names), dtype=bool) if selected is None else selected
    newest = np.maximum(hosts.last_seen, hosts.last_status)
    sel = sel & (newest >= 0) & (now_ms - newest < rule.forget_after)
    idx = np.flatnonzero(sel)
    sel_names = [names[i] for i in idx.tolist()]
    rows = table.rows(sel_names, [{}] * len(sel_names))
    seen = np.where(hosts.last_seen[idx] >= 0, hosts.last_seen[idx], hosts.last_status[idx])
    silent = now_ms - np.maximum(seen, started_ms)
    dead = ~hosts.online[idx] & (hosts.last_status[idx] >= 0) if rule.on_death else False
    down = dead | (silent >= rule.no_data_for)
    transitions = advance(table, rows, now_ms, down, ~down, silent / 1000.0, rule.for_,
                          rule.keep_firing_for)
    table.last_data[rows] = now_ms
    table.wm[rows] = now_ms
    # hosts no longer listed (or forgotten) resolve like stale series
    n = len(table.keys)
    gone = np.ones(n, dtype=bool)
    gone[rows] = False
    stale_rows = np.flatnonzero(gone & (table.status[:n] != INACTIVE))
    for row in stale_rows.tolist():
        transitions.append(RawTransition(row, int(table.status[row]), INACTIVE, now_ms,
                                         float(table.value[row]), "host forgotten"))
    table.status[stale_rows] = INACTIVE
    table.active_since[stale_rows] = NONE
    table.clearing_since[stale_rows] = NONE
    return EvalResult(table, transitions, [], int(rows.size), now_ms)


def resolve_all(state: SeriesTable, now_ms: int, reason: str) -> EvalResult:
    """Every active row goes inactive (firing ones resolve): a removed or changed rule."""
    table = state.copy()
    rows = table.active_rows()
    out = [RawTransition(r, int(table.status[r]), INACTIVE, now_ms, float(table.value[r]),
                         reason) for r in rows.tolist()]
    table.status[rows] = INACTIVE
    table.active_since[rows] = NONE
    table.clearing_since[rows] = NONE
    return EvalResult(table, out)


__all__ += ["FIRING", "HostArrays", "host_arrays", "resolve_all"]
