"""The wall clock in the unit the wire format uses: integer milliseconds since the epoch, and
the RFC 3339 form the APIs show it in."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["now_ms", "rfc3339_ms"]


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC), as an integer."""
    return time.time_ns() // 1_000_000


def rfc3339_ms(ms: int | None) -> str | None:
    """``2027-01-15T07:58:00.000Z`` for ``ms`` since the epoch; None for None or a negative
    ("no time") value."""
    if ms is None or ms < 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
