"""Alert-state writes per cycle: CPU time of the engine's cycle over N firing alerts, this
engine against a baseline engine module (e.g. main's ``engine.py``), interleaved in one run.

    python benchmarks/alert_writes.py --baseline /path/to/main/collector/alerting/engine.py

Two fleets, each all firing: ``host_down`` (its value, the silent seconds, changes every
cycle) and a threshold rule (new steps once a minute; cycles every 10 s). Reports CPU
microseconds per cycle (``time.process_time``) and the alert rows written per cycle.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemon.collector.alerting import engine as current
from edgemon.collector.alerting import parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.alerting.store import CycleWrite

MIN = 60_000
T0 = 1_800_000_000_000 // 3_600_000 * 3_600_000
SETTINGS = '[settings]\nsettle = "0s"\ninterval = "10s"\n\n'
RULES = {
    "host_down": SETTINGS + '[[rule]]\nname = "down"\nkind = "host_down"\n'
                            'no_data_for = "2m"\n',
    "threshold": SETTINGS + '[[rule]]\nname = "cpu-high"\nkind = "threshold"\n'
                            'metric = "cpu_usage_percent"\nwindow = "1m"\nthreshold = 80\n'
                            'for = "1m"\n',
}
ROWS: list[int] = []
_put = CycleWrite.put_alerts


def _counting_put(write: CycleWrite, records: Any) -> None:
    records = list(records)
    ROWS.append(len(records))
    _put(write, records)


def load_baseline(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("edgemon.collector.alerting._baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fleet(kind: str, hosts: int) -> InMemoryGridStorage:
    store = InMemoryGridStorage(MIN)
    names = [f"edge-{i:05d}" for i in range(hosts)]
    if kind == "host_down":
        ts = T0 + MIN * np.arange(-5, -4, dtype=np.int64)  # silent since 5 minutes before T0
    else:
        ts = T0 + MIN * np.arange(-5, 60, dtype=np.int64)
    store.write_block("cpu_usage_percent", names, [{}] * hosts, ts,
                      np.full((hosts, ts.size), 95.0))
    return store


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="engine.py to compare with")
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=30, help="measured cycles per engine")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = ap.parse_args()
    baseline = load_baseline(args.baseline)
    CycleWrite.put_alerts = _counting_put  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, rules in RULES.items():
            results: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": []}
            for rnd in range(args.rounds):
                for name, module in (("baseline", baseline), ("this", current)):
                    store = fleet(kind, args.hosts)
                    clock = Clock()
                    eng = module.AlertEngine(store, Path(tmp) / f"{kind}-{name}-{rnd}.db",
                                             rules=parse_rules(rules), clock_ms=clock)
                    eng.started_ms = T0 - 10 * MIN
                    for i in range(12):  # 2 minutes: every alert firing and written
                        clock.ms = T0 + i * 10_000
                        eng.run_cycle()
                    ROWS.clear()
                    cpu0 = time.process_time()
                    for i in range(12, 12 + args.cycles):
                        clock.ms = T0 + i * 10_000
                        eng.run_cycle()
                    cpu = time.process_time() - cpu0
                    firing = len(eng.store.alerts(status="firing"))
                    assert firing == args.hosts, (kind, name, firing)
                    results[name].append((cpu / args.cycles * 1e6, sum(ROWS) / args.cycles))
                    eng.close()
            for name, runs in results.items():
                us = sorted(r[0] for r in runs)
                print(f"{kind:9s} {name:8s} {args.hosts} firing: CPU µs/cycle median "
                      f"{us[len(us) // 2]:,.0f} (runs {', '.join(f'{u:,.0f}' for u in us)}), "
                      f"alert rows written/cycle {runs[0][1]:,.0f}")


if __name__ == "__main__":
    main()
