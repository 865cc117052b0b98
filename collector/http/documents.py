"""The HTTP API's documents: the JSON of hosts, series and gaps, numbers JSON can carry, and
CSV whose text cells a spreadsheet shows as text (``api.py``, ``export.py`` and
``accounting.py`` answer with them)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from edgemon.collector.ingest.cardinality import HostCardinality
from edgemon.collector.storage.base import Gap, HostInfo, SeriesInfo, SeriesResult
from edgemon.common.clock import rfc3339_ms

__all__ = ["CSV_FORMULA_START", "csv_text", "gap_doc", "host_doc", "json_number", "points_json",
           "query_csv", "series_doc"]


def json_number(value: Any) -> float | int | None:
    """A JSON-safe number, or None for NaN/inf (which JSON cannot carry)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def points_json(points: list[tuple[int, float]]) -> list[list[float | int]]:
    out: list[list[float | int]] = []
    for ts, value in points:
        v = json_number(value)
        if v is not None:  # steps without a finite value are omitted, like steps without data
            out.append([int(ts), v])
    return out


# Host-sent text is untrusted: in CSV, cells a spreadsheet would run as a formula are
# neutralised (OWASP CSV injection); JSON is escaped by responses.json_text.
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` before a formula start."""
    return "'" + value if value.startswith(CSV_FORMULA_START) else value


def host_doc(h: HostInfo, limits: HostCardinality | None = None) -> dict[str, Any]:
    return {"host": h.host, "online": h.online, "instance": h.instance,
            "last_seen": rfc3339_ms(h.last_seen_ms), "last_seen_ms": h.last_seen_ms,
            "last_status_ms": h.last_status_ms, "clock_offset_ms": h.clock_offset_ms,
            "instances": h.instances,
            "over_limit": limits is not None and limits.over_limit,
            "series": None if limits is None else {
                "active": limits.active_series, "max": limits.max_series,
                "max_new_per_hour": limits.max_new_series_per_hour,
                "rejected_total": limits.rejected_series_total,
                "last_rejected_ms": limits.last_rejected_ms}}


def series_doc(s: SeriesInfo) -> dict[str, Any]:
    return {"host": s.host, "name": s.name, "labels": s.labels, "kind": s.kind, "unit": s.unit,
            "first_ms": s.first_ms, "last_ms": s.last_ms}


def gap_doc(g: Gap) -> dict[str, Any]:
    return {"host": g.host, "instance": g.instance, "first_missing": g.first_missing,
            "last_missing": g.last_missing, "missing": g.last_missing - g.first_missing + 1}


def query_csv(results: list[SeriesResult]) -> str:
    """RFC 4180 CSV (CRLF, so a CR or LF inside a cell is quoted); text cells neutralised."""
    keys = sorted({k for r in results for k in r.labels})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["timestamp_ms", "time", "host", *map(csv_text, keys), "value"])
    for r in results:
        text = [csv_text(r.host or ""), *(csv_text(r.labels.get(k, "")) for k in keys)]
        for ts, value in points_json(r.points):
            writer.writerow([ts, rfc3339_ms(ts), *text, repr(value)
                             if isinstance(value, float) else value])
    return out.getvalue()
