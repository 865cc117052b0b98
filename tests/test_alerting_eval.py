"""Pure evaluation (no I/O): the state machine, `for`, hysteresis, keep_firing_for, host down,
disk-full ETA and anomaly detection, fed with plain numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgemon.collector.alerting import SeriesTable, parse_rules
from edgemon.collector.alerting.evaluate import (
    evaluate_disk_eta,
    evaluate_host_down,
    evaluate_series,
    from_arrays,
    host_arrays,
)
from edgemon.collector.alerting.state import FIRING, INACTIVE, PENDING
from edgemon.collector.storage.base import HostInfo

T0 = 1_800_000_000_000 // 3_600_000 * 3_600_000
MIN = 60_000
NAMES = {(0, 1): "pending", (1, 2): "firing", (0, 2): "firing", (2, 0): "resolved",
         (1, 0): "inactive"}


def rule(text: str) -> Any:
    return parse_rules("[[rule]]\nname = \"r\"\n" + text).rules[0]


def replay(r: Any, starts: np.ndarray, values: np.ndarray, *, evaluate: Any = evaluate_series,
           every: int = MIN, host: str = "h1", labels: dict[str, str] | None = None,
           end: int | None = None) -> tuple[list[tuple[str, int, float]], SeriesTable]:
    """Feed a series one evaluation cycle at a time (each cycle sees only the steps complete
    by then) and collect (transition, sample time in minutes from T0, value)."""
    state = SeriesTable()
    out: list[tuple[str, int, float]] = []
    step = r.step_ms
    now = int(starts[0]) + step
    end = end or int(starts[-1]) + step
    while now <= end:
        seen = starts + step <= now
        data = from_arrays([(host, labels or {})], np.zeros(int(seen.sum()), np.int64),
                           starts[seen], values[seen])
        res = evaluate(r, data, state, now, settle_ms=0)
        state = res.state
        for t in res.transitions:
            out.append((NAMES[(t.frm, t.to)], (t.at_ms - T0) // MIN, t.value))
        now += every
    return out, state


def minutes(n: int) -> np.ndarray:
    return T0 + MIN * np.arange(n, dtype=np.int64)


THRESHOLD = """kind = "threshold"
metric = "cpu_usage_percent"
window = "1m"
threshold = 80
"""


def test_fires_only_after_for() -> None:
    r = rule(THRESHOLD + 'for = "5m"\n')
    values = np.r_[np.full(3, 20.0), np.full(12, 95.0)]
    out, state = replay(r, minutes(15), values)
    # steps are evaluated at their end: the first hot step is [3, 4) -> pending at minute 4
    assert out == [("pending", 4, 95.0), ("firing", 9, 95.0)]
    assert state.status[0] == FIRING


def test_short_spike_never_fires_and_pending_is_cancelled() -> None:
    r = rule(THRESHOLD + 'for = "5m"\n')
    values = np.r_[np.full(3, 20.0), np.full(4, 95.0), np.full(8, 20.0)]
    out, state = replay(r, minutes(15), values)
    assert out == [("pending", 4, 95.0), ("inactive", 8, 20.0)]
    assert state.status[0] == INACTIVE


def test_hysteresis_resolves_below_clear_and_does_not_flap_at_the_boundary() -> None:
    r = rule(THRESHOLD + 'for = "2m"\nclear_threshold = 75\n')
    boundary = np.tile([79.0, 81.0], 10)  # around the threshold, above the clear level
    values = np.r_[np.full(5, 90.0), boundary, np.full(3, 70.0)]
    out, _ = replay(r, minutes(values.size), values)
    assert out == [("pending", 1, 90.0), ("firing", 3, 90.0), ("resolved", 26, 70.0)]


def test_without_hysteresis_the_same_data_flaps() -> None:
    """The control for the test above: a clear level equal to the threshold flaps."""
    r = rule(THRESHOLD + 'for = "0s"\n')
    values = np.r_[np.full(5, 90.0), np.tile([79.0, 81.0], 10), np.full(3, 70.0)]
    out, _ = replay(r, minutes(values.size), values)
    assert sum(1 for name, _, _ in out if name == "resolved") >= 10


def test_keep_firing_for_holds_through_a_short_dip() -> None:
    r = rule(THRESHOLD + 'for = "0s"\nkeep_firing_for = "3m"\n')
    values = np.r_[np.full(3, 90.0), np.full(2, 50.0), np.full(3, 90.0), np.full(6, 50.0)]
    out, _ = replay(r, minutes(values.size), values)
    # the 2-minute dip does not resolve; the long one does, 3 minutes after it began
    assert out == [("firing", 1, 90.0), ("resolved", 12, 50.0)]


def test_less_than_operator_and_rate_rule_shape() -> None:
    r = rule('kind = "threshold"\nmetric = "m"\nop = "<"\nthreshold = 10\n'
             'clear_threshold = 20\n')
    values = np.array([50.0, 5.0, 15.0, 15.0, 25.0])
    out, _ = replay(r, minutes(5), values)
    assert out == [("firing", 2, 5.0), ("resolved", 5, 25.0)]
    rate = rule('kind = "rate"\nmetric = "network_receive_errors_total"\nfor = "10m"\n')
    assert rate.uses_rate and rate.window == 5 * MIN and rate.threshold == 0.0


def test_evaluation_is_pure_and_driven_by_sample_time() -> None:
    r = rule(THRESHOLD + 'for = "5m"\n')
    starts = minutes(10)
    data = from_arrays([("h1", {})], np.zeros(10, np.int64), starts, np.full(10, 95.0))
    state = SeriesTable()
    a = evaluate_series(r, data, state, int(starts[-1]) + MIN, settle_ms=0)
    assert len(state) == 0  # the input state is not touched
    # the same data evaluated an hour later (wall clock) gives the same sample-time transitions
    b = evaluate_series(r, data, state, int(starts[-1]) + 61 * MIN, settle_ms=0)
    assert [(t.frm, t.to, t.at_ms) for t in a.transitions] == \
        [(t.frm, t.to, t.at_ms) for t in b.transitions][:2]
    assert a.transitions[1].at_ms == T0 + 6 * MIN
    # a step without a later point is not evaluated until `settle` has passed
    c = evaluate_series(r, data, state, int(starts[-1]) + MIN, settle_ms=30_000)
    assert c.newest_ms == int(starts[-2]) + MIN


def test_one_vectorised_call_handles_many_hosts() -> None:
    r = rule(THRESHOLD + 'for = "0s"\n')
    n = 500
    keys = [(f"h{i}", {"cpu": "total"}) for i in range(n)]
    sid = np.repeat(np.arange(n), 3)
    starts = np.tile(minutes(3), n)
    hot = np.arange(n) % 5 == 0
    values = np.repeat(np.where(hot, 95.0, 10.0), 3)
    res = evaluate_series(r, from_arrays(keys, sid, starts, values), SeriesTable(),
                          T0 + 3 * MIN, settle_ms=0)
    fired = sorted(res.state.hosts[t.row] for t in res.transitions)
    assert fired == sorted(f"h{i}" for i in np.flatnonzero(hot))
    assert len(res.state) == n


# --- host down ---------------------------------------------------------------------------

HOST_DOWN = 'kind = "host_down"\nno_data_for = "1m"\n'


def hosts(*infos: tuple[str, bool, int | None, int | None]) -> Any:
    return host_arrays([HostInfo(h, online, "i", seen, status, 1)
                        for h, online, seen, status in infos])


def test_host_down_fires_on_death_message_and_on_silence() -> None:
    r = rule(HOST_DOWN)
    now = T0 + 10 * MIN
    state = SeriesTable()
    res = evaluate_host_down(r, hosts(("dead", False, now - 5_000, now - 1_000),
                                      ("quiet", True, now - 30_000, now - 3_600_000),
                                      ("fine", True, now - 5_000, now - 3_600_000)),
                             state, now, started_ms=T0)
    assert [(res.state.hosts[t.row], t.to) for t in res.transitions] == [("dead", FIRING)]
    # 40 s later "quiet" has been silent for 70 s: down too
    later = now + 40_000
    res2 = evaluate_host_down(r, hosts(("dead", False, now - 5_000, now - 1_000),
                                       ("quiet", True, now - 30_000, now - 3_600_000),
                                       ("fine", True, later - 5_000, now - 3_600_000)),
                              res.state, later, started_ms=T0)
    assert [(res2.state.hosts[t.row], t.to) for t in res2.transitions] == [("quiet", FIRING)]
    # both come back: resolved
    back = later + 10_000
    res3 = evaluate_host_down(r, hosts(("dead", True, back - 1_000, back - 2_000),
                                       ("quiet", True, back - 1_000, now - 3_600_000),
                                       ("fine", True, back - 5_000, now - 3_600_000)),
                              res2.state, back, started_ms=T0)
    assert sorted((res3.state.hosts[t.row], t.to) for t in res3.transitions) == \
        [("dead", INACTIVE), ("quiet", INACTIVE)]


def test_host_down_ignores_the_collectors_own_downtime_and_forgets_old_hosts() -> None:
    r = rule(HOST_DOWN + 'forget_after = "1d"\n')
    now = T0 + 10 * MIN
    infos = hosts(("a", True, now - 30 * MIN, None), ("gone", True, now - 2 * 86_400_000, None))
    # the engine started 20 s ago: 30 minutes without data are mostly our own outage
    res = evaluate_host_down(r, infos, SeriesTable(), now, started_ms=now - 20_000)
    assert res.transitions == [] and res.state.hosts == ["a"]
    res = evaluate_host_down(r, infos, res.state, now + 50_000, started_ms=now - 20_000)
    assert [t.to for t in res.transitions] == [FIRING]


def test_host_down_respects_for_and_host_globs() -> None:
    r = rule(HOST_DOWN + 'for = "30s"\nhosts = ["edge-*"]\n')
    now = T0
    infos = hosts(("edge-1", False, now, now), ("core-1", False, now, now))
    sel = np.array([h.startswith("edge-") for h in infos.hosts])
    res = evaluate_host_down(r, infos, SeriesTable(), now, started_ms=T0 - MIN, selected=sel)
    assert [(res.state.hosts[t.row], t.to) for t in res.transitions] == [("edge-1", PENDING)]
    res = evaluate_host_down(r, infos, res.state, now + 30_000, started_ms=T0 - MIN,
                             selected=sel)
    assert [t.to for t in res.transitions] == [FIRING]


# --- disk full ETA -------------------------------------------------------------------------

ETA = 'kind = "disk_full_eta"\n'


def test_disk_eta_fires_for_a_filling_mount_and_not_for_a_stable_one() -> None:
    r = rule(ETA)  # window 6h, step 10m, within 24h
    steps = T0 + 600_000 * np.arange(48, dtype=np.int64)  # 8 hours
    rng = np.random.default_rng(3)
    filling = 40.0 + 3.0 * np.arange(48) / 6 + rng.normal(0, 0.2, 48)  # +3 %/h
    stable = 60.0 + rng.normal(0, 0.2, 48)
    slow = 40.0 + 0.5 * np.arange(48) / 6  # full in ~100 h
    for values, fires in ((filling, True), (stable, False), (slow, False)):
        out, state = replay(r, steps, values, evaluate=evaluate_disk_eta, every=600_000,
                            labels={"mount": "/data"})
        kinds = [name for name, _, _ in out]
        assert ("firing" in kinds) is fires, (values[:3], out)
        if fires:
            eta_hours = out[kinds.index("firing")][2]
            assert 10 < eta_hours < 24
            assert state.status[0] == FIRING


def test_disk_eta_needs_min_points_and_resolves_when_the_trend_stops() -> None:
    r = rule(ETA + 'min_points = 6\nclear_within = "36h"\n')
    steps = T0 + 600_000 * np.arange(80, dtype=np.int64)
    values = np.r_[40.0 + 3.0 * np.arange(40) / 6, np.full(40, 60.0)]  # fills, then deleted
    values[40:] = 50.0  # someone cleaned up: flat afterwards
    out, _ = replay(r, steps, values, evaluate=evaluate_disk_eta, every=600_000)
    names = [name for name, _, _ in out]
    assert names[0] == "firing"
    first = out[0][1]
    assert first >= 60  # 6 complete steps (60 min) before the first prediction
    assert "resolved" in names


# --- anomaly ------------------------------------------------------------------------------

ANOMALY = """kind = "anomaly"
metric = "load1"
step = "1m"
alpha = 0.1
k = 4.0
clear_k = 3.0
min_history = 30
for = "2m"
"""


def test_anomaly_fires_on_a_step_change() -> None:
    r = rule(ANOMALY)
    rng = np.random.default_rng(7)
    values = np.r_[50 + rng.normal(0, 2, 120), 80 + rng.normal(0, 2, 60)]
    out, _ = replay(r, minutes(values.size), values)
    fired = [m for name, m, _ in out if name == "firing"]
    assert fired and 120 <= fired[0] <= 124
    # the new level becomes normal: it resolves within the hour
    assert any(name == "resolved" and m > fired[0] for name, m, _ in out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_anomaly_stays_quiet_on_noise(seed: int) -> None:
    r = rule(ANOMALY)
    rng = np.random.default_rng(seed)
    values = 50 + rng.normal(0, 2, 1500)
    out, _ = replay(r, minutes(values.size), values)
    assert [x for x in out if x[0] == "firing"] == []


def test_anomaly_needs_min_history() -> None:
    r = rule(ANOMALY)
    values = np.r_[np.full(10, 50.0), np.full(10, 500.0)]
    out, _ = replay(r, minutes(values.size), values)
    assert out == []
