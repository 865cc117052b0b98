"""End-to-end ingest: a simulated fleet through a private Mosquitto into a real collector process.

    python benchmarks/ingest.py [--quick]

1. baseline: the raw ``store_batches`` rate of the SQLite storage alone, in-process, on the same
   kind of batches (groups of 200, the collector's ``max_batch_per_txn``);
2. rate steps: ``benchmarks/fleet.py`` publishes QoS 1 at increasing batch rates, last one as
   fast as the collector acks; stored samples/s (from the acks: the collector acks only durable
   batches) and publish->ack lag p50/p99 per step;
3. fleet step-up (run first, on a fresh collector): N hosts at a 10 s interval (a 6-cycle
   batch per host per 60 s, hosts spread evenly), N doubling until a step loses a batch or its
   p99 lag reaches 1 s;
4. after stopping the collector: compaction of everything in-process and bytes/sample on disk.

Writes ``benchmarks/results/ingest.json``; prints a table. Numbers depend on the machine; the
generator shares the CPUs with broker and collector.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_result
from fleet import Fleet

from edgemon.collector.storage.base import IngestItem
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import decode
from edgemon.protocol.schema import validate_batch

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
COLLECTOR = Path(sys.executable).parent / "edgemon-collector"
BATCH_MS = 60_000  # 6 cycles x 10 s
DAY = 86_400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(what)


def start_broker(work: Path, config: Callable[[int], str] | None = None,
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on a free port, logging to ``work``; ``config(port)``: the listener and any
    settings (default: an open listener with unbounded queues), followed by the user to run as
    and the log settings."""
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text((config(port) if config else
                     f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                     "persistence false\nmax_inflight_messages 0\n"
                     "max_queued_messages 1000000\nmax_queued_bytes 0\n")
                    + ("user root\n" if os.geteuid() == 0 else f"user {getpass.getuser()}\n")
                    + "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
    log = open(work / "mosquitto.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()

    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    wait_for(up, 10, "mosquitto did not start")
    return proc, port


def start_collector(work: Path, mqtt_port: int, *, http_extra: str = "",
                    ingest: str = "queue_max = 20000\npast_tolerance_days = 30\n",
                    mqtt_extra: str = "") -> tuple[subprocess.Popen[bytes], int, Path]:
    """A collector on ``mqtt_port`` with its data in ``work``; ``http_extra``, ``ingest`` and
    ``mqtt_extra`` are TOML lines for those sections. Returns (process, HTTP port, database
    path) once ready."""
    http = free_port()
    db = work / "data" / "edgemon.db"
    conf = work / "collector.toml"
    conf.write_text(f"[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n{mqtt_extra}\n"
                    f"[storage]\npath = \"{db}\"\nmaintain_interval_seconds = 2\n\n"
                    f"[http]\nhost = \"127.0.0.1\"\nport = {http}\n{http_extra}\n"
                    f"[ingest]\n{ingest}")
    conf.chmod(0o600)
    log = open(work / "collector.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([str(COLLECTOR), "run", "-c", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((work / "collector.log").read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as r:
            return r.status == 200
    wait_for(ready, 30, "collector not ready")
    return proc, http, db


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- phases -------------------------------------------------------------------------------------

def raw_baseline(work: Path, batches: int, hosts: int) -> dict[str, Any]:
    """store_batches alone, in-process, on batches like the fleet's (groups of 200)."""
    fleet = Fleet(hosts=hosts, prefix="raw", zstd_level=3,
                  start_ms=int(time.time() * 1000) - (batches // hosts + 1) * BATCH_MS)
    prepared = fleet.prepare(math.ceil(batches / hosts))
    now = int(time.time() * 1000)
    t = time.perf_counter()
    items = [IngestItem(batch=validate_batch(decode(p[5])), payload=p[5], received_ms=now,
                        historical=False)
             for p in prepared]
    decode_s = time.perf_counter() - t
    storage = SQLiteStorage(work / "raw.db")
    samples = sum(p[3] for p in prepared)
    t = time.perf_counter()
    for i in range(0, len(items), 200):
        storage.store_batches(items[i:i + 200])
    store_s = time.perf_counter() - t
    storage.close()
    return {"batches": len(items), "samples": samples,
            "store_batches_samples_per_s": round(samples / store_s),
            "decode_validate_store_samples_per_s": round(samples / (store_s + decode_s))}


def rate_step(port: int, *, hosts: int, rate: float | None, seconds: float,
              prefix: str) -> dict[str, Any]:
    """``hosts`` hosts, ``rate`` batches/s in all (None: as fast as acked) for ~``seconds``."""
    n = int((rate or 1500) * seconds)
    per_host = max(1, math.ceil(n / hosts))
    fleet = Fleet("127.0.0.1", port, hosts=hosts, prefix=prefix, zstd_level=3,
                  start_ms=int(time.time() * 1000) - per_host * BATCH_MS).connect()
    try:
        items = fleet.prepare(per_host)[:n]
        took = fleet.run(items, rate=rate, max_unacked=2000)
        drained = fleet.wait_acked(30)
        s = fleet.summary()
    finally:
        fleet.close()
    s.update(offered_batches_per_s=rate or "max", publish_s=round(took, 1), all_acked=drained)
    return s


def fleet_step(port: int, fleet_size: int, seconds: float) -> dict[str, Any]:
    """``fleet_size`` hosts at 10 s interval: fleet_size/60 batches/s, each host once per 60 s."""
    rate = fleet_size / 60
    n = max(1, int(rate * seconds))
    fleet = Fleet("127.0.0.1", port, hosts=min(n, fleet_size), prefix=f"f{fleet_size}",
                  zstd_level=3).connect()
    try:
        items = fleet.prepare(1)
        took = fleet.run(items, rate=rate)
        drained = fleet.wait_acked(10)
        s = fleet.summary()
    finally:
        fleet.close()
    ok = drained and s["rejected"] == 0 and s["acked"] == s["sent"] \
        and s["lag_p99_ms"] is not None and s["lag_p99_ms"] < 1000
    s.update(fleet=fleet_size, batches_per_s=round(rate, 1), publish_s=round(took, 1), ok=ok)
    return s


def disk(db: Path, samples: int) -> dict[str, Any]:
    """Compact everything in-process (as if a day later), then bytes per stored sample."""
    storage = SQLiteStorage(db)
    pending = storage.backlog()
    t = time.perf_counter()
    storage.compact_all(int(time.time() * 1000) + DAY)
    took = time.perf_counter() - t
    storage.close()
    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    free = con.execute("PRAGMA freelist_count").fetchone()[0]
    con.close()
    size = db.stat().st_size
    return {"samples": samples, "pending_at_stop": pending,
            "compact_rest_s": round(took, 1),
            "compact_rest_samples_per_s":
                round(pending["pending_samples"] / took) if took else None,
            "file_bytes": size, "file_bytes_per_sample": round(size / samples, 2),
            "in_use_bytes_per_sample": round((pages - free) * page / samples, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description="end-to-end ingest benchmark")
    ap.add_argument("--quick", action="store_true", help="about 1.5 minutes")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="edgemon-ingest-", dir=args.dir))
    result: dict[str, Any] = {"quick": quick}
    broker = collector = None
    try:
        result["raw"] = raw = raw_baseline(work, 1000 if quick else 5000, 100)
        print(f"raw store_batches: {raw['store_batches_samples_per_s']:,} samples/s", flush=True)
        broker, port = start_broker(work)
        collector, _http, db = start_collector(work, port)
        fleet_steps = []
        size = 500
        limit_s = 40 if quick else 600
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            s = fleet_step(port, size, 6 if quick else 30)
            fleet_steps.append(s)
            print(f"fleet {size}: {s}", flush=True)
            if not s["ok"]:
                break
            size *= 2
        result["fleet_steps"] = fleet_steps
        good = [s["fleet"] for s in fleet_steps if s["ok"]]
        result["largest_fleet_10s"] = max(good) if good else None
        result["largest_fleet_bounded_by_time"] = bool(fleet_steps and fleet_steps[-1]["ok"])
        steps = []
        rates: list[float | None] = [100, 250, None] if quick else [100, 250, 500, 1000, None]
        for i, rate in enumerate(rates):
            s = rate_step(port, hosts=200 if quick else 1000, rate=rate,
                          seconds=6 if quick else 30, prefix=f"r{i}")
            steps.append(s)
            print(f"rate {rate or 'max'}: {s}", flush=True)
        result["rate_steps"] = steps
        best = max((s.get("acked_samples_per_s") or 0) for s in steps)
        result["sustained_samples_per_s"] = best
        result["ratio_to_raw_store_batches"] = round(best / raw["store_batches_samples_per_s"], 4)
        stop(collector)
        collector = None
        stored = sum(s["acked_samples"] for s in steps + fleet_steps)
        result["disk"] = disk(db, stored)
    finally:
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    rows = [{"step": f"rate {s['offered_batches_per_s']}", "acked": s["acked"],
             "samples/s": s.get("acked_samples_per_s"), "p50 ms": s["lag_p50_ms"],
             "p99 ms": s["lag_p99_ms"], "all acked": s["all_acked"]} for s in steps]
    rows += [{"step": f"fleet {s['fleet']} @10s", "acked": s["acked"],
              "samples/s": s.get("acked_samples_per_s"), "p50 ms": s["lag_p50_ms"],
              "p99 ms": s["lag_p99_ms"], "all acked": s["ok"]} for s in fleet_steps]
    print(table(rows, ["step", "acked", "samples/s", "p50 ms", "p99 ms", "all acked"]))
    print(f"sustained {result['sustained_samples_per_s']:,} samples/s = "
          f"{result['ratio_to_raw_store_batches']:.1%} of raw store_batches "
          f"({raw['store_batches_samples_per_s']:,}/s); largest fleet at 10 s: "
          f"{result['largest_fleet_10s']}; on disk {result['disk']['in_use_bytes_per_sample']} "
          f"B/sample in use ({result['disk']['file_bytes_per_sample']} file)")
    path = write_result("ingest", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
