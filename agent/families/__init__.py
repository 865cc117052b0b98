"""The agent's metric families and their explicit registry.

Uniform shape: every family module exposes ``make(source=psutil) -> Collect``. The agent calls
``make()`` once per family at start-up and then the returned ``Collect`` (no arguments) once per
sampling cycle; it returns that cycle's ``Reading``s. State between cycles (CPU times) lives in
the returned object, never in the module. Tests pass a fake ``source`` with recorded values.
A family this host cannot have raises ``Unavailable`` from ``make``: the agent says why once
and samples the others. The caller samples one cycle's families inside ``with cycle():`` so
that those reading ``/proc/stat`` share one read of it (``_procstat.py``), and ``/proc/meminfo``
likewise (``_meminfo.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from edgemon.agent.families import (
    cpu,
    cpu_seconds,
    disk,
    diskio,
    filefd,
    kernel,
    load,
    memory,
    network,
    pressure,
    processes,
    sensors,
    sockets,
    system,
    top_processes,
)
from edgemon.agent.families._meminfo import MEMINFO
from edgemon.agent.families._procstat import STAT
from edgemon.agent.families._types import Collect, Family, Reading, Unavailable

__all__ = ["DEFAULT_FAMILIES", "DEFAULT_INTERVALS", "FAMILIES", "OPT_IN", "Collect", "Family",
           "Reading", "Unavailable", "cycle", "start"]

FAMILIES: dict[str, Family] = {
    "cpu": cpu.make,
    "load": load.make,
    "memory": memory.make,
    "disk": disk.make,
    "diskio": diskio.make,
    "network": network.make,
    "system": system.make,
    "cpu_seconds": cpu_seconds.make,
    "kernel": kernel.make,
    "pressure": pressure.make,
    "sensors": sensors.make,
    "sockets": sockets.make,
    "filefd": filefd.make,
    "processes": processes.make,
    "top_processes": top_processes.make,
}

OPT_IN = frozenset({"top_processes"})
"""Families sampled only when ``families`` names them (their series churn: pids)."""

DEFAULT_FAMILIES: tuple[str, ...] = tuple(name for name in FAMILIES if name not in OPT_IN)

DEFAULT_INTERVALS: dict[str, float] = {"processes": 60.0}
"""Seconds: families sampled at most this often unless ``[intervals]`` names them (costly to
read every cycle; processes scans /proc)."""


@contextmanager
def cycle() -> Iterator[None]:
    """One sampling cycle: the families sampled in the block share one read of each file that
    several of them (or several calls of one) read."""
    with STAT.cycle(), MEMINFO.cycle():
        yield


def start(names: tuple[str, ...] = DEFAULT_FAMILIES) -> tuple[dict[str, Collect], dict[str, str]]:
    """``make()`` each named family: (collectors, {family: why it is unavailable on this host}).
    Any other exception from ``make`` propagates (a bug, not a property of the host)."""
    collectors: dict[str, Collect] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            collectors[name] = FAMILIES[name]()
        except Unavailable as exc:
            unavailable[name] = str(exc)
    return collectors, unavailable
