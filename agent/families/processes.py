"""Process family (Linux): processes by scheduler state and threads, from ``/proc/<pid>/stat``.

One read of ``/proc/<pid>/stat`` per process per sample, no psutil objects: the state is the
letter after the command name's closing parenthesis, the thread count the 18th field after it.
A process that exits between listing and reading is skipped. Every state is sent each cycle
(0 when no process is in it), so a series does not vanish when its count drops to zero.

Sampled once a minute unless ``[intervals] processes`` says otherwise (``DEFAULT_INTERVALS`` in
``__init__.py``): the scan costs about 10 µs of CPU per process (1.4 ms a sample with 140
processes), where every other default family together costs about 1.5 ms a cycle.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgemon.agent.families._proc import open_dir, read_whole_at
from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.protocol.batch import GAUGE, MetricDef

PROCESSES = MetricDef("processes", GAUGE, "", 0, ("state",))
THREADS = MetricDef("processes_threads", GAUGE, "")

PROC = Path("/proc")
STATES = {"R": "running", "S": "sleeping", "D": "disk_sleep", "Z": "zombie", "T": "stopped",
          "t": "tracing_stop", "I": "idle", "X": "dead", "W": "paging", "P": "parked"}
"""Letters of ``proc_pid_stat(5)``; a letter not listed counts as "other"."""
_REPORTED = ("running", "sleeping", "disk_sleep", "zombie", "stopped", "idle")


def read_stat(proc_fd: int, pid: str) -> bytes:
    """``<pid>/stat`` under the open ``/proc`` (``_proc.read_whole_at``: one relative
    ``os.open`` and one ``os.read``, a quarter less CPU than by path; reading is most of this
    family's cost)."""
    return read_whole_at(proc_fd, pid + "/stat")


def pids(proc_fd: int) -> list[str]:
    """The numeric entries of the open ``/proc``: process ids."""
    with os.scandir(proc_fd) as entries:
        return [e.name for e in entries if e.name.isdigit()]


def state_and_threads(stat: bytes) -> tuple[str, int] | None:
    """(state name, threads) from one ``/proc/<pid>/stat`` content; None if malformed."""
    _, paren, rest = stat.rpartition(b")")
    fields = rest.split()
    if not paren or len(fields) < 18 or not fields[17].isdigit():
        return None
    return STATES.get(fields[0].decode("ascii", "replace"), "other"), int(fields[17])


def collect(proc_fd: int) -> list[Reading]:
    """Counts of every reported state (0 included), and any other state seen, and threads, from
    the open ``/proc`` directory ``proc_fd``."""
    counts = dict.fromkeys(_REPORTED, 0)
    threads = 0
    for pid in pids(proc_fd):
        try:
            parsed = state_and_threads(read_stat(proc_fd, pid))
        except OSError:  # gone since the listing
            continue
        if parsed is not None:
            counts[parsed[0]] = counts.get(parsed[0], 0) + 1
            threads += parsed[1]
    return [*((PROCESSES, (state,), n) for state, n in counts.items()), (THREADS, (), threads)]


def make(proc: Path = PROC) -> Collect:
    """A collector of ``proc``; ``Unavailable`` without a Linux-style ``/proc``."""
    if not (proc / "self" / "stat").exists():
        raise Unavailable(f"no {proc}/<pid>/stat (not Linux)")
    proc_fd = open_dir(proc)  # kept open while the agent runs
    return lambda: collect(proc_fd)
