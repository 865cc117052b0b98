"""What each evaluation cycle writes of the alert state: only the rows that changed, the
others at most every ``ALERT_REFRESH_MS``; and a restart from such lagging rows goes on as if
it had never stopped. Fake clock and in-memory storage; SQLite and PostgreSQL state."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemon.collector.alerting import AlertEngine, parse_rules
from edgemon.collector.alerting import written as alerting_written
from edgemon.collector.alerting.alertmanager import alertmanager_alerts
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.alerting.store import AlertRecord, CycleWrite
from edgemon.collector.alerting.written import ALERT_REFRESH_MS
from edgemon.collector.http.alerts_api import active_alerts, alert_history
from tests.test_alerting_engine import (
    CPU,
    MIN,
    RECEIVER,
    T0,
    Clock,
    cpu,
    engine,
    outbox,
    settings,
)

SECOND = 1_000
INTERVAL = 10 * SECOND
HOSTS = [f"edge-{i:02d}" for i in range(20)]


class WriteCounter:
    """How many alert rows each cycle handed to ``CycleWrite.put_alerts``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[int] = []
        original = CycleWrite.put_alerts

        def put_alerts(write: CycleWrite, records: Iterable[AlertRecord]) -> None:
            records = list(records)
            self.rows.append(len(records))
            original(write, records)

        monkeypatch.setattr(CycleWrite, "put_alerts", put_alerts)

    def cycle(self, eng: AlertEngine, clock: Clock, at_ms: int) -> int:
        """Run one cycle at ``at_ms``; the alert rows it wrote."""
        self.rows.clear()
        clock.ms = at_ms
        eng.run_cycle()
        return sum(self.rows)


def stored(eng: AlertEngine) -> dict[str, dict[str, Any]]:
    return {a["host"]: a for a in active_alerts(eng)}


def test_a_cycle_with_nothing_changed_writes_no_alert_row(
        alert_state: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(alert_state, store, settings() + CPU, clock)
    for host in HOSTS:
        cpu(store, host, 0, 40, 95.0)
    counter = WriteCounter(monkeypatch)
    for t in range(T0 + MIN, T0 + 10 * MIN, INTERVAL):
        counter.cycle(eng, clock, t)
    assert {a["status"] for a in stored(eng).values()} == {"firing"}
    per_cycle = []
    for t in range(T0 + 10 * MIN, T0 + 20 * MIN, INTERVAL):
        per_cycle.append(((t - T0) % MIN, counter.cycle(eng, clock, t)))
    # within a step nothing moves: nothing is written; a new step moves every watermark, and
    # each row is written again at most once per ALERT_REFRESH_MS
    assert [n for offset, n in per_cycle if offset != 0] == [0] * 50
    assert sum(n for _, n in per_cycle) <= len(HOSTS) * (10 * MIN // ALERT_REFRESH_MS + 1)
    eng.close()


def test_a_status_change_is_stored_by_the_cycle_that_made_it(
        alert_state: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(alert_state, store, settings() + RECEIVER + CPU, clock)
    for host in HOSTS:
        cpu(store, host, 0, 40, 95.0)
    cpu(store, "late", 0, 12, 20.0)
    cpu(store, "late", 12, 40, 95.0)
    counter = WriteCounter(monkeypatch)
    seen: dict[str, str] = {}
    for t in range(T0 + MIN, T0 + 25 * MIN, INTERVAL):
        counter.cycle(eng, clock, t)
        rt = eng._runtimes["cpu-high"]
        table = rt.table
        in_memory = {table.hosts[r]: ("firing" if table.status[r] == 2 else "pending")
                     for r in table.active_rows().tolist()}
        rows = stored(eng)
        assert {h: a["status"] for h, a in rows.items()} == in_memory
        for host, a in rows.items():
            r = table.hosts.index(host)
            assert a["notified"] == bool(table.notified[r])
            assert a["active_since_ms"] == int(table.active_since[r])
            assert a["fired_at_ms"] == (int(table.fired_at[r]) if table.fired_at[r] >= 0 else None)
        seen.update({h: a["status"] for h, a in rows.items()})
    assert seen["late"] == "firing"
    assert len(outbox(eng)) == len(HOSTS) + 1
    eng.close()


def test_the_stored_value_lags_by_at_most_the_refresh_period(alert_state: Path | str) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(alert_state, store, settings() + CPU, clock)
    ts = T0 + MIN * np.arange(0, 40, dtype=np.int64)
    store.write("cpu_usage_percent", "h1", {"cpu": "total"}, ts, 90.0 + np.arange(40) * 0.25)
    values: list[tuple[int, float]] = []  # (cycle time, value in the engine's memory)
    checked = 0
    for t in range(T0 + MIN, T0 + 30 * MIN, INTERVAL):
        clock.ms = t
        eng.run_cycle()
        table = eng._runtimes["cpu-high"].table
        values.append((t, float(table.value[table.hosts.index("h1")])))
        shown = stored(eng).get("h1")
        if shown is None:
            continue
        recent = {v for at, v in values if t - at <= ALERT_REFRESH_MS + INTERVAL}
        assert shown["value"] in recent
        checked += 1
    assert checked > 100
    eng.close()


PATTERNS = {  # host -> (from minute, to minute, cpu) stretches
    "steady": [(0, 60, 95.0)],
    "flappy": [(0, 8, 95.0), (8, 14, 20.0), (14, 30, 95.0), (30, 60, 40.0)],
    "late": [(0, 15, 20.0), (15, 60, 96.0)],
    "quiet": [(0, 21, 97.0)],  # stops sending: resolves with "no data"
    "vanishing": [(0, 18, 50.0), (18, 19, 60.0), (19, 20, 90.0)],  # an anomaly, then silence
}
CLEARING = CPU + 'keep_firing_for = "3m"\n'
ANOMALY = """[[rule]]
name = "cpu-odd"
kind = "anomaly"
metric = "cpu_usage_percent"
match = { cpu = "total" }
min_history = 3
min_stddev = 1
alpha = 0.5
"""
RATE = """[[rule]]
name = "errors"
kind = "rate"
metric = "errors_total"
window = "1m"
threshold = 1
for = "2m"
keep_firing_for = "2m"
"""


def run(alert_state: Path | str, restarts: set[int]) -> tuple[list[Any], list[Any], int]:
    """Cycles every 10 s over 50 minutes, restarting the engine at the cycles ``restarts``:
    (history, outbox, holes recorded: the most any cycle left)."""
    store = InMemoryGridStorage(60_000)
    for host, stretches in PATTERNS.items():
        for a, b, value in stretches:
            cpu(store, host, a, b, value)
    per_minute = np.r_[np.full(10, 30.0), np.full(15, 120.0), np.full(25, 30.0)]
    store.write("errors_total", "counting", {}, T0 + MIN * np.arange(50, dtype=np.int64),
                np.cumsum(per_minute))
    clock = Clock(T0)
    rules = settings() + RECEIVER + CLEARING + "\n" + ANOMALY + "\n" + RATE
    eng = engine(alert_state, store, rules, clock)
    holes = 0
    for i, t in enumerate(range(T0 + MIN, T0 + 50 * MIN, INTERVAL)):
        if i in restarts:
            eng.close()
            eng = engine(alert_state, store, rules, clock)
        clock.ms = t
        eng.run_cycle()
        holes = max(holes, len(eng.store.holes()))
    transitions = [(r["rule"], r["host"], r["status"], r["at_ms"], r["value"], r["reason"],
                    r["historical"], r["notified"], r["annotations"])
                   for r in sorted(alert_history(eng, limit=10_000), key=lambda r: r["id"])]
    result = (transitions, [(o["status"], o["labels"]["host"]) for o in outbox(eng)], holes)
    eng.close()
    return result


def test_a_restart_from_lagging_rows_goes_on_as_if_it_never_stopped(
        alert_state: Path | str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # rows rewritten every 5 steps at most: their stored watermark, value and last data
    # time are minutes behind when the engine stops
    monkeypatch.setattr(alerting_written, "ALERT_REFRESH_MS", 5 * MIN)
    reference = run(tmp_path / "reference.db", set())
    assert reference[2] == 0
    assert ("resolved", "quiet") in reference[1] and ("firing", "late") in reference[1]
    assert {(rule, status) for rule, _, status, *_ in reference[0]} >= {
        ("cpu-high", "resolved"), ("cpu-odd", "firing"), ("cpu-odd", "resolved"),
        ("errors", "firing"), ("errors", "resolved")}
    # restarts at many offsets within a minute's step, while rows are stored behind memory
    restarted = run(alert_state, {40, 59, 95, 101, 137, 170, 200, 233, 260})
    assert restarted == reference


def test_new_annotations_are_stored_by_the_next_cycle_after_a_reload(
        alert_state: Path | str) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(alert_state, store, settings() + CPU, clock)
    for host in HOSTS:
        cpu(store, host, 0, 40, 95.0)
    for t in range(T0 + MIN, T0 + 10 * MIN, INTERVAL):
        clock.ms = t
        eng.run_cycle()
    assert {a["annotations"]["summary"] for a in stored(eng).values()} == {
        f"cpu-high on {h}: 95.0" for h in HOSTS}
    eng.set_rules(parse_rules(settings() + CPU + 'severity = "critical"\n'
                              'annotations = { summary = "{host} is hot" }\n'))
    clock.ms += INTERVAL  # within the step: only the rule changed
    eng.run_cycle()
    rows = stored(eng)
    assert {a["annotations"]["summary"] for a in rows.values()} == {f"{h} is hot" for h in HOSTS}
    assert {a["alert_labels"]["severity"] for a in rows.values()} == {"critical"}
    eng.close()


def test_alertmanager_sees_a_firing_alert_fresh_while_its_stored_data_time_lags(
        alert_state: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerting_written, "ALERT_REFRESH_MS", 30 * MIN)
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(alert_state, store, settings(notify_max_age="3m") + CPU, clock)
    cpu(store, "h1", 0, 40, 95.0)
    for t in range(T0 + MIN, T0 + 20 * MIN, INTERVAL):
        clock.ms = t
        eng.run_cycle()
    (row,) = eng.store.alerts(status="firing")
    assert row.last_data is not None and row.last_data < clock.ms - 3 * MIN  # stored behind
    assert [a.status for a in alertmanager_alerts(eng, clock.ms).values()] == ["firing"]
    eng.close()
