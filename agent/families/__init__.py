"""The agent's metric families and their explicit registry.

Uniform shape: every family module exposes ``make(source=psutil) -> Collect``. The agent calls
``make()`` once per family at start-up and then the returned ``Collect`` (no arguments) once per
sampling cycle; it returns that cycle's ``Reading``s. State between cycles (CPU times) lives in
the returned object, never in the module. Tests pass a fake ``source`` with recorded values.
"""

from __future__ import annotations

from edgemon.agent.families import cpu, disk, diskio, load, memory, network, system
from edgemon.agent.families._types import Collect, Family, Reading

__all__ = ["FAMILIES", "Collect", "Family", "Reading"]

FAMILIES: dict[str, Family] = {
    "cpu": cpu.make,
    "load": load.make,
    "memory": memory.make,
    "disk": disk.make,
    "diskio": diskio.make,
    "network": network.make,
    "system": system.make,
}
