"""Prometheus's HTTP API, read side, on ``/api/v1/...`` (see collector/PROMETHEUS.md).

    app.router.add_routes(routes(storage, alerting=engine_or_None))

Same request and response shapes, status codes and error format as Prometheus 2.x: parameters
from the query string or an ``application/x-www-form-urlencoded`` POST body (the body wins, as
with Go's ``FormValue``), ``{"status": "success", "data": ...}`` or ``{"status": "error",
"errorType": ..., "error": ...}``. Every evaluation and storage read runs in the app's read
executor. A path under ``/api/v1/`` that edgemon does not implement answers Prometheus-style 404
rather than a differently shaped document.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import promql_parser as pp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from edgemon.collector.http.alerts_api import every_active_alert, rules_status
from edgemon.collector.http.alerts_cache import state_cache
from edgemon.collector.http.api import EXECUTOR_KEY
from edgemon.collector.http.federate import federate_handler
from edgemon.collector.http.prometheus_rules import alerts_data, rules_data
from edgemon.collector.promql.engine import Engine, QueryLimits, parse_expression
from edgemon.collector.promql.errors import BadData, PromQLError
from edgemon.collector.promql.jsonfmt import error_body, query_body, success_body
from edgemon.collector.storage.base import Storage
from edgemon.common.clock import now_ms

__all__ = ["API_VERSION", "READ_POST_PATHS", "parse_duration_param", "parse_time_param",
           "routes"]

log = logging.getLogger("edgemon.collector.http.prometheus_api")

PREFIX = "/api/v1"
# The POST routes below only read: collector/http/auth.py lets read tokens send them
# (tests/test_prometheus_api.py checks that its list and these routes agree).
READ_POST_PATHS = frozenset(f"{PREFIX}/{p}" for p in (
    "query", "query_range", "series", "labels", "query_exemplars"))
# The Prometheus version whose API and PromQL semantics edgemon follows (clients such as
# Grafana pick features from it); the build info says it is edgemon.
API_VERSION = "2.42.0"
JSON = "application/json"
# Prometheus's texts for "no start" / "no end" (its Go client sends them): unbounded
_UNBOUNDED_TEXTS = frozenset({"-292273086-05-16T16:47:06Z", "292277025-08-18T07:12:54.999999999Z"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ParamError(BadData):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f'invalid parameter "{param}": {message}')


# --- parameters --------------------------------------------------------------------------------

async def form(request: web.Request) -> MultiDictProxy[str]:
    """Query string and form body together; body values first (Go's ``r.FormValue``)."""
    merged: MultiDict[str] = MultiDict()
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        body = await request.post()
        for key, value in body.items():
            if isinstance(value, str):
                merged.add(key, value)
    for key, value in request.query.items():
        merged.add(key, value)
    return MultiDictProxy(merged)


def parse_time_param(params: MultiDictProxy[str], name: str, default: int | None,
                     required: bool = False) -> int | None:
    """ms of a Prometheus time: float Unix seconds or RFC 3339; ``default`` when absent (an
    error if ``required``); None for Prometheus's min/max time texts (unbounded)."""
    text = params.get(name, "")
    if text == "":
        if required:
            raise ParamError(name, 'cannot parse "" to a valid timestamp')
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None and math.isfinite(seconds):
        whole = math.trunc(seconds)
        return whole * 1000 + round((seconds - whole) * 1000)
    if text in _UNBOUNDED_TEXTS:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ParamError(name, f"cannot parse {text!r} to a valid timestamp") from None
    if moment.tzinfo is None:
        raise ParamError(name, f"cannot parse {text!r} to a valid timestamp")
    return round(moment.timestamp() * 1000)


def parse_duration_param(params: MultiDictProxy[str], name: str) -> int | None:
    """ms of a Prometheus duration: float seconds or ``5m``, ``1h30m``; None when absent."""
    text = params.get(name, "")
    if text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or abs(seconds) * 1e9 > 2**63:
            raise ParamError(name, f'cannot parse "{text}" to a valid duration. It overflows '
                                   "int64")
        return round(seconds * 1000)
    try:
        return int(pp.parse_duration(text).total_seconds() * 1000)
    except (ValueError, OverflowError):
        raise ParamError(name, f'cannot parse "{text}" to a valid duration') from None


def _timeout_s(params: MultiDictProxy[str]) -> float | None:
    ms = parse_duration_param(params, "timeout")
    return None if ms is None else ms / 1000


# --- responses ---------------------------------------------------------------------------------

def _ok(body: str) -> web.Response:
    return web.Response(text=body, content_type=JSON)


def _error(exc: PromQLError) -> web.Response:
    return web.Response(text=error_body(exc), status=exc.status, content_type=JSON)


def _prometheus_errors(handler: Handler) -> Handler:
    """Every failure in Prometheus's error format (never edgemon's own)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except PromQLError as exc:
            return _error(exc)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            err = PromQLError("internal error (see the collector's log)")
            return _error(err)

    return wrapped


async def _in_thread(request: web.Request, fn: Callable[[], Any]) -> Any:
    executor = request.app[EXECUTOR_KEY]
    return await asyncio.get_running_loop().run_in_executor(executor, fn)  # type: ignore


# --- handlers ----------------------------------------------------------------------------------

def routes(storage: Storage, *, alerting: Any = None, limits: QueryLimits | None = None,
           clock_ms: Callable[[], int] = now_ms,
           engine: Engine | None = None) -> list[web.RouteDef]:
    """The ``/api/v1`` read API and ``/federate`` over ``storage``; ``alerting``: the
    ``AlertEngine`` (None: no rules, no alerts)."""
    engine = engine or Engine(storage, limits)

    async def query(request: web.Request) -> web.Response:
        params = await form(request)
        at = parse_time_param(params, "time", clock_ms())
        if at is None:
            raise ParamError("time", "cannot evaluate at an unbounded time")
        timeout = _timeout_s(params)
        text = params.get("query", "")
        return _ok(await _in_thread(request, lambda: _query_answer(
            lambda: engine.instant_query(text, at, timeout))))

    async def query_range(request: web.Request) -> web.Response:
        params = await form(request)
        start = parse_time_param(params, "start", None, required=True)
        end = parse_time_param(params, "end", None, required=True)
        if start is None or end is None:
            raise ParamError("start" if start is None else "end", "must be a finite time")
        if end < start:
            raise ParamError("end", "end timestamp must not be before start time")
        step = parse_duration_param(params, "step")
        if step is None:
            raise ParamError("step", 'cannot parse "" to a valid duration')
        if step <= 0:
            raise ParamError("step", "zero or negative query resolution step widths are not "
                                     "accepted. Try a positive integer")
        limit = engine.limits.max_points_per_series
        if (end - start) // step >= limit:
            raise BadData(f"exceeded maximum resolution of {limit:,} points per timeseries. "
                          "Try decreasing the query resolution (?step=XX)")
        timeout = _timeout_s(params)
        text = params.get("query", "")
        return _ok(await _in_thread(request, lambda: _query_answer(
            lambda: engine.range_query(text, start, end, step, timeout))))

    async def series(request: web.Request) -> web.Response:
        params = await form(request)
        selectors = params.getall("match[]", [])
        if not selectors:
            raise BadData("no match[] parameter provided")
        start = parse_time_param(params, "start", None)
        end = parse_time_param(params, "end", None)
        found = await _in_thread(request, lambda: engine.find_series(selectors, start, end))
        return _ok(success_body([dict(e.labels) for e in found]))

    async def labels(request: web.Request) -> web.Response:
        params = await form(request)
        start = parse_time_param(params, "start", None)
        end = parse_time_param(params, "end", None)
        selectors = params.getall("match[]", [])
        names = await _in_thread(request, lambda: engine.label_names(selectors, start, end))
        return _ok(success_body(names))

    async def label_values(request: web.Request) -> web.Response:
        params = await form(request)
        name = request.match_info["name"]
        start = parse_time_param(params, "start", None)
        end = parse_time_param(params, "end", None)
        selectors = params.getall("match[]", [])
        values = await _in_thread(request,
                                  lambda: engine.label_values(name, selectors, start, end))
        return _ok(success_body(values))

    async def metadata(request: web.Request) -> web.Response:
        params = await form(request)
        limit = None
        if params.get("limit", "") != "":
            try:
                limit = int(params["limit"])
            except ValueError:
                raise BadData("limit must be a number") from None
        metric = params.get("metric") or None
        data = await _in_thread(request, lambda: engine.metadata(metric, limit))
        return _ok(success_body(data))

    async def buildinfo(_request: web.Request) -> web.Response:
        version = _edgemon_version()
        return _ok(success_body({"version": API_VERSION, "revision": f"edgemon-{version}",
                                 "branch": "edgemon", "buildUser": "edgemon",
                                 "buildDate": "", "goVersion": "none (edgemon, Python)"}))

    async def exemplars(request: web.Request) -> web.Response:
        params = await form(request)
        text = params.get("query", "")
        await _in_thread(request, lambda: _parse_only(text))
        return _ok(success_body([]))

    async def rules(request: web.Request) -> web.Response:
        params = await form(request)
        kind = params.get("type", "") or None
        if kind not in (None, "alert", "record"):
            raise ParamError("type", f"not supported value {kind!r}")
        if alerting is None:
            return _ok(success_body({"groups": []}))

        def build() -> dict[str, Any]:
            return rules_data(rules_status(alerting), every_active_alert(alerting),
                              source=str(alerting.ruleset.source or "(built-in rules)"),
                              interval_ms=int(alerting.settings.interval), kind=kind)

        return _ok(success_body(await _in_thread(request, build)))

    async def alerts(request: web.Request) -> web.Response:
        if alerting is None:
            return _ok(success_body({"alerts": []}))
        # every alert, as Prometheus answers; the body kept until the alert state changes
        body = await _in_thread(request, lambda: state_cache(alerting).get(
            "prometheus-alerts", lambda _now, _silences: success_body(
                alerts_data(every_active_alert(alerting)))))
        return _ok(body)

    async def not_found(request: web.Request) -> web.Response:
        return _error(_NotFound(f"{request.method} {request.path} is not part of the "
                                "Prometheus API edgemon serves (read side: query, query_range, "
                                "series, labels, label/<name>/values, metadata, rules, alerts, "
                                "status/buildinfo)"))

    read_and_post = (("query", query), ("query_range", query_range), ("series", series),
                     ("labels", labels), ("query_exemplars", exemplars))
    table: list[web.RouteDef] = []
    for path, handler in read_and_post:
        wrapped = _prometheus_errors(handler)
        table += [web.get(f"{PREFIX}/{path}", wrapped), web.post(f"{PREFIX}/{path}", wrapped)]
    for path, handler in (("label/{name}/values", label_values), ("metadata", metadata),
                          ("status/buildinfo", buildinfo), ("rules", rules),
                          ("alerts", alerts)):
        table.append(web.get(f"{PREFIX}/{path}", _prometheus_errors(handler)))
    table.append(web.get("/federate", federate_handler(engine, clock_ms)))
    table.append(web.route("*", PREFIX + "/{tail:.*}", not_found))
    return table


class _NotFound(PromQLError):
    error_type = "not_found"
    status = 404


def _query_answer(run: Callable[[], Any]) -> str:
    """Evaluate and serialise (in the worker thread); engine errors propagate."""
    try:
        result = run()
    except BadData as exc:
        raise ParamError("query", str(exc)) from None
    return query_body(result)


def _parse_only(text: str) -> None:
    try:
        parse_expression(text)
    except BadData as exc:
        raise ParamError("query", str(exc)) from None


def _edgemon_version() -> str:
    try:
        from importlib.metadata import version

        return version("edgemon")
    except Exception:
        return "unknown"
