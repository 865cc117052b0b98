"""CPU seconds family: time spent per CPU in each mode, as counters (node_cpu_seconds_total).

Raw ``cpu_times(percpu=True)`` in seconds (scale 2: the kernel counts in 1/100 s ticks), so
``rate(cpu_seconds_total[5m])`` and node_exporter-style dashboards work; the collector serves the
series as ``node_cpu_seconds_total`` too. Modes are those the platform reports among
node_exporter's (user, nice, system, idle, iowait, irq, softirq, steal); guest time is already
inside user/nice on Linux and is not sent again. Series: N CPUs x (up to) 8 modes.
"""

from __future__ import annotations

from typing import Any

from edgemon.agent.families._procstat import SOURCE
from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import COUNTER, MetricDef

SECONDS = MetricDef("cpu_seconds_total", COUNTER, "seconds", 2, ("cpu", "mode"))

MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def collect(source: Any = SOURCE) -> list[Reading]:
    """Per-CPU, per-mode seconds since boot from ``source.cpu_times(percpu=True)``."""
    out: list[Reading] = []
    for i, times in enumerate(source.cpu_times(percpu=True)):
        fields = times._fields
        out += [(SECONDS, (str(i), mode), round(max(0.0, getattr(times, mode)), 2))
                for mode in MODES if mode in fields]
    return out


def make(source: Any = SOURCE) -> Collect:
    """A stateless collector bound to ``source``."""
    return lambda: collect(source)
