"""``AlertEngine``: one evaluation cycle over every rule and host, state and outbox in SQLite.

Per cycle: at most one ``Storage.query`` per due rule (all hosts at once) plus one
``Storage.hosts()``; a second query for a rule only while some hosts are back-filling holes.
Everything the cycle decides is committed in one SQLite transaction; the in-memory state is
replaced only after that commit, so a failed commit is simply evaluated again next cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgemon.collector.alerting.evaluate import (
    EvalResult,
    Hole,
    evaluate_disk_eta,
    evaluate_host_down,
    evaluate_series,
    from_results,
    host_arrays,
    replay_holes,
    resolve_all,
)
from edgemon.collector.alerting.rules import (
    AnomalyRule,
    DiskFullEtaRule,
    HostDownRule,
    RulesError,
    RuleSet,
    load_rules,
)
from edgemon.collector.alerting.silences import SilenceSet
from edgemon.collector.alerting.state import (
    FIRING,
    INACTIVE,
    NONE,
    PENDING,
    RawTransition,
    SeriesTable,
)
from edgemon.collector.alerting.store import AlertStore
from edgemon.collector.alerting.templates import render
from edgemon.collector.storage.base import HostInfo, RangeQuery, Storage
from edgemon.common.clock import now_ms

__all__ = ["MQTT_TOPIC_PREFIX", "AlertEngine", "CycleReport", "Transition", "alert_topic",
           "iso_ms", "wall_clock_ms"]

log = logging.getLogger("edgemon.collector.alerting")

MQTT_TOPIC_PREFIX = "edgemon/v1/_alerts"
MQTT_RECEIVER = "mqtt"
HOLE_PATIENCE_MS = 30 * 60_000
BIG = 1 << 40  # max_series / max_points of the engine's queries: it wants every host
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end time"


wall_clock_ms = now_ms


def iso_ms(ms: int | None) -> str | None:
    if ms is None or ms < 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def alert_topic(rule: str, host: str) -> str:
    """``edgemon/v1/_alerts/<rule>/<host>``: five levels, so it never matches the collector's
    own ``edgemon/v1/+/<kind>`` subscriptions, and ``_alerts`` is never a host id."""
    return f"{MQTT_TOPIC_PREFIX}/{rule}/{host}"


_NAMES = {(INACTIVE, PENDING): "pending", (PENDING, FIRING): "firing",
          (INACTIVE, FIRING): "firing", (FIRING, INACTIVE): "resolved",
          (PENDING, INACTIVE): "inactive", (FIRING, FIRING): "firing"}
_STATUS = {INACTIVE: "inactive", PENDING: "pending", FIRING: "firing"}


@dataclass
class Transition:
    """One recorded state change of one alert (a history row)."""

    rule: str
    key: str
    host: str
    labels: dict[str, str]
    frm: str
    status: str  # pending | firing | resolved | inactive
    at_ms: int
    value: float | None
    starts_at: int | None
    ends_at: int | None
    historical: bool
    silenced: bool
    notified: bool
    reason: str
    fingerprint: str
    alert_labels: dict[str, str]
    annotations: dict[str, str]
    history_id: int | None = None


@dataclass
class CycleReport:
    now_ms: int
    duration_ms: float = 0.0
    queries: int = 0
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    notifications: int = 0  # outbox rows written


@dataclass
class _Runtime:
    rule: Any
    table: SeriesTable
    signature: str
    watermark: int = -1  # newest evaluation time processed
    restored_wm: int = -1  # default watermark of series unseen since a restart (first cycle)
    holes: list[Hole] = field(default_factory=list)
    holes_dirty: bool = False
    last_eval_ms: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> saved identity


def _signature(rule: Any) -> str:
    """What a rule's stored state depends on; a change means starting afresh."""
    keep = {"kind": rule.kind, "hosts": list(rule.host_globs)}
    for name in ("metric", "match", "aggregation", "window", "step", "rate"):
        if hasattr(rule, name):
            keep[name] = getattr(rule, name)
    return json.dumps(keep, sort_keys=True)


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def fingerprint(labels: dict[str, str]) -> str:
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class AlertEngine:
    """Evaluate rules over a ``Storage``; keep state, history and the outbox in ``db_path``.

    ``rules``: a loaded ``RuleSet`` (default: ``load_rules(rules_path)``, i.e. the built-in
    defaults when ``rules_path`` is None). ``clock_ms``: wall clock in ms. ``publish(topic,
    payload_bytes)``: MQTT publisher for transitions (None = no MQTT).
    """

    def __init__(self, storage: Storage, db_path: str | Path, *, rules: RuleSet | None = None,
                 rules_path: str | Path | None = None,
                 clock_ms: Callable[[], int] = wall_clock_ms,
                 publish: Callable[[str, bytes], Any] | None = None) -> None:
        self.storage = storage
        self.clock_ms = clock_ms
        self.publish = publish
        self.rules_path = rules_path
        self.ruleset = rules if rules is not None else load_rules(rules_path)
        self.rules_loaded_ms = clock_ms()
        self.store = AlertStore(db_path)
        self.started_ms = clock_ms()
        self._cycle_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._runtimes: dict[str, _Runtime] = {}
        self._retired: list[_Runtime] = []
        self._prev_cycle_ms: int | None = None
        self._last_prune_ms = 0
        self._restore()

    # --- lifecycle ------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (in the cycle's thread) after a commit that queued
        notifications; the delivery worker uses it to wake up."""
        self._listeners.append(callback)

    def close(self) -> None:
        with self._cycle_lock:
            self.store.close()

    @property
    def settings(self) -> Any:
        return self.ruleset.settings

    def reload_rules(self) -> RuleSet:
        """Re-read the rules file; on error raise ``RulesError`` and keep the current rules.
        Alerts of removed, disabled or redefined rules resolve at the next cycle."""
        ruleset = load_rules(self.rules_path)
        self.set_rules(ruleset)
        return ruleset

    def set_rules(self, ruleset: RuleSet) -> None:
        with self._cycle_lock:
            self.ruleset = ruleset
            self.rules_loaded_ms = self.clock_ms()
            self._sync_runtimes()
            kept = set(ruleset.receivers) | {MQTT_RECEIVER}
            self.store.drop_receiver_rows(kept, self.clock_ms())

    def _sync_runtimes(self) -> None:
        wanted = {r.name: r for r in self.ruleset.enabled}
        for name, rt in list(self._runtimes.items()):
            rule = wanted.get(name)
            if rule is None or _signature(rule) != rt.signature or rule.kind != rt.rule.kind:
                self._retired.append(self._runtimes.pop(name))
            else:
                rt.rule = rule
        for name, rule in wanted.items():
            if name not in self._runtimes:
                self._runtimes[name] = _Runtime(rule, SeriesTable(), _signature(rule))

    def _restore(self) -> None:
        """Rebuild the in-memory state from the database (after a restart)."""
        states = self.store.rule_states()
        rows_by_rule: dict[str, list[Any]] = {}
        for row in self.store.alert_rows():
            rows_by_rule.setdefault(row["rule"], []).append(row)
        holes_by_rule: dict[str, list[Hole]] = {}
        for row in self.store.hole_rows():
            holes_by_rule.setdefault(row["rule"], []).append(Hole.from_json(json.loads(
                row["body"])))
        wanted = {r.name: r for r in self.ruleset.enabled}
        names = set(states) | set(rows_by_rule)
        for name in sorted(names):
            st = states.get(name)
            rule = wanted.get(name)
            signature = st["signature"] if st is not None else ""
            rt = _Runtime(rule, SeriesTable(), signature)
            if st is not None:
                rt.watermark = int(st["watermark"])
                rt.restored_wm = rt.watermark
                rt.last_eval_ms = st["last_eval_ms"]
                if st["blob"]:
                    _load_blob(rt.table, json.loads(st["blob"]))
            for row in rows_by_rule.get(name, []):
                r = rt.table.add(row["key"], row["host"], json.loads(row["labels"]),
                                 row["wm"] if row["wm"] is not None else -1)
                rt.table.status[r] = FIRING if row["status"] == "firing" else PENDING
                rt.table.active_since[r] = _nz(row["active_since"])
                rt.table.fired_at[r] = _nz(row["fired_at"])
                rt.table.clearing_since[r] = _nz(row["clearing_since"])
                rt.table.value[r] = np.nan if row["value"] is None else row["value"]
                rt.table.last_data[r] = _nz(row["last_data"])
                rt.table.notified[r] = bool(row["notified"])
                rt.stored[row["key"]] = {"alert_labels": json.loads(row["alert_labels"]),
                                         "annotations": json.loads(row["annotations"]),
                                         "fingerprint": row["fingerprint"]}
            rt.holes = holes_by_rule.get(name, [])
            if rule is not None and _signature(rule) == signature:
                self._runtimes[name] = rt
            else:
                self._retired.append(rt)
        for name, rule in wanted.items():
            if name not in self._runtimes:
                self._runtimes[name] = _Runtime(rule, SeriesTable(), _signature(rule))

    # --- the cycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, executor: Executor | None = None) -> None:
        """Evaluate every ``settings.interval`` until ``stop`` is set (cycles run in
        ``executor``: storage and SQLite calls block)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            began = loop.time()
            try:
                await loop.run_in_executor(executor, self.run_cycle)
            except Exception:
                log.exception("alert evaluation cycle failed")
            wait = self.settings.interval / 1000 - (loop.time() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.05, wait))

    def run_cycle(self, now_ms: int | None = None) -> CycleReport:
        """One evaluation of every due rule over every host (blocking)."""
        with self._cycle_lock:
            return self._cycle(self.clock_ms() if now_ms is None else now_ms)

    def _cycle(self, now: int) -> CycleReport:
        began = time.perf_counter()
        report = CycleReport(now)
        settings = self.settings
        silences = SilenceSet(self.store.silences(now), now)
        hosts_cache: list[HostInfo] | None = None

        def hosts() -> list[HostInfo]:
            nonlocal hosts_cache
            if hosts_cache is None:
                hosts_cache = self.storage.hosts()
            return hosts_cache

        results: list[tuple[_Runtime, EvalResult, list[tuple[Hole, RawTransition]],
                            list[Hole] | None]] = []
        for rt in list(self._runtimes.values()):
            rule = rt.rule
            # every cycle evaluates every rule, except those with a longer `interval` of their own
            if rule.interval is not None and rt.last_eval_ms is not None and \
                    rt.error is None and \
                    now - rt.last_eval_ms < rule.interval - settings.interval // 2:
                continue
            t0 = time.perf_counter()
            try:
                res, hole_out, holes = self._evaluate(rt, now, hosts, report)
            except Exception as exc:  # one broken rule must not stop the others
                log.warning("rule %s failed: %s", rule.name, exc)
                rt.error = f"{type(exc).__name__}: {exc}"
                rt.last_eval_ms = now
                report.rules[rule.name] = {"error": rt.error}
                continue
            rt.error = None
            rt.duration_ms = (time.perf_counter() - t0) * 1000
            report.rules[rule.name] = {"series": len(res.state), "evaluated": res.evaluated,
                                       "transitions": len(res.transitions) + len(hole_out),
                                       "ms": round(rt.duration_ms, 3)}
            results.append((rt, res, hole_out, holes))
        retired = [(rt, resolve_all(rt.table, now, "rule removed or changed"))
                   for rt in self._retired]

        new_rows = self._commit(now, results, retired, silences, report)
        for rt, res, _hole_out, holes in results:
            rt.table = res.state
            rt.last_eval_ms = now
            rt.restored_wm = -1
            if res.newest_ms > rt.watermark:
                rt.watermark = res.newest_ms
            if holes is not None:
                rt.holes = holes
                rt.holes_dirty = False
        self._retired = []
        self._prev_cycle_ms = now
        if now - self._last_prune_ms > 3_600_000:
            self._last_prune_ms = now
            try:
                self.store.prune(now - settings.history_retention)
            except Exception:
                log.exception("pruning alert history failed")
        report.duration_ms = (time.perf_counter() - began) * 1000
        if new_rows:
            for callback in self._listeners:
                try:
                    callback()
                except Exception:
                    log.exception("outbox listener failed")
        return report

    def _evaluate(self, rt: _Runtime, now: int, hosts: Callable[[], list[HostInfo]],
                  report: CycleReport,
                  ) -> tuple[EvalResult, list[tuple[Hole, RawTransition]], list[Hole] | None]:
        rule = rt.rule
        settings = self.settings
        settle = settings.settle
        if isinstance(rule, HostDownRule):
            arrays = host_arrays(hosts())
            matcher = rule.host_matcher()
            selected = None
            if matcher is not None:
                selected = np.fromiter((bool(matcher.match(h)) for h in arrays.hosts),
                                       dtype=bool, count=len(arrays.hosts))
            return evaluate_host_down(rule, arrays, rt.table, now, started_ms=self.started_ms,
                                      selected=selected), [], None
        step = rule.step_ms
        floor = now - settings.max_catchup
        if isinstance(rule, DiskFullEtaRule) and (rt.table.ring_t is None
                                                  or rt.watermark < 0 or rt.restored_wm >= 0):
            start = now - rule.window - step - settle  # fill the ring
        elif rt.watermark >= 0:
            start = rt.watermark - settle - step
        else:
            warm = (rule.min_history + 2) * step if isinstance(rule, AnomalyRule) else 0
            start = now - (rule.for_ + rule.keep_firing_for + warm + 2 * step + settle)
        start = max(start, floor) // step * step
        query = RangeQuery(name=rule.metric, start_ms=start, end_ms=now, step_ms=step,
                           aggregation=rule.aggregation, hosts=rule.host_globs,
                           labels=dict(rule.match), rate=rule.uses_rate, max_series=BIG,
                           max_points=BIG)
        report.queries += 1
        data = from_results(self.storage.query(query))
        if isinstance(rule, DiskFullEtaRule):
            return evaluate_disk_eta(rule, data, rt.table, now, settle_ms=settle,
                                     default_wm=rt.restored_wm), [], None
        res = evaluate_series(rule, data, rt.table, now, settle_ms=settle,
                              default_wm=rt.restored_wm)
        # a hole is given up when too old, or when no back-filled data arrived for it for
        # HOLE_PATIENCE (agents send their back-log within minutes of reconnecting)
        kept = [h for h in rt.holes if now - h.to_ms <= settings.max_catchup
                and (h.progress_ms < 0 or now - h.progress_ms <= HOLE_PATIENCE_MS)]
        changed = len(kept) != len(rt.holes) or bool(res.holes)
        hole_out: list[tuple[Hole, RawTransition]] = []
        if kept:
            # back-fill: replay the holes of hosts that sent data since the previous cycle
            since = (self._prev_cycle_ms or now) - settle
            fresh = {h.host for h in hosts() if (h.last_seen_ms or -1) >= since}
            todo = [h for h in kept if h.host in fresh]
            if todo:
                lo = min(h.cursor for h in todo) // step * step
                hi = max(h.to_ms for h in todo)
                q = RangeQuery(name=rule.metric, start_ms=lo, end_ms=hi, step_ms=step,
                               aggregation=rule.aggregation,
                               hosts=tuple(sorted({h.host for h in todo})),
                               labels=dict(rule.match), rate=rule.uses_rate, max_series=BIG,
                               max_points=BIG)
                report.queries += 1
                still, hole_out = replay_holes(rule, from_results(self.storage.query(q)), todo,
                                               now)
                kept = [h for h in kept if h.host not in fresh] + still
                changed = True
        return res, hole_out, (kept + res.holes if changed else None)

    # --- transitions, notifications, persistence ------------------------------------------

    @staticmethod
    def _identity(rt: _Runtime, key: str, host: str, labels: dict[str, str],
                  ) -> dict[str, Any]:
        """Alert labels and fingerprint of a series (of a removed rule: as stored)."""
        rule = rt.rule
        if rule is None:
            stored = rt.stored.get(key)
            if stored is not None:
                return stored
            alert_labels = {"alertname": _rule_name(rt), "host": host}
            return {"alert_labels": alert_labels, "annotations": {},
                    "fingerprint": fingerprint(alert_labels)}
        alert_labels = {**labels, "severity": rule.severity, **rule.labels,
                        "alertname": rule.name, "host": host}
        return {"alert_labels": alert_labels, "fingerprint": fingerprint(alert_labels)}

    @staticmethod
    def _render(rt: _Runtime, key: str, host: str, labels: dict[str, str],
                value: float | None) -> dict[str, str]:
        rule = rt.rule
        if rule is None:
            return dict(rt.stored.get(key, {}).get("annotations", {}))
        templates = rule.annotations or {"summary": f"{rule.name} on {{host}}: {{value}}"}
        return {k: render(t, host=host, value=value, rule=rule.name, severity=rule.severity,
                          labels=labels, metric=rule.metric_name,
                          threshold=rule.threshold_value)
                for k, t in templates.items()}

    def _transition(self, rt: _Runtime, table: SeriesTable, raw: RawTransition, now: int,
                    silences: SilenceSet, hole: Hole | None = None) -> Transition:
        if hole is None:
            key, host, labels = table.keys[raw.row], table.hosts[raw.row], table.labels[raw.row]
            fired, active = int(table.fired_at[raw.row]), int(table.active_since[raw.row])
        else:
            key, host, labels = hole.key, hole.host, hole.labels
            fired = active = -1
        ident = self._identity(rt, key, host, labels)
        status = _NAMES[(raw.frm, raw.to)]
        value = _finite(raw.value)
        historical = hole is not None or raw.at_ms < now - self.settings.notify_max_age
        silenced = bool(silences) and silences.silenced_by(ident["alert_labels"]) is not None
        if status == "firing":
            starts: int | None = fired if fired >= 0 and hole is None else raw.at_ms
        elif status == "resolved":
            starts = fired if fired >= 0 else None
        else:
            starts = active if active >= 0 else None
        ends = raw.at_ms if status in ("resolved", "inactive") else None
        return Transition(rt.rule.name if rt.rule else _rule_name(rt), key, host, labels,
                          _STATUS[raw.frm], status, raw.at_ms, value, starts, ends,
                          historical, silenced, False, raw.reason, ident["fingerprint"],
                          ident["alert_labels"], self._render(rt, key, host, labels, value))

    def _commit(self, now: int, results: list[Any], retired: list[Any], silences: SilenceSet,
                report: CycleReport) -> int:
        settings = self.settings
        max_age = settings.notify_max_age
        outbox_rows = 0
        with self.store.transaction() as db:
            for rt, res in retired:
                name = rt.rule.name if rt.rule else _rule_name(rt)
                for raw in res.transitions:
                    tr = self._transition(rt, res.state, raw, now, silences)
                    tr.historical = False
                    tr.silenced = False
                    was_notified = bool(rt.table.notified[raw.row])
                    outbox_rows += self._record(db, tr, rt.rule, was_notified and
                                                tr.status == "resolved", now)
                    report.transitions.append(tr)
                db.execute("DELETE FROM alerts WHERE rule=?", (name,))
                db.execute("DELETE FROM holes WHERE rule=?", (name,))
                if name not in self._runtimes:
                    db.execute("DELETE FROM rule_state WHERE rule=?", (name,))
            for rt, res, hole_out, holes in results:
                rule = rt.rule
                table: SeriesTable = res.state
                touched: set[int] = set()
                for raw in sorted(res.transitions, key=lambda t: t.at_ms):
                    tr = self._transition(rt, table, raw, now, silences)
                    notify = False
                    if tr.status == "firing":
                        notify = not tr.historical and not tr.silenced
                        table.notified[raw.row] = notify
                    elif tr.status == "resolved":
                        notify = bool(table.notified[raw.row])
                        table.notified[raw.row] = False
                    outbox_rows += self._record(db, tr, rule, notify, now)
                    report.transitions.append(tr)
                    touched.add(raw.row)
                for hole, raw in hole_out:
                    tr = self._transition(rt, table, raw, now, silences, hole)
                    outbox_rows += self._record(db, tr, rule, False, now)
                    report.transitions.append(tr)
                # still firing, never notified (historical or silenced until now): notify
                # once the evaluation is fresh and no silence covers it
                n = len(table)
                late = np.flatnonzero((table.status[:n] == FIRING) & ~table.notified[:n]
                                      & (table.last_data[:n] >= now - max_age))
                for row in late.tolist():
                    ident = self._identity(rt, table.keys[row], table.hosts[row],
                                           table.labels[row])
                    if silences and silences.silenced_by(ident["alert_labels"]) is not None:
                        continue
                    raw = RawTransition(row, FIRING, FIRING, int(table.last_data[row]),
                                        float(table.value[row]), "still firing")
                    tr = self._transition(rt, table, raw, now, silences)
                    tr.frm, tr.status, tr.historical = "firing", "firing", False
                    tr.starts_at = int(table.fired_at[row])
                    table.notified[row] = True
                    outbox_rows += self._record(db, tr, rule, True, now)
                    report.transitions.append(tr)
                    touched.add(row)
                self._save_alerts(db, rt, table, touched, now)
                blob = _dump_blob(table) if isinstance(rule, AnomalyRule) else None
                watermark = max(rt.watermark, res.newest_ms)
                db.execute(
                    "INSERT INTO rule_state VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (rule) DO "
                    "UPDATE SET kind=excluded.kind, signature=excluded.signature, "
                    "watermark=excluded.watermark, last_eval_ms=excluded.last_eval_ms, "
                    "duration_ms=excluded.duration_ms, series=excluded.series, error=NULL, "
                    "blob=excluded.blob",
                    (rule.name, rule.kind, rt.signature, watermark, now, rt.duration_ms,
                     len(table), None, blob))
                if holes is not None:
                    db.execute("DELETE FROM holes WHERE rule=?", (rule.name,))
                    db.executemany("INSERT OR REPLACE INTO holes VALUES (?,?,?,?)",
                                   [(rule.name, h.key, h.from_ms, json.dumps(h.to_json()))
                                    for h in holes])
        report.notifications = outbox_rows
        return outbox_rows

    def _save_alerts(self, db: Any, rt: _Runtime, table: SeriesTable, touched: set[int],
                     now: int) -> None:
        rule = rt.rule
        n = len(table)
        active = np.flatnonzero(table.status[:n] != INACTIVE).tolist()
        gone = [table.keys[r] for r in touched if table.status[r] == INACTIVE]
        if gone:
            db.executemany("DELETE FROM alerts WHERE rule=? AND key=?",
                           [(rule.name, k) for k in gone])
        rows = []
        for r in active:
            key, host, labels = table.keys[r], table.hosts[r], table.labels[r]
            ident = self._identity(rt, key, host, labels)
            value = _finite(float(table.value[r]))
            rows.append((rule.name, table.keys[r], table.hosts[r], json.dumps(table.labels[r]),
                         "firing" if table.status[r] == FIRING else "pending",
                         _none(table.active_since[r]), _none(table.fired_at[r]),
                         _none(table.clearing_since[r]), value, int(table.wm[r]),
                         _none(table.last_data[r]), int(table.notified[r]),
                         ident["fingerprint"], json.dumps(ident["alert_labels"]),
                         json.dumps(self._render(rt, key, host, labels, value)), now))
        if rows:
            db.executemany("INSERT OR REPLACE INTO alerts VALUES "
                           "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def _record(self, db: Any, tr: Transition, rule: Any, notify: bool, now: int) -> int:
        """A history row, and when ``notify`` its outbox rows (one per receiver, plus MQTT for
        every firing/resolved transition). Returns the number of outbox rows."""
        tr.notified = notify
        if tr.status in ("pending", "inactive") and not self.settings.record_pending:
            return 0
        cur = db.execute(
            "INSERT INTO history (rule, key, host, labels, from_status, status, at_ms, "
            "created_ms, value, starts_at, ends_at, historical, silenced, notified, reason, "
            "fingerprint, annotations) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (tr.rule, tr.key, tr.host, json.dumps(tr.labels), tr.frm, tr.status, tr.at_ms, now,
             tr.value, tr.starts_at, tr.ends_at, int(tr.historical), int(tr.silenced),
             int(notify), tr.reason, tr.fingerprint, json.dumps(tr.annotations)))
        tr.history_id = int(cur.lastrowid)
        idem = f"{self.store.engine_id}-{tr.history_id}"
        rows = []
        if notify:
            receivers = (self.ruleset.receivers_for(rule) if rule is not None
                         else list(self.ruleset.receivers.values()))
            body = json.dumps(self.alert_object(tr, idem))
            for receiver in receivers:
                if tr.status == "resolved" and not receiver.send_resolved:
                    continue
                rows.append((tr.history_id, receiver.name, tr.rule, tr.fingerprint, idem,
                             body, now))
        if (self.publish is not None and self.settings.mqtt
                and tr.status in ("firing", "resolved")):
            rows.append((tr.history_id, MQTT_RECEIVER, tr.rule, tr.fingerprint, idem,
                         json.dumps(self.mqtt_payload(tr, idem)), now))
        if rows:
            db.executemany("INSERT INTO outbox (history_id, receiver, rule, fingerprint, "
                           "idempotency_key, body, created_ms) VALUES (?,?,?,?,?,?,?)", rows)
        return len(rows)

    def alert_object(self, tr: Transition, idem: str) -> dict[str, Any]:
        """One entry of a webhook's ``alerts[]`` (Alertmanager format, plus idempotencyKey)."""
        base = self.settings.external_url.rstrip("/")
        return {"status": "resolved" if tr.status == "resolved" else "firing",
                "labels": tr.alert_labels, "annotations": tr.annotations,
                "startsAt": iso_ms(tr.starts_at) or iso_ms(tr.at_ms),
                "endsAt": iso_ms(tr.ends_at) if tr.status == "resolved" else ZERO_TIME,
                "generatorURL": (f"{base}/edgemon/api/v1/alerts/history"
                                 f"?rule={tr.rule}&host={tr.host}"),
                "fingerprint": tr.fingerprint, "idempotencyKey": idem}

    def mqtt_payload(self, tr: Transition, idem: str) -> dict[str, Any]:
        return {"v": 1, "id": idem, "rule": tr.rule, "host": tr.host, "labels": tr.labels,
                "alert_labels": tr.alert_labels, "status": tr.status, "from": tr.frm,
                "at_ms": tr.at_ms, "value": tr.value, "starts_at_ms": tr.starts_at,
                "ends_at_ms": tr.ends_at, "historical": tr.historical, "silenced": tr.silenced,
                "notified": tr.notified, "reason": tr.reason, "fingerprint": tr.fingerprint,
                "annotations": tr.annotations}

    # --- queries for the API --------------------------------------------------------------

    def active_alerts(self, rule: str | None = None, host: str | None = None,
                      status: str | None = None) -> list[dict[str, Any]]:
        now = self.clock_ms()
        silences = SilenceSet(self.store.silences(now), now)
        sql = "SELECT * FROM alerts WHERE 1=1"
        params: list[Any] = []
        for col, val in (("rule", rule), ("host", host), ("status", status)):
            if val is not None:
                sql += f" AND {col}=?"
                params.append(val)
        out = []
        for r in self.store.query(sql + " ORDER BY rule, key", params):
            labels = json.loads(r["alert_labels"])
            out.append({"rule": r["rule"], "host": r["host"], "labels": json.loads(r["labels"]),
                        "alert_labels": labels, "status": r["status"],
                        "active_since_ms": r["active_since"], "fired_at_ms": r["fired_at"],
                        "active_since": iso_ms(r["active_since"]),
                        "fired_at": iso_ms(r["fired_at"]), "value": r["value"],
                        "last_data_ms": r["last_data"], "notified": bool(r["notified"]),
                        "silenced_by": silences.silenced_by(labels) if silences else None,
                        "fingerprint": r["fingerprint"],
                        "annotations": json.loads(r["annotations"])})
        return out

    def history(self, *, rule: str | None = None, host: str | None = None,
                since_ms: int | None = None, until_ms: int | None = None,
                status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = "SELECT * FROM history WHERE 1=1"
        params: list[Any] = []
        for clause, val in (("rule=?", rule), ("host=?", host), ("at_ms>=?", since_ms),
                            ("at_ms<?", until_ms), ("status=?", status)):
            if val is not None:
                sql += f" AND {clause}"
                params.append(val)
        sql += " ORDER BY at_ms DESC, id DESC LIMIT ?"
        params.append(limit)
        return [{"id": r["id"], "rule": r["rule"], "host": r["host"],
                 "labels": json.loads(r["labels"]), "from": r["from_status"],
                 "status": r["status"], "at_ms": r["at_ms"], "at": iso_ms(r["at_ms"]),
                 "created_ms": r["created_ms"], "value": r["value"],
                 "starts_at_ms": r["starts_at"], "ends_at_ms": r["ends_at"],
                 "historical": bool(r["historical"]), "silenced": bool(r["silenced"]),
                 "notified": bool(r["notified"]), "reason": r["reason"],
                 "fingerprint": r["fingerprint"], "annotations": json.loads(r["annotations"])}
                for r in self.store.query(sql, params)]

    def rules_status(self) -> list[dict[str, Any]]:
        out = []
        for rule in self.ruleset.rules:
            rt = self._runtimes.get(rule.name) if rule.enabled else None
            d = rule.model_dump(by_alias=True, mode="json")
            d["health"] = None if rt is None else {
                "last_eval_ms": rt.last_eval_ms, "duration_ms": rt.duration_ms,
                "series": len(rt.table), "error": rt.error, "watermark_ms": rt.watermark,
                "active": int((rt.table.status[:len(rt.table)] != INACTIVE).sum()),
                "holes": len(rt.holes)}
            out.append(d)
        return out


def _rule_name(rt: _Runtime) -> str:
    for stored in rt.stored.values():
        return str(stored["alert_labels"].get("alertname", "?"))
    return "?"


def _nz(value: int | None) -> int:
    return int(NONE) if value is None else int(value)


def _none(value: Any) -> int | None:
    v = int(value)
    return None if v < 0 else v


def _dump_blob(table: SeriesTable) -> str:
    n = len(table)
    return json.dumps({"keys": table.keys, "hosts": table.hosts, "labels": table.labels,
                       "wm": table.wm[:n].tolist(), "n": table.ewma_n[:n].tolist(),
                       "mean": table.ewma_mean[:n].tolist(), "var": table.ewma_var[:n].tolist()})


def _load_blob(table: SeriesTable, blob: dict[str, Any]) -> None:
    for i, key in enumerate(blob.get("keys", [])):
        row = table.add(key, blob["hosts"][i], blob["labels"][i], int(blob["wm"][i]))
        table.ewma_n[row] = blob["n"][i]
        table.ewma_mean[row] = blob["mean"][i]
        table.ewma_var[row] = blob["var"][i]
        table.last_data[row] = int(blob["wm"][i])


__all__ += ["RulesError", "fingerprint"]
