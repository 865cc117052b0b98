"""AlertEngine over the in-memory fake storage: query count, restarts, back-fill, staleness,
reloads. Clocks are fake; no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemon.collector.alerting import AlertEngine, load_rules, parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.http.alerts_api import active_alerts, alert_history, rules_status
from edgemon.collector.storage.base import RangeQuery, SeriesResult

T0 = 1_800_000_000_000 // 3_600_000 * 3_600_000
MIN = 60_000
RECEIVER = '[[receiver]]\nname = "ops"\nurl = "http://127.0.0.1:9/hook"\n\n'
CPU = """[[rule]]
name = "cpu-high"
kind = "threshold"
metric = "cpu_usage_percent"
match = { cpu = "total" }
window = "1m"
threshold = 80
for = "5m"
"""


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def settings(**kw: str) -> str:
    base = {"settle": '"0s"', "notify_max_age": '"10m"', "group_wait": '"0s"',
            "record_pending": "true"}
    base.update({k: f'"{v}"' for k, v in kw.items()})
    return "[settings]\n" + "".join(f"{k} = {v}\n" for k, v in base.items()) + "\n"


def engine(where: Path | str, store: InMemoryGridStorage, rules: str, clock: Clock,
           **kw: Any) -> AlertEngine:
    """An engine keeping its state in ``alerts.db`` in the directory ``where``, else at
    ``where`` itself (the ``alert_state`` fixture: a SQLite file or a PostgreSQL URL)."""
    db = where / "alerts.db" if isinstance(where, Path) and where.is_dir() else where
    return AlertEngine(store, db, rules=parse_rules(rules), clock_ms=clock, **kw)


def cpu(store: InMemoryGridStorage, host: str, minute_from: int, minute_to: int, value: float,
        received: int | None = None) -> None:
    ts = T0 + MIN * np.arange(minute_from, minute_to, dtype=np.int64)
    store.write("cpu_usage_percent", host, {"cpu": "total"}, ts, np.full(ts.size, value),
                received_ms=received)


def history(eng: AlertEngine, **kw: Any) -> list[tuple[str, str, int, bool, bool]]:
    rows = sorted(alert_history(eng, **kw, limit=10_000), key=lambda r: r["id"])
    return [(r["host"], r["status"], (r["at_ms"] - T0) // MIN, r["historical"], r["notified"])
            for r in rows]


def outbox(eng: AlertEngine) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) | {"receiver": r["receiver"]}
            for r in eng.store.query("SELECT * FROM outbox ORDER BY id")]


def run_minutes(eng: AlertEngine, clock: Clock, start: int, stop: int) -> None:
    for minute in range(start, stop):
        clock.ms = T0 + MIN * minute
        eng.run_cycle()


def test_one_storage_query_per_rule_for_every_host(tmp_path: Path) -> None:
    store = InMemoryGridStorage(60_000)
    ts = T0 + MIN * np.arange(-30, 1, dtype=np.int64)
    hosts = [f"edge-{i:03d}" for i in range(50)]
    rng = np.random.default_rng(0)
    store.write_block("cpu_usage_percent", hosts, [{"cpu": "total"}] * 50, ts,
                      rng.uniform(0, 100, (50, ts.size)))
    store.write_block("memory_usage_percent", hosts, [{}] * 50, ts,
                      rng.uniform(0, 100, (50, ts.size)))
    clock = Clock(T0 + MIN)
    eng = AlertEngine(store, tmp_path / "a.db", rules=load_rules(), clock_ms=clock)
    series_rules = [r for r in eng.ruleset.enabled if r.kind != "host_down"]
    for i in range(3):
        store.queries.clear()
        store.hosts_calls = 0
        clock.ms = T0 + MIN * (i + 1)
        report = eng.run_cycle()
        if i == 0:
            assert report.rules["cpu-high"]["series"] == 50
        names = [q.name for q in store.queries]
        # disk-full-soon evaluates once a minute: every rule is due in a 1-minute cycle
        assert sorted(names) == sorted(r.metric for r in series_rules)
        assert all(q.hosts == () for q in store.queries)  # all hosts in one query
        assert store.hosts_calls == 1
    eng.close()


def test_restart_keeps_the_pending_timer(alert_state: Path | str) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    rules = settings() + CPU
    eng = engine(alert_state, store, rules, clock)
    cpu(store, "h1", 0, 3, 20.0)
    cpu(store, "h1", 3, 6, 95.0)
    run_minutes(eng, clock, 1, 7)
    assert [a["status"] for a in active_alerts(eng)] == ["pending"]
    eng.close()
    # a new engine on the same file: the timer started at minute 4 (end of the first hot step)
    eng2 = engine(alert_state, store, rules, clock)
    assert [a["status"] for a in active_alerts(eng2)] == ["pending"]
    cpu(store, "h1", 6, 12, 95.0)
    run_minutes(eng2, clock, 7, 13)
    # "notified": eligible for notification (not silenced, not historical), receivers or not
    assert history(eng2) == [("h1", "pending", 4, False, False),
                             ("h1", "firing", 9, False, True)]
    eng2.close()


def test_restart_does_not_notify_a_firing_alert_again(alert_state: Path | str) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    rules = settings() + RECEIVER + CPU
    eng = engine(alert_state, store, rules, clock)
    cpu(store, "h1", 0, 30, 95.0)
    run_minutes(eng, clock, 1, 10)
    assert [(a["status"], a["receiver"]) for a in outbox(eng)] == [("firing", "ops")]
    eng.close()
    eng2 = engine(alert_state, store, rules, clock)
    run_minutes(eng2, clock, 10, 25)
    assert len(outbox(eng2)) == 1
    assert [h[1] for h in history(eng2)] == ["pending", "firing"]
    # and it still resolves (and notifies that) when the load goes away
    cpu(store, "h1", 30, 35, 10.0)
    run_minutes(eng2, clock, 25, 36)
    assert [(a["status"], a["receiver"]) for a in outbox(eng2)] == [("firing", "ops"),
                                                                     ("resolved", "ops")]
    eng2.close()


def test_backfilled_problem_that_ended_long_ago_is_history_only(tmp_path: Path) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(tmp_path, store, settings() + RECEIVER + CPU, clock)
    cpu(store, "h1", 0, 10, 20.0, received=T0 + 10 * MIN)
    cpu(store, "h2", 0, 120, 20.0, received=T0 + 120 * MIN)
    run_minutes(eng, clock, 1, 11)
    # h1 is cut off for an hour; then live data resumes (normal load) ...
    for minute in range(70, 80):
        cpu(store, "h1", minute, minute + 1, 20.0, received=T0 + (minute + 1) * MIN)
        clock.ms = T0 + (minute + 1) * MIN
        eng.run_cycle()
    assert history(eng) == []
    # ... and the back-log arrives, oldest first, in two parts: a 15-minute CPU spike at 30-45
    backlog = np.full(60, 20.0)
    backlog[20:35] = 95.0
    for part in (slice(0, 30), slice(30, 60)):
        minutes = np.arange(10, 70)[part]
        store.write("cpu_usage_percent", "h1", {"cpu": "total"}, T0 + MIN * minutes,
                    backlog[part], received_ms=clock.ms)
        clock.ms += MIN
        eng.run_cycle()
    assert history(eng) == [("h1", "pending", 31, True, False), ("h1", "firing", 36, True, False),
                            ("h1", "resolved", 46, True, False)]
    assert outbox(eng) == [] and active_alerts(eng) == []
    eng.close()


def test_old_transitions_are_historical_but_an_ongoing_problem_notifies_once(
        tmp_path: Path, alert_state: Path | str) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    rules = settings(notify_max_age="2m") + RECEIVER + CPU.replace('for = "5m"', 'for = "2m"')
    cpu(store, "h1", 0, 20, 20.0)
    cpu(store, "h2", 0, 20, 20.0)
    eng = engine(alert_state, store, rules, clock)
    run_minutes(eng, clock, 1, 11)
    eng.close()
    # the collector is down from minute 10 to 60; meanwhile h1 got hot for good (from minute
    # 20) and h2 had a spike (45-55) that is over
    cpu(store, "h1", 20, 60, 95.0)
    cpu(store, "h2", 20, 60, 20.0)
    cpu(store, "h2", 45, 55, 95.0)
    clock.ms = T0 + 60 * MIN
    eng = engine(alert_state, store, rules, clock)
    eng.run_cycle()
    h = history(eng)
    assert [x for x in h if x[0] == "h2"] == [("h2", "pending", 46, True, False),
                                             ("h2", "firing", 48, True, False),
                                             ("h2", "resolved", 56, True, False)]
    # h1: a firing transition too old to page, then one notification because it still fires
    assert [x for x in h if x[0] == "h1"] == [("h1", "pending", 21, True, False),
                                             ("h1", "firing", 23, True, False),
                                             ("h1", "firing", 60, False, True)]
    assert [(a["status"], a["labels"]["host"], a["startsAt"][-13:])
            for a in outbox(eng)] == [("firing", "h1", "08:23:00.000Z")]
    cpu(store, "h1", 60, 65, 95.0)
    run_minutes(eng, clock, 61, 66)
    assert len(outbox(eng)) == 1
    eng.close()


def test_firing_alert_without_data_resolves_as_no_data(tmp_path: Path) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(tmp_path, store, settings() + RECEIVER + CPU.replace(
        'for = "5m"', 'for = "0s"\nstale_after = "5m"'), clock)
    cpu(store, "h1", 0, 5, 95.0)
    run_minutes(eng, clock, 1, 12)
    rows = alert_history(eng, limit=10)
    assert [(r["status"], r["reason"]) for r in reversed(rows)] == [("firing", ""),
                                                                   ("resolved", "no data")]
    assert [a["status"] for a in outbox(eng)] == ["firing", "resolved"]
    eng.close()


def test_reload_resolves_alerts_of_a_removed_rule(tmp_path: Path, alert_state: Path | str) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    path = tmp_path / "rules.toml"
    path.write_text(settings() + RECEIVER + CPU.replace('for = "5m"', 'for = "0s"'))
    eng = AlertEngine(store, alert_state, rules_path=path, clock_ms=clock)
    cpu(store, "h1", 0, 30, 95.0)
    run_minutes(eng, clock, 1, 4)
    assert [a["status"] for a in outbox(eng)] == ["firing"]
    path.write_text("[[rule]]\nname = \"broken\"\nkind = \"threshold\"\n")
    with pytest.raises(ValueError, match=r"rules\.toml:1: rule 'broken': key 'metric': Field"):
        eng.reload_rules()
    assert [r.name for r in eng.ruleset.rules] == ["cpu-high"]  # kept
    path.write_text(settings() + RECEIVER)
    eng.reload_rules()
    run_minutes(eng, clock, 4, 5)
    assert [(a["status"], a["receiver"]) for a in outbox(eng)] == [("firing", "ops"),
                                                                   ("resolved", "ops")]
    assert active_alerts(eng) == []
    assert alert_history(eng, limit=1)[0]["reason"] == "rule removed or changed"
    eng.close()
    # and a restart with the rule gone does not bring it back
    eng2 = AlertEngine(store, alert_state, rules_path=path, clock_ms=clock)
    eng2.run_cycle()
    assert active_alerts(eng2) == [] and len(outbox(eng2)) == 2
    eng2.close()


class BrokenStorage(InMemoryGridStorage):
    def query(self, query: RangeQuery) -> list[SeriesResult]:
        if query.name == "memory_usage_percent":
            raise ValueError("disk on fire")
        return super().query(query)


def test_a_failing_rule_does_not_stop_the_others(tmp_path: Path) -> None:
    store = BrokenStorage(60_000)
    clock = Clock(T0)
    mem = CPU.replace("cpu-high", "mem-high").replace("cpu_usage_percent",
                                                      "memory_usage_percent")
    eng = engine(tmp_path, store, settings() + CPU.replace('for = "5m"', 'for = "0s"') + mem,
                 clock)
    cpu(store, "h1", 0, 5, 95.0)
    run_minutes(eng, clock, 1, 3)
    status = {r["name"]: r["health"] for r in rules_status(eng)}
    assert "disk on fire" in status["mem-high"]["error"]
    assert status["cpu-high"]["error"] is None
    assert [a["rule"] for a in active_alerts(eng)] == ["cpu-high"]
    eng.close()


def test_alert_labels_annotations_and_fingerprint(tmp_path: Path) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    rule = CPU.replace('for = "5m"', 'for = "0s"') + \
        'severity = "critical"\nlabels = { team = "edge" }\n' + \
        'annotations = { summary = "{host} at {value:.0f} % ({labels[cpu]}, {labels[nope]})" }\n'
    eng = engine(tmp_path, store, settings() + RECEIVER + rule, clock)
    cpu(store, "h1", 0, 3, 93.4)
    run_minutes(eng, clock, 1, 2)
    [alert] = outbox(eng)
    assert alert["labels"] == {"alertname": "cpu-high", "host": "h1", "cpu": "total",
                               "severity": "critical", "team": "edge"}
    assert alert["annotations"] == {"summary": "h1 at 93 % (total, )"}
    assert len(alert["fingerprint"]) == 16 and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["idempotencyKey"].endswith("-1")
    eng.close()


def test_pending_transitions_are_not_kept_in_history_by_default(tmp_path: Path) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    rules = settings().replace("record_pending = true\n", "") + CPU
    eng = engine(tmp_path, store, rules, clock)
    cpu(store, "h1", 0, 3, 95.0)  # pending, then the condition goes away before `for`
    cpu(store, "h1", 3, 6, 10.0)
    cpu(store, "h2", 0, 12, 95.0)
    run_minutes(eng, clock, 1, 13)
    assert history(eng) == [("h2", "firing", 6, False, True)]
    eng.close()


def test_a_hole_that_is_never_back_filled_stops_costing_queries(tmp_path: Path) -> None:
    store = InMemoryGridStorage(60_000)
    clock = Clock(T0)
    eng = engine(tmp_path, store, settings() + CPU, clock)
    cpu(store, "h1", 0, 5, 20.0, received=T0 + 5 * MIN)
    run_minutes(eng, clock, 1, 6)
    catchup_minutes = []
    for minute in range(30, 80):  # back after 25 minutes, the back-log never comes
        cpu(store, "h1", minute, minute + 1, 20.0, received=T0 + (minute + 1) * MIN)
        store.queries.clear()
        clock.ms = T0 + (minute + 1) * MIN
        eng.run_cycle()
        if any(q.hosts == ("h1",) for q in store.queries):
            catchup_minutes.append(minute)
    assert catchup_minutes and catchup_minutes[0] == 31
    assert 55 <= catchup_minutes[-1] <= 62  # given up ~30 minutes after the hole was found
    assert rules_status(eng)[0]["health"]["holes"] == 0
    eng.close()
