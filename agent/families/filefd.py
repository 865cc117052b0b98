"""File descriptor family (Linux): handles allocated system-wide and the limit, from
``/proc/sys/fs/file-nr`` ("allocated  unused  maximum"; unused is always 0 since Linux 2.6)."""

from __future__ import annotations

from pathlib import Path

from edgemon.agent.families._proc import ProcFile
from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.protocol.batch import GAUGE, MetricDef

ALLOCATED = MetricDef("file_descriptors_allocated", GAUGE, "")
MAXIMUM = MetricDef("file_descriptors_maximum", GAUGE, "")

FILE_NR = Path("/proc/sys/fs/file-nr")


def parse(text: str) -> list[Reading]:
    """Readings of the file's text: allocated and maximum (nothing if malformed)."""
    fields = text.split()
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        return []
    return [(ALLOCATED, (), int(fields[0])), (MAXIMUM, (), int(fields[2]))]


def make(path: Path = FILE_NR) -> Collect:
    """A collector of ``path``; ``Unavailable`` where it does not exist (not Linux)."""
    if not path.exists():
        raise Unavailable(f"no {path} (not Linux)")
    file = ProcFile(path)  # kept open: read again from the start every cycle
    return lambda: parse(file.text())
