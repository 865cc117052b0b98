"""Pydantic validation of a decoded v1 batch map: the collector's side of the trust boundary.

The agent never imports this module (pydantic costs about 8 MB resident); it builds batches with
``edgemon.protocol.batch`` instead.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from edgemon.protocol.batch import undelta
from edgemon.protocol.errors import LimitExceeded, MalformedPayload
from edgemon.protocol.limits import (
    MAX_INSTANCE_LENGTH,
    MAX_INT,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_METRICS,
    MAX_NAME_LENGTH,
    MAX_SAMPLES,
    MAX_SCALE,
    MAX_SERIES,
    MAX_TIMESTAMPS,
    MIN_INT,
)
from edgemon.protocol.topics import validate_host_id

__all__ = ["ValidBatch", "validate_batch"]

_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_INSTANCE_RE = re.compile(r"[A-Za-z0-9._-]+")

Int64 = Annotated[StrictInt, Field(ge=MIN_INT, le=MAX_INT)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
Unit = Annotated[StrictStr, Field(max_length=MAX_NAME_LENGTH)]
LabelValue = Annotated[StrictStr, Field(max_length=MAX_LABEL_VALUE_LENGTH)]
SeriesEntry = tuple[
    Annotated[list[LabelValue], Field(max_length=MAX_LABELS)],
    Annotated[StrictInt, Field(ge=0, lt=MAX_TIMESTAMPS)],
    Annotated[list[Int64], Field(min_length=1, max_length=MAX_TIMESTAMPS)],
]
MetricEntry = tuple[
    Name,
    Literal["gauge", "counter"],
    Unit,
    Annotated[StrictInt, Field(ge=0, le=MAX_SCALE)],
    Annotated[list[Name], Field(max_length=MAX_LABELS)],
    Annotated[list[SeriesEntry], Field(max_length=MAX_SERIES)],
]


class ValidBatch(BaseModel):
    """A v1 batch whose every field and cross-field rule has been checked."""

    # Leaves are strict (no "1" -> 1, no True -> 1); msgpack arrays may fill tuples.
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    host: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    instance: Annotated[StrictStr, Field(min_length=1, max_length=MAX_INSTANCE_LENGTH)]
    seq: Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
    sent: Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
    t: Annotated[list[Int64], Field(min_length=1, max_length=MAX_TIMESTAMPS)]
    metrics: Annotated[list[MetricEntry], Field(max_length=MAX_METRICS)]

    @model_validator(mode="after")
    def _cross_checks(self) -> ValidBatch:
        validate_host_id(self.host)
        if not _INSTANCE_RE.fullmatch(self.instance):
            raise ValueError("instance id: use letters, digits, '.', '-', '_'")
        if self.t[0] <= 0 or any(d <= 0 for d in self.t[1:]):
            raise ValueError("t: timestamps must be positive and strictly increasing")
        if sum(self.t) > MAX_INT:
            raise ValueError("t: cumulated timestamps overflow 64 bits")
        n_times = len(self.t)
        names: set[str] = set()
        samples = series = 0
        for name, _kind, _unit, _scale, keys, entries in self.metrics:
            if not _NAME_RE.fullmatch(name) or name in names:
                raise ValueError(f"metric name {name[:40]!r} is invalid or repeated")
            names.add(name)
            if len(set(keys)) != len(keys) or not all(_NAME_RE.fullmatch(k) for k in keys):
                raise ValueError(f"{name}: label keys must be unique valid names")
            taken: dict[tuple[str, ...], list[tuple[int, int]]] = {}
            for labels, offset, deltas in entries:
                if len(labels) != len(keys):
                    raise ValueError(f"{name}: {len(labels)} label values for {len(keys)} keys")
                end = offset + len(deltas)
                if end > n_times:
                    raise ValueError(f"{name}: series runs past the batch's timestamps")
                taken.setdefault(tuple(labels), []).append((offset, end))
                if len(deltas) > 1:
                    running = list(accumulate(deltas))
                    if max(running) > MAX_INT or min(running) < MIN_INT:
                        raise ValueError(f"{name}: cumulated values overflow 64 bits")
                samples += len(deltas)
            for labels_of, spans in taken.items():
                # Sorted, spans overlap only if one starts before the previous one ends:
                # n log n, where comparing every pair would let one batch cost seconds.
                if len(spans) > 1:
                    spans.sort()
                    if any(spans[i][0] < spans[i - 1][1] for i in range(1, len(spans))):
                        raise ValueError(f"{name}: series {list(labels_of[:4])} repeats a "
                                         "timestamp")
            series += len(entries)
        if series > MAX_SERIES or samples > MAX_SAMPLES:
            raise ValueError(f"batch holds {series} series / {samples} samples: over the limit")
        return self

    @property
    def timestamps(self) -> list[int]:
        """Absolute timestamps in ms."""
        return undelta(self.t)

    @property
    def sample_count(self) -> int:
        return sum(len(e[2]) for m in self.metrics for e in m[5])


def validate_batch(raw: dict[str, Any]) -> ValidBatch:
    """Check a decoded batch map; raise ``MalformedPayload`` naming the first bad field."""
    try:
        return ValidBatch.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "batch"
        message = first["msg"]
        if "over the limit" in message:
            raise LimitExceeded(f"{where}: {message}", reason="too_many_samples") from None
        raise MalformedPayload(f"{where}: {message}", reason="schema") from None
