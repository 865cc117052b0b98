"""The collector's one syntax for durations and points in time (HTTP API, alert rules)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

__all__ = ["parse_duration_ms", "parse_time_ms"]

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000}


def parse_duration_ms(value: Any) -> int:
    """Milliseconds of ``90`` or ``1.5`` (seconds, number or text), ``"500ms"``, ``"30s"``,
    ``"5m"``, ``"1h30m"``, ``"7d"``, ``"1w"``; ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like \"5m\"")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a duration must be >= 0")
        return round(value * 1000)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string like \"5m\"")
    text = value.strip()
    if _SECONDS_RE.fullmatch(text):
        return round(float(text) * 1000)
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value[:40]!r} is not a duration: use e.g. 90s, 5m, 1h30m, 2d")
    return round(total)


def parse_time_ms(text: str, now_ms: int) -> int:
    """Unix seconds or milliseconds (>= 1e11 is taken as ms), RFC 3339, ``now`` or ``now-1h``."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("now-"):
        return now_ms - parse_duration_ms(text[4:])
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{text[:40]!r} is not a time")
        return round(number) if number >= 1e11 else round(number * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a time: use unix seconds, unix milliseconds or "
                         "RFC 3339 (2025-01-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text[:40]!r} has no time zone: add Z or +hh:mm")
    return round(moment.timestamp() * 1000)
