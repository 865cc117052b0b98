"""``AlertEngine``: one evaluation cycle over every rule and host.

Per cycle: at most one ``Storage.query`` per due rule (all hosts at once) plus one
``Storage.hosts()``; a second query for a rule only while some hosts are back-filling holes.
Everything the cycle decides is handed to the store (``store.py``) in one transaction (of the
alert rows, those that changed: ``written.py``); the in-memory state is replaced only after that
commit, so a failed commit is simply evaluated again next cycle. What the receivers get is built
by ``notify.py``; what the API shows, by ``collector/http/alerts_api.py``.

Why one module of ~700 lines: restoring the state from the store, the cycle and its commit all
read and replace the same per-rule runtimes (``_Runtime``) under one lock; split apart, that
state would have three owners. Records, persistence, evaluation and documents live elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
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
from edgemon.collector.alerting.notify import MQTT_RECEIVER, mqtt_message, receiver_alert
from edgemon.collector.alerting.rules import (
    AnomalyRule,
    DiskFullEtaRule,
    HostDownRule,
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
from edgemon.collector.alerting.store import (
    AlertRecord,
    AlertStore,
    CycleWrite,
    HoleRecord,
    OutboxRecord,
    RuleProgress,
)
from edgemon.collector.alerting.transitions import (
    Identity,
    Transition,
    annotations,
    finite,
    identity,
    rule_identity,
    transition,
)
from edgemon.collector.alerting.written import WrittenRows
from edgemon.collector.storage.base import HostInfo, RangeQuery, Storage
from edgemon.common.clock import now_ms

__all__ = ["AlertEngine", "CycleReport"]

log = logging.getLogger("edgemon.collector.alerting")

HOLE_PATIENCE_MS = 30 * 60_000
BIG = 1 << 40  # max_series / max_points of the engine's queries: it wants every host


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
    stored: dict[str, Identity] = field(default_factory=dict)  # key -> identity as saved
    written: WrittenRows = field(default_factory=WrittenRows)  # what the store holds of rows
    # after a restore: the oldest stored watermark of an active alert; the first cycle reads
    # from there, so a row stored with a lagging watermark replays its steps (-1: none)
    replay_from: int = -1


def _signature(rule: Any) -> str:
    """What a rule's stored state depends on; a change means starting afresh."""
    keep = {"kind": rule.kind, "hosts": list(rule.host_globs)}
    for name in ("metric", "match", "aggregation", "window", "step", "rate"):
        if hasattr(rule, name):
            keep[name] = getattr(rule, name)
    return json.dumps(keep, sort_keys=True)


class AlertEngine:
    """Evaluate rules over a ``Storage``; keep state, history and the outbox in ``db_path`` (a
    SQLite file, a ``postgresql://`` URL shared by the collectors, or an open ``AlertStore``).

    ``rules``: a loaded ``RuleSet`` (default: ``load_rules(rules_path)``, i.e. the built-in
    defaults when ``rules_path`` is None). ``clock_ms``: wall clock in ms. ``publish(topic,
    payload_bytes)``: MQTT publisher for transitions (None = no MQTT).
    """

    def __init__(self, storage: Storage, db_path: str | Path | AlertStore, *,
                 rules: RuleSet | None = None,
                 rules_path: str | Path | None = None,
                 clock_ms: Callable[[], int] = now_ms,
                 publish: Callable[[str, bytes], Any] | None = None,
                 external_url: str = "") -> None:
        self.storage = storage
        self.default_external_url = external_url  # when the rules' settings give none
        self.clock_ms = clock_ms
        self.publish = publish
        self.rules_path = rules_path
        self.ruleset = rules if rules is not None else load_rules(rules_path)
        self.rules_loaded_ms = clock_ms()
        self.store = db_path if isinstance(db_path, AlertStore) else AlertStore(db_path)
        self.started_ms = clock_ms()
        self._cycle_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._runtimes: dict[str, _Runtime] = {}
        self._retired: list[_Runtime] = []
        self._prev_cycle_ms: int | None = None
        self._last_prune_ms = 0
        self._receivers_changed = True  # outbox rows of removed receivers: dropped next cycle
        self.evaluating = False  # this engine runs the cycles now (AlertingService: it leads)
        # counters for /metrics (http/metrics.py): cycles, rule evaluations and transitions
        self.cycles = 0
        self.cycle_failures = 0
        self.rule_evaluations: Counter[str] = Counter()
        self.rule_failures: Counter[str] = Counter()
        self.transitions_by_status: Counter[str] = Counter()
        self.last_cycle_seconds = 0.0
        self._restore()

    # --- lifecycle ------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (in the cycle's thread) after a commit that queued
        notifications; the delivery worker uses it to wake up. Added once however often."""
        if callback not in self._listeners:
            self._listeners.append(callback)

    def close(self) -> None:
        with self._cycle_lock:
            self.store.close()

    @property
    def settings(self) -> Any:
        return self.ruleset.settings

    @property
    def external_url(self) -> str:
        """The base of notification links: the rules' ``external_url``, else the collector's."""
        return str(self.settings.external_url or self.default_external_url)

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
            self._receivers_changed = True

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

    def reload_state(self) -> None:
        """Forget the in-memory state and read it again from the store (blocking): a
        collector that becomes the leader of a shared store goes on from where the previous
        leader committed, not from what it read at its own start."""
        with self._cycle_lock:
            self._runtimes = {}
            self._retired = []
            self._prev_cycle_ms = None
            self._receivers_changed = True
            self._restore()

    def _restore(self) -> None:
        """Rebuild the in-memory state from the database (after a restart)."""
        progress = self.store.rule_progress()
        alerts_by_rule: dict[str, list[AlertRecord]] = {}
        for alert in self.store.alerts():
            alerts_by_rule.setdefault(alert.rule, []).append(alert)
        holes_by_rule: dict[str, list[Hole]] = {}
        for hole in self.store.holes():
            holes_by_rule.setdefault(hole.rule, []).append(Hole.from_json(hole.body))
        wanted = {r.name: r for r in self.ruleset.enabled}
        for name in sorted(set(progress) | set(alerts_by_rule)):
            saved = progress.get(name)
            rule = wanted.get(name)
            signature = saved.signature if saved is not None else ""
            rt = _Runtime(rule, SeriesTable(), signature)
            if saved is not None:
                rt.watermark = rt.restored_wm = saved.watermark
                rt.last_eval_ms = saved.last_eval_ms
                if saved.blob:
                    rt.table.restore_baselines(saved.blob)
            for alert in alerts_by_rule.get(name, []):
                row = rt.table.add(alert.key, alert.host, alert.labels,
                                   alert.wm if alert.wm is not None else -1)
                table = rt.table
                table.status[row] = FIRING if alert.status == "firing" else PENDING
                table.active_since[row] = _time_column(alert.active_since)
                table.fired_at[row] = _time_column(alert.fired_at)
                table.clearing_since[row] = _time_column(alert.clearing_since)
                table.value[row] = np.nan if alert.value is None else alert.value
                table.last_data[row] = _time_column(alert.last_data)
                table.notified[row] = alert.notified
                rt.stored[alert.key] = Identity(alert.alert_labels, alert.fingerprint,
                                                alert.annotations)
            rt.holes = holes_by_rule.get(name, [])
            active = rt.table.active_rows()
            if active.size:
                rt.replay_from = int(rt.table.wm[active].min())
            if rule is not None and _signature(rule) == signature:
                self._runtimes[name] = rt
            else:
                self._retired.append(rt)
        for name, rule in wanted.items():
            if name not in self._runtimes:
                self._runtimes[name] = _Runtime(rule, SeriesTable(), _signature(rule))

    # --- the cycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, executor: Executor | None = None,
                  should_run: Callable[[], bool] = lambda: True) -> None:
        """Evaluate every ``settings.interval`` until ``stop`` is set (cycles run in
        ``executor``: storage and SQLite calls block), each cycle only if ``should_run()``
        (the collector's leadership, asked before every cycle)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            began = loop.time()
            try:
                if should_run():
                    await loop.run_in_executor(executor, self.run_cycle)
            except Exception:
                log.exception("alert evaluation cycle failed")
            wait = self.settings.interval / 1000 - (loop.time() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.05, wait))

    def run_cycle(self, now_ms: int | None = None) -> CycleReport:
        """One evaluation of every due rule over every host (blocking)."""
        with self._cycle_lock:
            try:
                report = self._cycle(self.clock_ms() if now_ms is None else now_ms)
            except Exception:
                self.cycle_failures += 1
                raise
            self._count(report)
            return report

    def _count(self, report: CycleReport) -> None:
        self.cycles += 1
        self.last_cycle_seconds = report.duration_ms / 1000
        for name, outcome in report.rules.items():
            self.rule_evaluations[name] += 1
            if "error" in outcome:
                self.rule_failures[name] += 1
        self.transitions_by_status.update(tr.status for tr in report.transitions)

    def _cycle(self, now: int) -> CycleReport:
        began = time.perf_counter()
        report = CycleReport(now)
        settings = self.settings
        if self._receivers_changed:  # here, not at a reload: only the leader writes the outbox
            self.store.drop_receiver_rows(set(self.ruleset.receivers) | {MQTT_RECEIVER}, now)
            self._receivers_changed = False
        silences = SilenceSet(self.store.silences(now), now)
        hosts_cache: list[HostInfo] | None = None

        def hosts() -> list[HostInfo]:
            nonlocal hosts_cache
            if hosts_cache is None:
                hosts_cache = self.storage.hosts()
            return hosts_cache

        results: list[tuple[_Runtime, EvalResult, list[tuple[Hole, RawTransition]],
                            list[Hole] | None]] = []
        self._announce_metrics()
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
            rt.restored_wm = rt.replay_from = -1
            rt.written.committed(rt.rule, len(res.state), now)
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
        if new_rows or report.transitions:  # Alertmanagers want every change, queued or not
            for callback in self._listeners:
                try:
                    callback()
                except Exception:
                    log.exception("outbox listener failed")
        return report

    def _announce_metrics(self) -> None:
        """Tell a store with a pending-batch cache every metric the rules read, before the
        first query: a batch it decodes is then kept for all of them at once, not decoded
        again for each rule's metric (``storage/pending_cache.py``)."""
        cache = getattr(self.storage, "pending_cache", None)
        if cache is None:
            return
        for rt in self._runtimes.values():
            metric = getattr(rt.rule, "metric", None)
            if metric:
                cache.read(metric)

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
            if rt.replay_from >= 0:  # a step before it too, as above (rates)
                start = min(start, rt.replay_from - step)
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
    def _identity(rt: _Runtime, key: str, host: str, labels: dict[str, str]) -> Identity:
        """Alert labels and fingerprint of a series (of a removed rule: as stored)."""
        if rt.rule is not None:
            return rule_identity(rt.rule, host, labels)
        return rt.stored.get(key) or identity({"alertname": _rule_name(rt), "host": host}, {})

    @staticmethod
    def _render(rt: _Runtime, key: str, host: str, labels: dict[str, str],
                value: float | None) -> dict[str, str]:
        if rt.rule is None:
            stored = rt.stored.get(key)
            return dict(stored.annotations or {}) if stored is not None else {}
        return annotations(rt.rule, host, labels, value)

    def _transition(self, rt: _Runtime, table: SeriesTable, raw: RawTransition, now: int,
                    silences: SilenceSet, hole: Hole | None = None) -> Transition:
        if hole is None:
            key, host, labels = table.keys[raw.row], table.hosts[raw.row], table.labels[raw.row]
            fired, active = int(table.fired_at[raw.row]), int(table.active_since[raw.row])
        else:
            key, host, labels = hole.key, hole.host, hole.labels
            fired = active = -1
        ident = self._identity(rt, key, host, labels)
        return transition(
            raw, rule=rt.rule.name if rt.rule else _rule_name(rt), key=key, host=host,
            labels=labels, ident=ident,
            rendered=self._render(rt, key, host, labels, finite(raw.value)),
            fired_at=fired, active_since=active, replayed=hole is not None,
            historical=hole is not None or raw.at_ms < now - self.settings.notify_max_age,
            silenced=bool(silences) and silences.silenced_by(ident.alert_labels) is not None,
            now=now)

    def _commit(self, now: int, results: list[Any], retired: list[Any], silences: SilenceSet,
                report: CycleReport) -> int:
        max_age = self.settings.notify_max_age
        outbox_rows = 0
        with self.store.cycle() as write:
            for rt, res in retired:
                name = rt.rule.name if rt.rule else _rule_name(rt)
                for raw in res.transitions:
                    tr = self._transition(rt, res.state, raw, now, silences)
                    tr.historical = False
                    tr.silenced = False
                    was_notified = bool(rt.table.notified[raw.row])
                    outbox_rows += self._record(write, tr, rt.rule, was_notified and
                                                tr.status == "resolved", now)
                    report.transitions.append(tr)
                write.forget_rule(name, progress=name not in self._runtimes)
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
                    outbox_rows += self._record(write, tr, rule, notify, now)
                    report.transitions.append(tr)
                    touched.add(raw.row)
                for hole, raw in hole_out:
                    tr = self._transition(rt, table, raw, now, silences, hole)
                    outbox_rows += self._record(write, tr, rule, False, now)
                    report.transitions.append(tr)
                # still firing, never notified (historical or silenced until now): notify
                # once the evaluation is fresh and no silence covers it
                n = len(table)
                late = np.flatnonzero((table.status[:n] == FIRING) & ~table.notified[:n]
                                      & (table.last_data[:n] >= now - max_age))
                for row in late.tolist():
                    ident = self._identity(rt, table.keys[row], table.hosts[row],
                                           table.labels[row])
                    if silences and silences.silenced_by(ident.alert_labels) is not None:
                        continue
                    raw = RawTransition(row, FIRING, FIRING, int(table.last_data[row]),
                                        float(table.value[row]), "still firing")
                    tr = self._transition(rt, table, raw, now, silences)
                    tr.from_status, tr.status, tr.historical = "firing", "firing", False
                    tr.starts_at = int(table.fired_at[row])
                    table.notified[row] = True
                    outbox_rows += self._record(write, tr, rule, True, now)
                    report.transitions.append(tr)
                    touched.add(row)
                self._save_alerts(write, rt, table, touched, now, res.holes)
                baselines = table.baselines() if isinstance(rule, AnomalyRule) else None
                write.save_progress(RuleProgress(
                    rule=rule.name, kind=rule.kind, signature=rt.signature,
                    watermark=max(rt.watermark, res.newest_ms), last_eval_ms=now,
                    duration_ms=rt.duration_ms, series=len(table), error=None, blob=baselines))
                if holes is not None:
                    write.replace_holes(rule.name, [HoleRecord(rule.name, h.key, h.from_ms,
                                                               h.to_json()) for h in holes])
        report.notifications = outbox_rows
        return outbox_rows

    def _save_alerts(self, write: CycleWrite, rt: _Runtime, table: SeriesTable,
                     touched: set[int], now: int, holes: list[Hole]) -> None:
        """The stored state of the rule's active series that are due (``written.py``; an
        anomaly rule's watermarks are restored from its baselines, not replayed, so its stored
        values must be current: a "no data" resolution after a restart carries them); resolved
        ones are deleted."""
        rule = rt.rule
        write.delete_alerts(rule.name, [table.keys[r] for r in touched
                                        if table.status[r] == INACTIVE])
        n = len(table)
        due = rt.written.due(rule, rt.table, table, now, (h.key for h in holes),
                             moves_at_once=isinstance(rule, AnomalyRule))
        rows = np.flatnonzero((table.status[:n] != INACTIVE) & due)
        records = []
        for r in rows.tolist():
            key, host, labels = table.keys[r], table.hosts[r], table.labels[r]
            ident = self._identity(rt, key, host, labels)
            value = finite(float(table.value[r]))
            records.append(AlertRecord(
                rule=rule.name, key=key, host=host, labels=labels,
                status="firing" if table.status[r] == FIRING else "pending",
                active_since=_optional_time(table.active_since[r]),
                fired_at=_optional_time(table.fired_at[r]),
                clearing_since=_optional_time(table.clearing_since[r]),
                value=value, wm=int(table.wm[r]), last_data=_optional_time(table.last_data[r]),
                notified=bool(table.notified[r]), fingerprint=ident.fingerprint,
                alert_labels=ident.alert_labels,
                annotations=self._render(rt, key, host, labels, value), updated_ms=now))
        write.put_alerts(records)
        rt.written.writing(rows)

    def _record(self, write: CycleWrite, tr: Transition, rule: Any, notify: bool,
                now: int) -> int:
        """A history row, and when ``notify`` its outbox rows (one per receiver, plus MQTT for
        every firing/resolved transition). Returns the number of outbox rows."""
        tr.notified = notify
        if tr.status in ("pending", "inactive") and not self.settings.record_pending:
            return 0
        tr.id = write.add_history(tr)
        key = f"{self.store.engine_id}-{tr.id}"
        bodies: list[tuple[str, str]] = []  # (receiver, body)
        if notify:
            receivers = (self.ruleset.receivers_for(rule) if rule is not None
                         else list(self.ruleset.receivers.values()))
            bodies += [(r.name, json.dumps(receiver_alert(r, tr, key, self.external_url)))
                       for r in receivers if tr.status != "resolved" or r.send_resolved]
        if (self.publish is not None and self.settings.mqtt
                and tr.status in ("firing", "resolved")):
            bodies.append((MQTT_RECEIVER, json.dumps(mqtt_message(tr, key))))
        write.add_outbox([OutboxRecord(tr.id, receiver, tr.rule, tr.fingerprint, key, body, now)
                          for receiver, body in bodies])
        return len(bodies)

    def last_data_ms(self, rule: str, key: str) -> int | None:
        """The newest data time of the alert ``key`` of ``rule`` in this engine's memory (None:
        unknown). The store's may be up to ``written.ALERT_REFRESH_MS`` behind while this engine
        evaluates; without a lock: a table is replaced whole, never changed after its commit."""
        rt = self._runtimes.get(rule)
        if rt is None:
            return None
        table = rt.table
        row = table.index.get(key)
        if row is None or row >= len(table) or table.last_data[row] < 0:
            return None
        return int(table.last_data[row])

    def rule_health(self, name: str) -> dict[str, Any] | None:
        """How the enabled rule ``name`` was last evaluated (None: not evaluated by this
        engine: disabled or unknown). On a shared store while another collector evaluates
        (``evaluating`` false): as that one last committed it (blocking: a read)."""
        rt = self._runtimes.get(name)
        if rt is None:
            return None
        if self.store.shared and not self.evaluating:
            return self.store.rule_health(name)
        return {"last_eval_ms": rt.last_eval_ms, "duration_ms": rt.duration_ms,
                "series": len(rt.table), "error": rt.error, "watermark_ms": rt.watermark,
                "active": int((rt.table.status[:len(rt.table)] != INACTIVE).sum()),
                "holes": len(rt.holes)}


def _rule_name(rt: _Runtime) -> str:
    for stored in rt.stored.values():
        return str(stored["alert_labels"].get("alertname", "?"))
    return "?"


def _time_column(ms: int | None) -> int:
    """A stored time for a table column: None becomes the NONE sentinel."""
    return int(NONE) if ms is None else int(ms)


def _optional_time(value: Any) -> int | None:
    """A time column's value for the store: the NONE sentinel (< 0) becomes None."""
    ms = int(value)
    return None if ms < 0 else ms
