"""Alerting: evaluation time per cycle for a large fleet under the default rules, and the latency
from a sample to the webhook notification it causes.

    python benchmarks/alerting.py [--hosts 10000] [--cycles 5] [--quick] [--backlog MINUTES]

Cycle: ``InMemoryGridStorage`` (the in-memory numpy fake) holds every metric the default rules
read for N hosts (1 CPU, memory, 2 mounts, 2 interfaces each), 7 h of disk usage (6 h regression
window) and 20 min of the rest, on a 60 s grid; 1 % of the hosts have a busy CPU, a filling disk and
growing receive errors. Each measured cycle follows one new minute of data, so every rule is
due and has a new step for every series: the worst steady-state cycle. The time inside
``Storage.query`` (the fake's own aggregation) is shown apart from the engine's.

Latency: a real-time run (100 hosts, 1 s grid, a threshold rule with window 1 s and for 0,
evaluation every 0.25 s, group_wait 0) with a real HTTP receiver on loopback: time from the
sample that crosses the threshold to the webhook POST arriving. With the shipped settings the
same path adds the step (window) length, the wait for the next sample, the agent's batch
period and group_wait (see README.md).

Back-log (``--backlog M``, not run by default): the default rules over a real SQLite store whose
last M minutes of every host (one-minute batches of 474 samples) are still pending compaction, as
on a busy collector; each cycle stores one more minute of every host, then two engines run it:
one over a store without the pending-batch cache (``pending_cache_mb = 0``: every rule reads and
decodes the payloads in its window) and one with it, on the same database in the same run,
checking that both give the same transitions.

Writes benchmarks/results/alerting.json (``--backlog-only``: alerting_backlog.json).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from edgemon.collector.alerting import AlertEngine, DeliveryWorker, load_rules, parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage

try:
    from benchmarks._common import table, write_result
except ImportError:  # run as a script from benchmarks/
    from _common import table, write_result  # type: ignore[no-redef]

GRID = 60_000
T0 = 1_800_000_000_000 // 3_600_000 * 3_600_000


class TimedStorage(InMemoryGridStorage):
    """InMemoryGridStorage that adds up the time spent answering queries."""

    def __init__(self, interval_ms: int) -> None:
        super().__init__(interval_ms)
        self.query_s = 0.0

    def query(self, query: Any) -> Any:
        t = time.perf_counter()
        try:
            return super().query(query)
        finally:
            self.query_s += time.perf_counter() - t

    def hosts(self) -> Any:
        t = time.perf_counter()
        try:
            return super().hosts()
        finally:
            self.query_s += time.perf_counter() - t


def build_fleet(n: int, rng: np.random.Generator) -> tuple[TimedStorage, list[str], Any]:
    store = TimedStorage(GRID)
    hosts = [f"edge-{i:05d}" for i in range(n)]
    bad = rng.random(n) < 0.01
    end = T0
    long_ts = end - GRID * np.arange(7 * 60, 0, -1)
    short_ts = long_ts[-20:]
    k = short_ts.size

    def gauge(base: np.ndarray, noise: float, cols: int) -> np.ndarray:
        return np.clip(base[:, None] + rng.normal(0, noise, (base.size, cols)), 0, 100)

    store.write_block("cpu_usage_percent", hosts, [{"cpu": "total"}] * n, short_ts,
                      gauge(np.where(bad, 95.0, rng.uniform(5, 60, n)), 3.0, k))
    store.write_block("memory_usage_percent", hosts, [{}] * n, short_ts,
                      gauge(rng.uniform(20, 70, n), 1.0, k))
    mounts = [("/", "sda1", "ext4"), ("/data", "sdb1", "xfs")]
    disk_hosts = [h for h in hosts for _ in mounts]
    disk_labels = [{"mount": m, "device": d, "fstype": f} for _ in hosts for m, d, f in mounts]
    filling = np.repeat(bad, len(mounts))
    base = rng.uniform(10, 70, len(disk_hosts))
    slope = np.where(filling, 4.0, 0.0) / 60  # % per minute sample
    disk = base[:, None] + slope[:, None] * np.arange(long_ts.size)[None, :]
    store.write_block("disk_usage_percent", disk_hosts, disk_labels, long_ts, np.clip(disk, 0, 99))
    ifaces = ["eth0", "wlan0"]
    net_hosts = [h for h in hosts for _ in ifaces]
    net_labels = [{"iface": i} for _ in hosts for i in ifaces]
    errs = np.repeat(bad, len(ifaces))
    for name in ("network_receive_errors_total", "network_transmit_errors_total"):
        growth = np.where(errs, 30.0, 0.0) if name.startswith("network_receive") else np.zeros(
            errs.size)
        counter = rng.integers(0, 1000, errs.size)[:, None] + growth[:, None] * np.arange(k)
        store.write_block(name, net_hosts, net_labels, short_ts, counter.astype(np.float64),
                          kind="counter")
    state = {"bad": bad, "disk": disk[:, -1], "slope": slope, "hosts": hosts,
             "disk_hosts": disk_hosts, "disk_labels": disk_labels, "net_hosts": net_hosts,
             "net_labels": net_labels, "counters": {}, "errs": errs}
    return store, hosts, state


def append_minute(store: TimedStorage, st: dict[str, Any], t: int,
                  rng: np.random.Generator) -> None:
    hosts, n = st["hosts"], len(st["hosts"])
    ts = np.array([t])
    store.write_block("cpu_usage_percent", hosts, [{"cpu": "total"}] * n, ts,
                      np.where(st["bad"], 95.0, rng.uniform(5, 60, n))[:, None],
                      received_ms=t + GRID)
    store.write_block("memory_usage_percent", hosts, [{}] * n, ts,
                      rng.uniform(20, 70, n)[:, None])
    st["disk"] = np.clip(st["disk"] + st["slope"], 0, 99)
    store.write_block("disk_usage_percent", st["disk_hosts"], st["disk_labels"], ts,
                      st["disk"][:, None])
    for name in ("network_receive_errors_total", "network_transmit_errors_total"):
        m = store.metrics[name]
        last = m.data[:, (t - GRID) // GRID - m.origin]
        grow = np.where(st["errs"], 30.0, 0.0) if name.startswith("network_receive") else 0.0
        store.write_block(name, st["net_hosts"], st["net_labels"], ts, (last + grow)[:, None],
                          kind="counter")


def bench_cycle(n_hosts: int, cycles: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    t_build = time.perf_counter()
    store, _hosts, st = build_fleet(n_hosts, rng)
    build_s = time.perf_counter() - t_build
    with tempfile.TemporaryDirectory() as tmp:
        now = [T0 + 5_000]
        engine = AlertEngine(store, Path(tmp) / "alerts.db", rules=load_rules(),
                             clock_ms=lambda: now[0])
        warm = engine.run_cycle()  # first cycle: catch-up over the initial look-back
        rows = []
        for i in range(cycles):
            append_minute(store, st, T0 + GRID * i, rng)
            now[0] = T0 + GRID * (i + 1) + 5_000
            store.query_s = 0.0
            t = time.perf_counter()
            report = engine.run_cycle()
            total = time.perf_counter() - t
            rows.append({"cycle": i + 1, "total_s": total, "storage_s": store.query_s,
                         "engine_s": total - store.query_s, "queries": report.queries,
                         "transitions": len(report.transitions),
                         "rules": report.rules})
        engine.close()
    per_rule: dict[str, list[float]] = {}
    for r in rows:
        for name, info in r["rules"].items():
            per_rule.setdefault(name, []).append(info.get("ms", float("nan")))
    series = sum(v.get("series", 0) for v in rows[-1]["rules"].values())
    return {"hosts": n_hosts, "series": series, "build_s": round(build_s, 2),
            "first_cycle_s": round(warm.duration_ms / 1000, 3),
            "first_cycle_transitions": len(warm.transitions),
            "cycles": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                        if k != "rules"} for r in rows],
            "median_total_s": round(statistics.median(r["total_s"] for r in rows), 4),
            "median_engine_s": round(statistics.median(r["engine_s"] for r in rows), 4),
            "median_storage_s": round(statistics.median(r["storage_s"] for r in rows), 4),
            "max_total_s": round(max(r["total_s"] for r in rows), 4),
            "queries_per_cycle": rows[-1]["queries"],
            "per_rule_median_ms": {k: round(statistics.median(v), 1)
                                   for k, v in per_rule.items()}}


# --- the pending back-log on a real store ----------------------------------------------------

PENDING_FILLER = 70  # series of other metrics in each batch (81 series x 6 cycles = 486 samples)


def pending_templates(minutes: int, end: int) -> list[tuple[dict[str, Any], Any]]:
    """One validated one-minute batch per minute ending at ``end`` (every host sends the same
    shape: the default rules' metrics and ``PENDING_FILLER`` other series, 6 cycles of 10 s)."""
    from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
    from edgemon.protocol.schema import validate_batch

    cpu = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
    mem = MetricDef("memory_usage_percent", GAUGE, "percent", 2)
    disk = MetricDef("disk_usage_percent", GAUGE, "percent", 2, ("mount", "device", "fstype"))
    load = MetricDef("load1", GAUGE, "", 2)
    rx = MetricDef("network_receive_errors_total", COUNTER, "", 0, ("iface",))
    tx = MetricDef("network_transmit_errors_total", COUNTER, "", 0, ("iface",))
    filler = MetricDef("node_filler_value", GAUGE, "", 0, ("n",))
    out = []
    for m in range(minutes):
        start = end - (minutes - m) * GRID
        b = BatchBuilder()
        for k in range(6):
            t = start + k * 10_000
            b.add(t, cpu, ("total",), 2000 + k)
            b.add(t, mem, (), 4000 + k)
            b.add(t, disk, ("/", "sda1", "ext4"), 3000 + m)
            b.add(t, disk, ("/data", "sdb1", "xfs"), 5000 + m)
            b.add(t, load, (), 50 + k)
            for iface in ("eth0", "wlan0"):
                b.add(t, rx, (iface,), 10 * m)
                b.add(t, tx, (iface,), 10 * m)
            for n in range(PENDING_FILLER):
                b.add(t, filler, (str(n),), n * 100 + k)
        raw = b.build(host="template", instance="i1", seq=m + 1, sent_ms=start + GRID)
        out.append((raw, validate_batch(decode(encode(raw)))))
    return out


def pending_items(template: tuple[dict[str, Any], Any], hosts: list[str], seq: int
                  ) -> list[Any]:
    """The (wire map, validated batch) ``template`` as every host's batch ``seq``, each encoded
    with its own host name."""
    import dataclasses

    from edgemon.collector.storage.base import IngestItem
    from edgemon.protocol import encode

    raw, valid = dict(template[0]), template[1]
    items = []
    for h in hosts:
        raw["host"], raw["seq"] = h, seq
        items.append(IngestItem(dataclasses.replace(valid, host=h, seq=seq), encode(raw),
                                valid.sent + 100, False))
    return items


def bench_pending(n_hosts: int, backlog_minutes: int, cycles: int) -> dict[str, Any]:
    """Cycle time of the default rules over a SQLite store whose last ``backlog_minutes``
    minutes are still pending (not compacted), with and without the pending-batch cache, on
    one database in the same run: each cycle stores one more minute of every host, then both
    engines (one store each: ``pending_cache_mb`` 0 = the payload path, and the default) run
    the cycle."""
    from edgemon.collector.storage.sqlite import SQLiteStorage

    hosts = [f"edge-{i:05d}" for i in range(n_hosts)]
    end = T0 + (backlog_minutes + cycles) * GRID
    minutes = pending_templates(backlog_minutes + cycles, end)
    out: dict[str, Any] = {"hosts": n_hosts, "backlog_minutes": backlog_minutes,
                           "samples_per_batch": sum(len(e[2]) for m in minutes[0][0]["metrics"]
                                                    for e in m[5])}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "edgemon.db"
        writer = SQLiteStorage(path, compact_delay_ms=10 * 24 * 3_600_000)
        t = time.perf_counter()
        for m in range(backlog_minutes):
            for lo in range(0, n_hosts, 1000):
                writer.store_batches(pending_items(minutes[m], hosts[lo:lo + 1000], m + 1))
        out["store_backlog_s"] = round(time.perf_counter() - t, 1)
        stores = {"payload path (before)": SQLiteStorage(path, pending_cache_mb=0),
                  "pending cache (after)": SQLiteStorage(path)}
        now = [T0]
        engines = {name: AlertEngine(st, Path(tmp) / f"alerts-{k}.db", rules=load_rules(),
                                     clock_ms=lambda: now[0])
                   for k, (name, st) in enumerate(stores.items())}
        now[0] = end - cycles * GRID + 5_000
        first = {}
        for name, engine in engines.items():
            t = time.perf_counter()
            engine.run_cycle()
            first[name] = round(time.perf_counter() - t, 3)
        rows = []
        for i in range(cycles):
            m = backlog_minutes + i
            for lo in range(0, n_hosts, 1000):
                writer.store_batches(pending_items(minutes[m], hosts[lo:lo + 1000], m + 1))
            now[0] = end - (cycles - i - 1) * GRID + 5_000
            row: dict[str, Any] = {"cycle": i + 1}
            reports = {}
            for name, engine in engines.items():
                t = time.perf_counter()
                reports[name] = engine.run_cycle()
                row[name] = round(time.perf_counter() - t, 3)
            a, b = (sorted((tr.host, tr.status, tr.at_ms) for tr in r.transitions)
                    for r in reports.values())
            row["same_transitions"] = a == b
            rows.append(row)
        out["first_cycle_s"] = first
        out["cycles"] = rows
        out["median_s"] = {name: statistics.median(r[name] for r in rows) for name in engines}
        cache = stores["pending cache (after)"].pending_cache
        out["cache"] = {**cache.stats(), "mb": round(cache.used / 2**20, 1),
                        "bytes_per_batch": round(cache.used / max(1, len(cache.idents())))}
        out["pending_batches_at_end"] = n_hosts * (backlog_minutes + cycles)
        for engine in engines.values():
            engine.close()
        for st in (*stores.values(), writer):
            st.close()
    return out


LATENCY_RULES = """
[settings]
interval = "250ms"
settle = "3s"
group_wait = "0s"
notify_max_age = "10m"
external_url = "http://collector.example"

[[receiver]]
name = "bench"
url = "http://127.0.0.1:{port}/hook"

[[rule]]
name = "cpu-spike"
kind = "threshold"
metric = "cpu_usage_percent"
window = "1s"
threshold = 80
for = "0s"
"""


async def bench_latency(events: int) -> dict[str, Any]:
    arrivals: dict[str, float] = {}
    app = web.Application()

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        t = time.time()
        for alert in body["alerts"]:
            if alert["status"] == "firing":
                arrivals.setdefault(alert["labels"]["host"], t)
        return web.Response(text="ok")

    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    store = InMemoryGridStorage(1000)
    hosts = [f"h{i:03d}" for i in range(100)]
    spike_at: dict[str, int] = {}
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        rules = parse_rules(LATENCY_RULES.replace("{port}", str(port)))
        engine = AlertEngine(store, Path(tmp) / "a.db", rules=rules)
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        stop = asyncio.Event()
        loop_task = asyncio.create_task(engine.run(stop))
        try:
            nxt = time.time_ns() // 1_000_000 // 1000 * 1000
            tick = 0
            event = 0
            while event < events or len(arrivals) < len(spike_at):
                now_ms = time.time_ns() // 1_000_000
                while nxt <= now_ms:
                    vals = np.full(len(hosts), 20.0)
                    if tick % 3 == 2 and event < events:
                        host = hosts[event]
                        spike_at[host] = nxt
                        event += 1
                    for h, at in spike_at.items():
                        if nxt >= at:
                            vals[hosts.index(h)] = 95.0
                    store.write_block("cpu_usage_percent", hosts, [{"cpu": "total"}] * 100,
                                      [nxt], vals[:, None], received_ms=nxt)
                    nxt += 1000
                    tick += 1
                if time.time() - nxt / 1000 > 60:
                    break
                await asyncio.sleep(0.02)
            for host, at in spike_at.items():
                if host in arrivals:
                    latencies.append(arrivals[host] - at / 1000)
        finally:
            stop.set()
            await loop_task
            await worker.stop()
            engine.close()
            await runner.cleanup()
    latencies.sort()
    return {"events": len(latencies), "p50_s": round(statistics.median(latencies), 3),
            "max_s": round(max(latencies), 3),
            "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
            "config": "grid 1 s, window 1 s, for 0, interval 0.25 s, group_wait 0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1000 hosts, 3 cycles, 5 events")
    parser.add_argument("--backlog", type=int, default=0, metavar="MINUTES",
                        help="also run the default rules over a SQLite store with this many "
                             "minutes of every host pending compaction, with and without the "
                             "pending-batch cache (same run, same database)")
    parser.add_argument("--backlog-only", action="store_true",
                        help="only the --backlog comparison")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.cycles, args.events = 1000, 3, 5
    pending = None
    if args.backlog:
        pending = bench_pending(args.hosts, args.backlog, args.cycles)
        print(f"{pending['hosts']} hosts x {pending['backlog_minutes']} minutes pending "
              f"({pending['samples_per_batch']} samples a batch) on SQLite, default rules; "
              f"first cycle {pending['first_cycle_s']}")
        names = list(pending["median_s"])
        print(table(pending["cycles"], ["cycle", *names, "same_transitions"]))
        print(f"median cycle: {pending['median_s']}; cache {pending['cache']}")
        if args.backlog_only:
            path = write_result("alerting_backlog", {"pending": pending})
            print(f"wrote {path}")
            return
    cycle = bench_cycle(args.hosts, args.cycles)
    print(f"{cycle['hosts']} hosts, {cycle['series']} series, {cycle['queries_per_cycle']} "
          f"storage queries per cycle (fleet built in {cycle['build_s']} s; first cycle with "
          f"catch-up {cycle['first_cycle_s']} s, {cycle['first_cycle_transitions']} transitions)")
    print(table(cycle["cycles"], ["cycle", "total_s", "engine_s", "storage_s", "queries",
                                  "transitions"]))
    print(table([{"rule": k, "median_ms": v} for k, v in cycle["per_rule_median_ms"].items()],
                ["rule", "median_ms"]))
    latency = asyncio.run(bench_latency(args.events))
    print(f"\nsample -> webhook latency over {latency['events']} events ({latency['config']}): "
          f"p50 {latency['p50_s']} s, p95 {latency['p95_s']} s, max {latency['max_s']} s")
    engine_goal = cycle["median_engine_s"] < 1.0
    total_goal = cycle["median_total_s"] < 1.0
    print(f"goal: full cycle for {cycle['hosts']} hosts < 1 s: engine (evaluation, state, "
          f"SQLite) {'met' if engine_goal else 'NOT met'}: median {cycle['median_engine_s']} s;"
          f" with the fake storage answering the queries {'met' if total_goal else 'NOT met'}: "
          f"median {cycle['median_total_s']} s (storage {cycle['median_storage_s']} s)")
    path = write_result("alerting", {"cycle": cycle, "latency": latency, "pending": pending,
                                     "goal_engine_under_1s": engine_goal,
                                     "goal_total_under_1s": total_goal})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
