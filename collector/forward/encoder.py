"""Encoding for the forwarders in a worker process of its own.

Reading a stored batch (the protocol's decoder) and building its remote-write request cost
about as much CPU as ingest spends decoding the batch when it arrives; in the collector's
process that work would take the interpreter lock from ingest (measured: ingest at 0.41 of its
rate while forwarding in threads, ``benchmarks/forward.py``). One spawned worker process
does it instead, with its own interpreter; the collector's process only reads the log and
sends. A worker that dies (killed, out of memory) is replaced at the next call.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from edgemon.collector.forward.convert import encode_groups
from edgemon.collector.storage.base import ForwardBatch

__all__ = ["Encoder"]

log = logging.getLogger("edgemon.collector.forward")


class Encoder:
    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def encode(self, groups: list[list[ForwardBatch]],
                     external: tuple[tuple[str, str], ...]) -> list[tuple[bytes, int, int, int]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), encode_groups, groups, external)
        except BrokenProcessPool:
            log.error("forward encoder process died; starting another")
            self.close()
            return await loop.run_in_executor(self._executor(), encode_groups, groups, external)

    async def start(self) -> None:
        """Spawn the worker now (its imports take a moment), not at the first batch."""
        await self.encode([], ())

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
