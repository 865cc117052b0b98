"""CPU and memory of process trees from /proc, for benchmarks that start real processes.

A process (the collector) may run child processes (ingest workers, a compaction process) that
come and go: ``TreeSampler`` finds a root's descendants on every ``sample()`` (parent ids in
/proc/<pid>/stat) and adds up the CPU each of them used since it first saw them. CPU of a child
that exits between two samples is lost from its last sample on (sample often: about every
second). Memory: RSS and PSS (proportional set size: shared pages split among the processes
that share them, so a forked tree is not counted twice) summed over the tree.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) or None if the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    st = _stat(pid)
    return st[1] if st else 0.0


def tree(root: int) -> list[int]:
    """``root`` and all its living descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st:
                children.setdefault(st[0], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _kb(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_mb(pids: list[int]) -> dict[str, float]:
    """Summed RSS and PSS (MB) of ``pids``."""
    rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1)}


def name(pid: int) -> str:
    """A short name for a process: its command line's program and first argument."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    parts = [Path(a.decode(errors="replace")).name for a in argv[:3] if a]
    return " ".join(parts) or "?"


@dataclass
class TreeSampler:
    """CPU used by the tree under ``root`` since ``start()``, per process."""

    root: int
    tree: bool = True
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    started: float = 0.0
    at: float = 0.0
    peak: dict[str, float] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return tree(self.root) if self.tree else [self.root]

    def start(self) -> None:
        self.started = self.at = time.monotonic()
        self.first, self.last = {}, {}
        for pid in self.pids():
            self.first[pid] = self.last[pid] = cpu_seconds(pid)
            self.names[pid] = name(pid)

    def sample(self) -> None:
        self.at = time.monotonic()
        for pid in self.pids():
            cpu = cpu_seconds(pid)
            if pid not in self.first:  # started after start(): all its CPU counts
                self.first[pid] = 0.0
                self.names[pid] = name(pid)
            self.last[pid] = max(cpu, self.last.get(pid, 0.0))

    def memory(self) -> dict[str, float]:
        mem = memory_mb(self.pids())
        for k, v in mem.items():
            self.peak[k] = max(v, self.peak.get(k, 0.0))
        return mem

    def shares(self) -> dict[str, float]:
        """Share of one core per process (``name [pid]``) from ``start()`` to the last
        ``sample()``."""
        wall = max(1e-9, self.at - self.started)
        return {f"{self.names.get(pid, '?')} [{pid}]": round((self.last[pid] - self.first[pid])
                                                             / wall, 3)
                for pid in self.last}

    def total(self) -> float:
        return round(sum(self.shares().values()), 3)
