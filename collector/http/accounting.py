"""``GET /edgemon/api/v1/accounting``: what the collector holds of each host and agent instance,
to check exactness from outside (README, "Checking exactness").

- no parameter: one line per host (instances, batches and samples stored, missing batches);
- ``host=H``: that host instance by instance: batches and samples stored, sequence ranges,
  gaps (those at the end of an instance included, from the last sequence number its birth or
  death message declared), the declared number itself;
- ``host=H&start=T1[&end=T2]``: also the samples of H stored with T1 <= t < T2 (end defaults to
  now), metric by metric.

Storage reads run in the read executor (``collector/storage/accounting.py``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edgemon.collector.forward.service import STATUS_KEY as FORWARD_STATUS_KEY
from edgemon.collector.http.api import (
    STORAGE_KEY,
    _call,
    _exact_host,
    _known_hosts,
    _now_ms,
)
from edgemon.collector.http.documents import gap_doc
from edgemon.collector.http.query_params import time_param
from edgemon.collector.http.responses import (
    ParamError,
    error_response,
    json_response,
    query_params,
)
from edgemon.collector.http.timeparse import parse_time_ms
from edgemon.collector.storage.accounting import (
    HostAccount,
    InstanceAccount,
    RangeCount,
    accounting_of,
    count_samples,
)

__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "PATH", "handler", "merge_openapi"]

PATH = "/edgemon/api/v1/accounting"


def _instance_doc(i: InstanceAccount) -> dict[str, Any]:
    return {"instance": i.instance, "first_seen_ms": i.first_seen_ms,
            "last_seen_ms": i.last_seen_ms, "batches": i.batches, "samples": i.samples,
            "samples_complete": i.samples_complete, "first_seq": i.first_seq,
            "last_seq": i.last_seq, "declared_last_seq": i.declared_last_seq,
            "declared_ms": i.declared_ms, "missing_batches": i.missing_batches,
            "seq_ranges": [list(r) for r in i.seq_ranges],
            "gaps": [gap_doc(g) for g in i.gaps]}


def _host_totals(h: HostAccount) -> dict[str, Any]:
    return {"host": h.host, "instances": len(h.instances), "batches": h.batches,
            "samples": h.samples, "samples_complete": h.samples_complete,
            "missing_batches": h.missing_batches}


def _range_doc(r: RangeCount) -> dict[str, Any]:
    return {"start": r.start_ms, "end": r.end_ms, "samples": r.samples,
            "by_metric": r.by_metric, "tiers": r.tiers, "exact": r.exact}


async def handler(request: web.Request) -> web.Response:
    query_params(request, ("host", "start", "end"))
    storage = request.app[STORAGE_KEY]
    accounting = accounting_of(storage)
    if accounting is None:
        return error_response(501, "this storage backend keeps no accounting")
    host = request.query.get("host")
    start, end = request.query.get("start"), request.query.get("end")
    if host is None:
        if start is not None or end is not None:
            raise ParamError("start" if start is not None else "end", "needs host")
        hosts = await _call(request, lambda: accounting.hosts(detail=False))
        doc: dict[str, Any] = {"hosts": [_host_totals(h) for h in hosts]}
        forward = request.app.get(FORWARD_STATUS_KEY)
        if forward is not None:  # one line per [[forward]] receiver (collector/forward/)
            doc["forward"] = [s.doc() for s in forward()]  # type: ignore[operator]
        return json_response(doc)
    host = _exact_host(host)
    if end is not None and start is None:
        raise ParamError("start", "required with end")
    now = _now_ms(request)
    window = None
    if start is not None:
        start_ms = time_param("start", parse_time_ms, start, now)
        end_ms = time_param("end", parse_time_ms, end, now) if end is not None else now
        if start_ms >= end_ms:
            raise ParamError("start", "must be before end")
        window = (start_ms, end_ms)
    [account] = await _call(request, accounting.hosts, host) or [None]
    if account is None:
        if host not in await _known_hosts(request):
            return error_response(404, f"unknown host {host!r}")
        account = HostAccount(host, [])
    doc = {**_host_totals(account), "instances": [_instance_doc(i) for i in account.instances]}
    if window is not None:
        counted = await _call(request, count_samples, storage, host, *window)
        doc["range"] = _range_doc(counted)
    return json_response(doc)


# --- OpenAPI -----------------------------------------------------------------------------------

_HOST_ID = {"type": "string", "minLength": 1, "maxLength": 64,
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_TIME = ("unix seconds, unix ms, RFC 3339, now or now-<duration> (e.g. now-2h); at most "
         "one of each")
_JSON = "application/json"
_ERROR_REF = {"content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}

OPENAPI_PATHS: dict[str, Any] = {
    PATH: {"get": {
        "summary": "What is stored per host and agent instance: batches, samples, sequence "
                   "ranges, gaps, the last sequence number each instance declared",
        "description": "Without host: totals per host. With host: instance by instance. With "
                       "host and start (end defaults to now): also the samples of the host "
                       "stored with start <= t < end.",
        "parameters": [
            {"name": "host", "in": "query", "required": False, "schema": _HOST_ID,
             "description": "exact host id"},
            {"name": "start", "in": "query", "required": False, "schema": {"type": "string"},
             "description": f"{_TIME}; needs host; count samples from here (inclusive)"},
            {"name": "end", "in": "query", "required": False, "schema": {"type": "string"},
             "description": f"{_TIME}; needs start, after it; default now (exclusive)"},
        ],
        "responses": {
            "200": {"description": "OK", "content": {_JSON: {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/AccountingHosts"},
                {"$ref": "#/components/schemas/AccountingHost"}]}}}},
            "400": {"description": "bad parameter (the message names it)", **_ERROR_REF},
            "404": {"description": "unknown host", **_ERROR_REF},
            "501": {"description": "the storage backend keeps no accounting", **_ERROR_REF}}}},
}

_TOTALS = {
    "host": {"type": "string"},
    "instances": {"type": "integer", "minimum": 0},
    "batches": {"type": "integer", "minimum": 0,
                "description": "distinct (instance, seq) stored; duplicates are not counted"},
    "samples": {"type": "integer", "minimum": 0, "description": "in the stored batches"},
    "samples_complete": {"type": "boolean", "description": "false when batches were stored "
                         "before this collector version counted samples"},
    "missing_batches": {"type": "integer", "minimum": 0,
                        "description": "sequence numbers in gaps, those at the end included"},
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "AccountingHosts": {"type": "object", "properties": {"hosts": {
        "type": "array", "items": {"type": "object", "properties": _TOTALS}},
        "forward": {"type": "array", "description": "one entry per [[forward]] remote-write "
                    "receiver, as GET /edgemon/api/v1/forward (samples_sent, "
                    "samples_rejected, samples_skipped, samples_resent, pending_samples, "
                    "lag_seconds, ...)", "items": {"type": "object"}}}},
    "AccountingHost": {"type": "object", "properties": {
        **_TOTALS,
        "instances": {"type": "array", "items": {"type": "object", "properties": {
            "instance": {"type": "string"},
            "first_seen_ms": {"type": "integer"}, "last_seen_ms": {"type": "integer"},
            "batches": {"type": "integer"}, "samples": {"type": "integer"},
            "samples_complete": {"type": "boolean"},
            "first_seq": {"type": ["integer", "null"], "description": "lowest stored"},
            "last_seq": {"type": ["integer", "null"], "description": "highest stored"},
            "declared_last_seq": {"type": ["integer", "null"],
                                  "description": "highest last_seq of its status messages"},
            "declared_ms": {"type": ["integer", "null"]},
            "missing_batches": {"type": "integer", "minimum": 0},
            "seq_ranges": {"type": "array", "maxItems": 100, "description":
                           "stored [first, last] ranges (the first 100)",
                           "items": {"type": "array", "prefixItems": [{"type": "integer"},
                                                                      {"type": "integer"}]}},
            "gaps": {"type": "array", "maxItems": 100, "description": "the first 100",
                     "items": {"$ref": "#/components/schemas/Gap"}}}}},
        "range": {"type": "object", "description": "with start: samples with start <= t < end",
                  "properties": {
                      "start": {"type": "integer"}, "end": {"type": "integer"},
                      "samples": {"type": "integer", "minimum": 0},
                      "by_metric": {"type": "object",
                                    "additionalProperties": {"type": "integer"}},
                      "tiers": {"type": "array", "items": {"type": "string"}},
                      "exact": {"type": "boolean", "description": "false when only rollups "
                                "whose buckets straddle start or end still hold the range"}}}}},
}


def merge_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the accounting path and schemas to an OpenAPI document (in place; returned)."""
    document.setdefault("paths", {}).update(OPENAPI_PATHS)
    document.setdefault("components", {}).setdefault("schemas", {}).update(OPENAPI_SCHEMAS)
    return document
