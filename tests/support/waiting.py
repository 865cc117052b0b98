"""Wait on a condition with a deadline; never sleep-and-hope."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from edgemon.common.clock import now_ms

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Poll ``condition`` until it is truthy; at the deadline fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], T], timeout: float, what: str,
                           interval: float = 0.02) -> T:
    """``wait_until`` from a coroutine: it polls in a worker thread, so the event loop keeps
    running whatever the condition waits for (``condition`` must be safe to call there)."""
    return await asyncio.to_thread(wait_until, condition, timeout, what, interval)


class DistinctClock:
    """The wall clock in ms that never reads the same twice (each reading is later than the
    one before), for code that orders or groups what it writes by the time it was written."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(now_ms(), self._last + 1)
            return self._last
