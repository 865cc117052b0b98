"""Annotation templates: ``str.format`` syntax over a fixed, safe set of fields.

Allowed fields: ``{host}``, ``{value}``, ``{rule}``, ``{severity}``, ``{metric}``,
``{threshold}`` and ``{labels[key]}``, each with an optional conversion (``!s``, ``!r``) and
format spec (``{value:.1f}``). Attribute access (``{value.real}``), positional fields (``{}``,
``{0}``) and nested fields inside a format spec are refused, so a template can never reach into
Python objects. ``check_template`` is run when the rules are loaded (a bad template is a rule
validation error); ``render`` never raises: a field that cannot be formatted at run time (a
missing label, a NaN value) renders as plain text instead.
"""

from __future__ import annotations

import _string  # the C helper str.format itself uses to split "labels[mount]"
import math
import string
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_TEXT", "DEFAULT_TITLE", "FIELDS", "MESSAGE_FIELDS", "TITLE_FIELDS",
           "check_template", "render", "render_fields"]

FIELDS = ("host", "value", "rule", "severity", "metric", "threshold", "labels")
_NUMERIC = ("value", "threshold")


class _Labels(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


# Receiver messages (Slack, Teams, e-mail): ``title`` once per message, ``text`` per alert.
TITLE_FIELDS = ("status", "rule", "count", "severity")
MESSAGE_FIELDS = ("status", "rule", "host", "severity", "value", "since", "link", "summary",
                  "labels")
DEFAULT_TITLE = "[{status}] {rule} ({count})"
DEFAULT_TEXT = "{host}: {summary} - value {value}, since {since} - {link}"
_SAMPLE = {"host": "host-1", "value": 12.5, "rule": "rule", "severity": "warning",
           "metric": "metric", "threshold": 80.0, "labels": None, "status": "FIRING",
           "count": 2, "since": "2027-01-15 07:58:00 UTC", "link": "https://x/y",
           "summary": "summary"}


def check_template(template: str, fields: tuple[str, ...] = FIELDS) -> None:
    """Raise ``ValueError`` (with a readable message) if ``template`` is not acceptable
    (``fields``: the names it may use; annotation templates by default)."""
    if len(template) > 4096:
        raise ValueError("template longer than 4096 characters")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template syntax: {exc}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ValueError("positional fields ({} or {0}) are not allowed: use a name, "
                             f"one of {', '.join(fields)}")
        first, rest = _string.formatter_field_name_split(field)
        if first not in fields:
            raise ValueError(f"unknown field {{{field}}}: use {', '.join(fields)} "
                             "(labels as {labels[key]})")
        parts = list(rest)
        if first == "labels":
            if len(parts) != 1 or parts[0][0] or not isinstance(parts[0][1], str):
                raise ValueError(f"{{{field}}}: write labels as {{labels[key]}}")
        elif parts:
            raise ValueError(f"{{{field}}}: attribute and index access are not allowed")
        if conversion not in (None, "s", "r"):
            raise ValueError(f"{{{field}!{conversion}}}: only !s and !r conversions")
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"{{{field}}}: nested fields in a format spec are not allowed")
    # A format spec that does not fit the field's type (``{host:.1f}``, ``{value:zz}``) only
    # shows when formatting: try it with values of the right types.
    sample = {**_SAMPLE, "labels": _Labels(mount="/")}
    try:
        template.format_map(sample)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"bad template: {exc}") from None


class _SafeFormatter(string.Formatter):
    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        return kwargs.get(str(key), "")

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


_FORMATTER = _SafeFormatter()


def render(template: str, *, host: str, value: float | None, rule: str, severity: str,
           labels: Mapping[str, str], metric: str = "", threshold: float | None = None) -> str:
    """Fill ``template`` (already accepted by ``check_template``); never raises."""
    if value is not None and isinstance(value, float) and math.isfinite(value):
        value = round(value, 6)
    context = {"host": host, "value": "n/a" if value is None else value, "rule": rule,
               "severity": severity, "metric": metric,
               "threshold": "" if threshold is None else threshold,
               "labels": _Labels(labels)}
    return render_fields(template, context)


def render_fields(template: str, context: dict[str, Any]) -> str:
    """Fill an accepted template from ``context`` (``labels``: a mapping); never raises."""
    context = {**context, "labels": _Labels(context.get("labels") or {})}
    try:
        return _FORMATTER.vformat(template, (), context)
    except Exception:  # a template that slipped past check_template: show it raw
        return template
