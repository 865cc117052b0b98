"""The peers' published reference figures and edgemon's goals (from shared/peers.md, measured on
a 2-core machine on 2026-11-23), as data: RESULTS.md prints them beside this run's own
measurements, and ``goal_checks`` says which goals this run meets. Ratios in RESULTS.md are
always computed against baselines measured in the same run, never against these."""

from __future__ import annotations

from typing import Any

SOURCE = "shared/peers.md (2-core machine, 2026-11-23)"

# The baselines footprint.py runs beside the agent, in the same run.
BASELINE_AGENTS = ("node_exporter", "collectd")

# (interval s, agent) -> RSS MB, CPU s/hour
REFERENCE_FOOTPRINT: dict[tuple[float, str], dict[str, float]] = {
    (10.0, "collectd"): {"rss_mb": 4.7, "cpu_s_per_hour": 1.4},
    (10.0, "node_exporter"): {"rss_mb": 20.2, "cpu_s_per_hour": 4.2},
    (1.0, "collectd"): {"rss_mb": 4.8, "cpu_s_per_hour": 8.4},
    (1.0, "node_exporter"): {"rss_mb": 20.6, "cpu_s_per_hour": 30.6},
}

REFERENCE_WIRE = {
    "collectd MQTT (B/value)": 65.0,
    "node_exporter text (B/scrape)": 57_000.0,
    "Netdata streaming, zstd (B/sample)": 10.5,
    "Influx line protocol + gzip (B/sample)": 4.0,
}

GOALS = {
    "rss_mb": 25.0,              # agent RSS <= 25 MB (within 1.25x node_exporter)
    "rss_x_node_exporter": 1.25,
    "wire_b_per_sample": 1.0,    # one-minute batches from a busy host
}

GOAL_TEXT = [
    "agent RSS ≤ 25 MB (within 1.25x node_exporter)",
    "agent CPU ≤ node_exporter's (stretch: ≤ collectd's)",
    "wire ≤ 1 B/sample for one-minute batches from a busy host "
    "(gzip'd Influx line protocol of the same samples ≈ 4 B/sample)",
]


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def goal_checks(footprint: dict[str, Any] | None, wire: dict[str, Any] | None
                ) -> list[dict[str, Any]]:
    """One row per goal and condition: {goal, measured, target, met (bool|None), note}."""
    rows: list[dict[str, Any]] = []
    for run in (footprint or {}).get("runs", []):
        agents = run.get("agents", {})
        ours, ne, cd = (agents.get(n, {}) for n in ("edgemon", "node_exporter", "collectd"))
        at = f"at {run.get('interval_s', 0):g} s"
        if ours.get("status") != "ok":
            rows.append({"goal": f"footprint {at}", "measured": "-", "target": "-",
                         "met": None, "note": f"edgemon {ours.get('status', 'missing')}"})
            continue
        rss = ours.get("rss_mb_steady")
        rows.append({"goal": f"RSS {at}", "measured": f"{rss} MB",
                     "target": f"≤ {GOALS['rss_mb']:g} MB", "met": _num(rss)
                     and rss <= GOALS["rss_mb"], "note": ""})
        if ne.get("status") == "ok" and _num(rss):
            limit = GOALS["rss_x_node_exporter"] * ne["rss_mb_steady"]
            rows.append({"goal": f"RSS vs node_exporter {at}", "measured": f"{rss} MB",
                         "target": f"≤ {limit:.1f} MB (1.25 x {ne['rss_mb_steady']})",
                         "met": rss <= limit, "note": ""})
        cpu = ours.get("cpu_s_per_hour")
        for peer, fig, what in ((ne, "node_exporter", "goal"), (cd, "collectd", "stretch")):
            if peer.get("status") == "ok" and _num(cpu):
                rows.append({"goal": f"CPU ≤ {fig} {at} ({what})",
                             "measured": f"{cpu} s/h",
                             "target": f"≤ {peer['cpu_s_per_hour']} s/h",
                             "met": cpu <= peer["cpu_s_per_hour"], "note": ""})
    if wire:
        ours = next((f for f in wire.get("formats", []) if f.get("format", "").startswith(
            "edgemon")), None)
        if ours is not None:
            conditions = (f"{wire.get('cycles')} cycles at {wire.get('interval_s')} s"
                          f"{', busy' if wire.get('busy') else ', idle host'}")
            exact = wire.get("busy") and (wire.get("cycles") or 0) * (
                wire.get("interval_s") or 0) >= 60
            rows.append({"goal": "wire B/sample", "measured": f"{ours['B/sample']} B",
                         "target": f"≤ {GOALS['wire_b_per_sample']:g} B",
                         "met": ours["B/sample"] <= GOALS["wire_b_per_sample"],
                         "note": conditions + ("" if exact else
                                               " (goal is for busy one-minute batches: "
                                               "run without --quick)")})
    return rows
