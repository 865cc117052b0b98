"""Protocol v1 batch layout, built and read without pydantic (the agent's path).

A batch is one msgpack map (see SPEC.md):

    {"v": 1, "host": str, "instance": str, "seq": int, "sent": int,
     "t": [t0, dt1, dt2, ...],                        # ms since epoch, delta-coded
     "metrics": [[name, kind, unit, scale, [label keys],
                  [[[label values], offset, [v0, dv1, dv2, ...]], ...]], ...]}

Values are integers: the real value is ``int / 10**scale``. Each series entry covers the
timestamps ``t[offset : offset + len(values)]`` with no holes; a series with a hole is sent as two
entries. Values and timestamps are delta-coded within the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final, NamedTuple

from edgemon.protocol.limits import MAX_LABELS, MAX_NAME_LENGTH, MAX_SCALE, VERSION
from edgemon.protocol.names import is_name

__all__ = [
    "COUNTER",
    "GAUGE",
    "BatchBuilder",
    "MetricDef",
    "Sample",
    "delta",
    "expand_samples",
    "last_timestamp",
    "to_scaled",
    "undelta",
]

GAUGE: Final = "gauge"
COUNTER: Final = "counter"
KINDS: Final = frozenset({GAUGE, COUNTER})  # the one set of metric kinds


class _MetricFields(NamedTuple):
    name: str
    kind: str  # GAUGE or COUNTER
    unit: str  # "bytes", "percent", "seconds", "packets", "" ...
    scale: int = 0  # decimal digits kept on the wire
    label_keys: tuple[str, ...] = ()


class MetricDef(_MetricFields):
    """What a metric is: declared once per family module, referenced by every sample.

    The constructor checks what the wire format requires (name and label-key grammar, a kind of
    ``KINDS``, scale 0-9), so a definition that would make invalid batches fails where it is
    written, not at the collector."""

    __slots__ = ()

    def __new__(cls, name: str, kind: str, unit: str, scale: int = 0,
                label_keys: tuple[str, ...] = ()) -> MetricDef:
        if not is_name(name):
            raise ValueError(f"metric name {name!r}: use [a-zA-Z_][a-zA-Z0-9_]*, at most "
                             f"{MAX_NAME_LENGTH} characters")
        if kind not in KINDS:
            raise ValueError(f"{name}: kind {kind!r} is not one of {sorted(KINDS)}")
        if type(unit) is not str or len(unit) > MAX_NAME_LENGTH:
            raise ValueError(f"{name}: unit must be a string of at most {MAX_NAME_LENGTH} "
                             "characters")
        if type(scale) is not int or not 0 <= scale <= MAX_SCALE:
            raise ValueError(f"{name}: scale must be an integer from 0 to {MAX_SCALE}")
        keys = tuple(label_keys)
        if len(keys) > MAX_LABELS or len(set(keys)) != len(keys) or \
                not all(is_name(k) for k in keys):
            raise ValueError(f"{name}: label keys {keys!r} must be at most {MAX_LABELS} unique "
                             "names")
        return super().__new__(cls, name, kind, unit, scale, keys)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> MetricDef:  # ``_replace`` checks too
        return cls(*iterable)


class Sample(NamedTuple):
    """One decoded value of one series at one time."""

    name: str
    labels: dict[str, str]
    timestamp_ms: int
    value: float | int
    kind: str
    unit: str


def to_scaled(value: float | int, scale: int) -> int:
    """The integer carried on the wire for ``value`` kept to ``scale`` decimal digits."""
    if scale == 0 and isinstance(value, int):
        return value
    return round(value * 10**scale)


def delta(values: Iterable[int]) -> list[int]:
    out: list[int] = []
    prev = 0
    for v in values:
        out.append(v - prev)
        prev = v
    return out


def last_timestamp(t: list[int]) -> int:
    """The newest timestamp (ms) of a batch's delta-coded ``t``."""
    return sum(t)


def undelta(deltas: Iterable[int]) -> list[int]:
    out: list[int] = []
    acc = 0
    for d in deltas:
        acc += d
        out.append(acc)
    return out


class BatchBuilder:
    """Collects (time, metric, label values, scaled int) and lays them out as a v1 batch."""

    def __init__(self) -> None:
        self._times: dict[int, int] = {}  # timestamp ms -> column index
        self._series: dict[tuple[MetricDef, tuple[str, ...]], dict[int, int]] = {}
        self.samples = 0

    def add(self, timestamp_ms: int, metric: MetricDef, label_values: tuple[str, ...],
            value: int) -> None:
        column = self._times.setdefault(timestamp_ms, len(self._times))
        points = self._series.setdefault((metric, label_values), {})
        if column not in points:
            self.samples += 1
        points[column] = value

    def __len__(self) -> int:
        return self.samples

    def build(self, *, host: str, instance: str, seq: int, sent_ms: int) -> dict[str, Any]:
        times = sorted(self._times)
        position = {self._times[t]: i for i, t in enumerate(times)}
        by_metric: dict[MetricDef, list[list[Any]]] = {}
        for (metric, label_values), points in self._series.items():
            entries = by_metric.setdefault(metric, [])
            run: list[int] = []
            start = prev = -2
            for pos, value in sorted((position[c], v) for c, v in points.items()):
                if pos != prev + 1 and run:
                    entries.append([list(label_values), start, delta(run)])
                    run = []
                if not run:
                    start = pos
                run.append(value)
                prev = pos
            if run:
                entries.append([list(label_values), start, delta(run)])
        metrics = [
            [m.name, m.kind, m.unit, m.scale, list(m.label_keys), sorted(entries)]
            for m, entries in sorted(by_metric.items(), key=lambda item: item[0].name)
        ]
        return {"v": VERSION, "host": host, "instance": instance, "seq": seq, "sent": sent_ms,
                "t": delta(times), "metrics": metrics}


def expand_samples(batch: dict[str, Any]) -> Iterator[Sample]:
    """Every sample of a decoded v1 batch, values as numbers (int when scale is 0)."""
    times = undelta(batch["t"])
    for name, kind, unit, scale, keys, entries in batch["metrics"]:
        divisor = 10**scale
        for label_values, offset, deltas in entries:
            labels = dict(zip(keys, label_values, strict=True))
            for i, raw in enumerate(undelta(deltas)):
                value = raw if scale == 0 else raw / divisor
                yield Sample(name, labels, times[offset + i], value, kind, unit)
