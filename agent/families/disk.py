"""Disk family: space and inode usage per real mount.

Mounts are ``disk_partitions(all=False)`` (psutil keeps block-device filesystems, i.e. not
``nodev`` in /proc/filesystems) minus read-only images (squashfs, erofs), plus an overlay root
mounted at "/" (containers, OpenWrt), which psutil would drop. A device mounted twice (bind
mounts, btrfs subvolumes) is reported once, at its shortest mount point. A mount whose usage
cannot be read (permissions, stale NFS) is skipped.
"""

from __future__ import annotations

import os
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


def collect(source: Any = psutil,
            statvfs: Callable[[str], Any] | None = _STATVFS) -> list[Reading]:
    """Usage from ``source.disk_usage(mount)`` and inodes from ``statvfs(mount)``."""
    out: list[Reading] = []
    for p in mounts(source):
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


def make(source: Any = psutil,
         statvfs: Callable[[str], Any] | None = _STATVFS) -> Collect:
    """A stateless collector bound to ``source`` and ``statvfs``."""
    return lambda: collect(source, statvfs)
