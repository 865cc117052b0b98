"""PromQL query latency: edgemon's collector beside a real Prometheus holding the same samples.

One data set is stored by edgemon's storage (then compacted, with the default retention, as a
running collector would have it) and exported as OpenMetrics into a Prometheus TSDB
(``promtool tsdb create-blocks-from openmetrics``). A collector process (``auth = "none"`` on
loopback) and Debian's ``prometheus`` serve it; a battery of typical dashboard queries goes to
both over HTTP, interleaved, and the table shows p50/p99 per query and the ratio
edgemon / Prometheus (below 1: edgemon is faster).

    python benchmarks/query.py            # 1 host x 30 d at 10 s, 1000 hosts x 1 h
    python benchmarks/query.py --quick    # 1 host x 30 d at 60 s, 200 hosts x 1 h
    python benchmarks/query.py --quick --baseline /path/to/main/.venv/bin/edgemon-collector

``--baseline``: another checkout's collector (e.g. a worktree of main) serves a copy of the same
data in the same run, its queries interleaved with the other two: before/after figures taken
under the same machine load.

Goal (issue 15): no slower than Prometheus on the single-host queries. Besides wall-clock
latency the table shows each server's CPU time per query (all its threads, from
/proc/<pid>/task/*/schedstat): on a shared machine wall time mostly measures the wait for a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result
from ingest import free_port, start_broker, start_collector, stop, wait_for

from edgemon.collector.promql.openmetrics import write_openmetrics
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import IngestItem, Storage
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

LOAD = MetricDef("load1", GAUGE, "", 2)
CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
MEM_AVAILABLE = MetricDef("memory_available_bytes", GAUGE, "bytes")
MEM_TOTAL = MetricDef("memory_total_bytes", GAUGE, "bytes")
NET = MetricDef("network_received_bytes_total", COUNTER, "bytes", 0, ("iface",))

SINGLE = "host-0000"
QUERIES: list[tuple[str, str, str, int, int]] = [
    # (group, label, expression, range in ms (0: instant), step ms)
    ("1 host x 24 h", "load", f'load1{{host="{SINGLE}"}}', DAY, MINUTE),
    ("1 host x 24 h", "network rate",
     f'rate(network_received_bytes_total{{host="{SINGLE}"}}[5m])', DAY, MINUTE),
    ("1 host x 24 h", "memory used %",
     f'100 * (1 - memory_available_bytes{{host="{SINGLE}"}} / '
     f'memory_total_bytes{{host="{SINGLE}"}})', DAY, MINUTE),
    ("1 host x 24 h", "cpu avg 5m",
     f'avg_over_time(cpu_usage_percent{{host="{SINGLE}", cpu="total"}}[5m])', DAY, MINUTE),
    ("1 host x 30 d", "load max 1h", f'max_over_time(load1{{host="{SINGLE}"}}[1h])',
     30 * DAY, HOUR),
    ("1 host x 30 d", "network rate 1h",
     f'rate(network_received_bytes_total{{host="{SINGLE}"}}[1h])', 30 * DAY, HOUR),
    ("fleet x 1 h", "topk(10) network rate",
     "topk(10, rate(network_received_bytes_total[5m]))", HOUR, 15_000),
    ("fleet x 1 h", "topk(10) instant", "topk(10, load1)", 0, 0),
    ("fleet x 1 h", "avg cpu by host",
     'topk(10, avg by (host) (avg_over_time(cpu_usage_percent[5m])))', HOUR, MINUTE),
]


def _batches(host: str, start: int, end: int, interval: int, rng: np.random.Generator,
             per_batch: int = 60) -> list[IngestItem]:
    items: list[IngestItem] = []
    total = int(rng.integers(4, 64)) * 2**30
    counter = int(rng.integers(10**9, 10**12))
    builder, cycles, seq = BatchBuilder(), 0, 0
    n = (end - start) // interval
    loads = np.abs(rng.normal(120, 60, n)).astype(int)
    cpus = rng.integers(0, 10_001, n)
    avail = (total * rng.uniform(0.1, 0.9, n)).astype(np.int64)
    steps = rng.integers(0, 3_000_000, n)
    for k in range(n):
        t = start + k * interval + int(k * 7 % 13)
        counter += int(steps[k])
        builder.add(t, LOAD, (), int(loads[k]))
        builder.add(t, CPU, ("total",), int(cpus[k]))
        builder.add(t, MEM_AVAILABLE, (), int(avail[k]))
        builder.add(t, MEM_TOTAL, (), total)
        builder.add(t, NET, ("eth0",), counter)
        cycles += 1
        if cycles == per_batch or k == n - 1:
            payload = encode(builder.build(host=host, instance="bench", seq=seq,
                                           sent_ms=t + 500))
            items.append(IngestItem(validate_batch(decode(payload)), payload, t + 800, False))
            builder, cycles, seq = BatchBuilder(), 0, seq + 1
    return items


def fill(storage: Storage, end: int, *, days: int, interval: int, fleet: int) -> int:
    rng = np.random.default_rng(15)
    stored = 0
    plans = [(SINGLE, end - days * DAY, interval)]
    plans += [(f"host-{i:04d}", end - 2 * HOUR, 10_000) for i in range(1, fleet)]
    for host, start, step in plans:
        items = _batches(host, start, end, step, rng)
        for a in range(0, len(items), 500):
            stored += sum(r.samples for r in storage.store_batches(items[a:a + 500]))
    return stored


def start_prometheus(work: Path, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\n")
    log = open(work / "prometheus.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=100y",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((work / "prometheus.log").read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
            return r.status == 200
    wait_for(ready, 120, "prometheus not ready")
    return proc, port


def timed_get(port: int, expr: str, now_ms: int, range_ms: int, step_ms: int) -> float:
    if range_ms:
        path = "query_range"
        params = {"query": expr, "start": (now_ms - range_ms) / 1000, "end": now_ms / 1000,
                  "step": step_ms / 1000}
    else:
        path, params = "query", {"query": expr, "time": now_ms / 1000}
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        body = resp.read()
    elapsed = time.perf_counter() - began
    if b'"status":"success"' not in body:
        raise RuntimeError(f"{expr}: {body[:300]!r}")
    return elapsed * 1000


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (ns, /proc/<pid>/task/*/schedstat): what a
    query costs a server, whatever else the machine is doing (wall times on a shared machine
    mostly measure the wait for a CPU)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout's edgemon-collector, measured beside this one")
    args = parser.parse_args()
    days, interval, fleet = (30, 60_000, 200) if args.quick else (30, 10_000, 1000)
    reps = args.reps or (8 if args.quick else 30)
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        raise SystemExit("needs Debian's prometheus package (apt-get install prometheus)")
    work = Path(tempfile.mkdtemp(prefix="edgemon-query-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        end = int(time.time() * 1000) // MINUTE * MINUTE
        db = work / "collector" / "data" / "edgemon.db"
        db.parent.mkdir(parents=True)
        began = time.perf_counter()
        storage = open_storage(db)
        samples = fill(storage, end, days=days, interval=interval, fleet=fleet)
        stored_s = time.perf_counter() - began
        exported = work / "data.om"
        with exported.open("w") as out:
            write_openmetrics(storage, out, end - (days + 1) * DAY, end + HOUR)
        storage.compact_all(int(time.time() * 1000))  # with retention, like a running one
        storage.close()
        prepare_s = time.perf_counter() - began
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics",
                        "--max-block-duration=744h", str(exported), str(work / "tsdb")],
                       check=True, capture_output=True, timeout=1800)
        exported.unlink()
        if args.baseline is not None:
            shutil.copytree(db.parent, work / "baseline" / "data")
        (work / "broker").mkdir()
        broker, mqtt_port = start_broker(work / "broker")
        procs.append(broker)
        collector, http_port, _ = start_collector(work / "collector", mqtt_port,
                                                  http_extra='auth = "none"')
        procs.append(collector)
        servers = {"edgemon": (collector.pid, http_port)}
        if args.baseline is not None:
            baseline, base_port, _ = start_collector(work / "baseline", mqtt_port,
                                                     http_extra='auth = "none"',
                                                     executable=args.baseline.resolve())
            procs.append(baseline)
            servers["baseline"] = (baseline.pid, base_port)
        prometheus, prom_port = start_prometheus(work, work / "tsdb")
        procs.append(prometheus)
        servers["prometheus"] = (prometheus.pid, prom_port)
        rows, results = [], []
        for group, label, expr, range_ms, step in QUERIES:
            walls: dict[str, list[float]] = {name: [] for name in servers}
            cpu = dict.fromkeys(servers, 0)
            for rep in range(reps + 1):  # the first round warms all up and is not counted
                names = list(servers)
                # the order rotates every round: no server always follows the same one
                names = names[rep % len(names):] + names[:rep % len(names)]
                for name in names:
                    pid, port = servers[name]
                    before = cpu_ns(pid)
                    wall = timed_get(port, expr, end, range_ms, step)
                    if rep:
                        walls[name].append(wall)
                        cpu[name] += cpu_ns(pid) - before
            figures = {}
            for name in servers:
                figures |= {f"{name}_p50_ms": percentile(walls[name], 50),
                            f"{name}_p99_ms": percentile(walls[name], 99),
                            f"{name}_cpu_ms": cpu[name] / reps / 1e6}
            if "baseline" in servers:
                figures["ratio_cpu_to_baseline"] = (figures["edgemon_cpu_ms"]
                                                    / max(figures["baseline_cpu_ms"], 1e-6))
            ratio = figures["edgemon_p50_ms"] / figures["prometheus_p50_ms"]
            cpu_ratio = figures["edgemon_cpu_ms"] / max(figures["prometheus_cpu_ms"], 1e-6)
            results.append({"group": group, "query": label, "expr": expr, "range_ms": range_ms,
                            "step_ms": step, **figures, "ratio_p50": ratio,
                            "ratio_cpu": cpu_ratio})
            rows.append({"group": group, "query": label,
                         "baseline p50/p99 ms": f"{figures.get('baseline_p50_ms', 0):.1f} / "
                                                f"{figures.get('baseline_p99_ms', 0):.1f}",
                         "baseline CPU ms": f"{figures.get('baseline_cpu_ms', 0):.1f}",
                         "edgemon p50/p99 ms": f"{figures['edgemon_p50_ms']:.1f} / "
                                               f"{figures['edgemon_p99_ms']:.1f}",
                         "prometheus p50/p99 ms": f"{figures['prometheus_p50_ms']:.1f} / "
                                                  f"{figures['prometheus_p99_ms']:.1f}",
                         "ratio p50": f"{ratio:.2f}",
                         "CPU ms/query edgemon / prometheus":
                             f"{figures['edgemon_cpu_ms']:.1f} / "
                             f"{figures['prometheus_cpu_ms']:.1f}",
                         "ratio CPU": f"{cpu_ratio:.2f}"})
        before = ["baseline p50/p99 ms", "baseline CPU ms"] if "baseline" in servers else []
        print(table(rows, ["group", "query", *before, "edgemon p50/p99 ms",
                           "prometheus p50/p99 ms", "ratio p50",
                           "CPU ms/query edgemon / prometheus", "ratio CPU"]))
        single = [r["ratio_p50"] for r in results if r["group"].startswith("1 host")]
        fleet_ratios = [r["ratio_p50"] for r in results if r["group"].startswith("fleet")]
        headline = [
            {"figure": "single-host queries, p50 (median over the queries)", "unit": "ms",
             "value": statistics.median(r["edgemon_p50_ms"] for r in results
                                        if r["group"].startswith("1 host")),
             "baselines": {"prometheus": statistics.median(
                 r["prometheus_p50_ms"] for r in results if r["group"].startswith("1 host"))}},
            {"figure": "fleet-wide queries, p50 (median over the queries)", "unit": "ms",
             "value": statistics.median(r["edgemon_p50_ms"] for r in results
                                        if r["group"].startswith("fleet")),
             "baselines": {"prometheus": statistics.median(
                 r["prometheus_p50_ms"] for r in results if r["group"].startswith("fleet"))}},
        ]
        single_cpu = [r["ratio_cpu"] for r in results if r["group"].startswith("1 host")]
        headline.append(
            {"figure": "single-host queries, server CPU per query (median over the queries)",
             "unit": "ms", "value": statistics.median(
                 r["edgemon_cpu_ms"] for r in results if r["group"].startswith("1 host")),
             "baselines": {"prometheus": statistics.median(
                 r["prometheus_cpu_ms"] for r in results if r["group"].startswith("1 host"))}})
        goal = all(r <= 1.0 for r in single)
        print(f"\nsingle-host p50 ratios {[round(r, 2) for r in single]}: goal (<= 1) "
              f"{'met' if goal else 'NOT met'}; fleet ratios {[round(r, 2) for r in fleet_ratios]}"
              f"; single-host CPU ratios {[round(r, 2) for r in single_cpu]}")
        path = write_result("query", {
            "mode": "quick" if args.quick else "full", "reps": reps, "samples": samples,
            "single_host_days": days, "single_host_interval_ms": interval,
            "fleet_hosts": fleet, "store_seconds": round(stored_s, 1),
            "prepare_seconds": round(prepare_s, 1), "queries": results,
            "single_host_goal_met": goal,
            "single_host_cpu_goal_met": all(r <= 1.0 for r in single_cpu),
            "load_average": list(os.getloadavg()), "headline": headline,
            **({"baseline": str(args.baseline)} if args.baseline is not None else {})})
        print(f"written {path}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
