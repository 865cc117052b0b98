"""CPU cost of each metric family on this host: ms of CPU per call, readings per call, and what
that makes per hour at the default interval (counting DEFAULT_INTERVALS).

    python benchmarks/family_cost.py [--calls N]

Writes benchmarks/results/family_cost.json. Figures are process CPU time (not wall clock), each
family called N times after one priming call; a loaded machine inflates them all alike.
"""

from __future__ import annotations

import argparse
import math
import time

from edgemon.agent.families import DEFAULT_INTERVALS, FAMILIES, OPT_IN, start

try:
    from benchmarks._common import table, write_result
except ImportError:  # run as a script from benchmarks/
    from _common import table, write_result  # type: ignore[no-redef]

INTERVAL_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    collectors, unavailable = start(tuple(FAMILIES))
    rows: list[dict[str, object]] = []
    figures: dict[str, dict[str, object]] = {}
    for name, collect in collectors.items():
        collect()
        started = time.process_time()
        for _ in range(args.calls):
            readings = collect()
        ms = (time.process_time() - started) / args.calls * 1000
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
    print(f"\ndefault families together: {default:.3f} CPU s/h at {INTERVAL_S:g} s")
    path = write_result("family_cost", {"calls": args.calls, "interval_s": INTERVAL_S,
                                        "families": figures,
                                        "default_cpu_s_per_hour": round(default, 4)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
