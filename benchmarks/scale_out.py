"""Ingest with 1 collector on SQLite, 1 on PostgreSQL and 2 on one PostgreSQL store (an MQTT 5
shared group, SCALING.md), measured in the same run on this machine.

    nice -n 5 python benchmarks/scale_out.py [--seconds S] [--hosts N] [--runs R]

Each setup gets a fresh Mosquitto (a stopped collector's session would keep its share of the
group) and a fresh store: SQLite as shipped (synchronous=FULL) or a database on one private,
durable PostgreSQL cluster (fsync and synchronous_commit on, ``tests/support/postgres.py``).
A fleet of synthetic hosts (``fleet.py``, the agent's families) publishes as fast as the
acknowledgements allow for about ``--seconds``; the figure is acknowledged samples/s (an ack
means stored and committed). On a 2-core machine the broker, PostgreSQL, the fleet and the
collectors share the cores: the ratio 2-vs-1 says what a second collector buys *here*, not on
separate machines. Writes ``benchmarks/results/scale_out.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import table, write_result  # noqa: E402
from ingest import COLLECTOR, free_port, rate_step, start_broker, stop, wait_for  # noqa: E402

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
          seconds: float) -> dict[str, Any]:
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
    print(f"{label}: {s}", flush=True)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="publishing time per setup")
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3, help="rounds of the three setups")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgemon-scale-out-", dir=args.dir))
    pg = Postgres(work / "pg", durable=True).start()
    steps: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):  # interleaved: a load change hits every setup alike
            steps.append(setup(work / f"sqlite{run}", "1 collector, SQLite", [None],
                               hosts=args.hosts, seconds=args.seconds))
            steps.append(setup(work / f"pg1-{run}", "1 collector, PostgreSQL",
                               [pg.new_database("scale1")], hosts=args.hosts,
                               seconds=args.seconds))
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
    path = write_result("scale_out", {
        "seconds": args.seconds, "hosts": args.hosts, "runs": args.runs, "steps": steps,
        "median_samples_per_s": median,
        "two_vs_one_postgres": round(median["2 collectors, one PostgreSQL"] / one_pg, 2),
        "postgres_vs_sqlite": round(one_pg / sqlite, 2),
        "note": "2-core machine shared by the broker, PostgreSQL, the fleet and the collectors "
                "(and other work): ratios measured in the same run are what count"})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
