"""Top processes family (Linux, opt-in: not in the default ``families``): the ``TOP`` processes
using the most CPU over the last cycle and the ``TOP`` largest by resident memory.

From ``/proc/<pid>/stat`` (one read per process per cycle): utime + stime (clock ticks) and the
resident set (pages). CPU percent is of the whole machine over the time since the previous
cycle (one of 4 CPUs fully busy is 25: the collector refuses percents above 100), so the first
cycle sends memory only. Labels are the
pid and the command name (``comm``, at most 15 characters). Bounded: at most ``2 x TOP`` series
per cycle, but pids come and go, so every new top process is a new series; the collector's
per-host series limits apply (``[ingest] max_new_series_per_hour``). Enable it where you want
to see which process is busy, not across a large fleet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from edgemon.agent.families._proc import open_dir
from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.agent.families.processes import pids, read_stat
from edgemon.protocol.batch import GAUGE, MetricDef

_PROCESS = ("pid", "name")
CPU = MetricDef("top_process_cpu_percent", GAUGE, "percent", 2, _PROCESS)
RESIDENT = MetricDef("top_process_resident_bytes", GAUGE, "bytes", 0, _PROCESS)

TOP = 5
PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CPUS = os.cpu_count() or 1


def parse(stat: bytes) -> tuple[str, int, int] | None:
    """(comm, utime + stime ticks, resident pages) of one ``/proc/<pid>/stat``; None if bad."""
    head, paren, rest = stat.rpartition(b")")
    comm = head.partition(b"(")[2].decode("utf-8", "replace")
    fields = rest.split()
    if not paren or len(fields) < 22 or not all(f.isdigit() for f in (*fields[11:13], fields[21])):
        return None
    return comm or "?", int(fields[11]) + int(fields[12]), int(fields[21])


class _Top:
    """Keeps each process's CPU ticks of the previous cycle (pids gone are forgotten)."""

    def __init__(self, proc: Path, clock: Callable[[], float], cpus: int) -> None:
        self.proc_fd, self.clock, self.cpus = open_dir(proc), clock, cpus  # open while we run
        self.before: dict[str, int] = {}
        self.at: float | None = None

    def __call__(self) -> list[Reading]:
        now = self.clock()
        seen: dict[str, tuple[str, int, int]] = {}
        for pid in pids(self.proc_fd):
            try:
                parsed = parse(read_stat(self.proc_fd, pid))
            except OSError:  # gone since the listing
                continue
            if parsed is not None:
                seen[pid] = parsed
        out: list[Reading] = [
            (RESIDENT, (pid, comm), pages * PAGE)
            for pid, (comm, _, pages) in sorted(seen.items(), key=lambda p: -p[1][2])[:TOP]]
        if self.at is not None and now > self.at:
            elapsed = now - self.at
            busy = [(ticks - self.before[pid], pid, comm) for pid, (comm, ticks, _) in seen.items()
                    if pid in self.before and ticks >= self.before[pid]]
            busy.sort(key=lambda b: -b[0])
            out += [(CPU, (pid, comm),
                     round(min(100.0, ticks / TICKS / elapsed / self.cpus * 100), 2))
                    for ticks, pid, comm in busy[:TOP]]
        self.before = {pid: ticks for pid, (_, ticks, _) in seen.items()}
        self.at = now
        return out


def make(proc: Path = PROC, clock: Callable[[], float] = time.monotonic,
         cpus: int = CPUS) -> Collect:
    """A stateful collector of ``proc``; ``Unavailable`` without a Linux-style ``/proc``."""
    if not (proc / "self" / "stat").exists():
        raise Unavailable(f"no {proc}/<pid>/stat (not Linux)")
    return _Top(proc, clock, cpus)
