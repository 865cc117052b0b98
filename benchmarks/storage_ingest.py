"""Storage benchmark: ingest, compaction, bytes on disk and query latency of the SQLite store.

    python benchmarks/storage_ingest.py [--quick] [--dir DIR]

Synthetic hosts look like the agent's families (cpu, load, memory, disk, diskio, network,
system: ~90 series per host, 10 s interval with a few ms of timestamp jitter, batches of 6
cycles), encoded exactly as agents send them (``protocol.encode``: msgpack + zstd 19 + the
published dictionary). Prints a table and writes ``benchmarks/results/storage_ingest.json``.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zstandard

from edgemon.collector.storage.base import IngestItem, RangeQuery
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import decode, encode
from edgemon.protocol.schema import validate_batch

INTERVAL = 10_000
CYCLES_PER_BATCH = 6
DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_780_000_000_000 - 1_780_000_000_000 % DAY  # a UTC midnight in 2026
RESULTS = Path(__file__).parent / "results" / "storage_ingest.json"


# -- synthetic agent data -----------------------------------------------------------------------

def _walk(rng: np.random.Generator, n: int, start: float, step: float, lo: float = 0,
          hi: float = float("inf"), grain: int = 1) -> np.ndarray:
    x = start + np.cumsum(rng.normal(0, step, n))
    return (np.clip(x, lo, hi) // grain * grain).astype(np.int64)


def host_series(rng: np.random.Generator, n: int) -> list[tuple[tuple[Any, ...], np.ndarray]]:
    """((name, kind, unit, scale, keys, labels), values[n]) for one host, ~90 series."""
    out: list[tuple[tuple[Any, ...], np.ndarray]] = []

    def add(name: str, kind: str, unit: str, scale: int, keys: tuple[str, ...],
            labels: tuple[str, ...], values: np.ndarray) -> None:
        out.append(((name, kind, unit, scale, list(keys), list(labels)), values))

    ncpu = 8
    add("cpu_count", "gauge", "", 0, (), (), np.full(n, ncpu))
    busy = float(np.exp(rng.uniform(np.log(1), np.log(40))))  # most hosts idle
    for cpu in ["total", *map(str, range(ncpu))]:
        level = np.clip(busy + rng.normal(0, busy / 3, n), 0, 100)
        add("cpu_usage_percent", "gauge", "percent", 2, ("cpu",), (cpu,),
            np.round(level * 100).astype(np.int64))
    for mode, share in (("user", .6), ("system", .3), ("iowait", .05), ("steal", 0)):
        v = np.clip(busy * share + rng.normal(0, busy * share / 4 + 1e-9, n), 0, 100)
        add("cpu_mode_percent", "gauge", "percent", 2, ("cpu", "mode"), ("total", mode),
            np.round(v * 100).astype(np.int64))
    load = np.abs(_walk(rng, n, busy * 8, 3))
    for name, k in (("load1", 1), ("load5", 5), ("load15", 15)):
        smooth = np.convolve(load, np.ones(k) / k, mode="same").astype(np.int64)
        add(name, "gauge", "", 2, (), (), smooth)
    total = 16 * 2**30
    used = _walk(rng, n, total * .4, 2**20, 0, total, 4096)
    cached = _walk(rng, n, total * .3, 2**18, 0, total, 4096)
    for name, v in (("memory_total_bytes", np.full(n, total)),
                    ("memory_available_bytes", total - used),
                    ("memory_used_bytes", used),
                    ("memory_free_bytes", total - used - cached),
                    ("memory_cached_bytes", cached),
                    ("memory_buffers_bytes", _walk(rng, n, 2**28, 2**14, 0, total, 4096)),
                    ("swap_total_bytes", np.full(n, 2**31)),
                    ("swap_used_bytes", np.full(n, 2**24)),
                    ("swap_free_bytes", np.full(n, 2**31 - 2**24))):
        add(name, "gauge", "bytes", 0, (), (), v)
    add("memory_usage_percent", "gauge", "percent", 2, (), (), used * 10000 // total)
    for name in ("swap_in_bytes_total", "swap_out_bytes_total"):
        add(name, "counter", "bytes", 0, (), (), np.full(n, int(rng.integers(0, 2**20))))
    disk_keys = ("mount", "device", "fstype")
    for mount, dev in (("/", "/dev/sda1"), ("/data", "/dev/sdb1")):
        labels = (mount, dev, "ext4")
        size = int(rng.integers(50, 2000)) * 2**30
        dused = _walk(rng, n, size * .5, 2**16, 0, size, 4096)
        for name, unit, scale, v in (
                ("disk_total_bytes", "bytes", 0, np.full(n, size)),
                ("disk_used_bytes", "bytes", 0, dused),
                ("disk_free_bytes", "bytes", 0, size - dused),
                ("disk_usage_percent", "percent", 2, dused * 10000 // size),
                ("disk_inodes", "inodes", 0, np.full(n, size // 2**14)),
                ("disk_inodes_used", "inodes", 0, _walk(rng, n, 10**5, 2, 0))):
            add(name, "gauge", unit, scale, disk_keys, labels, v)
    for dev in ("sda", "sdb", "nvme0n1"):
        ops = rng.poisson(np.exp(rng.uniform(np.log(0.2), np.log(50))), n)
        for name, unit, scale, inc in (
                ("diskio_read_bytes_total", "bytes", 0, ops * 4096 * rng.integers(1, 8, n)),
                ("diskio_written_bytes_total", "bytes", 0, ops * 4096 * rng.integers(1, 4, n)),
                ("diskio_reads_total", "operations", 0, ops),
                ("diskio_writes_total", "operations", 0, rng.poisson(ops + 1)),
                ("diskio_read_time_seconds_total", "seconds", 3, ops * rng.integers(0, 3, n)),
                ("diskio_write_time_seconds_total", "seconds", 3, ops * rng.integers(0, 5, n)),
                ("diskio_busy_time_seconds_total", "seconds", 3, np.minimum(ops * 2, 10_000))):
            add(name, "counter", unit, scale, ("device",), (dev,),
                int(rng.integers(0, 2**40)) + np.cumsum(inc))
    for iface in ("eth0", "eth1", "docker0"):
        pkts = rng.poisson(np.exp(rng.uniform(np.log(1), np.log(2000))), n)
        for name, unit, inc in (
                ("network_received_bytes_total", "bytes", pkts * rng.integers(60, 1500, n)),
                ("network_sent_bytes_total", "bytes", pkts * rng.integers(60, 600, n)),
                ("network_received_packets_total", "packets", pkts),
                ("network_sent_packets_total", "packets", rng.poisson(pkts)),
                ("network_receive_errors_total", "errors", np.zeros(n, dtype=np.int64)),
                ("network_transmit_errors_total", "errors", np.zeros(n, dtype=np.int64)),
                ("network_receive_drops_total", "packets", (rng.random(n) < .01).astype(int)),
                ("network_transmit_drops_total", "packets", np.zeros(n, dtype=np.int64))):
            add(name, "counter", unit, 0, ("iface",), (iface,),
                int(rng.integers(0, 2**36)) + np.cumsum(inc))
    boot = T0 // 1000 - int(rng.integers(10**4, 10**7))
    add("system_boot_time_seconds", "gauge", "seconds", 0, (), (), np.full(n, boot))
    uptime = (T0 // 1000 - boot) + np.arange(n) * (INTERVAL // 1000)
    add("system_uptime_seconds", "gauge", "seconds", 0, (), (), uptime)
    return out


def _delta(x: np.ndarray) -> list[int]:
    return np.diff(x, prepend=0).tolist()


def host_batches(host: str, seed: int, start: int, cycles: int, per_batch: int,
                 series: list[tuple[tuple[Any, ...], np.ndarray]] | None = None,
                 jitter_ms: int = 15) -> list[dict[str, Any]]:
    """Batch maps of one host: ``cycles`` sampling cycles from ``start``, ``per_batch`` each."""
    rng = np.random.default_rng(seed)
    series = series if series is not None else host_series(rng, cycles)
    times = start + np.arange(cycles, dtype=np.int64) * INTERVAL + rng.integers(0, jitter_ms + 1,
                                                                               cycles)
    by_metric: dict[tuple[Any, ...], list[tuple[list[str], np.ndarray]]] = {}
    for (name, kind, unit, scale, keys, labels), values in series:
        by_metric.setdefault((name, kind, unit, scale, tuple(keys)), []).append((labels, values))
    out = []
    for seq, lo in enumerate(range(0, cycles, per_batch)):
        hi = min(lo + per_batch, cycles)
        metrics = [[name, kind, unit, scale, list(keys),
                    sorted([labels, 0, _delta(values[lo:hi])] for labels, values in entries)]
                   for (name, kind, unit, scale, keys), entries in sorted(by_metric.items())]
        out.append({"v": 1, "host": host, "instance": f"{seed:012x}", "seq": seq,
                    "sent": int(times[hi - 1]) + 500, "t": _delta(times[lo:hi]),
                    "metrics": metrics})
    return out


_fast = zstandard.ZstdCompressor(level=3, write_content_size=True)


def to_items(batches: list[dict[str, Any]], wire: bool) -> list[IngestItem]:
    """IngestItems; ``wire`` = compressed exactly like the agent (slow), else zstd 3."""
    items = []
    for b in batches:
        payload = encode(b) if wire else _fast.compress(msgpack.packb(b, use_bin_type=True))
        items.append(IngestItem(validate_batch(decode(payload)), payload, b["sent"] + 200, False))
    return items


# -- measurements -------------------------------------------------------------------------------

def disk_bytes(path: str) -> dict[str, int]:
    """File size after a WAL checkpoint, and bytes of pages in use by each table/index (the
    rest of the file is free pages, reused by later writes)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out = {"file": os.path.getsize(path)}
    try:
        for name, size in db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            out[name] = size
        out["live"] = sum(v for k, v in out.items() if k != "file")
    except sqlite3.Error:  # SQLite built without dbstat
        pass
    db.close()
    return out


def store_all(st: SQLiteStorage, items: list[IngestItem], per_txn: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(items), per_txn):
        st.store_batches(items[i:i + per_txn])
    return time.perf_counter() - t


def interleave(per_host: list[list[IngestItem]]) -> list[IngestItem]:
    """Arrival order: every host's batch k before any host's batch k + 1."""
    out = []
    for k in range(max(len(h) for h in per_host)):
        out += [h[k] for h in per_host if k < len(h)]
    return out


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller data sets (< 2 minutes)")
    ap.add_argument("--dir", help="where to put the database files (default: a temp dir)")
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = ap.parse_args()
    quick = args.quick
    work = Path(args.dir or tempfile.mkdtemp(prefix="edgemon-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"quick": quick, "python": sys.version.split()[0],
                           "sqlite": sqlite3.sqlite_version, "machine": platform.machine(),
                           "cpus": os.cpu_count(), "synchronous": args.synchronous}
    rows: list[tuple[str, str]] = []

    # 1. ingest + compaction of realistic agent batches ------------------------------------
    hosts = 10 if quick else 40
    hours = 4 if quick else 8
    cycles = hours * 3600_000 // INTERVAL
    t = time.perf_counter()
    per_host = [to_items(host_batches(f"host-{h:04d}", h, T0, cycles, CYCLES_PER_BATCH),
                         wire=True) for h in range(hosts)]
    items = interleave(per_host)
    samples = sum(it.batch.sample_count for it in items)
    wire = sum(len(it.payload) for it in items)
    gen_s = time.perf_counter() - t
    series_per_host = len(per_host[0][0].batch.metrics) and sum(
        len(m[5]) for m in per_host[0][0].batch.metrics)
    res["ingest_set"] = {"hosts": hosts, "hours": hours, "series_per_host": series_per_host,
                         "batches": len(items), "samples": samples,
                         "wire_bytes_per_sample": wire / samples, "generate_s": gen_s}
    path = str(work / "ingest.db")
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    st = SQLiteStorage(path, synchronous=args.synchronous)
    per_txn = 500
    secs = store_all(st, items, per_txn)
    res["store_samples_per_s"] = samples / secs
    res["store_batches_per_s"] = len(items) / secs
    dup_secs = store_all(st, items[:5000], per_txn)
    res["store_duplicates_per_s"] = min(5000, len(items)) / dup_secs
    before = disk_bytes(path)
    res["bytes_per_sample_pending"] = before["file"] / samples
    end = T0 + hours * HOUR
    t = time.perf_counter()
    steps_l0 = 0
    while st.backlog()["pending_batches"]:
        st.maintain_step(end + 60_000)  # windows still open: L0 (+ merges) only
        steps_l0 += 1
    l0 = time.perf_counter() - t
    t = time.perf_counter()
    st.compact_all(end + DAY)  # every window closed: merge + rollups + retention walk
    l1 = time.perf_counter() - t
    res["compact_l0_samples_per_s"] = samples / l0
    res["compact_rollup_samples_per_s"] = samples / l1
    res["compact_samples_per_s"] = samples / (l0 + l1)
    after = disk_bytes(path)
    res["disk_after"] = after
    res["bytes_per_sample_compacted_file"] = after["file"] / samples
    if "live" in after:
        res["bytes_per_sample_compacted"] = after["live"] / samples
        raw = sum(v for k, v in after.items() if k.startswith(("chunks", "blocks")))
        res["bytes_per_sample_raw_tier"] = raw / samples
        res["bytes_per_sample_rollups"] = sum(
            v for k, v in after.items() if k.startswith("rollups")) / samples
        res["bytes_per_sample_other"] = (res["bytes_per_sample_compacted"]
                                         - res["bytes_per_sample_raw_tier"]
                                         - res["bytes_per_sample_rollups"])
    with sqlite3.connect(path) as db:
        tiers = dict(db.execute("SELECT tier, sum(length(data)) FROM rollups GROUP BY tier"))
        chunk_bytes = db.execute("SELECT sum(length(data)) FROM chunks").fetchone()[0]
        block_bytes = db.execute("SELECT sum(length(times)) FROM blocks").fetchone()[0]
    series_days = hosts * series_per_host * hours / 24
    per_day = {"raw": (chunk_bytes + block_bytes) / series_days,
               "1m": tiers.get(60_000, 0) / series_days,
               "1h": tiers.get(3_600_000, 0) / series_days}
    keep = {"raw": 7, "1m": 90, "1h": 730}
    res["blob_bytes_per_series_day"] = per_day
    res["steady_state_bytes_per_series_default_retention"] = {
        t: per_day[t] * keep[t] for t in per_day}
    st.close()
    rows += [
        ("ingest set", f"{hosts} hosts x {series_per_host} series x {hours} h = {samples:,} "
                       f"samples in {len(items):,} batches"),
        ("wire size (zstd 19 + dict)", f"{wire / samples:.3f} B/sample"),
        ("store_batches (500/txn)", f"{res['store_samples_per_s']:,.0f} samples/s "
                                    f"({res['store_batches_per_s']:,.0f} batches/s)"),
        ("store_batches, duplicates", f"{res['store_duplicates_per_s']:,.0f} batches/s"),
        ("compaction, all of it (one thread)", f"{res['compact_samples_per_s']:,.0f} samples/s"),
        ("  L0: batches -> blocks (+ some merges)",
         f"{res['compact_l0_samples_per_s']:,.0f} samples/s"),
        ("  L1: merge + 1m/1h rollups of closed windows",
         f"{res['compact_rollup_samples_per_s']:,.0f} samples/s"),
        ("on disk before compaction", f"{res['bytes_per_sample_pending']:.3f} B/sample"),
        ("on disk after compaction (file)",
         f"{res['bytes_per_sample_compacted_file']:.3f} B/sample (incl. free pages of the "
         "deleted batches, reused by later ingest)"),
    ]
    if "bytes_per_sample_raw_tier" in res:
        rows += [("on disk after compaction (pages in use)",
                  f"{res['bytes_per_sample_compacted']:.3f} B/sample"),
                 ("  raw tier (blocks+chunks+index)",
                  f"{res['bytes_per_sample_raw_tier']:.3f} B/sample"),
                 ("  rollups 1m+1h (+index)", f"{res['bytes_per_sample_rollups']:.3f} B/sample"),
                 ("  series, hosts, other", f"{res['bytes_per_sample_other']:.3f} B/sample")]
    ss = res["steady_state_bytes_per_series_default_retention"]
    rows += [("blob bytes per series-day raw / 1m / 1h",
              " / ".join(f"{v:,.0f}" for v in per_day.values())),
             ("per series at 7 d raw / 90 d 1m / 730 d 1h",
              " + ".join(f"{v / 1024:,.0f} KiB" for v in ss.values())
              + f" = {sum(ss.values()) / 2**20:.2f} MiB")]

    # 2. query latency -------------------------------------------------------------------
    qpath = str(work / "query.db")
    for suffix in ("", "-wal", "-shm"):
        Path(qpath + suffix).unlink(missing_ok=True)
    st = SQLiteStorage(qpath, synchronous="NORMAL")
    t = time.perf_counter()
    # one full host for a day (raw query), 30 days of a few series (1h query)
    day_cycles = DAY // INTERVAL
    st.store_batches(to_items(host_batches("big-0001", 7, T0, day_cycles, 360), wire=False))
    rng = np.random.default_rng(3)
    month = 30 * day_cycles
    few = [s for s in host_series(rng, month) if (s[0][0], s[0][5]) in (
        ("cpu_usage_percent", ["total"]), ("cpu_usage_percent", ["0"]), ("load1", []),
        ("network_received_bytes_total", ["eth0"]))]
    month_items = to_items(host_batches("long-0001", 8, T0 - 29 * DAY, month, 2048,
                                        series=few), wire=False)
    for i in range(0, len(month_items), 200):
        st.store_batches(month_items[i:i + 200])
    # many hosts, one metric, one day
    fleet = 200 if quick else 1000
    one = [((("cpu_usage_percent", "gauge", "percent", 2, ["cpu"], ["total"]),
             np.clip(np.random.default_rng(h).normal(2000, 500, day_cycles), 0, 10000)
             .astype(np.int64))) for h in range(fleet)]
    for h in range(fleet):
        st.store_batches(to_items(host_batches(f"fleet-{h:04d}", 1000 + h, T0, day_cycles, 2048,
                                               series=[one[h]]), wire=False))
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    st.compact_all(T0 + DAY + HOUR)
    res["query_set_compact_s"] = time.perf_counter() - t
    res["query_set_load_s"] = load_s

    def q(**kw: Any) -> Any:
        return lambda: st.query(RangeQuery(**kw))

    cases = [
        ("1 series x 1 day, raw (10 s points)",
         q(name="cpu_usage_percent", start_ms=T0, end_ms=T0 + DAY, step_ms=INTERVAL,
           hosts=("big-0001",), labels={"cpu": "total"}, tier="raw")),
        ("1 series x 1 day, raw, 1 min avg",
         q(name="cpu_usage_percent", start_ms=T0, end_ms=T0 + DAY, step_ms=60_000,
           hosts=("big-0001",), labels={"cpu": "total"}, tier="raw")),
        ("1 series x 1 day, p95 per 5 min",
         q(name="cpu_usage_percent", start_ms=T0, end_ms=T0 + DAY, step_ms=300_000,
           hosts=("big-0001",), labels={"cpu": "total"}, aggregation="p95")),
        ("1 series x 30 days at 1h (auto tier)",
         q(name="cpu_usage_percent", start_ms=T0 - 29 * DAY, end_ms=T0 + DAY, step_ms=HOUR,
           hosts=("long-0001",), labels={"cpu": "total"})),
        ("1 counter x 30 days at 1h, rate",
         q(name="network_received_bytes_total", start_ms=T0 - 29 * DAY, end_ms=T0 + DAY,
           step_ms=HOUR, hosts=("long-0001",), labels={"iface": "eth0"}, rate=True)),
        (f"{fleet} hosts x 1 metric x 1 day at 5 min",
         q(name="cpu_usage_percent", start_ms=T0, end_ms=T0 + DAY, step_ms=300_000,
           hosts=("fleet-*",), max_series=10_000, max_points=10**6)),
        (f"{fleet} hosts x 1 metric x 1 day at 5 min, grouped max",
         q(name="cpu_usage_percent", start_ms=T0, end_ms=T0 + DAY, step_ms=300_000,
           hosts=("fleet-*",), aggregation="max", group_by=(), max_series=10_000)),
    ]
    res["queries_ms"] = {}
    for label, fn in cases:
        ms, out = timed(fn, 3 if quick else 7)
        points = sum(len(r.points) for r in out)
        res["queries_ms"][label] = {"ms": ms, "series": len(out), "points": points,
                                    "tier": out[0].tier if out else None}
        rows.append((f"query: {label}", f"{ms:8.2f} ms  ({len(out)} series, {points} points, "
                                        f"tier {out[0].tier if out else '-'})"))
    # The same many-host query over a day whose last 2 hours are not rolled up yet:
    # (a) compaction 2 h behind: every batch of those 2 hours still pending (worst case);
    # (b) live operation: those hours in L0 blocks of open windows, the last 2 minutes pending.
    late = [to_items(host_batches(f"fleet-{h:04d}", 1000 + h, T0 + DAY, 2 * HOUR // INTERVAL, 6,
                                  series=[one[h]]), wire=False) for h in range(fleet)]
    for batches in late:
        st.store_batches(batches[:-2])
    live_q = q(name="cpu_usage_percent", start_ms=T0 + 2 * HOUR, end_ms=T0 + DAY + 2 * HOUR,
               step_ms=300_000, hosts=("fleet-*",), max_series=10_000, max_points=10**6)
    cases2 = []
    ms, out = timed(live_q, 3)
    cases2.append((f"{fleet} hosts x 1 day at 5 min, last 2 h pending (compaction 2 h behind)",
                   ms, out))
    st.close_grace_ms = 10 * DAY  # keep the windows open, as they are in live operation
    st.compact_all(T0 + DAY + 2 * HOUR)
    for batches in late:
        st.store_batches(batches[-2:])
    ms, out = timed(live_q, 5)
    cases2.append((f"{fleet} hosts x 1 day at 5 min, live (2 h in L0 blocks, 2 min pending)",
                   ms, out))
    for label, ms, out in cases2:
        res["queries_ms"][label] = {"ms": ms, "series": len(out),
                                    "points": sum(len(r.points) for r in out)}
        rows.append((f"query: {label}", f"{ms:8.2f} ms  ({len(out)} series)"))
    st.close()
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k, _ in rows)
    print(f"edgemon storage benchmark ({'quick' if quick else 'full'}; sqlite "
          f"{sqlite3.sqlite_version}, {os.cpu_count()} cpus, synchronous={args.synchronous})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
