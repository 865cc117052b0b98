"""CPU cost of each metric family on this host: ms of CPU per call, readings per call, and what
that makes per hour at the default interval (counting DEFAULT_INTERVALS).

    python benchmarks/family_cost.py [--calls N] [--pause S]

Writes benchmarks/results/family_cost.json. Figures are this thread's CPU time (not wall clock),
each family called N times after one priming call, ``--pause`` seconds apart (default 0.02: the
CPU counters move between calls, as in the agent, and caches cool a little; 0 for back-to-back
calls, which flatters every family). A loaded machine inflates them all alike.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from edgemon.agent.families import DEFAULT_INTERVALS, FAMILIES, OPT_IN, cycle, start

try:
    from benchmarks._common import table, write_result
except ImportError:  # run as a script from benchmarks/
    from _common import table, write_result  # type: ignore[no-redef]

INTERVAL_S = 10.0


def one_cycle(collectors: dict[str, Any], cycles: int, pause: float) -> float:
    """Mean ms of CPU of one agent cycle of the default families (each at its default interval,
    all inside one ``cycle()``, so shared reads are shared)."""
    every = {name: math.ceil(DEFAULT_INTERVALS.get(name, INTERVAL_S) / INTERVAL_S - 1e-9)
             for name in collectors if name not in OPT_IN}
    spent = 0.0
    for i in range(cycles):
        time.sleep(pause)
        started = time.thread_time()
        with cycle():
            for name, n in every.items():
                if i % n == 0:
                    collectors[name]()
        spent += time.thread_time() - started
    return spent / cycles * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between calls")
    args = parser.parse_args()
    collectors, unavailable = start(tuple(FAMILIES))
    rows: list[dict[str, object]] = []
    figures: dict[str, dict[str, object]] = {}
    for name, collect in collectors.items():
        readings = collect()
        spent = 0.0
        for _ in range(args.calls):
            time.sleep(args.pause)
            started = time.thread_time()
            with cycle():  # as the agent samples (each family alone: it reads /proc/stat itself)
                readings = collect()
            spent += time.thread_time() - started
        ms = spent / args.calls * 1000
        cycles = math.ceil(DEFAULT_INTERVALS.get(name, INTERVAL_S) / INTERVAL_S - 1e-9)
        per_hour = ms / 1000 * 3600 / INTERVAL_S / cycles
        figures[name] = {"ms_per_call": round(ms, 4), "readings": len(readings),
                         "every_cycles": cycles, "cpu_s_per_hour": round(per_hour, 4),
                         "opt_in": name in OPT_IN}
        rows.append({"family": name, "ms/call": f"{ms:.3f}", "readings": len(readings),
                     "every": cycles, "CPU s/h @10s": f"{per_hour:.3f}",
                     "note": "opt-in" if name in OPT_IN else ""})
    for name, why in unavailable.items():
        figures[name] = {"unavailable": why}
        rows.append({"family": name, "note": f"unavailable: {why}"})
    print(table(rows, ["family", "ms/call", "readings", "every", "CPU s/h @10s", "note"]))
    default = sum(float(f["cpu_s_per_hour"]) for f in figures.values()  # type: ignore[arg-type]
                  if "cpu_s_per_hour" in f and not f["opt_in"])
    print(f"\ndefault families, the sum of the above: {default:.3f} CPU s/h at {INTERVAL_S:g} s")
    cycle_ms = one_cycle(collectors, max(args.calls, 6), args.pause)
    cycle_per_hour = cycle_ms / 1000 * 3600 / INTERVAL_S
    print(f"default families sampled together as the agent does (shared reads): "
          f"{cycle_ms:.3f} ms a cycle, {cycle_per_hour:.3f} CPU s/h at {INTERVAL_S:g} s")
    path = write_result("family_cost", {"calls": args.calls, "pause_s": args.pause,
                                        "interval_s": INTERVAL_S,
                                        "families": figures,
                                        "default_cpu_s_per_hour": round(default, 4),
                                        "cycle_ms": round(cycle_ms, 4),
                                        "cycle_cpu_s_per_hour": round(cycle_per_hour, 4)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
