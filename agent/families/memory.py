"""Memory family: RAM and swap (swap in/out are raw byte counters).

Sampled from psutil's ``virtual_memory()`` and ``swap_memory()``; on Linux by default from
``_meminfo.MemInfo``, which gives psutil's values from kept-open files read once per cycle."""

from __future__ import annotations

from typing import Any

from edgemon.agent.families._meminfo import SOURCE
from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import COUNTER, GAUGE, MetricDef

TOTAL = MetricDef("memory_total_bytes", GAUGE, "bytes")
AVAILABLE = MetricDef("memory_available_bytes", GAUGE, "bytes")
USED = MetricDef("memory_used_bytes", GAUGE, "bytes")
FREE = MetricDef("memory_free_bytes", GAUGE, "bytes")
CACHED = MetricDef("memory_cached_bytes", GAUGE, "bytes")
BUFFERS = MetricDef("memory_buffers_bytes", GAUGE, "bytes")
USAGE = MetricDef("memory_usage_percent", GAUGE, "percent", 2)
SWAP_TOTAL = MetricDef("swap_total_bytes", GAUGE, "bytes")
SWAP_USED = MetricDef("swap_used_bytes", GAUGE, "bytes")
SWAP_FREE = MetricDef("swap_free_bytes", GAUGE, "bytes")
SWAP_IN = MetricDef("swap_in_bytes_total", COUNTER, "bytes")
SWAP_OUT = MetricDef("swap_out_bytes_total", COUNTER, "bytes")

_RAM = ((TOTAL, "total"), (AVAILABLE, "available"), (USED, "used"), (FREE, "free"),
        (CACHED, "cached"), (BUFFERS, "buffers"))  # cached/buffers: Linux and BSD only
_SWAP = ((SWAP_TOTAL, "total"), (SWAP_USED, "used"), (SWAP_FREE, "free"), (SWAP_IN, "sin"),
         (SWAP_OUT, "sout"))


def collect(source: Any = SOURCE) -> list[Reading]:
    """RAM from ``source.virtual_memory()``, swap from ``source.swap_memory()``."""
    vm, sw = source.virtual_memory(), source.swap_memory()
    out: list[Reading] = [(m, (), int(getattr(vm, f))) for m, f in _RAM if hasattr(vm, f)]
    if vm.total > 0:  # (total - available) / total, as psutil's percent but to 2 digits
        out.append((USAGE, (), round((vm.total - vm.available) / vm.total * 100, 2)))
    out += [(m, (), int(getattr(sw, f))) for m, f in _SWAP]
    return out


def make(source: Any = SOURCE) -> Collect:
    """A stateless collector bound to ``source``."""
    return lambda: collect(source)
