"""An ingest worker process body (``WorkerPool(serve=...)``) that dies, killed by the kernel,
on a payload of ``POISON``: the real pool and the real examination, with a payload that crashes
its process, as a bug in compiled decoder code or the OOM killer would."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from edgemon.collector.ingest import examine, workers

POISON = b"\x28\xb5\x2f\xfd poison"


def serve(conn: Connection, setup: Any) -> None:
    original = examine.Examiner.examine

    def poisoned(self: examine.Examiner, topic: str, payload: bytes, received_ms: int,
                 **kw: Any) -> examine.Facts:
        if payload == POISON:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, topic, payload, received_ms, **kw)

    examine.Examiner.examine = poisoned  # type: ignore[method-assign]
    workers._serve(conn, setup)
