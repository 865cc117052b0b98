"""Disk family: space and inode usage per real mount.

Mounts are ``disk_partitions(all=False)`` (psutil keeps block-device filesystems, i.e. not
``nodev`` in /proc/filesystems) minus read-only images (squashfs, erofs), plus an overlay root
mounted at "/" (containers, OpenWrt), which psutil would drop. A device mounted twice (bind
mounts, btrfs subvolumes) is reported once, at its shortest mount point. A mount whose usage
cannot be read (permissions, stale NFS) is skipped.

The mount list is read again only when the mount table changed (Linux flags
``/proc/self/mounts`` for ``poll`` on every mount, unmount and remount): listing the partitions
was two thirds of this family's CPU, and it rarely changes. Elsewhere it is read every cycle.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from typing import Any

import psutil

from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import GAUGE, MetricDef

_LABELS = ("mount", "device", "fstype")
TOTAL = MetricDef("disk_total_bytes", GAUGE, "bytes", 0, _LABELS)
USED = MetricDef("disk_used_bytes", GAUGE, "bytes", 0, _LABELS)
FREE = MetricDef("disk_free_bytes", GAUGE, "bytes", 0, _LABELS)
USAGE = MetricDef("disk_usage_percent", GAUGE, "percent", 2, _LABELS)
INODES = MetricDef("disk_inodes", GAUGE, "inodes", 0, _LABELS)
INODES_USED = MetricDef("disk_inodes_used", GAUGE, "inodes", 0, _LABELS)

SKIPPED_FSTYPES = frozenset({"squashfs", "erofs", "iso9660", "udf", "tmpfs", "devtmpfs", "ramfs",
                             "proc", "sysfs", "cgroup", "cgroup2", "nsfs", "tracefs", "debugfs",
                             "autofs", "overlay", "devpts", "securityfs", "bpf", "fusectl"})
ROOT_FSTYPES = frozenset({"overlay", "overlayfs"})
_STATVFS: Callable[[str], Any] | None = getattr(os, "statvfs", None)  # None on Windows
MOUNT_TABLE = "/proc/self/mounts"


class MountWatch:
    """Called once a cycle: whether the mount table may have changed since the previous call.

    Linux raises POLLPRI (and POLLERR) on an open ``/proc/self/mounts`` after every change of
    the mount table and clears it when polled. Always True where that cannot be watched (no
    such file, no ``select.poll``: not Linux)."""

    def __init__(self, path: str = MOUNT_TABLE) -> None:
        self._poll: Any = None
        if not hasattr(select, "poll"):
            return
        try:
            self._fd = os.open(path, os.O_RDONLY)  # kept open while the agent runs
        except OSError:
            return
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLPRI)

    def __call__(self) -> bool:
        if self._poll is None:
            return True
        return any(events & (select.POLLPRI | select.POLLERR)
                   for _fd, events in self._poll.poll(0))


def mounts(source: Any = psutil) -> list[Any]:
    """The partitions to report, deduplicated by device, sorted by mount point."""
    parts = [p for p in source.disk_partitions(all=False) if p.fstype not in SKIPPED_FSTYPES]
    if not any(p.mountpoint == "/" for p in parts):
        parts += [p for p in source.disk_partitions(all=True)
                  if p.mountpoint == "/" and p.fstype in ROOT_FSTYPES]
    by_device: dict[str, Any] = {}
    for p in sorted(parts, key=lambda p: (len(p.mountpoint), p.mountpoint)):
        by_device.setdefault(p.device, p)
    return sorted(by_device.values(), key=lambda p: p.mountpoint)


def collect(source: Any = psutil, statvfs: Callable[[str], Any] | None = _STATVFS,
            partitions: list[Any] | None = None) -> list[Reading]:
    """Usage from ``source.disk_usage(mount)`` and inodes from ``statvfs(mount)`` of
    ``partitions`` (default: ``mounts(source)``)."""
    out: list[Reading] = []
    for p in mounts(source) if partitions is None else partitions:
        labels = (p.mountpoint, p.device, p.fstype)
        try:
            usage = source.disk_usage(p.mountpoint)
            vfs = statvfs(p.mountpoint) if statvfs else None
        except OSError:  # PermissionError, ESTALE, vanished mount: skip this mount only
            continue
        out += [(TOTAL, labels, int(usage.total)), (USED, labels, int(usage.used)),
                (FREE, labels, int(usage.free))]
        if usage.used + usage.free > 0:  # as df: used / space available to non-root users
            out.append((USAGE, labels, round(usage.used / (usage.used + usage.free) * 100, 2)))
        if vfs is not None and vfs.f_files > 0:  # btrfs, some network filesystems: no inodes
            out += [(INODES, labels, int(vfs.f_files)),
                    (INODES_USED, labels, int(vfs.f_files - vfs.f_ffree))]
    return out


class _Disk:
    """Keeps the partitions to report until ``changed()`` says the mount table changed."""

    def __init__(self, source: Any, statvfs: Callable[[str], Any] | None,
                 changed: Callable[[], bool]) -> None:
        self.source, self.statvfs, self.changed = source, statvfs, changed
        self.partitions: list[Any] | None = None

    def __call__(self) -> list[Reading]:
        if self.changed() or self.partitions is None:  # asked first: a change while reading
            self.partitions = mounts(self.source)     # is seen again next cycle, not missed
        return collect(self.source, self.statvfs, self.partitions)


def make(source: Any = psutil, statvfs: Callable[[str], Any] | None = _STATVFS,
         changed: Callable[[], bool] | None = None) -> Collect:
    """A collector bound to ``source`` and ``statvfs`` that lists the partitions again when
    ``changed()`` (default: a ``MountWatch`` for psutil, every cycle for any other source)."""
    if changed is None:
        changed = MountWatch() if source is psutil else (lambda: True)
    return _Disk(source, statvfs, changed)
