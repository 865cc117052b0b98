"""Smoke test of the benchmark runner: ``benchmarks/run.py`` with a tiny wire-size workload
writes a well-formed summary. The real benchmarks never run in the test command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


def _run(*args: str, timeout: float = 25) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x  # not NaN


def test_quick_wire_size_summary(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _run("--quick", "--tiny", "--only", "wire_size", "--no-plots", "--out", str(tmp_path))
    assert time.monotonic() - started < 30
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert set(summary) >= {"machine", "mode", "seconds", "figures", "goals", "benchmarks"}
    assert summary["mode"] == "tiny"
    machine = summary["machine"]
    for key in ("date", "commit", "python", "platform", "cpus", "cpu_model", "os", "kernel"):
        assert machine.get(key) not in (None, ""), key
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1

    assert [b["name"] for b in summary["benchmarks"]] == ["wire_size"]
    entry = summary["benchmarks"][0]
    assert entry["status"] == "ok", entry
    assert _number(entry["seconds"])

    (wire,) = [f for f in summary["figures"] if f["benchmark"] == "wire_size"]
    assert wire["unit"] == "B"
    assert _number(wire["edgemon"]) and 0 < wire["edgemon"] < 100
    assert wire["baselines"] and all(_number(v) and v > 0 for v in wire["baselines"].values())
    assert wire["ratios"] and all(_number(v) and v > 0 for v in wire["ratios"].values())
    # ratios are edgemon / baseline, recomputable from the figures themselves
    for name, value in wire["baselines"].items():
        assert abs(wire["ratios"][f"edgemon/{name}"] - wire["edgemon"] / value) < 0.01

    # the benchmark's own result went to --out, with its tiny workload (2 cycles at 0.2 s)
    result = json.loads((tmp_path / "results" / "wire_size.json").read_text())
    assert result["cycles"] == 2 and result["interval_s"] == 0.2
    assert result["samples"] > 0 and result["machine"]["cpus"] == machine["cpus"]

    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Summary" in report and "wire_size" in report and machine["commit"] in report


def test_unknown_and_placeholder_benchmarks(tmp_path: Path) -> None:
    bad = _run("--only", "no_such_benchmark", "--out", str(tmp_path))
    assert bad.returncode != 0 and "unknown benchmark" in bad.stderr

    # registered placeholders whose script does not exist are skipped, not failed
    placeholders = [n for n in ("ingest", "query", "offline")
                    if not (ROOT / "benchmarks" / f"{n}.py").exists()]
    if placeholders:
        proc = _run("--quick", "--only", ",".join(placeholders), "--no-plots",
                    "--out", str(tmp_path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((tmp_path / "results" / "summary.json").read_text())
        assert {b["name"]: b["status"] for b in summary["benchmarks"]} == dict.fromkeys(
            placeholders, "skipped")
        assert all("not yet available" in b["reason"] for b in summary["benchmarks"])


def test_family_cost_rows(tmp_path: Path) -> None:
    proc = _run("--tiny", "--only", "family_cost", "--no-plots", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    rows = {f["figure"]: f for f in summary["figures"] if f["benchmark"] == "family_cost"}
    result = json.loads((tmp_path / "results" / "family_cost.json").read_text())
    assert set(rows) == {*result["families"], "default families together",
                         "default families in one cycle"}
    assert _number(rows["default families in one cycle"]["edgemon"])
    measured = {n for n, f in result["families"].items() if "unavailable" not in f}
    assert {"cpu", "memory", "processes"} <= measured  # on Linux, at least these
    for name in measured:
        assert rows[name]["unit"] == "CPU s/h" and _number(rows[name]["edgemon"])
    total = rows["default families together"]["edgemon"]
    assert abs(total - sum(rows[n]["edgemon"] for n in measured
                           if not result["families"][n]["opt_in"])) < 0.01
    assert "family_cost" in (tmp_path / "RESULTS.md").read_text()
