"""Silences: Alertmanager-style matchers with a time range. A silenced transition is recorded
in history (``silenced = true``) but no firing notification is sent for it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Matcher", "SilenceSet", "matches"]


class Matcher(BaseModel):
    """``name`` (a label: alertname, host, severity, mount, ...) equal to / matching ``value``.
    ``isRegex`` values are fully anchored, as in Alertmanager; ``isEqual = false`` negates."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")]
    value: Annotated[str, Field(max_length=1024)]
    is_regex: Annotated[bool, Field(alias="isRegex")] = False
    is_equal: Annotated[bool, Field(alias="isEqual")] = True

    @model_validator(mode="after")
    def _regex(self) -> Matcher:
        if self.is_regex:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self.name!r}: bad regular expression: {exc}") from None
        return self

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex,
                "isEqual": self.is_equal}


def _compile(matcher: dict[str, Any]) -> tuple[str, Any, bool]:
    if matcher.get("isRegex"):
        return matcher["name"], re.compile(f"(?:{matcher['value']})\\Z"), matcher.get(
            "isEqual", True)
    return matcher["name"], matcher["value"], matcher.get("isEqual", True)


def matches(matchers: list[dict[str, Any]], labels: Mapping[str, str]) -> bool:
    for name, want, equal in map(_compile, matchers):
        have = labels.get(name, "")
        hit = bool(want.match(have)) if isinstance(want, re.Pattern) else have == want
        if hit != equal:
            return False
    return True


class SilenceSet:
    """The silences active at one instant, compiled once per cycle."""

    def __init__(self, silences: list[dict[str, Any]], now_ms: int) -> None:
        self.active = [(s["id"], [_compile(m) for m in s["matchers"]]) for s in silences
                       if s["starts_ms"] <= now_ms < s["ends_ms"]]

    def __bool__(self) -> bool:
        return bool(self.active)

    def silenced_by(self, labels: Mapping[str, str]) -> str | None:
        for sid, compiled in self.active:
            ok = True
            for name, want, equal in compiled:
                have = labels.get(name, "")
                hit = bool(want.match(have)) if isinstance(want, re.Pattern) else have == want
                if hit != equal:
                    ok = False
                    break
            if ok:
                return str(sid)
        return None
