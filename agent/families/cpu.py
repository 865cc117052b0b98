"""CPU family: utilisation from cpu_times deltas between two calls, and the logical CPU count.

The first call only takes the baseline, so it returns ``cpu_count`` alone. Percentages are over
all time except guest/guest_nice (already inside user/nice on Linux); busy = all - idle - iowait,
as in psutil.cpu_percent. Series: ``cpu_usage_percent`` for "total" and each CPU;
``cpu_mode_percent`` for "total" only (per CPU, N CPUs x 4 modes would add up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgemon.agent.families._procstat import SOURCE
from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import GAUGE, MetricDef

COUNT = MetricDef("cpu_count", GAUGE, "")
USAGE = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
MODE = MetricDef("cpu_mode_percent", GAUGE, "percent", 2, ("cpu", "mode"))

MODES = ("user", "system", "iowait", "steal")  # those the platform's scputimes has are sent
_IDLE = ("idle", "iowait")
_EXCLUDED = ("guest", "guest_nice")


def percentages(cpu: str, before: Any, after: Any, *, modes: bool) -> list[Reading]:
    """Usage (and per-mode) percent of one CPU between two scputimes; none if no time passed."""
    diff = {f: getattr(after, f) - getattr(before, f) for f in after._fields}
    elapsed = sum(v for f, v in diff.items() if f not in _EXCLUDED)
    if elapsed <= 0:  # no tick elapsed, or counters went back (CPU hot-plug)
        return []
    busy = elapsed - sum(diff.get(f, 0) for f in _IDLE)
    out: list[Reading] = [(USAGE, (cpu,), _percent(busy, elapsed))]
    if modes:
        out += [(MODE, (cpu, m), _percent(diff[m], elapsed)) for m in MODES if m in diff]
    return out


def _percent(part: float, whole: float) -> float:
    return round(min(100.0, max(0.0, part / whole * 100)), 2)


class _Cpu:
    """Keeps the previous cpu_times between calls."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.total: Any = None
        self.each: Sequence[Any] = ()

    def __call__(self) -> list[Reading]:
        total, each = self.source.cpu_times(), self.source.cpu_times(percpu=True)
        count = self.source.cpu_count()
        out: list[Reading] = [] if count is None else [(COUNT, (), int(count))]
        if self.total is not None:
            out += percentages("total", self.total, total, modes=True)
            if len(each) == len(self.each):  # else CPUs came or went: skip per-CPU this once
                for i, (old, new) in enumerate(zip(self.each, each, strict=True)):
                    out += percentages(str(i), old, new, modes=False)
        self.total, self.each = total, each
        return out


def make(source: Any = SOURCE) -> Collect:
    """A stateful collector bound to ``source``: percentages from its second call on."""
    return _Cpu(source)
