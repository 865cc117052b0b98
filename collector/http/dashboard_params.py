"""The dashboard's query parameters: ``/fleet``'s sorting, filtering and paging, and the
time range of ``/hosts/{host}/charts``. A bad parameter is a 400 whose JSON names it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from edgemon.collector.http.fleet import COLUMNS, STATES, RowFilter
from edgemon.collector.http.query_params import auto_step_ms
from edgemon.collector.http.timeparse import parse_duration_ms, parse_time_ms
from edgemon.protocol import ProtocolError, validate_host_id

__all__ = ["MAX_RANGE_MS", "BadParam", "host_param", "parse_fleet_query", "parse_range"]

MAX_RANGE_MS = 800 * 86_400_000


class BadParam(web.HTTPBadRequest):
    def __init__(self, param: str, message: str) -> None:
        body = json.dumps({"error": f"parameter '{param[:80]}': {message}"})
        super().__init__(text=body, content_type="application/json")


def host_param(value: str) -> str:
    try:
        return validate_host_id(value)
    except ProtocolError as exc:
        raise BadParam("host", str(exc)) from None


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadParam(name, f"an integer from {low} to {high}")
    return int(text)


def parse_fleet_query(query: Any) -> tuple[int, int, str, bool, RowFilter]:
    """(offset, limit, sort column, descending, filter) from ``/fleet``'s query string."""
    fixed = {"offset", "limit", "sort", "order", "q", "state", "host"}
    minimum: list[tuple[str, float]] = []
    maximum: list[tuple[str, float]] = []
    for key in query:
        if len(query.getall(key)) > 1:
            raise BadParam(key, "given more than once")
        prefix, _, column = key.partition(".")
        if key in fixed:
            continue
        if prefix not in ("min", "max") or COLUMNS.get(column) != "number":
            raise BadParam(key, "unknown parameter (filters: min.<column>, max.<column> for "
                                 f"{', '.join(c for c, k in COLUMNS.items() if k == 'number')})")
        try:
            bound = float(query[key])
        except ValueError:
            raise BadParam(key, "a number") from None
        if bound != bound or bound in (float("inf"), float("-inf")):
            raise BadParam(key, "a finite number")
        (minimum if prefix == "min" else maximum).append((column, bound))
    column = query.get("sort", "host")
    if column not in COLUMNS:
        raise BadParam("sort", f"one of {', '.join(COLUMNS)}")
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        raise BadParam("order", "asc or desc")
    text = query.get("q", "")
    if len(text) > 128:
        raise BadParam("q", "at most 128 characters")
    states = frozenset(s for s in query.get("state", "").split(",") if s)
    if not states <= set(STATES):
        raise BadParam("state", f"comma-separated: {', '.join(STATES)}")
    host = query.get("host")
    if host is not None:
        host = host_param(host)
    offset = _int_param(query, "offset", 0, 0, 10**7)
    limit = _int_param(query, "limit", 100, 1, 1000)
    return offset, limit, column, order == "desc", RowFilter(text.strip(), states,
                                                             tuple(minimum), tuple(maximum),
                                                             host)


def parse_range(query: Any, now: int) -> tuple[int, int, int]:
    """(start, end, step) in ms from ``start``/``end``/``step`` (default: the last hour)."""
    for key in query:
        if key not in ("start", "end", "step"):
            raise BadParam(key, "unknown parameter (start, end, step)")

    def when(name: str, default: int) -> int:
        text = query.get(name)
        if text is None:
            return default
        try:
            return parse_time_ms(text, now)
        except ValueError as exc:
            raise BadParam(name, str(exc)) from None

    end = when("end", now)
    start = when("start", end - 3_600_000)
    if start >= end:
        raise BadParam("start", "must be before end")
    if end - start > MAX_RANGE_MS:
        raise BadParam("start", f"the range may span at most {MAX_RANGE_MS // 86_400_000} days")
    if "step" in query:
        try:
            step = parse_duration_ms(query["step"])
        except ValueError as exc:
            raise BadParam("step", str(exc)) from None
        if step < 1000 or (end - start) // step > 5000:
            raise BadParam("step", "at least 1 s and at most 5000 steps in the range")
    else:
        step = auto_step_ms(end - start)
    return start, end, step
