"""The HTTP API (aiohttp): thin handlers that parse, call storage in a thread, serialise.

Query parameters are validated with pydantic; a bad one is a 400 ``{"error": "..."}`` naming it.
Storage is blocking, so every call runs in the read executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgemon.collector.http.timeparse import parse_duration_ms, parse_time_ms
from edgemon.collector.ingest.cardinality import HostCardinality
from edgemon.collector.storage.base import (
    Gap,
    HostInfo,
    QueryTooLarge,
    RangeQuery,
    SeriesInfo,
    SeriesResult,
    Storage,
)
from edgemon.common.clock import now_ms
from edgemon.protocol import ProtocolError, validate_host_id
from edgemon.protocol.names import NAME_PATTERN

__all__ = ["QueryParams", "create_app", "parse_duration_ms", "parse_time_ms"]

log = logging.getLogger("edgemon.collector.http.api")

STORAGE_KEY = web.AppKey("storage", Storage)
EXECUTOR_KEY = web.AppKey("executor", object)
METRICS_KEY = web.AppKey("metrics", object)
READY_KEY = web.AppKey("ready", object)
CLOCK_KEY = web.AppKey("clock", object)
OPENAPI_KEY = web.AppKey("openapi", dict)
HOST_LIMITS_KEY = web.AppKey("host_limits", object)

_NAME = NAME_PATTERN  # metric names and label keys, as batches carry them
_NAME_RE = re.compile(_NAME)
_HOST_GLOB_RE = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,128}")
_NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                 43200, 86400)
AUTO_POINTS = 300
DEFAULT_RANGE_MS = 3_600_000
JSON_CONTENT = "application/json"


# --- parameter parsing -----------------------------------------------------------------------

def auto_step_ms(span_ms: int) -> int:
    raw_s = span_ms / AUTO_POINTS / 1000
    for step in _NICE_STEPS_S:
        if step >= raw_s:
            return step * 1000
    return math.ceil(raw_s / 86400) * 86_400_000


class QueryParams(BaseModel):
    """``GET /edgemon/api/v1/query`` parameters after the raw query string was grouped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Annotated[str, Field(min_length=1, max_length=128, pattern=f"^{_NAME}$")]
    start: str | None = None
    end: str | None = None
    step: str | None = None
    agg: Literal["avg", "min", "max", "sum", "count", "last", "p95"] = "avg"
    host: list[str] = []
    label: dict[str, Annotated[str, Field(max_length=256)]] = {}
    rate: bool = False
    group_by: str | None = None
    tier: Literal["auto", "raw", "1m", "1h"] = "auto"
    format: Literal["json", "csv"] | None = None

    @field_validator("host")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for h in hosts:
            if not _HOST_GLOB_RE.fullmatch(h):
                raise ValueError(f"{h[:80]!r} is not a host id or glob ([A-Za-z0-9._-] and *?[])")
        return hosts

    @field_validator("label")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if not _NAME_RE.fullmatch(key):
                raise ValueError(f"label key {key[:40]!r} is not a valid name")
        return labels

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: str | None) -> str | None:
        if value is None:
            return None
        keys = value.split(",")
        if not all(_NAME_RE.fullmatch(k.strip()) for k in keys):
            raise ValueError("use 'host' and/or label keys separated by commas")
        return value

    def to_range_query(self, now_ms: int) -> RangeQuery:
        """Resolve times and step; raise ``ParamError`` naming the parameter."""
        end = _param("end", parse_time_ms, self.end, now_ms) if self.end else now_ms
        if self.start:
            start = _param("start", parse_time_ms, self.start, now_ms)
        else:
            start = end - DEFAULT_RANGE_MS
        if start >= end:
            raise ParamError("start", "must be before end")
        if self.step:
            step = _param("step", lambda s, _now: parse_duration_ms(s), self.step, now_ms)
            if step < 1000:
                raise ParamError("step", "must be at least 1 second")
        else:
            step = auto_step_ms(end - start)
        group_by = tuple(k.strip() for k in self.group_by.split(",")) if self.group_by else None
        return RangeQuery(name=self.metric, start_ms=start, end_ms=end, step_ms=step,
                          aggregation=self.agg, hosts=tuple(self.host), labels=dict(self.label),
                          rate=self.rate, group_by=group_by, tier=self.tier)


class ParamError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"parameter '{param}': {message}")
        self.param = param


def _param(name: str, parse: Callable[[str, int], int], value: str, now_ms: int) -> int:
    try:
        return parse(value, now_ms)
    except ValueError as exc:
        raise ParamError(name, str(exc)) from None


def parse_query_params(query: Any) -> QueryParams:
    """Group a MultiDict (``host`` repeatable, ``label.<key>``) and validate it."""
    raw: dict[str, Any] = {}
    labels: dict[str, str] = {}
    hosts: list[str] = []
    for key in query:
        if key in raw or (key.startswith("label.") and key[6:] in labels):
            continue
        values = query.getall(key)
        if key == "host":
            hosts.extend(values)
            continue
        if len(values) > 1:
            raise ParamError(key, "given more than once")
        if key.startswith("label."):
            if not _NAME_RE.fullmatch(key[6:]):
                raise ParamError(key[:80], "label key is not a valid name")
            labels[key[6:]] = values[0]
        elif key == "label":
            raise ParamError("label", "use label.<key>=<value>")
        else:
            raw[key] = values[0]
    if hosts:
        raw["host"] = hosts
    if labels:
        raw["label"] = labels
    try:
        return QueryParams.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == "label" and len(loc) > 1:
            name = f"label.{loc[1]}"
        elif loc and loc[0] == "host" and len(loc) > 1:
            name = "host"
        else:
            name = loc[0] if loc else "query"
        message = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "required"
        raise ParamError(name, message) from None


# --- serialisation -----------------------------------------------------------------------------

def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _number(value: Any) -> float | int | None:
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


def _points(points: list[tuple[int, float]]) -> list[list[float | int]]:
    out: list[list[float | int]] = []
    for ts, value in points:
        v = _number(value)
        if v is not None:  # steps without a finite value are omitted, like steps without data
            out.append([int(ts), v])
    return out


# Label values and other host-sent text are untrusted: in JSON, characters that end a <script>
# element or a JavaScript string when the document is embedded in a page are escaped (as Go's
# encoding/json does); in CSV, cells that a spreadsheet would run as a formula are neutralised.
_JSON_HTML_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection


def _json(doc: Any) -> str:
    return json.dumps(doc, allow_nan=False, separators=(",", ":"),
                      ensure_ascii=False).translate(_JSON_HTML_SAFE)


def _csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` before a formula start."""
    return "'" + value if value.startswith(_CSV_FORMULA_START) else value


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(text=_json(doc), status=status, content_type=JSON_CONTENT,
                        headers={"X-Content-Type-Options": "nosniff"})


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def host_doc(h: HostInfo, limits: HostCardinality | None = None) -> dict[str, Any]:
    return {"host": h.host, "online": h.online, "instance": h.instance,
            "last_seen": _iso(h.last_seen_ms), "last_seen_ms": h.last_seen_ms,
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


def _query_csv(results: list[SeriesResult]) -> str:
    """RFC 4180 CSV (CRLF, so a CR or LF inside a cell is quoted); text cells neutralised."""
    keys = sorted({k for r in results for k in r.labels})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["timestamp_ms", "time", "host", *map(_csv_text, keys), "value"])
    for r in results:
        text = [_csv_text(r.host or ""), *(_csv_text(r.labels.get(k, "")) for k in keys)]
        for ts, value in _points(r.points):
            writer.writerow([ts, _iso(ts), *text, repr(value)
                             if isinstance(value, float) else value])
    return out.getvalue()


def _wants_csv(request: web.Request, params: QueryParams) -> bool:
    if params.format is not None:
        return params.format == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and JSON_CONTENT not in accept


# --- handlers ----------------------------------------------------------------------------------

async def _call(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR_KEY], fn, *args)  # type: ignore


def _now_ms(request: web.Request) -> int:
    return int(request.app[CLOCK_KEY]())  # type: ignore[operator]


def _exact_host(host: str, param: str = "host") -> str:
    try:
        return validate_host_id(host)
    except ProtocolError as exc:
        raise ParamError(param, str(exc)) from None


async def _known_hosts(request: web.Request) -> set[str]:
    storage = request.app[STORAGE_KEY]
    return {h.host for h in await _call(request, storage.hosts)}


async def hosts_handler(request: web.Request) -> web.Response:
    _no_params(request)
    hosts = await _call(request, request.app[STORAGE_KEY].hosts)
    host_limits = request.app[HOST_LIMITS_KEY]
    limits = host_limits(_now_ms(request)) if host_limits is not None else {}  # type: ignore
    return json_response({"hosts": [host_doc(h, limits.get(h.host))
                                    for h in sorted(hosts, key=lambda h: h.host)]})


async def series_handler(request: web.Request) -> web.Response:
    host = _exact_host(request.match_info["host"])
    _no_params(request, "metric")
    metric = request.query.get("metric")
    if metric is not None and not _NAME_RE.fullmatch(metric):
        raise ParamError("metric", "not a metric name")
    series = await _call(request, request.app[STORAGE_KEY].series, host, metric)
    if not series and host not in await _known_hosts(request):
        return error_response(404, f"unknown host {host!r}")
    return json_response({"host": host, "series": [series_doc(s) for s in series]})


async def gaps_handler(request: web.Request) -> web.Response:
    _no_params(request, "host")
    host = request.query.get("host")
    if host is not None:
        host = _exact_host(host)
        if host not in await _known_hosts(request):
            return error_response(404, f"unknown host {host!r}")
    gaps = await _call(request, request.app[STORAGE_KEY].gaps, host)
    return json_response({"gaps": [gap_doc(g) for g in gaps]})


async def query_handler(request: web.Request) -> web.Response:
    params = parse_query_params(request.query)
    query = params.to_range_query(_now_ms(request))
    exact = [h for h in query.hosts if not any(c in h for c in "*?[")]
    for h in exact:
        _exact_host(h)
    if exact:
        known = await _known_hosts(request)
        unknown = [h for h in exact if h not in known]
        if unknown:
            return error_response(404, f"unknown host {unknown[0]!r}")
    storage = request.app[STORAGE_KEY]
    if _wants_csv(request, params):
        text = await _call(request, lambda: _query_csv(storage.query(query)))
        return web.Response(text=text, content_type="text/csv",
                            headers={"Content-Disposition":
                                     f'inline; filename="{query.name}.csv"',
                                     "X-Content-Type-Options": "nosniff"})
    # Query and serialise in the read pool: a large answer must not stall the event loop.
    body = await _call(request, lambda: _query_json(query, storage.query(query)))
    return web.Response(text=body, content_type=JSON_CONTENT,
                        headers={"X-Content-Type-Options": "nosniff"})


def _query_json(query: RangeQuery, results: list[SeriesResult]) -> str:
    tiers = {r.tier for r in results}
    tier = tiers.pop() if len(tiers) == 1 else query.tier
    return _json({
        "metric": query.name,
        "start": query.start_ms,
        "end": query.end_ms,
        "step": _number(query.step_ms / 1000),
        "step_ms": query.step_ms,
        "agg": query.aggregation,
        "rate": query.rate,
        "tier": tier,
        "series": [{"host": r.host, "labels": r.labels, "kind": r.kind, "unit": r.unit,
                    "tier": r.tier, "points": _points(r.points)} for r in results],
    })


async def healthz_handler(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz_handler(request: web.Request) -> web.Response:
    checks: dict[str, bool] = request.app[READY_KEY]()  # type: ignore[operator]
    ready = all(checks.values())
    return json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    text: str = request.app[METRICS_KEY]()  # type: ignore[operator]
    return web.Response(text=text, headers={
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
        "X-Content-Type-Options": "nosniff"})


async def openapi_handler(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY])


def _no_params(request: web.Request, *allowed: str) -> None:
    for key in request.query:
        if key not in allowed:
            raise ParamError(key, "unknown parameter")


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[..., Any]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ParamError as exc:
        return error_response(400, str(exc))
    except QueryTooLarge as exc:
        return error_response(400, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != JSON_CONTENT:
            return error_response(exc.status, exc.reason)
        raise
    except ValueError as exc:  # storage refused the query (see Storage.query)
        return error_response(400, str(exc))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error (see the collector's log)")


def create_app(storage: Storage, *, executor: Executor | None = None,
               metrics: Callable[[], str] = lambda: "",
               ready: Callable[[], dict[str, bool]] = lambda: {"storage": True},
               clock_ms: Callable[[], int] = now_ms,
               extra_routes: Sequence[web.RouteDef] = (),
               extend_openapi: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               middlewares: Sequence[Any] = (),
               client_max_size: int = 1024**2,
               host_limits: Callable[[int], dict[str, HostCardinality]] | None = None,
               ) -> web.Application:
    """The collector's HTTP API; ``extra_routes`` (e.g. alerting) are described by
    ``extend_openapi``, which adds their paths to a copy of ``OPENAPI``. ``middlewares`` (e.g.
    collector/http/auth.py) run inside the one that turns exceptions into JSON errors.
    ``host_limits(now_ms)``: each host's cardinality state (ingest), shown by /hosts."""
    app = web.Application(middlewares=[errors_middleware, *middlewares],
                          client_max_size=client_max_size)
    document = copy.deepcopy(OPENAPI)
    app[OPENAPI_KEY] = extend_openapi(document) if extend_openapi else document
    app.router.add_routes(extra_routes)
    app[STORAGE_KEY] = storage
    app[EXECUTOR_KEY] = executor  # None = the loop's default executor
    app[METRICS_KEY] = metrics
    app[READY_KEY] = ready
    app[CLOCK_KEY] = clock_ms
    app[HOST_LIMITS_KEY] = host_limits
    app.router.add_get("/edgemon/api/v1/hosts", hosts_handler)
    app.router.add_get("/edgemon/api/v1/hosts/{host}/series", series_handler)
    app.router.add_get("/edgemon/api/v1/query", query_handler)
    app.router.add_get("/edgemon/api/v1/gaps", gaps_handler)
    app.router.add_get("/edgemon/api/v1/openapi.json", openapi_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/readyz", readyz_handler)
    app.router.add_get("/metrics", metrics_handler)
    return app


# --- OpenAPI -----------------------------------------------------------------------------------

def _qp(name: str, description: str, schema: dict[str, Any] | None = None,
        required: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}, **extra}


_ERROR = {"description": "bad parameter (the message names it)",
          "content": {JSON_CONTENT: {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NOT_FOUND = {"description": "unknown host",
              "content": {JSON_CONTENT: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description,
            "content": {JSON_CONTENT: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "edgemon collector API", "version": "1",
             "description": "Fleet metrics stored by the edgemon collector. Times are ms since "
                            "the Unix epoch in responses."},
    "paths": {
        "/edgemon/api/v1/hosts": {"get": {
            "summary": "Every host ever seen, with its online state",
            "responses": {"200": _ok("Hosts")}}},
        "/edgemon/api/v1/hosts/{host}/series": {"get": {
            "summary": "The series a host has sent",
            "parameters": [
                {"name": "host", "in": "path", "required": True, "schema": {"type": "string"}},
                _qp("metric", "only this metric name"),
            ],
            "responses": {"200": _ok("Series"), "400": _ERROR, "404": _NOT_FOUND}}},
        "/edgemon/api/v1/query": {"get": {
            "summary": "Aggregate one metric over a time range, one point per step",
            "parameters": [
                _qp("metric", "metric name", required=True),
                _qp("start", "unix seconds, unix ms, RFC 3339 or now-<duration>; "
                             "default end - 1h"),
                _qp("end", "unix seconds, unix ms, RFC 3339 or now; default now"),
                _qp("step", "seconds or a duration (30s, 5m, 1h); default about (end-start)/300"),
                _qp("agg", "aggregation within a step",
                    {"type": "string", "enum": ["avg", "min", "max", "sum", "count", "last",
                                                "p95"], "default": "avg"}),
                _qp("host", "host id or glob (repeatable); default all hosts",
                    {"type": "array", "items": {"type": "string"}}, explode=True),
                {"name": "label.{key}", "in": "query", "required": False,
                 "description": "exact label match, e.g. label.cpu=total (any number of them)",
                 "schema": {"type": "string"}},
                _qp("rate", "per-second rate of a counter (resets handled)",
                    {"type": "boolean", "default": False}),
                _qp("group_by", "comma-separated: host and/or label keys; default one result "
                                "per series"),
                _qp("tier", "storage tier", {"type": "string",
                                             "enum": ["auto", "raw", "1m", "1h"],
                                             "default": "auto"}),
                _qp("format", "json (default) or csv; Accept: text/csv also selects CSV",
                    {"type": "string", "enum": ["json", "csv"]}),
            ],
            "responses": {
                "200": {"description": "OK",
                        "content": {JSON_CONTENT: {"schema":
                                                   {"$ref": "#/components/schemas/Query"}},
                                    "text/csv": {"schema": {"type": "string"}}}},
                "400": _ERROR, "404": _NOT_FOUND}}},
        "/edgemon/api/v1/gaps": {"get": {
            "summary": "Sequence numbers that never arrived, per agent instance",
            "parameters": [_qp("host", "only this host")],
            "responses": {"200": _ok("Gaps"), "400": _ERROR, "404": _NOT_FOUND}}},
        "/edgemon/api/v1/openapi.json": {"get": {
            "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/healthz": {"get": {
            "summary": "The process is alive", "security": [],
            "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {
            "summary": "Connected to MQTT (subscribed) and storage open", "security": [],
            "responses": {"200": _ok("Ready", "ready"), "503": _ok("Ready", "not ready")}}},
        "/metrics": {"get": {
            "summary": "The collector's own counters, Prometheus text format 0.0.4",
            "responses": {"200": {"description": "OK",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    },
    # Every path but /healthz and /readyz (and /metrics with http.public_metrics): a read token
    # for GET/HEAD, an admin token for the rest; 401/403 answers are Error documents.
    "security": [{"bearerAuth": []}],
    "components": {"securitySchemes": {"bearerAuth": {
        "type": "http", "scheme": "bearer", "bearerFormat": "edm_<id>_<secret>",
        "description": "edgemon-collector token create --name NAME --role read|admin; read for "
                       "GET/HEAD, admin for other methods; missing or invalid: 401, role too "
                       "low: 403"}},
                   "schemas": {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Host": {"type": "object", "properties": {
            "host": {"type": "string"}, "online": {"type": "boolean"},
            "instance": {"type": ["string", "null"]},
            "last_seen": {"type": ["string", "null"], "format": "date-time"},
            "last_seen_ms": {"type": ["integer", "null"]},
            "last_status_ms": {"type": ["integer", "null"]},
            "clock_offset_ms": {"type": ["integer", "null"],
                                "description": "receive time - send time of live batches"},
            "instances": {"type": "integer"},
            "over_limit": {"type": "boolean", "description": "series of this host were dropped "
                           "for its cardinality bound in the last hour"},
            "series": {"type": ["object", "null"], "description": "the host's cardinality "
                       "bound (null when ingest does not run in this process)", "properties": {
                           "active": {"type": "integer", "description": "series seen in the "
                                      "last 24 h"},
                           "max": {"type": "integer"},
                           "max_new_per_hour": {"type": "integer"},
                           "rejected_total": {"type": "integer"},
                           "last_rejected_ms": {"type": ["integer", "null"]}}}}},
        "Hosts": {"type": "object", "properties": {
            "hosts": {"type": "array", "items": {"$ref": "#/components/schemas/Host"}}}},
        "Series": {"type": "object", "properties": {
            "host": {"type": "string"},
            "series": {"type": "array", "items": {"type": "object", "properties": {
                "host": {"type": "string"}, "name": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "kind": {"type": "string", "enum": ["gauge", "counter"]},
                "unit": {"type": "string"}, "first_ms": {"type": "integer"},
                "last_ms": {"type": "integer"}}}}}},
        "Query": {"type": "object", "properties": {
            "metric": {"type": "string"}, "start": {"type": "integer"},
            "end": {"type": "integer"}, "step": {"type": "number", "description": "seconds"},
            "step_ms": {"type": "integer"}, "agg": {"type": "string"},
            "rate": {"type": "boolean"}, "tier": {"type": "string"},
            "series": {"type": "array", "items": {"type": "object", "properties": {
                "host": {"type": ["string", "null"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "kind": {"type": "string"}, "unit": {"type": "string"},
                "tier": {"type": "string"},
                "points": {"type": "array", "description": "[step start ms, value]; steps "
                           "without a (finite) value are omitted",
                           "items": {"type": "array", "prefixItems": [{"type": "integer"},
                                                                      {"type": "number"}]}}}}}}},
        "Gaps": {"type": "object", "properties": {
            "gaps": {"type": "array", "items": {"type": "object", "properties": {
                "host": {"type": "string"}, "instance": {"type": "string"},
                "first_missing": {"type": "integer"}, "last_missing": {"type": "integer"},
                "missing": {"type": "integer"}}}}}},
        "Ready": {"type": "object", "properties": {
            "ready": {"type": "boolean"}, "mqtt": {"type": "boolean"},
            "storage": {"type": "boolean"}}},
    }},
}
