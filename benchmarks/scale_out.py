"""Ingest with 1 collector on SQLite, 1 on PostgreSQL and 2 on one PostgreSQL store (an MQTT 5
shared group, SCALING.md), measured in the same run on this machine.

    nice -n 5 python benchmarks/scale_out.py [--quick] [--seconds S] [--hosts N] [--runs R]

Each setup gets a fresh Mosquitto (a stopped collector's session would keep its share of the
group) and a fresh store: SQLite as shipped (synchronous=FULL) or a database on one private,
durable PostgreSQL cluster (fsync and synchronous_commit on, ``tests/support/postgres.py``).
A fleet of synthetic hosts (``fleet.py``, the agent's families) publishes as fast as the
acknowledgements allow for about ``--seconds``; the figure is acknowledged samples/s (an ack
means stored and committed). On a 2-core machine the broker, PostgreSQL, the fleet and the
collectors share the cores: the ratio 2-vs-1 says what a second collector buys *here*, not on
separate machines.

After each single-collector setup its store (what the fleet left, about 7,500 batches) is
opened in this process, compacted whole (timed), and measured: bytes on disk per stored sample
(the file with its WAL, or ``pg_database_size`` less an empty database's; as the store was
left, and after ``VACUUM`` gives back the space of the compacted batches) and the median of 5
of two queries, one series over 24 h and CPU of every host over 1 h (one result per host).
``--quick``: one round, 4 s per setup. Writes ``benchmarks/results/scale_out.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import table, write_result  # noqa: E402
from ingest import COLLECTOR, free_port, rate_step, start_broker, stop, wait_for  # noqa: E402

from edgemon.collector.storage import open_storage  # noqa: E402
from edgemon.collector.storage.base import RangeQuery  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402

GROUP = "edgemon-bench-3f9a0c1d7e2b"


def start_collector(work: Path, mqtt_port: int, name: str, url: str | None,
                    ) -> subprocess.Popen[bytes]:
    """One collector; ``url``: its PostgreSQL store, in the shared group (else SQLite alone)."""
    work.mkdir(parents=True, exist_ok=True)
    http = free_port()
    storage = f'url = "{url}"\n' if url else ""
    cluster = (f'[cluster]\nshared_group = "{GROUP}"\nsession_expiry_seconds = 5\n'
               if url else "")
    conf = work / "collector.toml"
    conf.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nprotocol = "5"\n'
                    f'client_id = "{name}"\n\n'
                    f'[storage]\n{storage}path = "{work / "edgemon.db"}"\n'
                    "maintain_interval_seconds = 2\n\n"
                    f'[http]\nhost = "127.0.0.1"\nport = {http}\n\n'
                    "[ingest]\nqueue_max = 20000\npast_tolerance_days = 30\n\n" + cluster)
    conf.chmod(0o600)
    with (work / "collector.log").open("ab") as log:
        proc = subprocess.Popen([str(COLLECTOR), "run", "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((work / "collector.log").read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as r:
            return r.status == 200
    wait_for(ready, 60, f"collector {name} not ready")
    return proc


def setup(work: Path, label: str, urls: list[str | None], *, hosts: int,
          seconds: float, empty_bytes: int = 0) -> dict[str, Any]:
    """One setup's ingest step; with one collector, also its store's figures (``store``)."""
    work.mkdir(parents=True, exist_ok=True)
    broker, port = start_broker(work)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, url in enumerate(urls):
            procs.append(start_collector(work / f"c{i}", port, f"collector-{i}", url))
        s = rate_step(port, hosts=hosts, rate=None, seconds=seconds, prefix=work.name)
    finally:
        for proc in procs:
            stop(proc)
        stop(broker)
    s["setup"] = label
    if len(urls) == 1:
        s["store"] = store_figures(urls[0] or str(work / "c0" / "edgemon.db"), work.name,
                                   s["acked_samples"], empty_bytes)
    print(f"{label}: {s}", flush=True)
    return s


def store_figures(location: str, prefix: str, samples: int, empty_bytes: int
                  ) -> dict[str, Any]:
    """The stopped collector's store: compacted whole, then bytes per sample and two queries."""
    storage = open_storage(location)
    try:
        now = int(time.time() * 1000)
        began = time.perf_counter()
        storage.compact_all(now + 3_600_000)  # every window closed: rollups made too
        compact_s = time.perf_counter() - began
        disk = (storage.disk_bytes() or 0) - empty_bytes
        one = RangeQuery(name="cpu_usage_percent", start_ms=now - 86_400_000, end_ms=now,
                         step_ms=60_000, hosts=(f"{prefix}-00000",), labels={"cpu": "total"})
        fleet = RangeQuery(name="cpu_usage_percent", start_ms=now - 3_600_000, end_ms=now,
                           step_ms=60_000, labels={"cpu": "total"}, group_by=("host",),
                           max_series=100_000)

        def median_ms(query: RangeQuery) -> tuple[float, int]:
            times, found = [], 0
            for _ in range(5):
                t = time.perf_counter()
                found = len(storage.query(query))
                times.append(time.perf_counter() - t)
            return round(statistics.median(times) * 1000, 1), found

        one_ms, one_n = median_ms(one)
        fleet_ms, fleet_n = median_ms(fleet)
    finally:
        storage.close()
    vacuumed = vacuumed_bytes(location) - empty_bytes
    return {"compact_s": round(compact_s, 1),
            "compact_samples_per_s": round(samples / compact_s) if compact_s else None,
            "bytes": disk, "bytes_per_sample": round(disk / samples, 2) if samples else None,
            "bytes_vacuumed": vacuumed,
            "bytes_per_sample_vacuumed": round(vacuumed / samples, 2) if samples else None,
            "query_1_series_24h_ms": one_ms, "query_1_series_24h_results": one_n,
            "query_fleet_cpu_1h_ms": fleet_ms, "query_fleet_cpu_1h_results": fleet_n}


def vacuumed_bytes(location: str) -> int:
    """The store's bytes once the space of the compacted batches is given back (``VACUUM``;
    a running store reuses that space for new batches instead)."""
    if location.startswith("postgresql:"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("VACUUM FULL")
            return int(conn.execute(
                "SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
    import sqlite3

    conn = sqlite3.connect(location)
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sum(Path(location + suffix).stat().st_size for suffix in ("", "-wal")
               if Path(location + suffix).exists())


def empty_database_bytes(pg: Postgres) -> int:
    """``pg_database_size`` of a store with its schema and no data (subtracted)."""
    storage = open_storage(pg.new_database("empty"))
    try:
        return storage.disk_bytes() or 0
    finally:
        storage.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="publishing time per setup")
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3, help="rounds of the three setups")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="one round of 4 s per setup")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds = 1, 4.0
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="edgemon-scale-out-", dir=args.dir))
    pg = Postgres(work / "pg", durable=True).start()
    steps: list[dict[str, Any]] = []
    try:
        empty = empty_database_bytes(pg)
        for run in range(args.runs):  # interleaved: a load change hits every setup alike
            steps.append(setup(work / f"sqlite{run}", "1 collector, SQLite", [None],
                               hosts=args.hosts, seconds=args.seconds))
            steps.append(setup(work / f"pg1-{run}", "1 collector, PostgreSQL",
                               [pg.new_database("scale1")], hosts=args.hosts,
                               seconds=args.seconds, empty_bytes=empty))
            url = pg.new_database("scale2")
            steps.append(setup(work / f"pg2-{run}", "2 collectors, one PostgreSQL", [url, url],
                               hosts=args.hosts, seconds=args.seconds))
    finally:
        pg.remove()
        shutil.rmtree(work, ignore_errors=True)
    median = {label: statistics.median(s.get("acked_samples_per_s") or 0 for s in steps
                                       if s["setup"] == label)
              for label in dict.fromkeys(s["setup"] for s in steps)}
    one_pg = median["1 collector, PostgreSQL"] or 1
    sqlite = median["1 collector, SQLite"] or 1
    rows = [{"setup": label, "runs": args.runs,
             "all acked": all(s["all_acked"] for s in steps if s["setup"] == label),
             "median samples/s": round(v), "vs 1 on PostgreSQL": round(v / one_pg, 2),
             "vs SQLite": round(v / sqlite, 2)} for label, v in median.items()]
    print(table(rows, list(rows[0])))
    stores = {label: {key: statistics.median(s["store"][key] for s in steps
                                             if s["setup"] == label)
                      for key in ("bytes_per_sample", "bytes_per_sample_vacuumed",
                                  "compact_samples_per_s",
                                  "query_1_series_24h_ms", "query_fleet_cpu_1h_ms")}
              for label in median if "1 collector" in label}
    store_rows = [{"store": label, **values} for label, values in stores.items()]
    print(table(store_rows, list(store_rows[0])))
    path = write_result("scale_out", {
        "quick": args.quick, "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": args.seconds, "hosts": args.hosts, "runs": args.runs, "steps": steps,
        "median_samples_per_s": median, "stores": stores,
        "two_vs_one_postgres": round(median["2 collectors, one PostgreSQL"] / one_pg, 2),
        "postgres_vs_sqlite": round(one_pg / sqlite, 2),
        "note": "2-core machine shared by the broker, PostgreSQL, the fleet and the collectors "
                "(and other work): ratios measured in the same run are what count"})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
