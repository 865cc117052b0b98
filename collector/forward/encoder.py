"""Encoding for the forwarders in a worker process of its own.

Reading a stored batch (the protocol's decoder) and building its remote-write request cost
about as much CPU as ingest spends decoding the batch when it arrives; in the collector's
process that work would take the interpreter lock from ingest (measured with
``benchmarks/forward.py``: CPU of the ingesting process 11.7 us per sample with encoding in
threads, 5.3 us with this worker, 4.5 us without forwarding). One spawned worker process does it
instead, with its own interpreter; the collector's process only reads the log and sends. A
worker that dies (killed, out of memory) is replaced at the next call. Where no worker can be
started (a sandbox without fork or /dev/shm), the collector encodes in its own threads.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from edgemon.collector.forward.convert import encode_groups
from edgemon.collector.storage.base import ForwardBatch

__all__ = ["Encoder"]

log = logging.getLogger("edgemon.collector.forward")


def _worker_init(parent: int) -> None:
    """The worker leaves SIGINT/SIGTERM to the collector (a Ctrl-C or systemd's stop reaches
    the whole process group): the collector shuts it down after its last request. If the
    collector dies (kill -9), the worker notices within a second and exits (its queue's pipe
    does not tell it: it holds both ends)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="edgemon-forward-parent-watch", daemon=True).start()


class Encoder:
    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init,
                                             initargs=(os.getpid(),))
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

    def pids(self) -> list[int]:
        """The worker processes' ids (for benchmarks that read their CPU time)."""
        pool = self._pool
        return list(getattr(pool, "_processes", None) or ()) if pool is not None else []

    async def start(self) -> None:
        """Spawn the worker now (its imports take a moment), not at the first batch."""
        await self.encode([], ())

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
