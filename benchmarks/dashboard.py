"""The dashboard at fleet scale: a real collector process over a store of 10,000 hosts, driven by
a real headless Chromium.

    python benchmarks/dashboard.py [--quick] [--hosts N] [--days D]

1. A store is filled in-process: ``--hosts`` hosts with the last 5 minutes of the metrics the
   fleet page shows (10 s interval, the newest minute left uncompacted as in a running system),
   and one host (``long-host``) with ``--days`` days of every family (30 s interval), compacted
   into rollups.
2. A collector process starts on it (with a private Mosquitto); its fleet figures are loaded
   from storage at start (timed); measuring starts once it is idle (what was pending is
   compacted).
3. The fleet summary endpoint: cold (first snapshot) and warm latency, sorted and filtered
   requests; baseline: what the same figures cost as storage queries over every host (the
   approach the in-memory figures replace), one metric of the several needed.
4. Chromium (Debian's, through chromium-driver): the fleet page's time to interactive (the
   first page of rows drawn, sorting and filtering bound) with an empty cache and again; the host
   page's time from request to every chart drawn for 24 h and 30 d; bytes transferred on first
   load of each page. Baseline for the charts: the same data as one ``/edgemon/api/v1/query``
   request per metric.
5. Netdata (Debian's ``netdata-core`` + ``netdata-web``, when installed): its own copy on a free
   loopback port; the bytes its dashboard transfers on first load, for comparison.
6. A load test of the API behind the pages with ``wrk`` (Debian's, when installed): 1,000
   connections asking what people refreshing fleet, host and alerts pages ask; requests/s and
   p95 (goal: p95 < 500 ms at >= 5,000 requests/s).

Goals (issue 19): fleet page interactive < 1 s, host page 24 h < 300 ms, first load < 300 KB.
Writes ``benchmarks/results/dashboard.json``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import table, write_result  # noqa: E402
from ingest import start_broker, start_collector, stop  # noqa: E402

from edgemon.collector.http.tokens import create_token  # noqa: E402
from edgemon.collector.storage.base import IngestItem, RangeQuery  # noqa: E402
from edgemon.collector.storage.sqlite import SQLiteStorage  # noqa: E402
from edgemon.protocol import decode  # noqa: E402
from edgemon.protocol.schema import ValidBatch, validate_batch  # noqa: E402

SEC = 1000
DAY = 86_400_000
LONG_HOST = "long-host"
_zstd = zstandard.ZstdCompressor(level=3, write_content_size=True)


# --- the store ---------------------------------------------------------------------------------

def _metric(name: str, kind: str, unit: str, scale: int, keys: list[str],
            series: list[tuple[list[str], np.ndarray]]) -> list[Any]:
    """One batch metric entry; ``series`` values are already scaled integers."""
    return [name, kind, unit, scale, keys,
            [[labels, 0, np.diff(v, prepend=0).tolist()] for labels, v in series]]


def fleet_host_batches(host: str, rng: np.random.Generator, t0: int, cycles: int,
                       per_batch: int, interval: int) -> list[dict[str, Any]]:
    """What the fleet page reads: CPU, memory, disks, network, agent health (~14 series)."""
    n = cycles
    cpu = np.clip(rng.normal(rng.uniform(2, 60), 5, n), 0, 100)
    mem = np.clip(rng.normal(rng.uniform(10, 90), 1, n), 0, 100)
    rx = np.cumsum(rng.poisson(rng.uniform(1e3, 1e6), n)) + int(rng.integers(0, 2**40))
    tx = np.cumsum(rng.poisson(rng.uniform(1e3, 1e5), n)) + int(rng.integers(0, 2**40))
    out = []
    for seq, lo in enumerate(range(0, n, per_batch)):
        hi = min(n, lo + per_batch)
        times = t0 + np.arange(lo, hi, dtype=np.int64) * interval
        sl = slice(lo, hi)
        metrics = [
            _metric("cpu_usage_percent", "gauge", "percent", 2, ["cpu"],
                    [(["total"], (cpu[sl] * 100).astype(np.int64)),
                     (["0"], (cpu[sl] * 90).astype(np.int64))]),
            _metric("memory_usage_percent", "gauge", "percent", 2, [],
                    [([], (mem[sl] * 100).astype(np.int64))]),
            _metric("disk_usage_percent", "gauge", "percent", 2, ["mount", "device", "fstype"],
                    [(["/", "/dev/sda1", "ext4"], np.full(hi - lo, int(rng.integers(500, 9000)))),
                     (["/data", "/dev/sdb1", "xfs"], np.full(hi - lo, 4000))]),
            _metric("network_received_bytes_total", "counter", "bytes", 0, ["iface"],
                    [(["eth0"], rx[sl])]),
            _metric("network_sent_bytes_total", "counter", "bytes", 0, ["iface"],
                    [(["eth0"], tx[sl])]),
            _metric("agent_buffer_samples", "gauge", "", 0, [], [([], np.zeros(hi - lo, int))]),
            _metric("agent_dropped_samples_total", "counter", "", 0, [],
                    [([], np.zeros(hi - lo, int))]),
            _metric("load1", "gauge", "", 2, [], [([], (cpu[sl] * 2).astype(np.int64))]),
        ]
        out.append({"v": 1, "host": host, "instance": "bench0", "seq": seq,
                    "sent": int(times[-1]) + 300, "t": np.diff(times, prepend=0).tolist(),
                    "metrics": metrics})
    return out


def long_host_batches(t0: int, cycles: int, interval: int, per_batch: int,
                      rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every family of one host for a long time (~40 series)."""
    from storage_ingest import host_series

    series = host_series(rng, cycles)
    keep = {"cpu_usage_percent", "cpu_mode_percent", "load1", "load5", "load15",
            "memory_used_bytes", "memory_available_bytes", "memory_cached_bytes",
            "memory_usage_percent", "swap_used_bytes", "disk_usage_percent", "disk_used_bytes",
            "diskio_read_bytes_total", "diskio_written_bytes_total",
            "network_received_bytes_total", "network_sent_bytes_total",
            "network_received_packets_total", "system_uptime_seconds"}
    by_metric: dict[tuple[Any, ...], list[tuple[list[str], np.ndarray]]] = {}
    for (name, kind, unit, scale, keys, labels), values in series:
        if name in keep and (name != "cpu_usage_percent" or labels[0] in ("total", "0", "1")):
            by_metric.setdefault((name, kind, unit, scale, tuple(keys)), []).append(
                (labels, values))
    out = []
    for seq, lo in enumerate(range(0, cycles, per_batch)):
        hi = min(cycles, lo + per_batch)
        times = t0 + np.arange(lo, hi, dtype=np.int64) * interval
        metrics = [_metric(name, kind, unit, scale, list(keys),
                           [(labels, v[lo:hi]) for labels, v in entries])
                   for (name, kind, unit, scale, keys), entries in sorted(by_metric.items())]
        out.append({"v": 1, "host": LONG_HOST, "instance": "long0", "seq": seq,
                    "sent": int(times[-1]) + 300, "t": np.diff(times, prepend=0).tolist(),
                    "metrics": metrics})
    return out


def items(batches: list[dict[str, Any]], *, check: bool = False) -> list[IngestItem]:
    """IngestItems; ``check``: validated as ingest would (slow), else trusted (we made them)."""
    out = []
    for b in batches:
        payload = _zstd.compress(msgpack.packb(b, use_bin_type=True))
        batch = validate_batch(decode(payload)) if check else ValidBatch(
            v=b["v"], host=b["host"], instance=b["instance"], seq=b["seq"], sent=b["sent"],
            t=b["t"], metrics=b["metrics"], extensions={},
            sample_count=sum(len(e[2]) for m in b["metrics"] for e in m[5]))
        out.append(IngestItem(batch, payload, b["sent"] + 200, False))
    return out


def build_store(path: Path, hosts: int, days: int) -> dict[str, Any]:
    """The long host first (old data), then the fleet's last 5 minutes ending now, so the
    collector that starts next sees a fresh fleet."""
    rng = np.random.default_rng(19)
    st = SQLiteStorage(path, synchronous="NORMAL", raw_retention_ms=max(7, days + 1) * DAY)
    started = time.perf_counter()
    now = int(time.time() * 1000)
    long_interval = 30 * SEC
    long_cycles = days * DAY // long_interval
    long = long_host_batches(now - long_cycles * long_interval, long_cycles, long_interval, 120,
                             rng)
    items(long[:1], check=True)
    for lo in range(0, len(long), 200):
        st.store_batches(items(long[lo:lo + 200]))
    st.compact_all(now)
    long_s = time.perf_counter() - started
    started = time.perf_counter()
    interval, cycles = 10 * SEC, 30
    now = int(time.time() * 1000)
    t0 = now - cycles * interval
    items(fleet_host_batches("host-check", rng, t0, cycles, 6, interval)[:1], check=True)
    for lo in range(0, hosts, 500):
        chunk: list[IngestItem] = []
        for i in range(lo, min(hosts, lo + 500)):
            chunk += items(fleet_host_batches(f"host-{i:05d}", rng, t0, cycles, 6, interval))
        st.store_batches(chunk)
    for i in range(0, hosts, 97):
        st.record_status(f"host-{i:05d}", "bench0", False, now - 2000, now - 1900)
    st.compact_all(int(time.time() * 1000))  # the newest minute stays pending, as in a running
    st.close()                                # collector
    return {"long_host_s": round(long_s, 1), "fleet_s": round(time.perf_counter() - started, 1),
            "long_host_samples": sum(len(e[2]) for b in long for m in b["metrics"]
                                     for e in m[5])}


def wait_idle(pid: int, timeout: float = 120.0, busy: float = 0.25) -> float:
    """Until the process uses less than ``busy`` of a CPU over 2 s (its start-up work, such as
    compacting what was pending, is done); seconds waited."""
    started = time.monotonic()
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    while time.monotonic() - started < timeout:
        before = cpu()
        time.sleep(2)
        if cpu() - before < 2 * busy:
            break
    return time.monotonic() - started


# --- HTTP and the browser ------------------------------------------------------------------

def get(base: str, path: str, token: str) -> tuple[float, bytes]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
    return (time.perf_counter() - started) * 1000, body


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
            "n": len(ordered)}


def fleet_endpoint(base: str, token: str, repeat: int) -> dict[str, Any]:
    cold, _ = get(base, "/edgemon/api/v1/fleet?limit=100", token)
    queries = ["/edgemon/api/v1/fleet?limit=100",
               "/edgemon/api/v1/fleet?limit=100&sort=cpu_percent&order=desc",
               "/edgemon/api/v1/fleet?limit=100&sort=net_bytes_per_s&order=desc&state=online",
               "/edgemon/api/v1/fleet?limit=100&q=host-01*&min.memory_percent=50",
               "/edgemon/api/v1/fleet?limit=100&offset=5000&sort=disk_percent"]
    warm = [get(base, queries[i % len(queries)], token)[0] for i in range(repeat)]
    return {"cold_ms": round(cold, 1), **percentiles(warm)}


def storage_baseline(db: Path, now: int) -> float:
    """The newest CPU of every host as one storage query (one of the ~7 the figures need)."""
    st = SQLiteStorage(db)
    try:
        started = time.perf_counter()
        st.query(RangeQuery(name="cpu_usage_percent", start_ms=now - 300_000, end_ms=now + 1,
                            step_ms=60_000, aggregation="last", labels={"cpu": "total"},
                            group_by=("host",), max_series=10**6, max_points=10**8))
        return (time.perf_counter() - started) * 1000
    finally:
        st.close()


def browser_figures(base: str, token: str, repeat: int, days: int) -> dict[str, Any]:
    from tests.support.browser import Browser

    out: dict[str, Any] = {}
    with Browser() as b:
        b.sign_in(base, token)
        b.driver.execute_cdp_cmd("Network.enable", {})
        b.driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        fleet_ms, fleet_kb = [], 0.0
        for i in range(repeat):
            b.get(base + "/?r=" + str(i))
            b.wait_ready(60)
            fleet_ms.append(b.js("return performance.getEntriesByName('fleet-ready')[0]"
                                 ".startTime"))
            if i == 0:
                fleet_kb = transferred_kb(b)
        out["fleet_interactive_first_ms"] = round(fleet_ms[0], 1)
        out["fleet_interactive_ms"] = percentiles(fleet_ms[1:] or fleet_ms)
        out["fleet_first_load_kb"] = fleet_kb
        b.driver.execute_cdp_cmd("Network.clearBrowserCache", {})
        for label in ("24h", f"{days}d"):
            draws, fetches = [], []
            for i in range(repeat):
                b.get(f"{base}/hosts/{LONG_HOST}?range={label}&r={i}")
                b.wait_ready(120)
                draws.append(b.js("return performance.getEntriesByName('charts')[0].duration"))
                fetches.append(b.js(
                    "const e = performance.getEntriesByType('resource').filter(r => "
                    "r.name.includes('/charts?'));return e[e.length - 1].duration"))
                if label == "24h" and i == 0:
                    out["host_first_load_kb"] = transferred_kb(b)
                    out["charts"] = b.js("return document.querySelectorAll('figure.chart')"
                                         ".length")
            out[f"host_{label}_draw_ms"] = percentiles(draws)
            out[f"host_{label}_fetch_ms"] = percentiles(fetches)
    return out


NETDATA = "/usr/sbin/netdata"
NETDATA_CONF = """[global]
    run as user = {user}
    memory mode = ram
[directories]
    cache = {d}/cache
    lib = {d}/lib
    log = {d}/log
    run = {d}/run
[logs]
    debug log = none
    error log = {d}/log/error.log
    access log = none
[web]
    bind to = 127.0.0.1:{port}
[cloud]
    enabled = no
[ml]
    enabled = no
[health]
    enabled = no
[registry]
    enabled = no
"""


def netdata_first_load_kb(work: Path) -> float | None:
    """Bytes Debian's netdata dashboard (its own copy, on a free loopback port) transfers until
    its network is quiet for 2 s; None without netdata (apt-get install netdata-core
    netdata-web)."""
    import getpass
    import subprocess

    from ingest import free_port, wait_for

    from tests.support.browser import Browser

    if not Path(NETDATA).exists():
        return None
    d = work / "netdata"
    for sub in ("cache", "lib", "log", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    (d / "netdata.conf").write_text(NETDATA_CONF.format(
        user="root" if os.geteuid() == 0 else getpass.getuser(), d=d, port=port))
    with open(d / "out.log", "ab") as log:
        proc = subprocess.Popen([NETDATA, "-D", "-c", str(d / "netdata.conf")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/info",
                                                timeout=2).status == 200, 60, "netdata")
        time.sleep(3)  # a few seconds of data, as a person opening it would see
        with Browser() as b:
            b.get(f"http://127.0.0.1:{port}/")
            last, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 30
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 2:
                count = b.js("return performance.getEntriesByType('resource').length")
                if count != last:
                    last, quiet_since = count, time.monotonic()
                time.sleep(0.2)
            return transferred_kb(b)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


WRK_SCRIPT = """
-- What 1,000 people refreshing the dashboard ask: the fleet page (sorted different ways),
-- host pages of random hosts, alerts. The token goes in the header, as any API client's would.
local paths = {}
local sorts = {"host", "cpu_percent", "memory_percent", "net_bytes_per_s", "disk_percent"}
math.randomseed(19)
for i = 1, 2000 do
  local r = math.random()
  if r < FLEET_SHARE then
    paths[i] = "/edgemon/api/v1/fleet?limit=100&order=desc&sort=" .. sorts[math.random(#sorts)]
      .. "&offset=" .. (100 * math.random(0, 20))
  elseif r < FLEET_SHARE + CHARTS_SHARE then
    paths[i] = string.format("/edgemon/api/v1/hosts/host-%05d/charts?start=now-15m",
                             math.random(0, HOSTS - 1))
  else
    paths[i] = "/edgemon/api/v1/alerts"
  end
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1], {["Authorization"] = "Bearer TOKEN"})
end
done = function(summary, latency, requests)
  io.write(string.format('WRK {"requests": %d, "seconds": %.3f, "errors": %d, '
    .. '"non2xx": %d, "timeouts": %d, "p50_ms": %.1f, "p95_ms": %.1f, "p99_ms": %.1f}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def load_test(base: str, token: str, hosts: int, work: Path, seconds: int,
              connections: int, fleet_share: float, charts_share: float) -> dict[str, Any] | None:
    """``wrk`` (Debian's) with ``connections`` open connections for ``seconds``, asking for fleet
    pages, host charts and alerts in these shares; None without wrk."""
    import shutil
    import subprocess

    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = work / "dashboard.lua"
    script.write_text(WRK_SCRIPT.replace("HOSTS", str(hosts)).replace("TOKEN", token)
                      .replace("FLEET_SHARE", str(fleet_share))
                      .replace("CHARTS_SHARE", str(charts_share)))
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(script), base], capture_output=True, text=True,
                         timeout=seconds + 120, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout)[-500:]}
    figures: dict[str, Any] = json.loads(line[4:])
    figures["requests_per_s"] = round(figures["requests"] / figures["seconds"], 1)
    figures.update(connections=connections, fleet_share=fleet_share, charts_share=charts_share)
    return figures


def transferred_kb(b: Any) -> float:
    """Bytes over the wire for the page just loaded (document, scripts, styles, API calls)."""
    total = b.js("const nav = performance.getEntriesByType('navigation')[0];"
                 "return nav.transferSize + performance.getEntriesByType('resource')"
                 ".reduce((n, r) => n + r.transferSize, 0)")
    return round(float(total) / 1024, 1)


def per_metric_queries(base: str, token: str, span: str) -> float:
    """Baseline: the host's metrics as one /edgemon/api/v1/query each, one after another."""
    _, body = get(base, f"/edgemon/api/v1/hosts/{LONG_HOST}/series", token)
    kinds = {s["name"]: s["kind"] for s in json.loads(body)["series"]}
    started = time.perf_counter()
    for name, kind in sorted(kinds.items()):
        params = {"metric": name, "host": LONG_HOST, "start": f"now-{span}",
                  "rate": "true" if kind == "counter" else "false"}
        get(base, "/edgemon/api/v1/query?" + urllib.parse.urlencode(params), token)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000 connections each side
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 7 days")
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (kept)")
    args = parser.parse_args()
    days = args.days or (7 if args.quick else 30)
    if days not in (7, 30):
        parser.error("--days: 7 or 30 (the host page's ranges)")
    repeat = 3 if args.quick else 7
    work = args.dir or Path(tempfile.mkdtemp(prefix="edgemon-dashboard-"))
    load_at_start = list(os.getloadavg())  # other work on the machine skews every figure
    (work / "data").mkdir(parents=True, exist_ok=True)
    print(f"building a store of {args.hosts} hosts and {LONG_HOST} with {days} days ...",
          flush=True)
    store = build_store(work / "data" / "edgemon.db", args.hosts, days)
    baseline_ms = storage_baseline(work / "data" / "edgemon.db", int(time.time() * 1000))
    token = create_token(work / "data" / "tokens.json", "bench", "admin")[1]
    broker, mqtt_port = start_broker(work)
    collector = None
    try:
        started = time.perf_counter()
        collector, http, _ = start_collector(work, mqtt_port)
        base = f"http://127.0.0.1:{http}"

        def loaded() -> bool:
            _, body = get(base, "/edgemon/api/v1/fleet?limit=1", token)
            return not json.loads(body)["loading"]
        while not loaded():
            time.sleep(0.2)
        seed_s = time.perf_counter() - started
        settle_s = wait_idle(collector.pid, timeout=240, busy=0.5)
        fleet = fleet_endpoint(base, token, repeat * 5)
        browser = browser_figures(base, token, repeat, days)
        naive = {span: per_metric_queries(base, token, span) for span in ("24h", f"{days}d")}
        netdata_kb = netdata_first_load_kb(work)
        seconds = 15 if args.quick else 30
        load = {"fleet_only": load_test(base, token, args.hosts, work, seconds, 1000, 1.0, 0.0),
                "mixed": load_test(base, token, args.hosts, work, seconds, 1000, 0.5, 0.4)}
    finally:
        if collector is not None:
            stop(collector)
        stop(broker)
        if args.dir is None:  # a temporary store: gone with the run
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    result = {
        "hosts": args.hosts, "days": days, "store": store,
        "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()),
        "figures_loaded_at_start_s": round(seed_s, 1),
        "collector_settled_after_s": round(settle_s, 1),
        "fleet_endpoint": fleet, "fleet_storage_query_baseline_ms": round(baseline_ms, 1),
        **browser,
        "per_metric_queries_ms": {k: round(v, 1) for k, v in naive.items()},
        "netdata_first_load_kb": netdata_kb,
        "load_test": load,
        "goals": {"fleet_interactive_ms": 1000, "host_24h_ms": 300, "first_load_kb": 300},
    }
    draw24 = browser["host_24h_draw_ms"]["p50_ms"]
    result["headline"] = [
        {"figure": f"fleet summary endpoint, {args.hosts:,} hosts (p50)", "unit": "ms",
         "value": fleet["p50_ms"],
         "baselines": {"storage query, CPU only": round(baseline_ms, 1)}},
        {"figure": "fleet page interactive (warm p50)", "unit": "ms",
         "value": browser["fleet_interactive_ms"]["p50_ms"], "baselines": {"goal": 1000}},
        {"figure": "fleet page interactive (empty cache)", "unit": "ms",
         "value": browser["fleet_interactive_first_ms"], "baselines": {"goal": 1000}},
        {"figure": "host page 24 h fetch+draw (p50)", "unit": "ms", "value": draw24,
         "baselines": {"goal": 300, "one query per metric": round(naive["24h"], 1)}},
        {"figure": f"host page {days} d fetch+draw (p50)", "unit": "ms",
         "value": browser[f"host_{days}d_draw_ms"]["p50_ms"],
         "baselines": {"one query per metric": round(naive[f"{days}d"], 1)}},
        {"figure": "first load, fleet page", "unit": "KB", "value": browser["fleet_first_load_kb"],
         "baselines": {"goal": 300, **({"netdata dashboard": netdata_kb} if netdata_kb else {})}},
        {"figure": "first load, host page", "unit": "KB", "value": browser["host_first_load_kb"],
         "baselines": {"goal": 300, **({"netdata dashboard": netdata_kb} if netdata_kb else {})}},
    ]
    for name, about in (("fleet_only", "fleet page API"),
                        ("mixed", "fleet 50 % / host charts 40 % / alerts 10 %")):
        figures = load.get(name) or {}
        if "requests_per_s" in figures:
            result["headline"].append({
                "figure": f"load test, 1,000 connections, {about}: p95", "unit": "ms",
                "value": figures["p95_ms"], "baselines": {"goal": 500},
                "note": f"{figures['requests_per_s']} requests/s (goal 5,000), "
                        f"{figures['non2xx']} non-2xx, {figures['errors']} errors"})
    write_result("dashboard", result)
    print(table([{"figure": h["figure"], "unit": h["unit"], "value": h["value"],
                  "baselines": "; ".join(f"{k} {v}" for k, v in h["baselines"].items())}
                 for h in result["headline"]], ["figure", "unit", "value", "baselines"]))


if __name__ == "__main__":
    main()
