"""CPU time per dashboard API request, by kind, against a baseline revision in the same run.

    python benchmarks/dashboard_cpu.py [--hosts N] [--requests R] [--rounds K] [--baseline-ref REF]

On a shared, loaded machine wall latency says little; the collector's own CPU time (user +
system, from /proc) per request does not depend on what else runs. A store of ``--hosts``
simulated hosts (``dashboard.py``'s fleet hosts: the last 5 minutes of the fleet page's metrics,
the newest minute pending) is copied for two collector processes: this checkout and, with
``--baseline-ref``, the collector of that git revision (its sources on PYTHONPATH). For each
kind of request the load test mixes (a fleet page sorted some way, one random host's charts over
15 minutes, the alerts list), ``--requests`` requests are sent one after another on a kept-alive
connection, alternating between the collectors over ``--rounds`` rounds. Counted are the threads
that serve requests (the event loop, the read pools, the fleet view's refresh), named by
``py-spy dump``: compaction and maintenance work on their own schedule and would swamp a few
milliseconds a request; so would the alert rules' evaluation (every 10 s over every host, in the
read pool): the collectors run without rules. The serving threads' idle rate (measured before)
is taken off. Writes ``benchmarks/results/dashboard_cpu.json``; prints a table (median over rounds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import table, write_result  # noqa: E402
from dashboard import fleet_host_batches, items, wait_idle  # noqa: E402
from footprint import baseline_tree  # noqa: E402
from ingest import start_broker, start_collector, stop  # noqa: E402

from edgemon.collector.http.tokens import create_token  # noqa: E402
from edgemon.collector.storage.sqlite import SQLiteStorage  # noqa: E402

SEC = 1000
SORTS = ["host", "cpu_percent", "memory_percent", "net_bytes_per_s", "disk_percent"]


def build_store(path: Path, hosts: int) -> None:
    rng = np.random.default_rng(19)
    st = SQLiteStorage(path, synchronous="NORMAL")
    interval, cycles = 10 * SEC, 30
    now = int(time.time() * 1000)
    t0 = now - cycles * interval
    for lo in range(0, hosts, 500):
        chunk = []
        for i in range(lo, min(hosts, lo + 500)):
            chunk += items(fleet_host_batches(f"host-{i:05d}", rng, t0, cycles, 6, interval))
        st.store_batches(chunk)
    st.compact_all(int(time.time() * 1000))  # the newest minute stays pending
    st.close()


# threads that serve requests: the event loop, the read pool, asyncio's default pool (alerts)
# and the fleet view's refresh; every other thread of the collector (alert evaluation,
# compaction, maintenance, ingest, MQTT) does background work, left out of the figures
SERVING = ("MainThread", "edgemon-reader", "edgemon-fleet-view", "asyncio_", "uvloop_")


def background_threads(pid: int) -> set[int]:
    """Thread ids of the collector's background threads, by name (py-spy dump); empty without
    py-spy (then the whole process is counted)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return set()
    out = subprocess.run([str(spy), "dump", "-p", str(pid)], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    return {int(tid) for tid, name in re.findall(r'^Thread (\d+) \(\w+\): "(.*)"$', out,
                                                 re.MULTILINE) if not name.startswith(SERVING)}


def cpu_s(pid: int, leave_out: set[int] = frozenset()) -> float:  # type: ignore[assignment]
    """CPU seconds (user + system) of the threads of ``pid`` not in ``leave_out`` (of those
    alive now: a pool thread that ended is not counted)."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) in leave_out:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def paths(kind: str, n: int, hosts: int, rng: random.Random) -> list[str]:
    if kind == "fleet":
        return [f"/edgemon/api/v1/fleet?limit=100&order=desc&sort={rng.choice(SORTS)}"
                f"&offset={100 * rng.randint(0, 20)}" for _ in range(n)]
    if kind == "charts":
        return [f"/edgemon/api/v1/hosts/host-{rng.randrange(hosts):05d}/charts?start=now-15m"
                for _ in range(n)]
    return ["/edgemon/api/v1/alerts"] * n


def drive(port: int, token: str, pid: int, leave_out: set[int], idle_rate: float,
          todo: list[str]) -> float:
    """CPU µs of the collector's serving threads per request over ``todo`` (idle rate taken
    off)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    before, started = cpu_s(pid, leave_out), time.monotonic()
    for path in todo:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
    used = cpu_s(pid, leave_out) - before - idle_rate * (time.monotonic() - started)
    conn.close()
    return max(0.0, used) / len(todo) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgemon-dashboard-cpu-"))
    load_at_start = list(os.getloadavg())
    (work / "store").mkdir()
    print(f"building a store of {args.hosts} hosts ...", flush=True)
    build_store(work / "store" / "edgemon.db", args.hosts)
    variants: dict[str, dict[str, Any]] = {"this": {}}
    if args.baseline_ref:
        tree = baseline_tree(work, args.baseline_ref)
        variants[args.baseline_ref] = {"env": {"PYTHONPATH": str(tree)}}
    broker, mqtt_port = start_broker(work)
    procs = []
    try:
        for name, v in variants.items():
            d = work / name.replace("/", "_")
            (d / "data").mkdir(parents=True)
            shutil.copy(work / "store" / "edgemon.db", d / "data" / "edgemon.db")
            v["token"] = create_token(d / "data" / "tokens.json", "bench", "admin")[1]
            rules = d / "rules.toml"  # none: the alert cycle would land on whatever is measured
            rules.write_text("# no rules\n")
            proc, port, _ = start_collector(
                d, mqtt_port, env=v.get("env"),
                ingest=f"queue_max = 20000\n\n[alerting]\nrules_path = \"{rules}\"\n")
            procs.append(proc)
            v.update(proc=proc, port=port, runs={})
        for v in variants.values():
            conn = http.client.HTTPConnection("127.0.0.1", v["port"], timeout=60)
            while True:
                conn.request("GET", "/edgemon/api/v1/fleet?limit=1",
                             headers={"Authorization": f"Bearer {v['token']}"})
                if not json.loads(conn.getresponse().read())["loading"]:
                    break
                time.sleep(0.5)
            conn.close()
        for v in variants.values():
            wait_idle(v["proc"].pid, timeout=240, busy=0.1)
            v["leave_out"] = background_threads(v["proc"].pid)
            before = cpu_s(v["proc"].pid, v["leave_out"])
            time.sleep(5)
            v["idle_cpu_rate"] = (cpu_s(v["proc"].pid, v["leave_out"]) - before) / 5
        for r in range(args.rounds):
            for kind in ("fleet", "charts", "alerts"):
                todo = paths(kind, args.requests, args.hosts, random.Random(19 + r))
                order = list(variants.items())
                if r % 2:
                    order.reverse()
                for _, v in order:
                    v["runs"].setdefault(kind, []).append(
                        drive(v["port"], v["token"], v["proc"].pid, v["leave_out"],
                              v["idle_cpu_rate"], todo))
    finally:
        for proc in procs:
            stop(proc)
        stop(broker)
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "hosts": args.hosts, "requests": args.requests, "rounds": args.rounds,
        "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()),
        "cpu_us_per_request": {name: {k: [round(x) for x in runs]
                                      for k, runs in v["runs"].items()}
                               for name, v in variants.items()},
        "idle_cpu_rate": {name: round(v["idle_cpu_rate"], 3) for name, v in variants.items()},
    }
    rows = []
    for kind in ("fleet", "charts", "alerts"):
        row: dict[str, Any] = {"request": kind}
        for name, v in variants.items():
            row[f"{name} CPU µs"] = round(statistics.median(v["runs"][kind]))
        if args.baseline_ref:
            row["ratio"] = round(row[f"{args.baseline_ref} CPU µs"] / max(1, row["this CPU µs"]),
                                 2)
        rows.append(row)
    result["headline"] = rows
    write_result("dashboard_cpu", result)
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
