"""Kernel activity family: context switches, interrupts and forks since boot, as counters.

Context switches and (soft) interrupts come from ``psutil.cpu_stats()``; forks (processes
created since boot) from the ``processes`` line of ``/proc/stat`` where it exists (Linux).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemon.agent.families._proc import read_bytes
from edgemon.agent.families._procstat import SOURCE, ProcStat
from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import COUNTER, MetricDef

CONTEXT_SWITCHES = MetricDef("kernel_context_switches_total", COUNTER, "")
INTERRUPTS = MetricDef("kernel_interrupts_total", COUNTER, "")
SOFT_INTERRUPTS = MetricDef("kernel_soft_interrupts_total", COUNTER, "")
FORKS = MetricDef("kernel_forks_total", COUNTER, "")

STAT = Path("/proc/stat")


def forks(stat: Path = STAT) -> int | None:
    """The ``processes`` counter of ``/proc/stat``; None where the file or line is missing."""
    try:
        for line in read_bytes(stat).splitlines():
            if line.startswith(b"processes "):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def collect(source: Any = SOURCE, stat: Path = STAT) -> list[Reading]:
    """The counters the platform has (psutil reports 0 for those it does not count)."""
    stats = source.cpu_stats()
    out: list[Reading] = [(CONTEXT_SWITCHES, (), int(stats.ctx_switches)),
                          (INTERRUPTS, (), int(stats.interrupts)),
                          (SOFT_INTERRUPTS, (), int(stats.soft_interrupts))]
    # the shared /proc/stat of this cycle when sampling it, else the file at ``stat``
    created = source.forks() if isinstance(source, ProcStat) else forks(stat)
    if created is not None:
        out.append((FORKS, (), created))
    return out


def make(source: Any = SOURCE, stat: Path = STAT) -> Collect:
    """A stateless collector bound to ``source`` and ``stat``."""
    return lambda: collect(source, stat)
