"""Compaction throughput by batch shape, and what compaction costs ingest's writer, against a
baseline revision measured in the same run.

    python benchmarks/compaction.py [--quick] [--baseline-rev main]

Each side runs in a process of its own (the baseline: the sources of ``--baseline-rev`` from
``git archive``, first on PYTHONPATH; same interpreter and libraries):

* **L0 samples/s by shape**, steady state (the hosts' series exist; a first round is not
  timed): every round stores the next batches of every host, then times ``compact_all`` (L0
  and merges, windows still open); at the end the windows close (L1 merge + 1m/1h rollups,
  timed apart). Shapes: one 88-series batch (6 cycles, 528 samples) per host per round — a
  real fleet's one batch a minute — and 12 batches per host per round, same samples in all.
* **ingest writer under compaction**: a back-log of pending batches, then ``store_batches``
  of 100 batches every 100 ms (52.8 k samples/s) for a fixed time while the collector's
  maintenance runs as each revision ships it, told that ingest is busy (the baseline: a thread,
  ``MaintenanceRunner``; this tree: the compaction process, ``CompactionProcess``). Reported:
  the writer's call latency p50/p99/max, the share of the wall time it spent in
  ``store_batches``, the same without compaction, and the samples compacted meanwhile.
* **L0's choice of one step** (CPU time, best of 5): which pending batches a step takes, over a
  pending table of ``--pending`` batches (60 s of a fleet's traffic), when the oldest 0.3 s of
  them are due (a collector that keeps up) and when all are (one behind). The baseline tree has no
  ``_choose_pending``: it runs main's old query (``_old_choice``, a copy).

Prints a table and writes ``benchmarks/results/compaction.json``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, table, write_result  # noqa: E402

DAY = 86_400_000
T0 = 1_780_000_000_000 - 1_780_000_000_000 % DAY + 3_600_000  # 01:00 UTC: one 2 h window
FAR = 3000 * DAY  # retention: keep everything (the data is in the past)
OPTIONS = {"raw_retention_ms": FAR, "rollup_1m_retention_ms": FAR,
           "rollup_1h_retention_ms": FAR, "compact_delay_ms": 0}


# -- the worker (runs with either revision's edgemon) -------------------------------------------

def _items(hosts: int, per_round: int, rounds: int, seed: int = 0) -> list[list[Any]]:
    """Per round, the batches of every host (``per_round`` one-minute batches each)."""
    from benchmarks.storage_ingest import host_batches, to_items

    per_host = [to_items(host_batches(f"h{seed}-{h:05d}", seed * 100_000 + h, T0,
                                      6 * per_round * rounds, 6), wire=False)
                for h in range(hosts)]
    return [[it for h in per_host for it in h[r * per_round:(r + 1) * per_round]]
            for r in range(rounds)]


def _samples(items: list[Any]) -> int:
    return sum(it.batch.sample_count for it in items)


def shape(directory: str, hosts: int, per_round: int, rounds: int) -> dict[str, Any]:
    from edgemon.collector.storage.sqlite import SQLiteStorage

    by_round = _items(hosts, per_round, rounds + 1)
    st = SQLiteStorage(os.path.join(directory, f"shape-{per_round}.db"), **OPTIONS)
    now = T0 + 6 * per_round * (rounds + 1) * 10_000 + 60_000  # the window is still open
    st.store_batches(by_round[0])
    st.compact_all(now)  # series made: not timed
    took = samples = 0
    for items in by_round[1:]:
        st.store_batches(items)
        samples += _samples(items)
        began = time.perf_counter()
        st.compact_all(now)
        took += time.perf_counter() - began
    began = time.perf_counter()
    st.compact_all(now + DAY)  # windows closed: merge + rollups
    closing = time.perf_counter() - began
    st.close()
    return {"l0_samples_per_s": samples / took, "l0_s": took, "samples": samples,
            "close_s": closing, "close_samples_per_s": (samples + _samples(by_round[0])) / closing}


def writer(directory: str, hosts: int, backlog_rounds: int, seconds: float,
           compaction: bool) -> dict[str, Any]:
    from edgemon.collector.storage.maintenance import MaintenanceRunner
    from edgemon.collector.storage.sqlite import SQLiteStorage

    rounds = _items(hosts, 1, backlog_rounds + int(seconds * 10 * 100 / hosts) + 2, seed=7)
    path = os.path.join(directory, f"writer-{int(compaction)}.db")
    st = SQLiteStorage(path, **OPTIONS)
    for items in rounds[:backlog_rounds]:
        st.store_batches(items)
    feed = [it for items in rounds[backlog_rounds:] for it in items]
    pending0 = st.backlog()["pending_samples"]
    runner: Any = None
    if compaction:
        try:  # this tree: the compaction process
            from edgemon.collector.storage.compaction_process import CompactionProcess

            runner = CompactionProcess(path, OPTIONS, st, interval=0.05, busy=lambda: True)
            mode = "process"
        except ImportError:  # the baseline: the maintenance thread
            runner = MaintenanceRunner(st, interval=0.05,  # wall clock, as the child's
                                       busy=lambda: True)
            mode = "thread"
        runner.start()
        deadline = time.monotonic() + 60  # the child imports and opens the store first
        while st.backlog()["pending_samples"] == pending0 and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        mode = "none"
    lat: list[float] = []
    began = time.perf_counter()
    i = 0
    while time.perf_counter() - began < seconds and i < len(feed):
        t = time.perf_counter()
        st.store_batches(feed[i:i + 100])
        lat.append(time.perf_counter() - t)
        i += 100
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - t)))
    wall = time.perf_counter() - began
    if runner is not None:
        runner.stop()
    compacted = pending0 + _samples(feed[:i]) - st.backlog()["pending_samples"]
    st.close()
    lat.sort()
    return {"mode": mode, "calls": len(lat), "p50_ms": lat[len(lat) // 2] * 1e3,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
            "max_ms": lat[-1] * 1e3, "in_store_share": sum(lat) / wall,
            "compacted_samples_per_s": compacted / wall}


def _old_choice(st: Any, db: Any, now_ms: int) -> list[tuple[int, int, int]]:
    """The L0 choice as main made it before ``Compaction._choose_pending``: one GROUP BY over
    the whole pending table, then each due host's batches."""
    rows = db.execute("SELECT host_id, min(received_ms), sum(samples) FROM batches "
                      "GROUP BY host_id ORDER BY 2").fetchall()
    due = [hid for hid, oldest, n in rows
           if oldest <= now_ms - st.compact_delay_ms or n >= st.step_samples]
    budget, chosen = st.step_samples, []
    for hid in due:
        if budget <= 0:
            break
        first = True
        for batch_id, n in db.execute("SELECT id, samples FROM batches WHERE host_id = ? "
                                      "ORDER BY id", (hid,)):
            if not first and n > budget:
                break
            first, budget = False, budget - n
            chosen.append((hid, batch_id, n))
    return chosen


def choice(directory: str, pending: int, hosts: int, repeat: int = 5) -> dict[str, Any]:
    """CPU time of L0's choice of batches (one step) over a pending table of ``pending``
    batches of 528 samples and 1.3 kB of (incompressible) payload, received over 60 s by
    ``hosts`` hosts in turn, with the compaction delay at 60 s: "keeping up", the oldest 0.3 s
    of batches due (fewer than a step takes: hosts due by size are looked for too); "behind",
    every batch due (the step's budget is spent on the oldest)."""
    from edgemon.collector.storage.sqlite import SQLiteStorage

    st = SQLiteStorage(os.path.join(directory, "choice.db"),
                       **{**OPTIONS, "compact_delay_ms": 60_000})
    rng = random.Random(1)
    payload = bytes(rng.getrandbits(8) for _ in range(1300))
    with st._write() as db:
        db.executemany("INSERT INTO batches (host_id, instance, seq, received_ms, t_min, t_max, "
                       "samples, historical, payload) VALUES (?, 'i', ?, ?, ?, ?, 528, 0, ?)",
                       ((1 + i % hosts, i, T0 + i * 60_000 // pending, T0, T0, payload)
                        for i in range(pending)))
    choose = getattr(st, "_choose_pending", None)
    out: dict[str, Any] = {"pending": pending, "hosts": hosts}
    for case, now in (("keeping up", T0 + 60_300), ("behind", T0 + 200_000)):
        best, chosen = float("inf"), 0
        for _ in range(repeat):
            t = time.process_time()
            with st._read() as db:
                got = choose(db, now)[0] if choose else _old_choice(st, db, now)
            best = min(best, time.process_time() - t)
            chosen = len(got)
        out[case] = {"cpu_ms": best * 1e3, "batches": chosen}
    st.close()
    return out


def worker(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgemon-compaction-") as d:
        out["choice"] = choice(d, args.pending, args.choice_hosts)
        out["one"] = shape(d, args.hosts, 1, args.rounds)
        out["twelve"] = shape(d, max(1, args.hosts // 12), 12, args.rounds)
        out["writer_alone"] = writer(d, args.hosts, args.backlog, args.seconds, False)
        out["writer_compacting"] = writer(d, args.hosts, args.backlog, args.seconds, True)
    print("RESULT " + json.dumps(out))


# -- the driver ---------------------------------------------------------------------------------

def run_side(args: argparse.Namespace, pythonpath: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--hosts", str(args.hosts),
           "--rounds", str(args.rounds), "--backlog", str(args.backlog),
           "--seconds", str(args.seconds), "--pending", str(args.pending),
           "--choice-hosts", str(args.choice_hosts)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller data (about a minute)")
    ap.add_argument("--baseline-rev", default="main")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hosts", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--backlog", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--pending", type=int, default=60_000,
                    help="pending batches when L0's choice is timed")
    ap.add_argument("--choice-hosts", type=int, default=60_000,
                    help="hosts of those batches (as many: one batch a minute each)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.hosts, args.rounds, args.backlog, args.seconds = 240, 2, 3, 6.0
        args.pending = args.choice_hosts = 20_000
    from benchmarks.footprint import baseline_tree

    with tempfile.TemporaryDirectory(prefix="edgemon-compaction-base-") as work:
        base = run_side(args, baseline_tree(Path(work), args.baseline_rev))
    new = run_side(args, None)
    rows = []

    def row(what: str, b: float, n: float, digits: int = 0) -> None:
        rows.append({"what": what, "baseline": round(b, digits), "this tree": round(n, digits),
                     "ratio": round(n / b, 2) if b else None})

    for key, what in (("one", "one batch per host per round"),
                      ("twelve", "12 batches per host per round")):
        row(f"L0 samples/s, {what}", base[key]["l0_samples_per_s"],
            new[key]["l0_samples_per_s"])
        row(f"closing the windows (merge + rollups) samples/s, {what}",
            base[key]["close_samples_per_s"], new[key]["close_samples_per_s"])
    for case in ("keeping up", "behind"):
        row(f"L0 choice of one step, {args.pending} pending batches, {case}: CPU ms",
            base["choice"][case]["cpu_ms"], new["choice"][case]["cpu_ms"], 2)
        assert base["choice"][case]["batches"] == new["choice"][case]["batches"]
    for key in ("writer_alone", "writer_compacting"):
        for field in ("p50_ms", "p99_ms", "max_ms", "in_store_share", "compacted_samples_per_s"):
            row(f"{key} ({base[key]['mode']} / {new[key]['mode']}): {field}",
                base[key][field], new[key][field], 3)
    print(table(rows, ["what", "baseline", "this tree", "ratio"]))
    path = write_result("compaction", {"machine": machine(), "baseline_rev": args.baseline_rev,
                                       "args": vars(args), "baseline": base, "this_tree": new,
                                       "rows": rows})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
