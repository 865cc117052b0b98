"""What /metrics and the export cost, each beside a baseline measured in the same run.

* scrape: ``CollectorMetrics.text()`` (prometheus-client) with N hosts in the per-host families,
  against the hand-written renderer it replaced (``git show <rev>:collector/http/metrics.py``,
  loaded from git), median of repeated renders;
* storage gauges: ``tier_bytes()`` (the scan the maintenance thread makes every 2 min) and
  ``backlog()`` on a compacted store, against one full read of a host's day through
  ``storage.query`` (what a dashboard does);
* export: a whole host over the range as CSV through the streaming generator (samples/s, peak
  of Python allocations), against reading the same series in one ``storage.query`` each
  (unsliced, everything in memory).

    python benchmarks/export_metrics.py           # 10 hosts x 3 days at 10 s
    python benchmarks/export_metrics.py --quick   # 6 hosts x 12 h

Figures on the shared 2-core development VM: compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import table, write_result

from edgemon.collector.http import export
from edgemon.collector.http.metrics import CollectorMetrics
from edgemon.collector.ingest.pipeline import IngestStats
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import RangeQuery
from edgemon.collector.storage.maintenance import MaintenanceRunner
from tests.support import promdata

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3_600_000
DAY = 24 * HOUR


def _median_s(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _old_renderer(rev: str) -> types.ModuleType | None:
    """The hand-written renderer of ``rev`` (None when git or the file is not there)."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:collector/http/metrics.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "prometheus_client" in source:
        return None
    module = types.ModuleType("old_metrics")
    exec(compile(source, "old_metrics.py", "exec"), module.__dict__)
    return module


def scrape(hosts: int, maintenance: MaintenanceRunner, rev: str) -> dict[str, object]:
    stats, rejects = IngestStats(), Rejects(max_hosts=hosts + 10)
    for i in range(hosts):
        stats.host_lag_ms[f"host-{i:05d}"] = 1500 + i
        stats.host_last_received_ms[f"host-{i:05d}"] = 1_700_000_000_000 + i
        rejects.record("future_timestamp", f"host-{i:05d}")
    metrics = CollectorMetrics()
    metrics.attach(stats=stats, rejects=rejects, maintenance=maintenance)
    text = metrics.text()
    new_s = _median_s(metrics.text, 30)
    row: dict[str, object] = {"what": f"/metrics, {hosts} hosts",
                              "edgemon_ms": round(new_s * 1e3, 3), "bytes": len(text)}
    old = _old_renderer(rev)
    if old is not None:
        def render_old() -> str:
            return old.render_metrics(stats=stats, rejects=rejects, inbox=None,  # type: ignore
                                      mqtt=None, storage_open=True, maintenance=maintenance)
        old_s = _median_s(render_old, 30)
        row.update(baseline="hand-written (" + rev + ")", baseline_ms=round(old_s * 1e3, 3),
                   ratio=round(new_s / old_s, 2))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline-rev", default="main",
                        help="git revision whose hand-written /metrics is the baseline")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the rejects recorded for the scrape would log each
    n_hosts, span = (6, 12 * HOUR) if args.quick else (10, 3 * DAY)
    end = 1_700_000_000_000 - 1_700_000_000_000 % DAY + 3 * DAY
    plans = tuple(promdata.HostPlan(f"host-{i:03d}") for i in range(n_hosts))
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = open_storage(Path(tmp) / "edgemon.db")
        began = time.perf_counter()
        samples = promdata.fill(store, end - span, end, hosts=plans)
        store.compact_all(end + DAY)
        print(f"stored and compacted {samples} samples of {n_hosts} hosts in "
              f"{time.perf_counter() - began:.1f} s", flush=True)
        runner = MaintenanceRunner(store, clock_ms=lambda: end + DAY)
        runner.refresh_gauges(force=True)
        disk = store.disk_bytes() or 0

        # storage gauges against one dashboard read of a host's day
        host = plans[0].name
        names = sorted({s.name for s in store.series(host)})

        def dashboard_read() -> None:
            for name in names:
                store.query(RangeQuery(name, end - DAY, end, 60_000, "avg", hosts=(host,),
                                       max_points=10**9))
        base_s = _median_s(dashboard_read, 3)
        sizes_s = _median_s(store.tier_bytes, 3)
        backlog_s = _median_s(lambda: store.backlog(end + DAY), 3)
        for what, took in (("tier_bytes() scan", sizes_s), ("backlog()", backlog_s)):
            rows.append({"what": f"{what}, {disk / 2**20:.1f} MiB store",
                         "edgemon_ms": round(took * 1e3, 2),
                         "baseline": "one host's day, every metric at 1 m",
                         "baseline_ms": round(base_s * 1e3, 2),
                         "ratio": round(took / base_s, 2)})

        # scrape against the hand-written renderer
        for hosts in (10, 1000):
            rows.append(scrape(hosts, runner, args.baseline_rev))

        # export of a whole host against unsliced reads: time first, then (a second pass under
        # tracemalloc, which slows everything) the peak of Python allocations
        req = export.ExportRequest((host,), (), end - span, end, None, "avg", True)
        series = export.select_series(store, req)

        def run_export() -> int:
            return sum(len(p) for p in export._buffered(export.samples_csv(store, req, series)))

        def run_unsliced() -> int:
            read = 0
            for s in series:
                for r in store.query(RangeQuery(s.name, req.start_ms, req.end_ms + 1, 1, "last",
                                                hosts=(host,), labels=dict(s.labels),
                                                tier="raw", max_series=2**62,
                                                max_points=2**62)):
                    read += len(r.points) if r.labels == s.labels else 0
            return read

        export_s, unsliced_s = _median_s(run_export, 3), _median_s(run_unsliced, 3)
        peaks = []
        for fn in (run_export, run_unsliced):
            tracemalloc.start()
            result = fn()
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            if fn is run_export:
                out_bytes = result
            else:
                read = result
        rows.append({"what": f"export CSV, 1 host x {span // HOUR} h ({read} samples, "
                             f"{out_bytes / 2**20:.1f} MiB; {read / export_s:,.0f} samples/s)",
                     "edgemon_ms": round(export_s * 1e3, 1),
                     "baseline": "unsliced storage.query per series (no CSV)",
                     "baseline_ms": round(unsliced_s * 1e3, 1),
                     "ratio": round(export_s / unsliced_s, 2),
                     "peak_alloc_MiB": round(peaks[0] / 2**20, 2),
                     "baseline_peak_alloc_MiB": round(peaks[1] / 2**20, 2)})
        store.close()
    print(table(rows, ["what", "edgemon_ms", "baseline", "baseline_ms", "ratio", "bytes",
                       "peak_alloc_MiB", "baseline_peak_alloc_MiB"]))
    print("(shared 2-core VM under load from other jobs: compare ratios, not absolute times; "
          "export slices are one day: the memory bound shows from spans over a day on)")
    path = write_result("export_metrics", {"quick": args.quick, "hosts": n_hosts,
                                           "span_ms": span, "samples": samples,
                                           "disk_bytes": disk, "rows": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
