"""The parameters of ``GET /edgemon/api/v1/query``, validated with pydantic: a bad one is a
``ParamError`` naming it (a 400 ``{"error": "..."}``, ``responses.py``); the default step for a
range (``auto_step_ms``, also the dashboard's)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgemon.collector.http.responses import BadRequest, ParamError
from edgemon.collector.http.timeparse import parse_duration_ms, parse_time_ms
from edgemon.collector.storage.base import Aggregation, RangeQuery, Tier
from edgemon.protocol.names import NAME_PATTERN

__all__ = ["AUTO_POINTS", "DEFAULT_RANGE_MS", "NAME_RE", "QueryParams", "auto_step_ms",
           "parse_query_params", "time_param"]

_NAME = NAME_PATTERN  # metric names and label keys, as batches carry them
NAME_RE = re.compile(_NAME)
_HOST_GLOB_RE = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,128}")
_NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                 43200, 86400)
AUTO_POINTS = 300
DEFAULT_RANGE_MS = 3_600_000


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
    agg: Aggregation = "avg"
    host: list[str] = []
    label: dict[str, Annotated[str, Field(max_length=256)]] = {}
    rate: bool = False
    group_by: str | None = None
    tier: Tier = "auto"
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
            if not NAME_RE.fullmatch(key):
                raise ValueError(f"label key {key[:40]!r} is not a valid name")
        return labels

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: str | None) -> str | None:
        if value is None:
            return None
        keys = value.split(",")
        if not all(NAME_RE.fullmatch(k.strip()) for k in keys):
            raise ValueError("use 'host' and/or label keys separated by commas")
        return value

    def to_range_query(self, now_ms: int) -> RangeQuery:
        """Resolve times and step; raise ``ParamError`` naming the parameter (``BadRequest``
        for a combination ``RangeQuery`` refuses)."""
        end = time_param("end", parse_time_ms, self.end, now_ms) if self.end else now_ms
        if self.start:
            start = time_param("start", parse_time_ms, self.start, now_ms)
        else:
            start = end - DEFAULT_RANGE_MS
        if start >= end:
            raise ParamError("start", "must be before end")
        if self.step:
            step = time_param("step", lambda s, _now: parse_duration_ms(s), self.step, now_ms)
            if step < 1000:
                raise ParamError("step", "must be at least 1 second")
        else:
            step = auto_step_ms(end - start)
        group_by = tuple(k.strip() for k in self.group_by.split(",")) if self.group_by else None
        try:
            return RangeQuery(name=self.metric, start_ms=start, end_ms=end, step_ms=step,
                              aggregation=self.agg, hosts=tuple(self.host),
                              labels=dict(self.label), rate=self.rate, group_by=group_by,
                              tier=self.tier)
        except ValueError as exc:  # a combination the query type refuses
            raise BadRequest(str(exc)) from None


def time_param(name: str, parse: Callable[[str, int], int], value: str, now_ms: int) -> int:
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
            if not NAME_RE.fullmatch(key[6:]):
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
