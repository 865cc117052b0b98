"""Export for people: several metrics, or whole hosts, over a time range in one request, and
the alert history; JSON or CSV, streamed.

``GET /edgemon/api/v1/export``: one row (CSV) or point (JSON) per sample, each with its time
in ms and RFC 3339, the series' host, metric, kind, unit and labels. Without ``step`` the
samples are the stored raw ones with their own timestamps (within the raw retention); with
``step`` one aggregate (``agg``) per step, from the tier the step suits (older data: rollups).

``GET /edgemon/api/v1/export/alerts``: the alert history (transitions), oldest first.

Both stream: the answer is written as it is read, series by series and one time slice (at
most ``SLICE_MS``, and at most ``SLICE_STEPS`` steps) or history page at a time, so memory
stays bounded whatever the range (a month of a whole host included). Reads run in the read
pool, never on the event loop; writing waits for the client (back-pressure).

Limits (checked before the first byte, answered with 400 naming them): at most
``MAX_SERIES`` series and a range of at most ``MAX_RANGE_MS``. Errors after the first byte
cannot change the status any more: a JSON export then ends with ``"complete": false`` and an
``"error"``; a CSV export is cut off (the connection closes without the end of the chunked
body, which HTTP clients report as an incomplete transfer, e.g. curl exit 18). A complete JSON
export ends with ``"complete": true``.
"""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from edgemon.collector.http.api import (
    CLOCK_KEY,
    EXECUTOR_KEY,
    STORAGE_KEY,
)
from edgemon.collector.http.documents import csv_text, json_number
from edgemon.collector.http.responses import (
    JSON_CONTENT,
    NOSNIFF,
    BadRequest,
    ParamError,
    error_doc,
    error_response,
    json_text,
    param_doc,
)
from edgemon.collector.http.timeparse import parse_duration_ms, parse_time_ms
from edgemon.collector.storage.base import AGGREGATIONS, RangeQuery, SeriesInfo, Storage
from edgemon.common.clock import rfc3339_ms
from edgemon.protocol import ProtocolError, validate_host_id
from edgemon.protocol.names import NAME_PATTERN

if TYPE_CHECKING:
    from edgemon.collector.alerting.engine import AlertEngine
    from edgemon.collector.alerting.store import HistoryRecord

__all__ = ["ALERTS_PATH", "MAX_RANGE_MS", "MAX_SERIES", "OPENAPI_PATHS", "PATH",
           "merge_openapi", "routes"]

log = logging.getLogger("edgemon.collector.http.export")

PATH = "/edgemon/api/v1/export"
ALERTS_PATH = "/edgemon/api/v1/export/alerts"
DAY_MS = 86_400_000
MAX_SERIES = 10_000  # series in one export
MAX_RANGE_MS = 400 * DAY_MS  # end - start
MAX_VALUES = 100  # values of one repeatable parameter (host, metric)
SLICE_MS = DAY_MS  # one read of one series (raw: at most a day of its samples)
SLICE_STEPS = 10_000  # one read of one series with a step
HISTORY_PAGE = 1_000  # history rows per read
FLUSH_BYTES = 64 * 1024  # written to the client in pieces of about this size
DEFAULT_RANGE_MS = 3_600_000
DEFAULT_ALERTS_RANGE_MS = 30 * DAY_MS
_UNLIMITED = 2**62  # the slices bound a read; the query's own limits would refuse raw reads
_NAME_RE_TEXT = f"^{NAME_PATTERN}$"


# --- parameters --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExportRequest:
    hosts: tuple[str, ...]  # exact ids or globs
    metrics: tuple[str, ...]  # empty: every metric of the hosts
    start_ms: int
    end_ms: int  # inclusive
    step_ms: int | None  # None: raw samples
    agg: str
    csv: bool

    @property
    def resolution(self) -> str:
        return "raw" if self.step_ms is None else "step"


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ParamError(name, "given more than once")
    return values[0] if values else None


def _check_known(request: web.Request, allowed: tuple[str, ...]) -> None:
    for key in request.query:
        if key not in allowed:
            raise BadRequest(f"unknown parameter '{key[:80]}': use {', '.join(allowed)}")


def _time_range(request: web.Request, default_ms: int) -> tuple[int, int]:
    now = int(request.app[CLOCK_KEY]())  # type: ignore[operator]
    end_text, start_text = _one(request, "end"), _one(request, "start")
    try:
        end = parse_time_ms(end_text, now) if end_text else now
    except ValueError as exc:
        raise ParamError("end", str(exc)) from None
    try:
        start = parse_time_ms(start_text, now) if start_text else end - default_ms
    except ValueError as exc:
        raise ParamError("start", str(exc)) from None
    if start > end:
        raise ParamError("start", "must not be after end")
    if end - start > MAX_RANGE_MS:
        raise ParamError("start", f"the range is longer than {MAX_RANGE_MS // DAY_MS} days: "
                                  "export it in parts")
    return start, end


def _wants_csv(request: web.Request) -> bool:
    fmt = _one(request, "format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise ParamError("format", "json or csv")
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and JSON_CONTENT not in accept


def parse_export(request: web.Request) -> ExportRequest:
    _check_known(request, ("host", "metric", "start", "end", "step", "agg", "format"))
    hosts = tuple(request.query.getall("host", []))
    if not hosts:
        raise ParamError("host", "required (a host id or glob; repeatable)")
    metrics = tuple(request.query.getall("metric", []))
    for name, values in (("host", hosts), ("metric", metrics)):
        if len(values) > MAX_VALUES:
            raise ParamError(name, f"at most {MAX_VALUES} values")
    for h in hosts:
        if not re.fullmatch(r"[A-Za-z0-9._*?\[\]!-]{1,128}", h):
            raise ParamError("host", f"{h[:80]!r} is not a host id or glob")
    for m in metrics:
        if not re.fullmatch(_NAME_RE_TEXT, m) or len(m) > 128:
            raise ParamError("metric", f"{m[:80]!r} is not a metric name")
    start, end = _time_range(request, DEFAULT_RANGE_MS)
    step_text, agg = _one(request, "step"), _one(request, "agg")
    step = None
    if step_text is not None:
        try:
            step = parse_duration_ms(step_text)
        except ValueError as exc:
            raise ParamError("step", str(exc)) from None
        if step < 1000:
            raise ParamError("step", "must be at least 1 second")
    if agg is not None:
        if step is None:
            raise ParamError("agg", "only with step (raw samples are not aggregated)")
        if agg not in AGGREGATIONS:
            raise ParamError("agg", f"one of {', '.join(AGGREGATIONS)}")
    return ExportRequest(hosts, metrics, start, end, step, agg or "avg", _wants_csv(request))


# --- reading -----------------------------------------------------------------------------------

def select_series(storage: Storage, req: ExportRequest) -> list[SeriesInfo]:
    """The series to export, in order (host, metric, labels); ``BadRequest`` over the limit."""
    known = sorted(h.host for h in storage.hosts())
    hosts = [h for h in known if any(fnmatch.fnmatchcase(h, p) for p in req.hosts)]
    out: list[SeriesInfo] = []
    for host in hosts:
        found = storage.series(host, req.metrics[0]) if len(req.metrics) == 1 else \
            storage.series(host)
        out += [s for s in found if (not req.metrics or s.name in req.metrics)
                and s.first_ms <= req.end_ms and s.last_ms >= req.start_ms]
        if len(out) > MAX_SERIES:
            raise BadRequest(f"the export would hold more than {MAX_SERIES} series: name fewer "
                             "hosts or metrics")
    return sorted(out, key=lambda s: (s.host, s.name, sorted(s.labels.items())))


def _slices(req: ExportRequest) -> Iterator[tuple[int, int]]:
    """[a, b) reads covering [start, end]; with a step, whole steps aligned to it (the first
    and last may begin before start / end after end)."""
    a, end, width = req.start_ms, req.end_ms + 1, SLICE_MS
    if req.step_ms is not None:
        step = req.step_ms
        a, end = a - a % step, end + (-end) % step
        width = step * max(1, min(SLICE_STEPS, SLICE_MS // step))
    while a < end:
        b = min(end, a + width)
        yield a, b
        a = b


def series_points(storage: Storage, info: SeriesInfo,
                  req: ExportRequest) -> Iterator[list[tuple[int, float]]]:
    """The points of one series, one slice at a time, in time order."""
    for a, b in _slices(req):
        query = RangeQuery(name=info.name, start_ms=a, end_ms=b,
                           step_ms=req.step_ms or 1,
                           aggregation="last" if req.step_ms is None else req.agg,  # type: ignore
                           hosts=(info.host,), labels=dict(info.labels),
                           tier="raw" if req.step_ms is None else "auto",
                           max_series=_UNLIMITED, max_points=_UNLIMITED)
        points: list[tuple[int, float]] = []
        for r in storage.query(query):
            if r.host == info.host and r.labels == info.labels:  # not a series with more labels
                points += r.points
        if points:
            yield points


# --- writing -----------------------------------------------------------------------------------

def _buffered(pieces: Iterator[str]) -> Iterator[str]:
    """Join small pieces into about ``FLUSH_BYTES`` each."""
    buf: list[str] = []
    size = 0
    for piece in pieces:
        buf.append(piece)
        size += len(piece)
        if size >= FLUSH_BYTES:
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)


def _csv_line(row: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(row)
    return out.getvalue()


def _columns(points: list[tuple[int, float]], missing: str) -> tuple[list[int], list[str],
                                                                      list[str]]:
    """Timestamps, their RFC 3339 texts and the values' texts (integers without a fraction,
    others as the shortest text that reads back as the same double, ``missing`` for NaN and
    infinities), vectorised: formatting dominates the export's time."""
    ts = np.fromiter((t for t, _ in points), dtype=np.int64, count=len(points))
    values = np.fromiter((v for _, v in points), dtype=np.float64, count=len(points))
    times = np.char.add(np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms"),
                        "Z").tolist()
    whole = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2.0**53)
    texts = np.full(len(points), missing, dtype=object)
    texts[whole] = values[whole].astype(np.int64).astype(str)
    rest = np.isfinite(values) & ~whole
    texts[rest] = [repr(v) for v in values[rest].tolist()]
    return ts.tolist(), times, texts.tolist()


def samples_csv(storage: Storage, req: ExportRequest, series: list[SeriesInfo]) -> Iterator[str]:
    keys = sorted({k for s in series for k in s.labels})
    yield _csv_line(["timestamp_ms", "time", "host", "metric", "kind", "unit",
                     *(csv_text(f"label.{k}") for k in keys), "value"])
    for info in series:
        # the series' cells, quoted once (RFC 4180); times and numbers never need quoting
        fixed = _csv_line([csv_text(info.host), csv_text(info.name), info.kind,
                           csv_text(info.unit), *(csv_text(info.labels.get(k, ""))
                                                   for k in keys)])[:-2]
        for points in series_points(storage, info, req):
            ts, times, values = _columns(points, "")
            yield "".join([f"{t},{iso},{fixed},{v}\r\n"
                           for t, iso, v in zip(ts, times, values, strict=True)])


def samples_json(storage: Storage, req: ExportRequest, series: list[SeriesInfo]
                 ) -> Iterator[str]:
    head = {"start_ms": req.start_ms, "end_ms": req.end_ms, "start": rfc3339_ms(req.start_ms),
            "end": rfc3339_ms(req.end_ms), "resolution": req.resolution,
            "step_ms": req.step_ms, "agg": None if req.step_ms is None else req.agg}
    yield json_text(head)[:-1] + ',"series":['
    samples, close = 0, ""
    try:
        for i, info in enumerate(series):
            doc = {"host": info.host, "metric": info.name, "labels": info.labels,
                   "kind": info.kind, "unit": info.unit}
            yield ("," if i else "") + json_text(doc)[:-1] + ',"points":['
            close, first = "]}", True
            for points in series_points(storage, info, req):
                ts, times, values = _columns(points, "null")
                yield ("" if first else ",") + ",".join([
                    f'[{t},"{iso}",{v}]' for t, iso, v in zip(ts, times, values, strict=True)])
                first = False
                samples += len(points)
            yield close
            close = ""
    except Exception as exc:
        yield close + _failed_tail(exc, {"samples": samples})
        return
    yield "]," + json_text({"samples": samples, "complete": True})[1:]


def _failed_tail(exc: Exception, counts: dict[str, int]) -> str:
    """The end of a JSON export whose reading failed midway (logged here)."""
    log.error("export failed after it started: %r", exc)
    return "]," + json_text({**counts, "complete": False,
                             "error": f"export failed midway: {type(exc).__name__} (see the "
                                      "collector's log); what came before is correct"})[1:]


# --- alert history -----------------------------------------------------------------------------

_HISTORY_COLUMNS = ("at_ms", "at", "rule", "host", "from_status", "status", "value", "labels",
                    "starts_at_ms", "ends_at_ms", "silenced", "notified", "historical", "reason",
                    "fingerprint", "created_ms", "id")


def _history_row(r: HistoryRecord) -> list[Any]:
    return [r.at_ms, rfc3339_ms(r.at_ms), r.rule, r.host, r.from_status, r.status,
            None if r.value is None else json_number(r.value), r.labels, r.starts_at, r.ends_at,
            r.silenced, r.notified, r.historical, r.reason, r.fingerprint, r.created_ms, r.id]


def history_pages(engine: AlertEngine, since_ms: int, until_ms: int,
                  filters: dict[str, str | None]) -> Iterator[list[HistoryRecord]]:
    after: tuple[int, int] | None = None
    while True:
        page = engine.store.history_page(since_ms=since_ms, until_ms=until_ms, after=after,
                                         limit=HISTORY_PAGE, **filters)  # type: ignore[arg-type]
        if not page:
            return
        yield page
        last = page[-1]
        after = (last.at_ms, int(last.id or 0))


def history_csv(pages: Iterator[list[HistoryRecord]]) -> Iterator[str]:
    yield _csv_line(list(_HISTORY_COLUMNS))
    for page in pages:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        for r in page:
            row = _history_row(r)
            row[7] = json_text(row[7])  # labels as one JSON cell
            writer.writerow([csv_text(c) if isinstance(c, str) else
                             int(c) if isinstance(c, bool) else "" if c is None else c
                             for c in row])
        yield out.getvalue()


def history_json(pages: Iterator[list[HistoryRecord]], since_ms: int,
                 until_ms: int) -> Iterator[str]:
    yield json_text({"start_ms": since_ms, "end_ms": until_ms})[:-1] + ',"alerts":['
    n = 0
    try:
        for page in pages:
            yield ("," if n else "") + ",".join(
                json_text(dict(zip(_HISTORY_COLUMNS, _history_row(r), strict=True)))
                for r in page)
            n += len(page)
    except Exception as exc:
        yield _failed_tail(exc, {"rows": n})
        return
    yield "]," + json_text({"rows": n, "complete": True})[1:]


# --- handlers ----------------------------------------------------------------------------------

async def _stream(request: web.Request, pieces: Iterator[str], *, as_csv: bool,
                  filename: str) -> web.StreamResponse:
    """Write ``pieces`` (read in the read pool, one at a time) as they come."""
    loop = asyncio.get_running_loop()
    executor = request.app[EXECUTOR_KEY]
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8" if as_csv else
        f"{JSON_CONTENT}; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{filename}.{"csv" if as_csv else "json"}"',
        **NOSNIFF})
    response.enable_chunked_encoding()
    chunks = _buffered(pieces)
    first = await loop.run_in_executor(executor, next, chunks, None)  # type: ignore[arg-type]
    await response.prepare(request)
    chunk: str | None = first
    try:
        while chunk is not None:
            await response.write(chunk.encode())
            chunk = await loop.run_in_executor(executor, next, chunks, None)  # type: ignore
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away
    except Exception:  # (JSON writers end their document themselves: see _failed_tail)
        log.exception("export %s failed after it started; the answer is cut off", request.path)
        if request.transport is not None:  # the client sees an incomplete body
            request.transport.close()
        return response
    await response.write_eof()
    return response


def routes(engine: AlertEngine | None) -> list[web.RouteDef]:
    """The export routes; ``engine``: the alert engine (None: alerting is off)."""

    async def samples(request: web.Request) -> web.StreamResponse:
        req = parse_export(request)
        storage = request.app[STORAGE_KEY]
        loop = asyncio.get_running_loop()
        for h in req.hosts:
            if not any(c in h for c in "*?["):
                try:
                    validate_host_id(h)
                except ProtocolError as exc:
                    raise ParamError("host", str(exc)) from None
        series = await loop.run_in_executor(request.app[EXECUTOR_KEY],  # type: ignore[arg-type]
                                            select_series, storage, req)
        if not series:
            return error_response(404, "no series of "
                                  + ", ".join(req.hosts[:5]) + (" for metric " + ", ".join(
                                      req.metrics[:5]) if req.metrics else "")
                                  + " in the range")
        name = req.hosts[0] if len(req.hosts) == 1 and len(series) > 0 else "edgemon"
        filename = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) + "-export"
        pieces = samples_csv(storage, req, series) if req.csv else \
            samples_json(storage, req, series)
        return await _stream(request, pieces, as_csv=req.csv, filename=filename)

    async def alerts(request: web.Request) -> web.StreamResponse:
        _check_known(request, ("start", "end", "rule", "host", "status", "format"))
        if engine is None:
            return error_response(404, "alerting is not enabled ([alerting] enabled = false)")
        as_csv = _wants_csv(request)
        since, until = _time_range(request, DEFAULT_ALERTS_RANGE_MS)
        status = _one(request, "status")
        if status is not None and status not in ("pending", "firing", "resolved", "inactive"):
            raise ParamError("status", "pending, firing, resolved or inactive")
        filters = {"rule": _one(request, "rule"), "host": _one(request, "host"),
                   "status": status}
        pages = history_pages(engine, since, until + 1, filters)
        pieces = history_csv(pages) if as_csv else history_json(pages, since, until)
        return await _stream(request, pieces, as_csv=as_csv, filename="edgemon-alert-history")

    # no HEAD: it would read the whole export to throw it away
    return [web.get(PATH, samples, allow_head=False),
            web.get(ALERTS_PATH, alerts, allow_head=False)]


# --- OpenAPI -----------------------------------------------------------------------------------

_TIME = "unix seconds, unix ms, RFC 3339, now or now-<duration>"
_FORMAT = param_doc("format", "json (default) or csv; Accept: text/csv also selects CSV",
                    {"type": "string", "enum": ["json", "csv"]})
_STREAMED = {
    "200": {"description": "Streamed. JSON ends with \"complete\": true (false and \"error\" "
                           "when reading failed midway); a CSV cut off midway ends without "
                           "the end of the chunked body (an incomplete transfer)",
            "content": {JSON_CONTENT: {"schema": {"type": "object"}},
                        "text/csv": {"schema": {"type": "string"}}}},
    "400": error_doc(f"a bad parameter, or over a limit (more than {MAX_SERIES} series, a range "
                     f"over {MAX_RANGE_MS // DAY_MS} days)"),
}

OPENAPI_PATHS: dict[str, Any] = {
    PATH: {"get": {
        "summary": "Export several metrics, or whole hosts, over a range: every sample with "
                   "its time (ms and RFC 3339), host, metric, kind, unit and labels",
        "description": "Without step: the stored raw samples with their own timestamps (data "
                       "older than the raw retention has none: use a step). With step: one "
                       "aggregate per step from the tier the step suits. Streamed series by "
                       "series, so memory stays bounded; at most "
                       f"{MAX_SERIES} series and {MAX_RANGE_MS // DAY_MS} days per request. "
                       "CSV: timestamp_ms, time, host, metric, kind, unit, one label.<key> "
                       "column per label key, value (RFC 4180, CRLF; cells a spreadsheet would "
                       "run as a formula start with '). JSON: {start_ms, end_ms, start, end, "
                       "resolution, step_ms, agg, series: [{host, metric, labels, kind, unit, "
                       "points: [[ms, RFC 3339, value]]}], samples, complete}.",
        "parameters": [
            param_doc("host", "host id or glob (*, ?, [...]); repeatable; required",
                      {"type": "array", "items": {"type": "string", "maxLength": 128}},
                      required=True, explode=True),
            param_doc("metric", "metric name; repeatable; default every metric of the hosts",
                      {"type": "array", "items": {"type": "string", "maxLength": 128,
                                                  "pattern": _NAME_RE_TEXT}}, explode=True),
            param_doc("start", f"{_TIME}; default end - 1h"),
            param_doc("end", f"{_TIME}; inclusive; default now"),
            param_doc("step", "one aggregate per step (a duration such as 1m or 1h, at least "
                              "1s); default: raw samples"),
            param_doc("agg", "aggregation within a step (only with step)",
                      {"type": "string", "enum": list(AGGREGATIONS), "default": "avg"}),
            _FORMAT],
        "responses": {**_STREAMED, "404": error_doc("no series matched")}}},
    ALERTS_PATH: {"get": {
        "summary": "Export the alert history (every transition), oldest first",
        "description": "Streamed page by page. CSV columns: " + ", ".join(_HISTORY_COLUMNS)
                       + " (labels as one JSON cell, booleans as 0/1). JSON: {start_ms, "
                       "end_ms, alerts: [{the same keys}], rows, complete}.",
        "parameters": [
            param_doc("start", f"{_TIME}; default end - 30d"),
            param_doc("end", f"{_TIME}; inclusive; default now"),
            param_doc("rule", "only this rule"), param_doc("host", "only this host"),
            param_doc("status", "only transitions to this status",
                      {"type": "string", "enum": ["pending", "firing", "resolved",
                                                  "inactive"]}),
            _FORMAT],
        "responses": {**_STREAMED, "404": error_doc("alerting is not enabled")}}},
}


def merge_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the export paths to an OpenAPI document (in place; returned)."""
    document.setdefault("paths", {}).update(OPENAPI_PATHS)
    return document
