"""Leader fail-over time (collector/cluster/pg_leader.py) with the shipped [cluster] settings,
against the bound SCALING.md documents (check + lease + check), on a private PostgreSQL.

    python benchmarks/failover.py [--runs N] [--check S] [--lease S]

Each run starts two contenders in separate processes, waits for one to lead, ends the leader
(``pg_terminate_backend`` of its session, or ``kill -9`` of its process) and measures until the
other leads. Both processes print their gains and losses on CLOCK_MONOTONIC (one clock for every
process on the machine), so each run also checks that the two never led at once. Writes
``benchmarks/results/failover.json``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import table, write_result

from tests.support.postgres import Postgres

CONTENDER = textwrap.dedent("""
    import sys, time
    from edgemon.collector.cluster.pg_leader import PostgresLeader
    leader = PostgresLeader(sys.argv[1], collector_id=sys.argv[2], check_s=float(sys.argv[3]),
                            lease_s=float(sys.argv[4]))
    leader.add_listener(lambda up: print("gained" if up else "lost", time.monotonic(),
                                         flush=True))
    leader.start()
    sys.stdin.read()  # until the parent closes it (or kills us)
    leader.stop()
""")


class Contender:
    def __init__(self, url: str, name: str, check: float, lease: float, workdir: Path) -> None:
        self.name = name
        self.out = workdir / f"{name}.out"
        with self.out.open("w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-c", CONTENDER, url, name, str(check),
                                          str(lease)], stdin=subprocess.PIPE, stdout=sink,
                                         stderr=subprocess.STDOUT)

    def events(self) -> list[tuple[float, str, bool]]:
        rows = []
        for line in self.out.read_text().splitlines():
            word, _, when = line.partition(" ")
            if word in ("gained", "lost"):
                rows.append((float(when), self.name, word == "gained"))
        return rows

    def leads(self) -> bool:
        events = self.events()
        return bool(events) and events[-1][2]

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def never_two(events: list[tuple[float, str, bool]], killed: dict[str, float]) -> bool:
    """Leadership periods (a killed process's ends at its death) do not overlap."""
    periods, open_at = [], {}
    for when, name, gained in sorted(events):
        if gained:
            open_at[name] = when
        else:
            periods.append((open_at.pop(name), when))
    for name, start in open_at.items():
        periods.append((start, killed.get(name, float("inf"))))
    periods.sort()
    return all(a[1] <= b[0] for a, b in itertools.pairwise(periods))


def wait(condition: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.01)
    return time.monotonic()


def one_run(server: Postgres, how: str, check: float, lease: float) -> dict[str, Any]:
    import psycopg

    url = server.new_database("edgemon_failover")
    workdir = Path(tempfile.mkdtemp(prefix="edgemon-failover-"))
    first = Contender(url, "first", check, lease, workdir)
    wait(first.leads, 60)
    second = Contender(url, "second", check, lease, workdir)
    time.sleep(2 * lease)  # the second is a settled follower
    killed: dict[str, float] = {}
    try:
        ended = time.monotonic()
        if how == "kill -9":
            first.proc.kill()
            first.proc.wait(10)
            killed["first"] = ended
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "application_name = 'edgemon-leader first'")
        took = wait(second.leads, 120) - ended
        return {"how": how, "takeover_s": round(took, 2),
                "never_two": never_two(first.events() + second.events(), killed)}
    finally:
        first.end()
        second.end()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--check", type=float, default=1.0, help="leader_check_seconds")
    parser.add_argument("--lease", type=float, default=5.0, help="leader_lease_seconds")
    args = parser.parse_args()
    bound = args.check + args.lease + args.check
    server = Postgres(Path(tempfile.mkdtemp(prefix="edgemon-failover-pg-"))).start()
    try:
        runs = [one_run(server, how, args.check, args.lease)
                for how in ("pg_terminate_backend", "kill -9") for _ in range(args.runs)]
    finally:
        server.remove()
    rows = []
    for how in ("pg_terminate_backend", "kill -9"):
        times = [r["takeover_s"] for r in runs if r["how"] == how]
        rows.append({"leader ended by": how, "runs": len(times),
                     "take-over median s": statistics.median(times),
                     "take-over max s": max(times), "bound s": round(bound, 2),
                     "never two": all(r["never_two"] for r in runs if r["how"] == how)})
    print(table(rows, list(rows[0])))
    path = write_result("failover", {
        "check_s": args.check, "lease_s": args.lease, "bound_s": bound, "runs": runs,
        "headline": [{"figure": f"leader take-over, leader ended by {r['leader ended by']} "
                                f"(worst of {r['runs']})", "unit": "s",
                      "value": r["take-over max s"], "baselines": {"documented bound": bound}}
                     for r in rows]})
    print(f"wrote {path}")
    return 0 if all(r["never two"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
