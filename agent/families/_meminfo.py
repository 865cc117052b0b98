"""psutil's ``virtual_memory()`` and ``swap_memory()`` (Linux) from kept-open files read once per
cycle.

psutil opens and parses ``/proc/meminfo`` for each of the two calls and ``/proc/vmstat`` for the
second: three opens a cycle for the memory family. ``MemInfo`` keeps both files open
(``_proc.ProcFile``), reads ``/proc/meminfo`` once per ``cycle()`` (``_proc.PerCycle``, as
``_procstat.ProcStat`` does ``/proc/stat``) and computes psutil's values with psutil's formulas
(7.x, mimicking procps' ``free``; ``tests/test_families.py`` compares both on recorded files).
Where psutil would fall back or warn (no ``MemAvailable``, fields or swap counters missing) it
asks psutil itself.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from edgemon.agent.families._proc import PerCycle, ProcFile

__all__ = ["MEMINFO", "SOURCE", "MemInfo", "SwapMemory", "VirtualMemory"]

PROC = Path("/proc")
_SWAP_PAGE = 4 * 1024  # psutil counts pswpin/pswpout in 4 KiB pages
_NEEDED = (b"MemTotal:", b"MemFree:", b"Buffers:", b"Cached:", b"Shmem:", b"Active:",
           b"Inactive:", b"MemAvailable:", b"SwapTotal:", b"SwapFree:")


class VirtualMemory(NamedTuple):
    """As psutil's ``svmem`` on Linux."""

    total: int
    available: int
    percent: float
    used: int
    free: int
    active: int
    inactive: int
    buffers: int
    cached: int
    shared: int
    slab: int


class SwapMemory(NamedTuple):
    """As psutil's ``sswap``."""

    total: int
    used: int
    free: int
    percent: float
    sin: int
    sout: int


def _percent(part: int, whole: int) -> float:
    """psutil's ``usage_percent(part, whole, round_=1)``."""
    try:
        return round(part / whole * 100, 1)
    except ZeroDivisionError:
        return 0.0


class MemInfo(PerCycle):
    """``virtual_memory()`` and ``swap_memory()`` from ``proc``/meminfo and ``proc``/vmstat."""

    def __init__(self, proc: Path | str = PROC) -> None:
        self.meminfo = ProcFile(Path(proc) / "meminfo")
        self.vmstat = ProcFile(Path(proc) / "vmstat")

    def virtual_memory(self) -> VirtualMemory:
        mems = self._read()
        if not all(key in mems for key in _NEEDED[:8]) or mems[b"MemAvailable:"] == 0:
            return psutil.virtual_memory()  # type: ignore[return-value]  # an old kernel
        total, free, avail = mems[b"MemTotal:"], mems[b"MemFree:"], mems[b"MemAvailable:"]
        if avail > total:
            avail = free
        return VirtualMemory(
            total, avail, _percent(total - avail, total), total - avail, free,
            mems[b"Active:"], mems[b"Inactive:"], mems[b"Buffers:"],
            mems[b"Cached:"] + mems.get(b"SReclaimable:", 0), mems[b"Shmem:"],
            mems.get(b"Slab:", 0))

    def swap_memory(self) -> SwapMemory:
        mems = self._read()
        sin = sout = None
        try:
            for line in self.vmstat.read().splitlines():
                if line.startswith(b"pswpin "):
                    sin = int(line.split()[1]) * _SWAP_PAGE
                elif line.startswith(b"pswpout "):
                    sout = int(line.split()[1]) * _SWAP_PAGE
        except OSError:
            pass
        if b"SwapTotal:" not in mems or b"SwapFree:" not in mems or sin is None or sout is None:
            return psutil.swap_memory()  # type: ignore[return-value]  # psutil says what is off
        total, free = mems[b"SwapTotal:"], mems[b"SwapFree:"]
        return SwapMemory(total, total - free, free, _percent(total - free, total), sin, sout)

    def _read(self) -> dict[bytes, int]:
        mems: dict[bytes, int] = self._once(self._parse)
        return mems

    def _parse(self) -> dict[bytes, int]:
        mems = {}
        for line in self.meminfo.read().splitlines():
            fields = line.split()
            if len(fields) >= 2:
                mems[fields[0]] = int(fields[1]) * 1024
        return mems


MEMINFO = MemInfo()
SOURCE: Any = MEMINFO if sys.platform.startswith("linux") and (PROC / "meminfo").exists() \
    else psutil
"""What the memory family samples by default."""
