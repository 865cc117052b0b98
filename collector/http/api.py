"""The HTTP API (aiohttp): thin handlers that parse, call storage in a thread, serialise.

Query parameters are validated with pydantic (``query_params.py``); a bad one is a 400
``{"error": "..."}`` naming it (``responses.py``: the helpers, the error schema and the
middleware every route shares).
Storage is blocking, so every call runs in the read executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from edgemon.collector.http import dictionaries
from edgemon.collector.http.documents import (
    gap_doc,
    host_doc,
    json_number,
    points_json,
    query_csv,
    series_doc,
)
from edgemon.collector.http.query_params import (
    AUTO_POINTS,
    NAME_RE,
    QueryParams,
    auto_step_ms,
    parse_query_params,
)
from edgemon.collector.http.responses import (
    ERROR_SCHEMA,
    JSON_CONTENT,
    NOSNIFF,
    BadRequest,
    ParamError,
    error_doc,
    error_response,
    errors_middleware,
    json_response,
    json_text,
    ok_doc,
    param_doc,
    query_params,
)
from edgemon.collector.http.timeparse import parse_duration_ms, parse_time_ms
from edgemon.collector.ingest.cardinality import HostCardinality
from edgemon.collector.storage.accounting import accounting_of
from edgemon.collector.storage.base import (
    AGGREGATIONS,
    TIERS,
    RangeQuery,
    SeriesResult,
    Storage,
)
from edgemon.common.clock import now_ms
from edgemon.protocol import ProtocolError, validate_host_id
from edgemon.protocol.names import NAME_PATTERN

__all__ = ["QueryParams", "auto_step_ms", "create_app", "parse_duration_ms", "parse_time_ms"]

log = logging.getLogger("edgemon.collector.http.api")

STORAGE_KEY = web.AppKey("storage", Storage)
EXECUTOR_KEY = web.AppKey("executor", object)
METRICS_KEY = web.AppKey("metrics", object)
READY_KEY = web.AppKey("ready", object)
CLOCK_KEY = web.AppKey("clock", object)
OPENAPI_KEY = web.AppKey("openapi", dict)
HOST_LIMITS_KEY = web.AppKey("host_limits", object)

_NAME = NAME_PATTERN  # metric names and label keys, as batches carry them


# --- serialisation ---------------------------------------------------------------------------

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
    query_params(request, ())
    hosts = await _call(request, request.app[STORAGE_KEY].hosts)
    host_limits = request.app[HOST_LIMITS_KEY]
    limits = host_limits(_now_ms(request)) if host_limits is not None else {}  # type: ignore
    return json_response({"hosts": [host_doc(h, limits.get(h.host))
                                    for h in sorted(hosts, key=lambda h: h.host)]})


async def series_handler(request: web.Request) -> web.Response:
    host = _exact_host(request.match_info["host"])
    query_params(request, ("metric",))
    metric = request.query.get("metric")
    if metric is not None and not NAME_RE.fullmatch(metric):
        raise ParamError("metric", "not a metric name")
    series = await _call(request, request.app[STORAGE_KEY].series, host, metric)
    if not series and host not in await _known_hosts(request):
        return error_response(404, f"unknown host {host!r}")
    return json_response({"host": host, "series": [series_doc(s) for s in series]})


async def gaps_handler(request: web.Request) -> web.Response:
    query_params(request, ("host",))
    host = request.query.get("host")
    if host is not None:
        host = _exact_host(host)
        if host not in await _known_hosts(request):
            return error_response(404, f"unknown host {host!r}")
    storage = request.app[STORAGE_KEY]
    accounting = accounting_of(storage)  # also sees batches lost at the end of an instance
    gaps = await _call(request, accounting.gaps if accounting else storage.gaps, host)
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
        text = await _call(request, lambda: query_csv(_run_query(storage, query)))
        return web.Response(text=text, content_type="text/csv",
                            headers={"Content-Disposition":
                                     f'inline; filename="{query.name}.csv"', **NOSNIFF})
    # Query and serialise in the read pool: a large answer must not stall the event loop.
    body = await _call(request, lambda: _query_json(query, _run_query(storage, query)))
    return web.Response(text=body, content_type=JSON_CONTENT, headers=NOSNIFF)


def _run_query(storage: Storage, query: RangeQuery) -> list[SeriesResult]:
    """``storage.query``; the refusals its interface documents (``QueryTooLarge`` and other
    ``ValueError``s: a query it cannot answer) are the client's to fix."""
    try:
        return storage.query(query)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _query_json(query: RangeQuery, results: list[SeriesResult]) -> str:
    tiers = {r.tier for r in results}
    tier = tiers.pop() if len(tiers) == 1 else query.tier
    return json_text({
        "metric": query.name,
        "start": query.start_ms,
        "end": query.end_ms,
        "step": json_number(query.step_ms / 1000),
        "step_ms": query.step_ms,
        "agg": query.aggregation,
        "rate": query.rate,
        "tier": tier,
        "series": [{"host": r.host, "labels": r.labels, "kind": r.kind, "unit": r.unit,
                    "tier": r.tier, "points": points_json(r.points)} for r in results],
    })


async def healthz_handler(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz_handler(request: web.Request) -> web.Response:
    """200 when every boolean check holds, else 503; other entries explain (``mqtt_stall``,
    ``ingest_backpressure``)."""
    checks: dict[str, bool | str] = request.app[READY_KEY]()  # type: ignore[operator]
    ready = all(v for v in checks.values() if isinstance(v, bool))
    return json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    # rendered in the loop's default executor, not the read pool: a scrape neither waits behind
    # queries nor stalls the event loop (~0.1 s with 1000 hosts, http/metrics.py)
    loop = asyncio.get_running_loop()
    text: str = await loop.run_in_executor(None, request.app[METRICS_KEY])  # type: ignore
    return web.Response(text=text, headers={
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
        "X-Content-Type-Options": "nosniff"})


async def openapi_handler(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY])


def create_app(storage: Storage, *, executor: Executor | None = None,
               metrics: Callable[[], str] = lambda: "",
               ready: Callable[[], dict[str, bool | str]] = lambda: {"storage": True},
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
    from edgemon.collector.http import accounting  # it builds on this module's helpers

    app = web.Application(middlewares=[errors_middleware, *middlewares],
                          client_max_size=client_max_size)
    document = accounting.merge_openapi(copy.deepcopy(OPENAPI))
    document["paths"].update(dictionaries.OPENAPI_PATHS)
    document["components"]["schemas"].update(dictionaries.OPENAPI_SCHEMAS)
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
    app.router.add_get(accounting.PATH, accounting.handler)
    dictionaries.add_routes(app)
    app.router.add_get("/edgemon/api/v1/openapi.json", openapi_handler)
    app.router.add_get("/healthz", healthz_handler)
    app.router.add_get("/readyz", readyz_handler)
    app.router.add_get("/metrics", metrics_handler)
    return app


# --- OpenAPI -----------------------------------------------------------------------------------

_ERROR = error_doc("bad parameter (the message names it)")
_NOT_FOUND = error_doc("unknown host")
_qp, _ok = param_doc, ok_doc  # short names: the document below uses them on every line
_HOST_ID = {"type": "string", "minLength": 1, "maxLength": 64,
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_METRIC_NAME = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": f"^{_NAME}$"}
_TIME_SYNTAX = "unix seconds, unix ms, RFC 3339, now or now-<duration> (e.g. now-2h)"
_DURATION = r"\d+(\.\d+)?(ms|s|m|h|d|w)"
_DEFAULT_LIMITS = RangeQuery("m", 0, 1, 1)  # its max_series and max_points


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
                {"name": "host", "in": "path", "required": True, "schema": _HOST_ID},
                _qp("metric", "only this metric name", _METRIC_NAME),
            ],
            "responses": {"200": _ok("Series"), "400": _ERROR, "404": _NOT_FOUND}}},
        "/edgemon/api/v1/query": {"get": {
            "summary": "Aggregate one metric over a time range, one point per step",
            "description": "Each parameter at most once (host and label.<key> excepted). A "
                           f"query matching more than {_DEFAULT_LIMITS.max_series} series, or "
                           f"answering more than {_DEFAULT_LIMITS.max_points} points (series x "
                           "steps), is refused with 400 saying how to narrow it.",
            "parameters": [
                _qp("metric", "metric name", _METRIC_NAME, required=True),
                _qp("start", f"{_TIME_SYNTAX}; before end; default end - 1h"),
                _qp("end", f"{_TIME_SYNTAX}; default now"),
                _qp("step", "width of one point: seconds (a number) or a duration (30s, 5m, "
                            "1h); at least 1 second; default about (end - start) / "
                            f"{AUTO_POINTS} rounded up to 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, "
                            "15, 30 min, 1, 2, 3, 6, 12 h or whole days",
                    {"oneOf": [{"type": "number", "minimum": 1},
                               {"type": "string", "pattern": f"^({_DURATION})+$",
                                "description": "a duration of at least 1s"}]}),
                _qp("agg", "aggregation within a step",
                    {"type": "string", "enum": list(AGGREGATIONS), "default": "avg"}),
                _qp("host", "host id or glob (*, ?, [...]); repeatable; default all hosts",
                    {"type": "array", "items": {"type": "string", "minLength": 1,
                                                "maxLength": 128,
                                                "pattern": r"^[A-Za-z0-9._*?\[\]!-]+$"}},
                    explode=True),
                {"name": "label.{key}", "in": "query", "required": False,
                 "description": "exact label match, e.g. label.cpu=total (any number of them; "
                                f"key: {_NAME})",
                 "schema": {"type": "string", "maxLength": 256}},
                _qp("rate", "per-second rate of a counter (resets handled)",
                    {"type": "boolean", "default": False}),
                _qp("group_by", "comma-separated: host and/or label keys; default one result "
                                "per series",
                    {"type": "string", "pattern": f"^ *{_NAME} *(, *{_NAME} *)*$"}),
                _qp("tier", "storage tier", {"type": "string",
                                             "enum": list(TIERS),
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
            "summary": "Sequence numbers that never arrived, per agent instance: between "
                       "stored ones, and after the last stored one up to the last sequence "
                       "number the instance declared in its birth or death message",
            "parameters": [_qp("host", "only this host (exact id)", _HOST_ID)],
            "responses": {"200": _ok("Gaps"), "400": _ERROR, "404": _NOT_FOUND}}},
        "/edgemon/api/v1/openapi.json": {"get": {
            "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/healthz": {"get": {
            "summary": "The process is alive", "security": [],
            "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {
            "summary": "Connected to MQTT (subscribed), MQTT delivery not stalled, storage "
                       "open and writable", "security": [],
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
        "Error": ERROR_SCHEMA,
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
        "Gap": {"type": "object", "properties": {
            "host": {"type": "string"}, "instance": {"type": "string"},
            "first_missing": {"type": "integer"}, "last_missing": {"type": "integer"},
            "missing": {"type": "integer", "minimum": 1}}},
        "Gaps": {"type": "object", "properties": {
            "gaps": {"type": "array", "items": {"$ref": "#/components/schemas/Gap"}}}},
        "Ready": {"type": "object", "properties": {
            "ready": {"type": "boolean"}, "mqtt": {"type": "boolean"},
            "storage": {"type": "boolean"},
            "ingest_backpressure": {"type": "string", "description": "Present while agent acks "
                                    "are held because the compaction back-log is over its "
                                    "budget (not a failed check)"}}},
    }},
}
