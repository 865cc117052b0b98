"""HTTP endpoints of the alerting engine, for the collector's aiohttp app.

    app.add_routes(routes(engine))          # or add_routes(app, engine)
    OPENAPI["paths"].update(OPENAPI_PATHS)  # or merge_openapi(OPENAPI)
    OPENAPI["components"]["schemas"].update(OPENAPI_SCHEMAS)

Handlers validate with pydantic and answer 400 ``{"error": "..."}`` naming the bad parameter;
engine and SQLite calls run in a thread (they block).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgemon.collector.alerting.engine import AlertEngine
from edgemon.collector.alerting.rules import RulesError
from edgemon.collector.alerting.silences import Matcher, SilenceSet
from edgemon.collector.alerting.store import AlertRecord, HistoryRecord
from edgemon.collector.http import responses
from edgemon.collector.http.alerts_cache import state_cache
from edgemon.collector.http.responses import (
    BadRequest,
    ParamError,
    error_response,
    json_response,
    ok_doc,
    param_doc,
    query_params,
)
from edgemon.collector.http.timeparse import parse_duration_ms, parse_time_ms
from edgemon.common.clock import rfc3339_ms

__all__ = ["ALERTS_LIMIT", "ALERTS_LIMIT_MAX", "OPENAPI_PATHS", "OPENAPI_SCHEMAS",
           "active_alerts", "active_alerts_page", "add_routes", "alert_history", "decode_cursor",
           "encode_cursor", "every_active_alert", "merge_openapi", "routes", "rules_status"]

ALERTS_LIMIT = 500  # active alerts per page unless the client says (10,000 hosts down: ~6 MB)
ALERTS_LIMIT_MAX = 5000


def _time_param(params: dict[str, str], key: str, now: int) -> int | None:
    if key not in params:
        return None
    try:
        return parse_time_ms(params[key], now)
    except ValueError as exc:
        raise ParamError(key, str(exc)) from None


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


class SilenceIn(BaseModel):
    """``POST /edgemon/api/v1/silences`` body: ``matchers`` and an end
    (``endsAt`` or ``duration``)."""

    model_config = ConfigDict(extra="forbid")

    matchers: Annotated[list[Matcher], Field(min_length=1, max_length=64)]
    startsAt: str | int | None = None
    endsAt: str | int | None = None
    duration: str | int | None = None  # alternative to endsAt: "2h"
    createdBy: Annotated[str, Field(max_length=256)] = ""
    comment: Annotated[str, Field(max_length=4096)] = ""


_STATUSES = ("pending", "firing", "resolved", "inactive")


# --- documents ---------------------------------------------------------------------------------

def alert_doc(alert: AlertRecord, silenced_by: str | None) -> dict[str, Any]:
    """An active alert as ``GET /edgemon/api/v1/alerts`` shows it."""
    return {"rule": alert.rule, "host": alert.host, "labels": alert.labels,
            "alert_labels": alert.alert_labels, "status": alert.status,
            "active_since_ms": alert.active_since, "fired_at_ms": alert.fired_at,
            "active_since": rfc3339_ms(alert.active_since),
            "fired_at": rfc3339_ms(alert.fired_at), "value": alert.value,
            "last_data_ms": alert.last_data, "notified": alert.notified,
            "silenced_by": silenced_by, "fingerprint": alert.fingerprint,
            "annotations": alert.annotations}


def history_doc(record: HistoryRecord) -> dict[str, Any]:
    """A recorded transition as ``GET /edgemon/api/v1/alerts/history`` shows it."""
    return {"id": record.id, "rule": record.rule, "host": record.host,
            "labels": record.labels, "from": record.from_status, "status": record.status,
            "at_ms": record.at_ms, "at": rfc3339_ms(record.at_ms),
            "created_ms": record.created_ms, "value": record.value,
            "starts_at_ms": record.starts_at, "ends_at_ms": record.ends_at,
            "historical": record.historical, "silenced": record.silenced,
            "notified": record.notified, "reason": record.reason,
            "fingerprint": record.fingerprint, "annotations": record.annotations}


def active_alerts(engine: AlertEngine, rule: str | None = None, host: str | None = None,
                  status: str | None = None, *, now: int | None = None,
                  silences: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Pending and firing alerts (blocking: SQLite), with the silence covering each at ``now``
    (``silences``: the store's, not yet ended at ``now``, if already read)."""
    now = engine.clock_ms() if now is None else now
    covering = SilenceSet(engine.store.silences(now) if silences is None else silences, now)
    return [alert_doc(a, covering.silenced_by(a.alert_labels) if covering else None)
            for a in engine.store.alerts(rule=rule, host=host, status=status)]


def every_active_alert(engine: AlertEngine) -> list[dict[str, Any]]:
    """``active_alerts(engine)``, built again only when the alert state changed (blocking;
    shared with other callers: read it, never change it)."""
    return state_cache(engine).get(
        "active", lambda now, silences: active_alerts(engine, now=now, silences=silences))


def active_alerts_page(engine: AlertEngine, *, limit: int, after: tuple[str, str] | None = None,
                       rule: str | None = None, host: str | None = None,
                       status: str | None = None) -> dict[str, Any]:
    """One page of the active alerts by rule and key (blocking: SQLite), with the counts of
    every alert matching the filters: ``alerts``, ``total``, ``counts`` (per status),
    ``rules`` (per rule and status), ``limit`` and ``next`` (the cursor of the next page,
    None on the last). Pages of at most ``ALERTS_LIMIT`` are kept until the alert state
    changes (``alerts_cache.py``): shared, read them, never change them."""
    if limit > ALERTS_LIMIT:  # kept only while small
        return _active_alerts_page(engine, engine.clock_ms(), None, limit=limit, after=after,
                                   rule=rule, host=host, status=status)
    return state_cache(engine).get(  # type: ignore[no-any-return]
        ("page", limit, after, rule, host, status),
        lambda now, silences: _active_alerts_page(engine, now, silences, limit=limit,
                                                  after=after, rule=rule, host=host,
                                                  status=status))


def _active_alerts_page(engine: AlertEngine, now: int, silences: list[dict[str, Any]] | None,
                        *, limit: int, after: tuple[str, str] | None, rule: str | None,
                        host: str | None, status: str | None) -> dict[str, Any]:
    filters = {"rule": rule, "host": host, "status": status}
    covering = SilenceSet(engine.store.silences(now) if silences is None else silences, now)
    records = engine.store.alerts_page(after=after, limit=limit + 1, **filters)
    more = len(records) > limit
    records = records[:limit]
    per_rule: dict[str, dict[str, Any]] = {}
    counts = {"pending": 0, "firing": 0}
    for name, state, n in engine.store.alert_counts(**filters):
        per_rule.setdefault(name, {"rule": name, "pending": 0, "firing": 0})[state] = n
        counts[state] = counts.get(state, 0) + n
    return {"alerts": [alert_doc(a, covering.silenced_by(a.alert_labels) if covering else None)
                       for a in records],
            "total": sum(counts.values()), "counts": counts, "rules": list(per_rule.values()),
            "limit": limit,
            "next": encode_cursor(records[-1].rule, records[-1].key) if more else None}


def encode_cursor(rule: str, key: str) -> str:
    """The opaque ``after`` of the page that follows the alert ``(rule, key)``."""
    raw = json.dumps([rule, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """``encode_cursor``'s ``(rule, key)``; ``ParamError`` for anything it did not make."""
    try:
        if len(cursor) > 8192:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        rule, key = json.loads(raw)
        if not isinstance(rule, str) or not isinstance(key, str):
            raise ValueError("not two strings")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ParamError("after", "not a cursor: pass the 'next' of the previous page") \
            from None
    return rule, key


def alert_history(engine: AlertEngine, **filters: Any) -> list[dict[str, Any]]:
    """Transitions, newest first (blocking); ``filters``: those of ``AlertStore.history``."""
    return [history_doc(r) for r in engine.store.history(**filters)]


def rules_status(engine: AlertEngine) -> list[dict[str, Any]]:
    """Every loaded rule as written, with ``health``: how it was last evaluated (None for a
    disabled rule)."""
    return [{**rule.model_dump(by_alias=True, mode="json"),
             "health": engine.rule_health(rule.name) if rule.enabled else None}
            for rule in engine.ruleset.rules]


def routes(engine: AlertEngine) -> list[web.RouteDef]:
    """The alerting endpoints, bound to ``engine`` (for an app with ``errors_middleware``,
    which ``create_app`` installs: it answers ``BadRequest`` with 400)."""

    async def alerts(request: web.Request) -> web.Response:
        params = query_params(request, ("rule", "host", "status", "limit", "after"))
        if params.get("status") not in (None, "pending", "firing"):
            raise ParamError("status", "use pending or firing")
        limit = ALERTS_LIMIT
        if "limit" in params:
            if not params["limit"].isdigit() or not 1 <= int(params["limit"]) <= ALERTS_LIMIT_MAX:
                raise ParamError("limit", f"an integer 1..{ALERTS_LIMIT_MAX}")
            limit = int(params["limit"])
        after = decode_cursor(params["after"]) if "after" in params else None
        page = await asyncio.to_thread(
            active_alerts_page, engine, limit=limit, after=after, rule=params.get("rule"),
            host=params.get("host"), status=params.get("status"))
        if "limit" in params or "after" in params or page["next"] is not None:
            return json_response(page)
        return json_response({"alerts": page["alerts"]})  # as before paging: all there is

    async def history(request: web.Request) -> web.Response:
        params = query_params(request, ("rule", "host", "since", "until", "status", "limit"))
        now = engine.clock_ms()
        status = params.get("status")
        if status is not None and status not in _STATUSES:
            raise ParamError("status", f"use one of {', '.join(_STATUSES)}")
        limit = 1000
        if "limit" in params:
            if not params["limit"].isdigit() or not 1 <= int(params["limit"]) <= 10_000:
                raise ParamError("limit", "an integer 1..10000")
            limit = int(params["limit"])
        since, until = _time_param(params, "since", now), _time_param(params, "until", now)
        if since is not None and until is not None and until <= since:
            raise BadRequest("parameter 'until' must be after 'since'")
        data = await asyncio.to_thread(alert_history, engine, rule=params.get("rule"),
                                       host=params.get("host"), since_ms=since, until_ms=until,
                                       status=status, limit=limit)
        return json_response({"history": data})

    async def rules(request: web.Request) -> web.Response:
        query_params(request, ())
        ruleset = engine.ruleset
        statuses = await asyncio.to_thread(rules_status, engine)  # on a follower: a read
        return json_response({"source": ruleset.source, "digest": ruleset.digest,
                              "loaded_ms": engine.rules_loaded_ms,
                              "settings": ruleset.settings.model_dump(mode="json"),
                              "receivers": [{"name": r.name, "url": _redacted(r.url),
                                             "send_resolved": r.send_resolved}
                                            for r in ruleset.receivers.values()],
                              "rules": statuses})

    async def reload(request: web.Request) -> web.Response:
        query_params(request, ())
        try:
            ruleset = await asyncio.to_thread(engine.reload_rules)
        except RulesError as exc:
            return error_response(400, "rules not reloaded: the file is invalid",
                                  errors=exc.errors)
        return json_response({"reloaded": True, "source": ruleset.source,
                              "digest": ruleset.digest, "rules": len(ruleset.rules),
                              "enabled": len(ruleset.enabled)})

    async def silences(request: web.Request) -> web.Response:
        params = query_params(request, ("all",))
        if params.get("all", "false") not in ("true", "false", "1", "0"):
            raise ParamError("all", "true or false")
        everything = params.get("all") in ("true", "1")
        data = await asyncio.to_thread(engine.store.silences, engine.clock_ms(), everything)
        now = engine.clock_ms()
        for silence in data:
            silence["state"] = ("expired" if silence["ends_ms"] <= now else
                                "pending" if silence["starts_ms"] > now else "active")
        return json_response({"silences": data})

    async def add_silence(request: web.Request) -> web.Response:
        query_params(request, ())
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("body: not valid JSON") from None
        try:
            body = SilenceIn.model_validate(raw)
        except ValidationError as exc:
            raise BadRequest(_pydantic_message(exc)) from None
        now = engine.clock_ms()
        starts = now
        if body.startsAt is not None:
            starts = _time_param({"startsAt": str(body.startsAt)}, "startsAt", now) or now
        if (body.endsAt is None) == (body.duration is None):
            raise BadRequest("give exactly one of 'endsAt' and 'duration'")
        if body.endsAt is not None:
            ends = _time_param({"endsAt": str(body.endsAt)}, "endsAt", now)
        else:
            try:
                ends = starts + parse_duration_ms(body.duration)
            except ValueError as exc:
                raise BadRequest(f"duration: {exc}") from None
        assert ends is not None
        if ends <= max(starts, now):
            raise BadRequest("endsAt must be in the future and after startsAt")
        matchers = [m.to_json() for m in body.matchers]
        silence_id = await asyncio.to_thread(engine.store.add_silence, matchers, starts, ends,
                                             body.createdBy, body.comment, now)
        return json_response({"id": silence_id, "silenceID": silence_id, "starts_ms": starts,
                              "ends_ms": ends}, 201)

    async def expire_silence(request: web.Request) -> web.Response:
        silence_id = request.match_info["id"]
        if not re.fullmatch(r"[0-9a-f]{32}", silence_id):
            raise BadRequest("silence id: 32 hex digits")
        found = await asyncio.to_thread(engine.store.expire_silence, silence_id,
                                        engine.clock_ms())
        if not found:
            return error_response(404, f"no silence {silence_id}")
        return json_response({"id": silence_id, "expired": True})

    return [
        web.get("/edgemon/api/v1/alerts", alerts),
        web.get("/edgemon/api/v1/alerts/history", history),
        web.get("/edgemon/api/v1/rules", rules),
        web.post("/edgemon/api/v1/rules/reload", reload),
        web.get("/edgemon/api/v1/silences", silences),
        web.post("/edgemon/api/v1/silences", add_silence),
        web.delete("/edgemon/api/v1/silences/{id}", expire_silence),
    ]


def add_routes(app: web.Application, engine: AlertEngine) -> None:
    app.add_routes(routes(engine))


# --- OpenAPI -----------------------------------------------------------------------------------

JSON = responses.JSON_CONTENT
_BAD = responses.error_doc("bad parameter or body (the message names it)")
_TIME = "unix seconds, unix ms, RFC 3339 or now-<duration>"

OPENAPI_PATHS: dict[str, Any] = {
    "/edgemon/api/v1/alerts": {"get": {
        "summary": "Active alerts (pending and firing)", "tags": ["alerting"],
        "parameters": [param_doc("rule", "only this rule"), param_doc("host", "only this host"),
                       param_doc("status", "pending or firing",
                                 {"type": "string", "enum": ["pending", "firing"]}),
                       param_doc("limit", f"at most this many, by rule and key (default "
                                          f"{ALERTS_LIMIT}); with limit or after, or when "
                                          "there are more, the answer also has total, counts, "
                                          "rules and next",
                                 {"type": "integer", "minimum": 1,
                                  "maximum": ALERTS_LIMIT_MAX, "default": ALERTS_LIMIT}),
                       param_doc("after", "the next page: the 'next' of the previous answer")],
        "responses": {"200": ok_doc("ActiveAlerts"), "400": _BAD}}},
    "/edgemon/api/v1/alerts/history": {"get": {
        "summary": "Recorded transitions, newest first", "tags": ["alerting"],
        "parameters": [param_doc("rule", "only this rule"), param_doc("host", "only this host"),
                       param_doc("since", f"sample time >= this ({_TIME})"),
                       param_doc("until", f"sample time < this ({_TIME})"),
                       param_doc("status", "transition to this state",
                                 {"type": "string", "enum": list(_STATUSES)}),
                       param_doc("limit", "at most this many (default 1000)",
                                 {"type": "integer", "minimum": 1, "maximum": 10000})],
        "responses": {"200": ok_doc("AlertHistory"), "400": _BAD}}},
    "/edgemon/api/v1/rules": {"get": {
        "summary": "Loaded alert rules, settings, receivers and each rule's evaluation health",
        "tags": ["alerting"], "responses": {"200": ok_doc("AlertRules")}}},
    "/edgemon/api/v1/rules/reload": {"post": {
        "summary": "Re-read the rules file (kept unchanged if invalid)", "tags": ["alerting"],
        "responses": {"200": {"description": "reloaded",
                              "content": {JSON: {"schema": {"type": "object"}}}},
                      "400": responses.error_doc("invalid file: every error with FILE:LINE")}}},
    "/edgemon/api/v1/silences": {
        "get": {"summary": "Silences not yet expired (all=true: every silence kept)",
                "tags": ["alerting"],
                "parameters": [param_doc("all", "include expired ones", {"type": "boolean"})],
                "responses": {"200": ok_doc("Silences"), "400": _BAD}},
        "post": {"summary": "Create a silence: matching alerts are recorded but not notified",
                 "tags": ["alerting"],
                 "requestBody": {"required": True, "content": {JSON: {"schema": {
                     "$ref": "#/components/schemas/SilenceIn"}}}},
                 "responses": {"201": {"description": "created", "content": {JSON: {
                     "schema": {"type": "object", "properties": {
                         "id": {"type": "string"}, "starts_ms": {"type": "integer"},
                         "ends_ms": {"type": "integer"}}}}}},
                     "400": _BAD}}},
    "/edgemon/api/v1/silences/{id}": {"delete": {
        "summary": "Expire a silence now", "tags": ["alerting"],
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "expired"}, "400": _BAD,
                      "404": {"description": "no such silence"}}}},
}

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
OPENAPI_SCHEMAS: dict[str, Any] = {
    "Error": responses.ERROR_SCHEMA,  # the one error schema of every route (also in api.OPENAPI)
    "ActiveAlerts": {"type": "object", "properties": {"alerts": {"type": "array", "items": {
        "type": "object", "properties": {
            "rule": {"type": "string"}, "host": {"type": "string"}, "labels": _LABELS,
            "alert_labels": _LABELS, "status": {"type": "string", "enum": ["pending", "firing"]},
            "active_since_ms": {"type": ["integer", "null"]},
            "fired_at_ms": {"type": ["integer", "null"]},
            "value": {"type": ["number", "null"]}, "notified": {"type": "boolean"},
            "silenced_by": {"type": ["string", "null"]}, "fingerprint": {"type": "string"},
            "annotations": _LABELS}}},
        "total": {"type": "integer", "description": "alerts matching the filters, every page"},
        "counts": {"type": "object", "description": "of those, how many per status",
                   "properties": {"pending": {"type": "integer"},
                                  "firing": {"type": "integer"}}},
        "rules": {"type": "array", "description": "of those, how many per rule and status",
                  "items": {"type": "object", "properties": {
                      "rule": {"type": "string"}, "pending": {"type": "integer"},
                      "firing": {"type": "integer"}}}},
        "limit": {"type": "integer"},
        "next": {"type": ["string", "null"],
                 "description": "pass as 'after' for the next page; null on the last"}}},
    "AlertHistory": {"type": "object", "properties": {"history": {"type": "array", "items": {
        "type": "object", "properties": {
            "id": {"type": "integer"}, "rule": {"type": "string"}, "host": {"type": "string"},
            "labels": _LABELS, "from": {"type": "string"},
            "status": {"type": "string", "enum": list(_STATUSES)},
            "at_ms": {"type": "integer", "description": "sample time of the transition"},
            "created_ms": {"type": "integer"}, "value": {"type": ["number", "null"]},
            "historical": {"type": "boolean",
                           "description": "older than notify_max_age or back-filled: "
                                          "recorded, never notified"},
            "silenced": {"type": "boolean"}, "notified": {"type": "boolean"},
            "reason": {"type": "string"}, "fingerprint": {"type": "string"},
            "annotations": _LABELS}}}}},
    "AlertRules": {"type": "object", "properties": {
        "source": {"type": "string"}, "digest": {"type": "string"},
        "settings": {"type": "object"}, "receivers": {"type": "array"},
        "rules": {"type": "array", "items": {"type": "object"}}}},
    "SilenceIn": {"type": "object", "required": ["matchers"], "properties": {
        "matchers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "value"], "properties": {
                "name": {"type": "string"}, "value": {"type": "string"},
                "isRegex": {"type": "boolean", "default": False},
                "isEqual": {"type": "boolean", "default": True}}}},
        "startsAt": {"type": ["string", "integer"], "description": _TIME},
        "endsAt": {"type": ["string", "integer"], "description": _TIME},
        "duration": {"type": "string", "description": "instead of endsAt: 30m, 2h, 1d"},
        "createdBy": {"type": "string"}, "comment": {"type": "string"}}},
    "Silences": {"type": "object", "properties": {"silences": {"type": "array", "items": {
        "type": "object", "properties": {
            "id": {"type": "string"}, "matchers": {"type": "array"},
            "starts_ms": {"type": "integer"}, "ends_ms": {"type": "integer"},
            "state": {"type": "string", "enum": ["pending", "active", "expired"]},
            "created_by": {"type": "string"}, "comment": {"type": "string"}}}}}},
}


def merge_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the alerting paths and schemas to an OpenAPI document (in place; returned)."""
    document.setdefault("paths", {}).update(OPENAPI_PATHS)
    document.setdefault("components", {}).setdefault("schemas", {}).update(OPENAPI_SCHEMAS)
    return document


__all__ += ["parse_time_ms"]


def _redacted(url: str | None) -> str | None:
    """Where a receiver sends, without the secret its URL may carry (Slack and Teams webhook
    URLs are the credential; others may hold a token in the path or query)."""
    if not url:
        return url
    parts = urlsplit(url)
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{hidden}"
