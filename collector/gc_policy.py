"""The collector's garbage-collector settings: made for a process that builds and drops millions
of small containers a second.

Decoding a batch builds a list per series entry; CPython's cyclic collector runs its youngest
generation every 700 net container allocations, so at ingest rates it ran thousands of times a
second; with this policy the writer needs about 8 % less CPU per sample in
``benchmarks/ingest_cpu.py`` (958 against 1043 µs per batch, median of 3 runs, loaded machine;
probably more in a long-running collector, whose older generations hold more). Ingest makes no
reference cycles of its own: reference counting frees what it builds. So: what was loaded at
start is frozen out of the collector's sight (``gc.freeze``), and the youngest generation is
collected every ``GEN0_THRESHOLD`` allocations instead of 700 (cycles made elsewhere, e.g. by
aiohttp, are still found, a little later).
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GEN0_THRESHOLD", "tune_gc"]

GEN0_THRESHOLD: Final = 50_000


def tune_gc() -> None:
    """Freeze what is loaded so far and collect less often; call once, after the imports."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
