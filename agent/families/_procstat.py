"""``/proc/stat`` read once per cycle for the families that need it (Linux).

``cpu`` (``cpu_times()`` and ``cpu_times(percpu=True)``), ``cpu_seconds`` (per CPU), ``kernel``
(``cpu_stats()`` and the forks counter) and ``system`` (``boot_time()``) each made psutil open and
parse ``/proc/stat`` again: six reads of the same file a cycle. ``ProcStat`` answers the same
calls with psutil's values (same fields, ``ticks / SC_CLK_TCK`` seconds, see
``tests/test_families.py``, which compares both on one recorded file) from one read: inside
``with STAT.cycle():`` (the runner's sampling cycle) the file is read at the first call and
reused until the block ends; outside one, every call reads it afresh. ``SOURCE`` is what the
families sample by default: ``STAT`` on Linux, psutil elsewhere.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from edgemon.agent.families._proc import PerCycle, ProcFile

__all__ = ["SOURCE", "STAT", "ProcStat"]

PATH = Path("/proc/stat")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# psutil's names for the columns of a "cpu" line, in the kernel's order (as many as it prints)
COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest",
           "guest_nice")


class CpuStats(NamedTuple):
    """As psutil's ``scpustats`` (Linux counts no system calls: 0)."""

    ctx_switches: int
    interrupts: int
    soft_interrupts: int
    syscalls: int


class _Parsed(NamedTuple):
    total: Any  # scputimes of the "cpu" line
    each: list[Any]  # scputimes of "cpu0", "cpu1", ...
    stats: CpuStats
    boot_time: float | None
    forks: int | None


class ProcStat(PerCycle):
    """psutil's ``cpu_times``, ``cpu_stats``, ``boot_time`` and ``cpu_count`` (the latter from
    psutil itself) from ``path``, plus ``forks()``; read once per ``cycle()``."""

    def __init__(self, path: Path | str = PATH, ticks: int = TICKS) -> None:
        self.file = ProcFile(path)
        self.ticks = ticks
        self._types: dict[int, Any] = {}

    def cpu_times(self, percpu: bool = False) -> Any:
        parsed = self._read()
        return list(parsed.each) if percpu else parsed.total

    def cpu_stats(self) -> CpuStats:
        return self._read().stats

    def boot_time(self) -> float:
        boot = self._read().boot_time
        if boot is None:
            raise RuntimeError(f"line 'btime' not found in {self.file.path}")
        return boot

    def forks(self) -> int | None:
        """Processes created since boot (the ``processes`` line); None if it is missing."""
        return self._read().forks

    def cpu_count(self) -> int | None:
        return psutil.cpu_count()

    def _read(self) -> _Parsed:
        parsed: _Parsed = self._once(lambda: self._parse(self.file.read()))
        return parsed

    def _times(self, fields: list[bytes]) -> Any:
        kind = self._types.get(len(fields))
        if kind is None:
            kind = self._types[len(fields)] = namedtuple(
                "scputimes", COLUMNS[:len(fields)])
        return kind(*(int(f) / self.ticks for f in fields))

    def _parse(self, content: bytes) -> _Parsed:
        total: Any = None
        each: list[Any] = []
        found: dict[bytes, int] = {}
        for line in content.splitlines():
            key, _, rest = line.partition(b" ")
            if key.startswith(b"cpu"):
                fields = rest.split()[:len(COLUMNS)]
                if key == b"cpu":
                    total = self._times(fields)
                else:
                    each.append(self._times(fields))
            elif key in (b"ctxt", b"intr", b"softirq", b"btime", b"processes"):
                found[key] = int(rest.split(None, 1)[0])
        if total is None:
            raise RuntimeError(f"no 'cpu' line in {self.file.path}")
        stats = CpuStats(found.get(b"ctxt"), found.get(b"intr"),  # type: ignore[arg-type]
                         found.get(b"softirq"), 0)  # None when missing, as psutil
        boot = found.get(b"btime")
        return _Parsed(total, each, stats, None if boot is None else float(boot),
                       found.get(b"processes"))


STAT = ProcStat()
SOURCE: Any = STAT if sys.platform.startswith("linux") and PATH.exists() else psutil
"""What cpu, cpu_seconds, kernel and system sample by default."""

