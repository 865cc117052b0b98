"""Disk I/O family: raw counters per whole block device.

Rule: skip memory-backed devices (``loop*``, ``ram*``, ``zram*``) and partitions whose whole disk
is also listed: ``sda1`` of ``sda``, ``nvme0n1p1``/``mmcblk0p1`` of ``nvme0n1``/``mmcblk0``.
Device-mapper (``dm-*``) and md devices are kept: I/O through LVM or RAID shows on both layers.
"""

from __future__ import annotations

from typing import Any

import psutil

from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import COUNTER, MetricDef

_DEV = ("device",)
READ_BYTES = MetricDef("diskio_read_bytes_total", COUNTER, "bytes", 0, _DEV)
WRITTEN_BYTES = MetricDef("diskio_written_bytes_total", COUNTER, "bytes", 0, _DEV)
READS = MetricDef("diskio_reads_total", COUNTER, "operations", 0, _DEV)
WRITES = MetricDef("diskio_writes_total", COUNTER, "operations", 0, _DEV)
READ_TIME = MetricDef("diskio_read_time_seconds_total", COUNTER, "seconds", 3, _DEV)
WRITE_TIME = MetricDef("diskio_write_time_seconds_total", COUNTER, "seconds", 3, _DEV)
BUSY_TIME = MetricDef("diskio_busy_time_seconds_total", COUNTER, "seconds", 3, _DEV)

SKIPPED_PREFIXES = ("loop", "ram", "zram")
_COUNTS = ((READ_BYTES, "read_bytes"), (WRITTEN_BYTES, "write_bytes"),
           (READS, "read_count"), (WRITES, "write_count"))
_MILLIS = ((READ_TIME, "read_time"), (WRITE_TIME, "write_time"), (BUSY_TIME, "busy_time"))


def is_partition(name: str, devices: set[str]) -> bool:
    """True if ``name`` is a numbered partition of a whole disk also in ``devices``."""
    base = name.rstrip("0123456789")
    if not base or base == name:
        return False
    if base in devices:  # sda1 -> sda, xvda2 -> xvda (base ends in a letter by construction)
        return True
    return base.endswith("p") and base[:-1] in devices  # nvme0n1p1 -> nvme0n1, mmcblk0p2


def collect(source: Any = psutil) -> list[Reading]:
    """Counters from ``source.disk_io_counters(perdisk=True)``; times converted ms -> seconds."""
    disks = source.disk_io_counters(perdisk=True) or {}
    names = {n for n in disks if not n.startswith(SKIPPED_PREFIXES)}
    out: list[Reading] = []
    for name in sorted(names):
        if is_partition(name, names):
            continue
        io = disks[name]
        out += [(m, (name,), int(getattr(io, f))) for m, f in _COUNTS]
        out += [(m, (name,), getattr(io, f) / 1000) for m, f in _MILLIS if hasattr(io, f)]
    return out


def make(source: Any = psutil) -> Collect:
    """A stateless collector bound to ``source``."""
    return lambda: collect(source)
