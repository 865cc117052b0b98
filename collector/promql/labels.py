"""Label sets as Prometheus sees edgemon's series, and label matchers.

A label set is a tuple of ``(name, value)`` pairs sorted by name, without empty values
(Prometheus treats an empty value as an absent label). See ``collector/PROMETHEUS.md`` for
how a stored series becomes one: ``__name__`` is the metric name, ``host`` the host id, then
the agent's labels; an agent label that collides with ``host`` or a reserved ``__`` name is
kept as ``exported_<name>`` (what Prometheus does to a target label it must not overwrite).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "HOST_LABEL",
    "METRIC_NAME",
    "LabelMatcher",
    "Labels",
    "compile_regex",
    "drop_name",
    "format_labels",
    "labels_from",
    "metric_name",
    "series_labels",
]

Labels = tuple[tuple[str, str], ...]

METRIC_NAME = "__name__"
HOST_LABEL = "host"
_RESERVED = frozenset({METRIC_NAME, HOST_LABEL})
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def labels_from(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return tuple(sorted((k, v) for k, v in items if v != ""))


def series_labels(name: str, host: str, agent_labels: Mapping[str, str]) -> Labels:
    """The Prometheus label set of one stored series."""
    out = {METRIC_NAME: name, HOST_LABEL: host}
    for key, value in agent_labels.items():
        if key in _RESERVED or key.startswith("__"):
            key = f"exported_{key.strip('_') or 'label'}"
        out[key] = value
    return labels_from(out)


def drop_name(labels: Labels) -> Labels:
    if labels and labels[0][0] == METRIC_NAME:  # "__name__" sorts before any other name
        return labels[1:]
    return tuple(p for p in labels if p[0] != METRIC_NAME)


def metric_name(labels: Labels) -> str:
    for k, v in labels:
        if k == METRIC_NAME:
            return v
    return ""


def format_labels(labels: Labels) -> str:
    """``{__name__="x", a="b"}`` like Prometheus prints a label set in messages."""
    return "{" + ", ".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """``name op "value"`` with op one of ``=``, ``!=``, ``=~``, ``!~`` (regexes anchored)."""

    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def create(cls, name: str, op: str, value: str) -> LabelMatcher:
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = compile_regex(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        elif op not in ("=", "!="):
            raise ValueError(f"unknown match operator {op!r}")
        return cls(name, op, value, regex)

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(value) is not None
        return found if self.op == "=~" else not found

    def matches_empty(self) -> bool:
        return self.matches("")

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{_escape(self.value)}"'


_LEADING_FLAGS = re.compile(r"\(\?([ims]+)\)")


def compile_regex(value: str) -> re.Pattern[str]:
    """An RE2-style regex for ``fullmatch``; leading flags like ``(?i)`` apply to the whole."""
    flags = _LEADING_FLAGS.match(value)
    if flags:
        return re.compile(f"(?{flags.group(1)})(?:{value[flags.end():]})")
    return re.compile(f"(?:{value})")


def matches_all(labels: Labels, matchers: Iterable[LabelMatcher]) -> bool:
    present = dict(labels)
    return all(m.matches(present.get(m.name, "")) for m in matchers)
