"""The wall clock in the unit the wire format uses: integer milliseconds since the epoch."""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), as an integer."""
    return time.time_ns() // 1_000_000
