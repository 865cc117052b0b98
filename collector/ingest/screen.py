"""Per-series hygiene and plausibility of a decoded batch: what no real host can send is dropped.

``protocol.decode`` accepts or refuses a batch as a whole: after it, every field is well-formed.
This screen then looks at each series (a metric name with its label values) on its own, and drops
the series — every entry of it in the batch — that a real host cannot produce. The rest of the
batch is stored: one odd interface name or one broken sensor must not cost a good host its other
series. Each dropped series is counted under its reason (``Rejects.record_series``).

Reasons (SPEC.md §8):

* ``reserved_name``: a metric name starting with ``__`` or ``edgemon_`` (the collector's own
  metrics), an ``agent_`` name that is not one of the agent's self-metrics with the same kind,
  unit and label keys (``edgemon.agent.selfmetrics``), or a label key starting with ``__``;
* ``not_printable``: a label value or unit holding a control, format, separator (other than the
  space), surrogate, private-use or unassigned character (``str.isprintable``);
* ``percent_out_of_range``: a ``percent`` value outside [0, 100] by more than 0.5;
* ``negative_value``: a counter, or a value of a unit that counts things (bytes, packets, errors,
  operations, inodes), below zero;
* ``value_too_large``: any value beyond +-2^62 (4.6e18); counters and byte counts included.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any, Final

from edgemon.agent import selfmetrics
from edgemon.protocol.batch import COUNTER, MetricDef
from edgemon.protocol.limits import MAX_INT, MIN_INT
from edgemon.protocol.schema import ValidBatch

__all__ = ["PERCENT_TOLERANCE", "PLAUSIBLE_MAX", "Refusal", "SeriesKey", "screen", "series_keys",
           "without"]

SeriesKey = tuple[str, tuple[str, ...]]  # (metric name, label values)

PLAUSIBLE_MAX: Final = 1 << 62
PERCENT_TOLERANCE: Final = 0.5  # percentage points beyond [0, 100] still accepted (rounding)
COUNTING_UNITS: Final = frozenset({"bytes", "packets", "errors", "operations", "inodes"})
RESERVED_PREFIXES: Final = ("__", "edgemon_")
AGENT_PREFIX: Final = "agent_"
# The agent's self-metrics family (``agent_*``): the only source of that prefix.
AGENT_SELF_METRICS: Final = {
    d.name: (d.kind, d.unit, d.label_keys)
    for d in vars(selfmetrics).values() if isinstance(d, MetricDef)}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    detail: str


def series_keys(metrics: list[list[Any]]) -> Iterator[SeriesKey]:
    """Every series of a batch's metrics, once."""
    for name, _kind, _unit, _scale, _keys, entries in metrics:
        yield from {(name, tuple(e[0])) for e in entries}


def screen(batch: ValidBatch) -> dict[SeriesKey, Refusal]:
    """The series of ``batch`` that no real host produces, with why (the first reason found)."""
    if _all_plausible(batch.metrics):
        return {}
    refused: dict[SeriesKey, Refusal] = {}
    for name, kind, unit, scale, keys, entries in batch.metrics:
        whole = _metric_refusal(name, kind, unit, keys)
        if whole is not None:
            for labels in {tuple(e[0]) for e in entries}:
                refused[(name, labels)] = whole
            continue
        low, high = _bounds(kind, unit, scale)
        for labels, _offset, values in entries:
            key = (name, tuple(labels))
            if key in refused:
                continue
            if not all(map(str.isprintable, labels)):
                refused[key] = Refusal("not_printable",
                                       f"{_series(name, keys, labels)}: a label value holds a "
                                       "control or other unprintable character")
                continue
            if len(values) == 1:
                lo = hi = values[0]
            else:
                running = list(accumulate(values))
                lo, hi = min(running), max(running)
            if lo < low or hi > high:
                refused[key] = Refusal(*_value_problem(name, kind, unit, scale, lo, hi, keys,
                                                       labels))
    return refused


# Metric heads (name, kind, unit, label keys) ``_metric_refusal`` passed: a fleet sends the same
# few hundred again and again. Bounded: emptied when full.
_PLAIN_HEADS: dict[tuple[tuple[str, str, str], tuple[str, ...]], None] = {}
_PLAIN_HEADS_MAX: Final = 16_384
_TEXTS: Final = itemgetter(0, 1, 2)  # name, kind, unit of a metric
_BOUNDED_BY: Final = itemgetter(1, 2, 3)  # kind, unit, scale: what ``_bounds`` depends on


def _all_plausible(metrics: list[list[Any]]) -> bool:
    """Whether ``screen`` refuses no series of ``metrics``: the same rules, each checked over the
    whole batch at once in C loops (``map``, ``accumulate``, ``min``, ``max``) instead of entry
    by entry, so that a clean batch (nearly every one) costs little; when this says no,
    ``screen`` finds which series and why."""
    heads = list(zip(map(_TEXTS, metrics), map(tuple, map(itemgetter(4), metrics)),
                     strict=True))
    if not all(map(_PLAIN_HEADS.__contains__, heads)):
        for head in heads:
            (name, kind, unit), keys = head
            if _metric_refusal(name, kind, unit, list(keys)) is not None:
                return False
            if len(_PLAIN_HEADS) >= _PLAIN_HEADS_MAX:
                _PLAIN_HEADS.clear()
            _PLAIN_HEADS[head] = None
    by_bounds: dict[tuple[Any, ...], list[list[int]]] = {}
    for bounds, entries in zip(map(_BOUNDED_BY, metrics), map(itemgetter(5), metrics),
                               strict=True):
        by_bounds.setdefault(bounds, []).extend(map(itemgetter(2), entries))
    labels = chain.from_iterable(map(itemgetter(0), chain.from_iterable(map(itemgetter(5),
                                                                            metrics))))
    if not all(map(str.isprintable, labels)):
        return False
    for (kind, unit, scale), values in by_bounds.items():
        low, high = _bounds(kind, unit, scale)
        if values and not _running_within(values, low, high):
            return False
    return True


def _running_within(values: list[list[int]], low: int, high: int) -> bool:
    """Whether every running sum of every list of delta-coded ``values`` (non-empty lists of
    a checked batch: ``schema`` saw every running sum within signed 64 bits) lies in
    [``low``, ``high``]. Bounds wider than 64 bits need no look; lists without a negative
    number rise from their first value to their sum (no running sum built); the rest are
    accumulated once."""
    if low <= MIN_INT and high >= MAX_INT:
        return True
    if min(map(min, values)) >= 0:
        return min(map(itemgetter(0), values)) >= low and max(map(sum, values)) <= high
    running = list(chain.from_iterable(map(accumulate, values)))
    return min(running) >= low and max(running) <= high


def without(metrics: list[list[Any]], refused: dict[SeriesKey, Any]) -> list[list[Any]]:
    """``metrics`` less the entries of ``refused`` series (metrics left empty are left out)."""
    out = []
    for name, kind, unit, scale, keys, entries in metrics:
        kept = [e for e in entries if (name, tuple(e[0])) not in refused]
        if kept:
            out.append([name, kind, unit, scale, keys, kept])
    return out


def _metric_refusal(name: str, kind: str, unit: str, keys: list[str]) -> Refusal | None:
    if name.startswith(RESERVED_PREFIXES):
        return Refusal("reserved_name", f"{name}: names starting with "
                       f"{' or '.join(RESERVED_PREFIXES)} are reserved")
    if name.startswith(AGENT_PREFIX) and \
            AGENT_SELF_METRICS.get(name) != (kind, unit, tuple(keys)):
        return Refusal("reserved_name", f"{name}: {AGENT_PREFIX}* names are the agent's "
                       "self-metrics, and this is not one of them")
    if any(k.startswith("__") for k in keys):
        return Refusal("reserved_name", f"{name}: label keys starting with __ are reserved")
    if not unit.isprintable():
        return Refusal("not_printable", f"{name}: the unit holds an unprintable character")
    return None


def _bounds(kind: str, unit: str, scale: int) -> tuple[int, int]:
    """The lowest and highest plausible raw (scaled) value of a metric."""
    one = 10**scale
    low, high = -PLAUSIBLE_MAX * one, PLAUSIBLE_MAX * one
    if kind == COUNTER or unit in COUNTING_UNITS:
        low = 0
    if unit == "percent":
        slack = int(PERCENT_TOLERANCE * one)
        low, high = -slack, 100 * one + slack
    return low, high


def _value_problem(name: str, kind: str, unit: str, scale: int, lo: int, hi: int,
                   keys: list[str], labels: list[str]) -> tuple[str, str]:
    where = _series(name, keys, labels)
    one = 10**scale
    if unit == "percent":
        return ("percent_out_of_range", f"{where}: {_real(lo if lo < 0 else hi, scale)} % is "
                f"outside [0, 100] (tolerance {PERCENT_TOLERANCE})")
    if lo < 0 and (kind == COUNTER or unit in COUNTING_UNITS):
        what = "a counter" if kind == COUNTER else f"a count of {unit}"
        return "negative_value", f"{where}: {_real(lo, scale)} is negative for {what}"
    value = hi if hi > PLAUSIBLE_MAX * one else lo
    return "value_too_large", f"{where}: {_real(value, scale)} is beyond +-2^62"


def _real(raw: int, scale: int) -> str:
    return str(raw) if scale == 0 else f"{raw / 10**scale:g}"


def _series(name: str, keys: list[str], labels: list[str]) -> str:
    shown = ",".join(f"{k}={v[:40]!r}" for k, v in zip(keys, labels, strict=True))
    return f"{name}{{{shown}}}"
