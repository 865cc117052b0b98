"""One command for every benchmark: run each (a subprocess writing results/<name>.json), print
one table, write RESULTS.md, results/summary.json and plots.

    python benchmarks/run.py [--quick] [--only NAME,...] [--out DIR] [--tiny] [--no-plots]

``--quick`` keeps each benchmark to a few minutes (about 10 in all); without it the windows are
longer (15 minutes or more each).
``--out DIR`` writes everything (results/, RESULTS.md, PNGs) under DIR instead of benchmarks/.
``--tiny`` shrinks every workload to a few seconds (for the smoke test; figures meaningless).
A benchmark whose script does not exist yet is reported as skipped; the exit status is 1 if
any benchmark that ran failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from _common import machine, table  # noqa: E402


@dataclass(frozen=True)
class Bench:
    script: str
    about: str
    quick: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    tiny: list[str] = field(default_factory=list)
    timeout_quick: float = 120.0
    timeout_full: float = 1800.0
    in_quick: bool = True  # False: too long for --quick; run by name or in full mode


# The registry: every benchmark the runner knows, in the order it runs them. A script that does
# not exist (yet) is reported as skipped, so placeholders are listed here before they are written.
REGISTRY: dict[str, Bench] = {
    "wire_size": Bench(
        "wire_size.py", "bytes per sample on the wire: edgemon v1 beside JSON, msgpack, Influx "
        "line protocol, Prometheus text (raw and gzip'd) on this host's real samples",
        # quick too: the real one-minute batches of the goal (6 cycles at 10 s), about 75 s
        quick=["--busy"], full=["--busy"], tiny=["--cycles", "2", "--interval", "0.2"],
        timeout_quick=150, timeout_full=300),
    "storage_ingest": Bench(
        "storage_ingest.py", "collector storage: samples/s written and bytes per stored sample",
        quick=["--quick"], full=[], tiny=["--quick"], timeout_quick=75, timeout_full=1800),
    "compaction": Bench(
        "compaction.py", "storage compaction samples/s for one batch per host and for 12, and "
        "ingest's writer latency while compaction runs, beside a baseline revision (same run)",
        quick=["--quick"], full=[], tiny=["--hosts", "24", "--rounds", "1", "--backlog", "1",
                                          "--seconds", "1"],
        timeout_quick=600, timeout_full=1800, in_quick=False),
    "postgres_ingest": Bench(
        "postgres_ingest.py", "collector storage on PostgreSQL beside SQLite, same run: "
        "samples/s stored (COPY and INSERT), compacted, bytes per sample",
        quick=["--quick"], full=[], tiny=["--quick"], timeout_quick=120, timeout_full=1200),
    "footprint": Bench(
        "footprint.py", "agent RSS and CPU beside node_exporter (scraped) and collectd "
        "(to MQTT), same run, at 10 s and 1 s",
        quick=["--quick"], full=[], tiny=["--window", "3", "--intervals", "1", "--warmup", "2"],
        timeout_quick=120, timeout_full=900),
    "family_cost": Bench(
        "family_cost.py", "agent metric families: CPU per call of each on this host, and what "
        "that makes per hour at 10 s (default [intervals])", quick=["--calls", "50"],
        full=["--calls", "300"], tiny=["--calls", "2", "--pause", "0"], timeout_quick=60,
        timeout_full=300),
    "ingest": Bench("ingest.py", "end to end through Mosquitto into the collector from "
                    "publisher processes: stored samples/s with compaction running beside a bare "
                    "acking subscriber (transport ceiling), back-log slope, ack lag, CPU per "
                    "process tree, TCP_NODELAY on/off, same run", quick=["--quick"],
                    tiny=["--runs", "1", "--seconds", "3", "--ceiling-seconds", "2",
                          "--nodelay-seconds", "2", "--hosts", "50", "--max-rate", "100000"],
                    timeout_quick=420, timeout_full=3600, in_quick=False),
    "ingest_cpu": Bench("ingest_cpu.py", "collector writer CPU per stored sample: the pure "
                        "decoder as it was vs the msgspec path, same run", quick=["--runs", "1"],
                        full=[], tiny=["--hosts", "20", "--rounds", "1", "--runs", "1"],
                        timeout_quick=300, timeout_full=900),
    "examine_cpu": Bench("examine_cpu.py", "an ingest worker's Examiner: CPU per sample by "
                         "stage (read, schema, screen, series hashes, ...), inline and based "
                         "batches", quick=["--runs", "1"], full=[],
                         tiny=["--hosts", "10", "--rounds", "1", "--runs", "1", "--repeat", "1"],
                         timeout_quick=300, timeout_full=900),
    "query": Bench("query.py", "collector API query latency over stored data", quick=["--quick"]),
    "offline": Bench("offline.py", "agent through a broker outage: buffer growth and back-fill",
                     quick=["--quick"]),
    "recovery": Bench("recovery.py", "time from a broker or collector restart until the "
                      "agent's back-log is drained, beside the ack timeout and the goal "
                      "(2 x reconnect back-off + back-fill time)", quick=["--quick"],
                      tiny=["--tiny"], timeout_quick=170, timeout_full=900),
    "alerting": Bench("alerting.py", "alert evaluation cycle for 10,000 hosts x default rules, "
                      "sample-to-notification latency", quick=["--quick"]),
    "dashboard": Bench("dashboard.py", "web dashboard over 10,000 hosts: fleet summary endpoint, "
                       "fleet page interactive and host page 24 h / 30 d draw in Chromium, "
                       "page weight", quick=["--quick"], full=[],
                       tiny=["--quick", "--hosts", "50"], timeout_quick=600, timeout_full=1800,
                       in_quick=False),
    "forward": Bench("forward.py", "remote-write forwarding to a real VictoriaMetrics: samples/s, "
                     "bytes per sample, ingest rate with and without forwarding (same run)",
                     quick=["--quick"], tiny=["--hosts", "5", "--cycles", "12", "--repeat", "1"],
                     timeout_quick=600, timeout_full=1800, in_quick=False),
    "scale_out": Bench("scale_out.py", "ingest samples/s with 1 collector on SQLite, 1 and 2 on "
                       "one PostgreSQL (shared group), same run; bytes per sample and two "
                       "queries on both stores", quick=["--quick"], full=[],
                       tiny=["--hosts", "10", "--seconds", "1", "--runs", "1"],
                       timeout_quick=400, timeout_full=1200, in_quick=False),
    "hostile": Bench("hostile.py", "a hostile flood from one host: collector peak memory vs "
                     "baseline, rejects/s, a good host's publish->stored lag with and without",
                     quick=["--quick"], tiny=["--seconds", "2"], timeout_quick=150,
                     timeout_full=300),
}

# Runs a benchmark script with its result directory redirected (``_common.RESULTS``), so that
# ``--out`` works for every script that writes through ``_common.write_result``.
BOOTSTRAP = """\
import runpy, sys
from pathlib import Path
script, results = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:0] = [str(script.parent), str(script.parent.parent)]
import _common
_common.RESULTS = results
try:
    import benchmarks._common
    benchmarks._common.RESULTS = results
except ImportError:
    pass
sys.argv = [str(script), *sys.argv[3:]]
runpy.run_path(str(script), run_name="__main__")
"""


def describe_machine() -> dict[str, Any]:
    """``_common.machine()`` plus CPU model, memory, OS, load and whether the tree was dirty."""
    out = machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        out["cpu_model"] = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                                 if line.startswith("model name")), platform.processor())
        meminfo = Path("/proc/meminfo").read_text().split()
        out["memory_mb"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024)
    except (OSError, ValueError, IndexError):
        out.setdefault("cpu_model", platform.processor())
    try:
        osr = dict(line.split("=", 1) for line in
                   Path("/etc/os-release").read_text().splitlines() if "=" in line)
        out["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        out["os"] = platform.system()
    out["kernel"] = platform.release()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    out["commit"] = out.get("commit") or "unknown"
    out["dirty"] = status.returncode == 0 and bool(status.stdout.strip())
    return out


def run_one(name: str, bench: Bench, mode: str, results: Path) -> dict[str, Any]:
    script = HERE / bench.script
    args = {"quick": bench.quick, "full": bench.full, "tiny": bench.tiny}[mode]
    shown = " ".join(["python", f"benchmarks/{bench.script}", *args])
    entry: dict[str, Any] = {"name": name, "about": bench.about, "command": shown}
    if not script.exists():
        entry.update(status="skipped", reason=f"not yet available (benchmarks/{bench.script} "
                                              "does not exist)")
        return entry
    out_file = results / f"{name}.json"
    timeout = bench.timeout_full if mode == "full" else bench.timeout_quick
    print(f"== {name}: {shown}", flush=True)
    started = time.time()
    # Own session: on a timeout the script gets SIGTERM first, to stop what it started.
    proc = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, str(script), str(results), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        entry.update(status="failed", reason=f"timed out after {timeout:g} s",
                     seconds=round(time.time() - started, 1), output=stdout[-2000:],
                     stderr=stderr[-3000:])
        return entry
    entry["seconds"] = round(time.time() - started, 1)
    entry["output"] = stdout[-4000:]
    if proc.returncode != 0:
        entry.update(status="failed", reason=f"exit {proc.returncode}: "
                     + (stderr.strip().splitlines() or ["(no error output)"])[-1][:300],
                     stderr=stderr[-3000:])
        return entry
    fallback = HERE / "results" / f"{name}.json"  # a script not using _common.write_result
    if ((not out_file.exists() or out_file.stat().st_mtime < started - 1)
            and fallback != out_file and fallback.exists()
            and fallback.stat().st_mtime >= started - 1):
        shutil.copyfile(fallback, out_file)
    if not out_file.exists() or out_file.stat().st_mtime < started - 1:
        entry.update(status="failed", reason=f"exited 0 but wrote no {out_file.name}")
        return entry
    try:
        entry["result"] = json.loads(out_file.read_text())
    except ValueError as exc:
        entry.update(status="failed", reason=f"{out_file.name} is not JSON: {exc}")
        return entry
    entry["status"] = "ok"
    entry["result_file"] = str(out_file)
    return entry


# --- headline figures: {benchmark, figure, unit, edgemon, baselines{}, ratios{}} ----------------

def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _row(bench: str, figure: str, unit: str, ours: Any, baselines: dict[str, Any],
         note: str = "") -> dict[str, Any]:
    ratios = {f"edgemon/{k}": round(ours / v, 3) for k, v in baselines.items()
              if _num(ours) and _num(v) and v > 0}
    return {"benchmark": bench, "figure": figure, "unit": unit, "edgemon": ours,
            "baselines": baselines, "ratios": ratios, "note": note}


def figures_wire_size(r: dict[str, Any]) -> list[dict[str, Any]]:
    formats = {f["format"]: f.get("B/sample") for f in r.get("formats", [])}
    ours = next((v for k, v in formats.items() if k.startswith("edgemon")), None)
    wanted = {"edgemon v1 naming its series catalogue, no base": "edgemon §9, no base",
              "Influx line protocol + gzip": "Influx+gzip",
              "Prometheus text + gzip": "Prometheus+gzip",
              "naive columnar msgpack+zstd": "naive msgpack+zstd",
              "Netdata streaming (published)": "Netdata (published)"}
    base = {short: formats[k] for k, short in wanted.items() if _num(formats.get(k))}
    note = (f"{r.get('samples')} samples, {r.get('cycles')} cycles at {r.get('interval_s')} s"
            f"{', busy' if r.get('busy') else ''}; Netdata figure is published, not measured")
    return [_row("wire_size", "bytes per sample", "B", ours, base, note)]


def _pick(agents: dict[str, Any], key: str, sub: str | None = None
          ) -> tuple[Any, dict[str, Any]]:
    """(edgemon's figure, {baseline: figure}) of the agents that ran ok."""
    def get(name: str) -> Any:
        a = agents.get(name, {})
        if a.get("status") != "ok":
            return None
        return (a.get(sub) or {}).get(key) if sub else a.get(key)
    return get("edgemon"), {p: v for p in peers.BASELINE_AGENTS if (v := get(p)) is not None}


def figures_footprint(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in r.get("runs", []):
        at = f"{run.get('interval_s', 0):g} s"
        agents = run.get("agents", {})
        ours = agents.get("edgemon", {})
        note = "" if ours.get("status") == "ok" else \
            f"edgemon {ours.get('status')}: {str(ours.get('error', ''))[:120]}"

        for key, figure, unit in (("rss_mb_steady", "RSS, steady state", "MB"),
                                  ("rss_mb_max", "RSS, max", "MB"),
                                  ("cpu_s_per_hour", "CPU", "s/hour")):
            o, b = _pick(agents, key)
            extra = note
            if key == "cpu_s_per_hour":
                coarse = [n for n, a in agents.items() if a.get("status") == "ok"
                          and (a.get("cpu_ticks") or 0) < 20]
                if coarse:
                    extra = (extra + "; " if extra else "") + (
                        f"under 20 clock ticks for {', '.join(coarse)}: coarse, "
                        "see the threads figure or run without --quick")
            rows.append(_row("footprint", f"{figure} @ {at}", unit, o, b, extra))
        o, b = _pick(agents, "B_per_sample", "wire")
        rows.append(_row("footprint", f"wire bytes/sample @ {at}", "B", o, b,
                         "edgemon batches and collectd values: MQTT PUBLISH; "
                         "node_exporter: gzip'd scrape body"))
    return rows


def figures_family_cost(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per family (its CPU s/h at 10 s), then the default families together."""
    rows = []
    for name, f in (r.get("families") or {}).items():
        if "unavailable" in f:
            rows.append(_row("family_cost", name, "CPU s/h", None, {},
                             f"unavailable here: {f['unavailable']}"))
            continue
        every = f.get("every_cycles", 1)
        rows.append(_row("family_cost", name, "CPU s/h", f.get("cpu_s_per_hour"), {},
                         f"{f.get('ms_per_call')} ms/call, {f.get('readings')} readings"
                         + (f", every {every} cycles" if every != 1 else "")
                         + (", opt-in (not in the total)" if f.get("opt_in") else "")))
    rows.append(_row("family_cost", "default families together", "CPU s/h",
                     r.get("default_cpu_s_per_hour"), {},
                     f"the sum of the rows above at {r.get('interval_s', 10):g} s, "
                     f"{r.get('calls')} calls each, {r.get('pause_s')} s apart"))
    if _num(r.get("cycle_cpu_s_per_hour")):
        rows.append(_row("family_cost", "default families in one cycle", "CPU s/h",
                         r["cycle_cpu_s_per_hour"], {},
                         f"sampled together as the agent does ({r.get('cycle_ms')} ms a cycle):"
                         " shared reads counted once"))
    return rows


STORAGE_FIGURES = [  # key path in storage_ingest.json -> figure, unit
    (("store_samples_per_s",), "store rate", "samples/s"),
    (("compact_samples_per_s",), "compaction rate", "samples/s"),
    (("bytes_per_sample_compacted",), "on disk after compaction", "B/sample"),
    (("ingest_set", "wire_bytes_per_sample"), "wire size of the ingest set", "B/sample"),
]


def figures_storage_ingest(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for path, figure, unit in STORAGE_FIGURES:
        v: Any = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if _num(v):
            rows.append(_row("storage_ingest", figure, unit, round(v, 3), {}))
    queries = r.get("queries_ms")
    if isinstance(queries, dict):
        slowest = max(((q.get("ms"), k) for k, q in queries.items()
                       if isinstance(q, dict) and _num(q.get("ms"))), default=None)
        if slowest:
            rows.append(_row("storage_ingest", "slowest query", "ms", round(slowest[0], 2), {},
                             slowest[1]))
    return rows or figures_generic("storage_ingest", r)


def figures_generic(name: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """A result may carry ``"headline": [{figure, unit, value, baselines: {name: value}}]``;
    otherwise its top-level numbers are shown."""
    if isinstance(r.get("headline"), list):
        return [_row(name, str(h.get("figure", "?")), str(h.get("unit", "")), h.get("value"),
                     {k: v for k, v in (h.get("baselines") or {}).items() if _num(v)},
                     str(h.get("note", "")))
                for h in r["headline"] if isinstance(h, dict)]
    return [_row(name, k, "", v, {}) for k, v in r.items() if _num(v)][:10]


def headline(entry: dict[str, Any]) -> list[dict[str, Any]]:
    r = entry.get("result") or {}
    if entry["name"] == "wire_size":
        return figures_wire_size(r)
    if entry["name"] == "footprint":
        return figures_footprint(r)
    if entry["name"] == "storage_ingest":
        return figures_storage_ingest(r)
    if entry["name"] == "family_cost":
        return figures_family_cost(r)
    return figures_generic(entry["name"], r)


# --- output --------------------------------------------------------------------------------------

def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"
    return "-" if x is None else str(x)


def table_rows(figs: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"benchmark": f["benchmark"], "figure": f["figure"], "unit": f["unit"],
             "edgemon": _fmt(f["edgemon"]),
             "baselines (same run)": "; ".join(f"{k} {_fmt(v)}" for k, v in f["baselines"].items()),
             "edgemon / baseline": "; ".join(f"{k.split('/', 1)[1]} x{_fmt(v)}"
                                            for k, v in f["ratios"].items())}
            for f in figs]


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


COLUMNS = ["benchmark", "figure", "unit", "edgemon", "baselines (same run)",
           "edgemon / baseline"]


def results_md(summary: dict[str, Any], results: dict[str, Any], plots: list[str],
               plot_note: str) -> str:
    m = summary["machine"]
    entries = summary["benchmarks"]
    out = [
        "# edgemon benchmark results",
        "",
        "Generated by `python benchmarks/run.py"
        + (" --quick" if summary["mode"] == "quick" else "")
        + (" --tiny" if summary["mode"] == "tiny" else "")
        + "`; do not edit by hand (see `benchmarks/README.md`).",
        "",
        f"- date: {m['date']}",
        f"- commit: `{m['commit']}`{' (with uncommitted changes)' if m.get('dirty') else ''}",
        f"- mode: {summary['mode']} (total {summary['seconds']:g} s)",
        f"- machine: {m.get('cpus')} CPUs ({m.get('cpu_model', '?')}), "
        f"{m.get('memory_mb', '?')} MB RAM, {m.get('os', '?')}, kernel {m.get('kernel', '?')}, "
        f"Python {m.get('python')}; load average at start {m.get('load_average')}",
        "",
        "Ratios are edgemon ÷ baseline, both measured in this run: below 1 means edgemon is "
        "smaller / cheaper.",
        "",
        "## Summary",
        "",
        markdown_table([{**row, "note": f["note"]} for row, f in
                        zip(table_rows(summary["figures"]), summary["figures"], strict=True)],
                       [*COLUMNS, "note"]),
        "",
    ]
    skipped = [e for e in entries if e["status"] != "ok"]
    if skipped:
        out += ["Not measured in this run:", ""]
        out += [f"- **{e['name']}** ({e['status']}): {e.get('reason', '')}" for e in skipped]
        out.append("")
    goals = summary.get("goals") or []
    if goals:
        out += ["## Goals (shared/peers.md)", "",
                markdown_table([{**g, "met": {True: "yes", False: "**no**", None: "-"}[g["met"]]}
                                for g in goals], ["goal", "measured", "target", "met", "note"]),
                ""]
    r = results.get("footprint")
    if r:
        out += ["## Footprint", "",
                f"Window {r.get('window_s'):g} s after a {r.get('warmup_s'):g} s warm-up, all "
                "intervals side by side. Versions: "
                + ", ".join(f"{k} {v or '?'}" for k, v in r.get("versions", {}).items()) + ".",
                "CPU s/h from /proc/<pid>/stat ticks (1/"
                f"{r.get('clock_ticks_per_s')} s: a short window at 10 s resolves a few ticks "
                "only); `threads` is the same from per-thread schedstat (ns), as a cross-check.",
                ""]
        rows = []
        for run in r.get("runs", []):
            for name, a in run.get("agents", {}).items():
                ref = peers.REFERENCE_FOOTPRINT.get((float(run["interval_s"]), name), {})
                w = a.get("wire") or {}
                rows.append({
                    "interval": f"{run['interval_s']:g} s", "agent": name,
                    "status": a.get("status"),
                    "RSS MB (steady / max)": f"{_fmt(a.get('rss_mb_steady'))} / "
                                             f"{_fmt(a.get('rss_mb_max'))}",
                    "CPU s/h (threads)": f"{_fmt(a.get('cpu_s_per_hour'))} "
                                         f"({_fmt(a.get('cpu_s_per_hour_threads'))})",
                    "CPU %": _fmt(a.get("cpu_percent")),
                    "CPU s before window": _fmt(a.get("cpu_s_before_window")),
                    "wire B/sample": _fmt(w.get("B_per_sample")),
                    "wire KB/h": _fmt(w["bytes_per_hour"] / 1000)
                    if _num(w.get("bytes_per_hour")) else "-",
                    "peers.md RSS / CPU s/h": f"{ref['rss_mb']} / {ref['cpu_s_per_hour']}"
                    if ref else "",
                    "note": str(a.get("error", ""))[:160]})
        out += [markdown_table(rows, list(rows[0])) if rows else "", ""]
    r = results.get("wire_size")
    if r:
        out += ["## Wire size", "",
                f"{r.get('samples')} samples = {r.get('series')} series x {r.get('cycles')} "
                f"cycles at {r.get('interval_s')} s{' with a busy load' if r.get('busy') else ''}.",
                "", markdown_table(r.get("formats", []), ["format", "bytes", "B/sample",
                                                          "x edgemon"]), ""]
    out += ["## Published peer figures (not measured here)", "",
            f"From {peers.SOURCE}, for comparison with the figures above:", ""]
    out += [f"- {agent} at {iv:g} s: {v['rss_mb']} MB RSS, {v['cpu_s_per_hour']} CPU s/hour"
            for (iv, agent), v in peers.REFERENCE_FOOTPRINT.items()]
    out += [f"- {k}: {v:g}" for k, v in peers.REFERENCE_WIRE.items()]
    out.append("")
    if plots or plot_note:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
        if plot_note:
            out.append(plot_note)
        out.append("")
    out += ["## Benchmarks in this run", ""]
    out += [f"- **{e['name']}** — {e['about']}: `{e['command']}` → {e['status']}"
            + (f" in {e['seconds']:g} s" if "seconds" in e else "")
            + (f" ({e['reason']})" if e.get("reason") else "") for e in entries]
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, minutes each")
    parser.add_argument("--only", help="comma-separated names: " + ", ".join(REGISTRY))
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where results/, RESULTS.md and plots go (default: benchmarks/)")
    parser.add_argument("--tiny", action="store_true",
                        help="a few seconds per benchmark, for the smoke test")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, b in REGISTRY.items():
            there = "" if (HERE / b.script).exists() else "  (not yet available)"
            print(f"{name:15} {b.about}{there}")
        return 0
    names = list(REGISTRY)
    if args.quick and not args.tiny:
        names = [n for n in names if REGISTRY[n].in_quick]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: "
                         + ", ".join(REGISTRY))
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    out: Path = args.out.resolve()
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    started = time.time()
    info = describe_machine()
    entries = [run_one(n, REGISTRY[n], mode, results) for n in names]
    figs = [f for e in entries if e["status"] == "ok" for f in headline(e)]
    by_name = {e["name"]: e.get("result") for e in entries if e["status"] == "ok"}
    summary: dict[str, Any] = {
        "machine": info, "mode": mode, "seconds": round(time.time() - started, 1),
        "figures": figs,
        "goals": peers.goal_checks(by_name.get("footprint"), by_name.get("wire_size")),
        "benchmarks": [{k: v for k, v in e.items() if k not in ("result", "output", "stderr")}
                       for e in entries],
    }
    plots: list[str] = []
    plot_note = ""
    if not args.no_plots:
        from plots import make_plots
        plots, plot_note = make_plots(out, by_name)
    summary["plots"] = plots
    summary["plot_note"] = plot_note
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "RESULTS.md").write_text(results_md(summary, by_name, plots, plot_note))
    print()
    print(table(table_rows(figs), COLUMNS) if figs else "(no figures)")
    print()
    for e in entries:
        extra = f" ({e['reason']})" if e.get("reason") else ""
        print(f"{e['name']:15} {e['status']}{extra}")
        if e["status"] == "failed" and e.get("stderr"):
            print("    " + e["stderr"].strip()[-800:].replace("\n", "\n    "))
    if plot_note:
        print(plot_note)
    print(f"\nwrote {out / 'RESULTS.md'}, {results / 'summary.json'}"
          + "".join(f", {p}" for p in plots) + f" in {summary['seconds']:g} s")
    return 1 if any(e["status"] == "failed" for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
