"""Types shared by the metric families (one place, like httpx's ``_types.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from edgemon.protocol.batch import MetricDef

__all__ = ["Collect", "Family", "Reading", "Unavailable"]

Reading: TypeAlias = tuple[MetricDef, tuple[str, ...], float | int]
"""(metric, label values in the order of ``metric.label_keys``, value); ints when scale is 0."""

Collect: TypeAlias = Callable[[], list[Reading]]
"""One sampling cycle of one family: called once per cycle, returns that cycle's readings."""


class Family(Protocol):
    """A family's factory: ``make(source)`` reads from ``source`` (default psutil) when called."""

    def __call__(self, source: Any = ...) -> Collect: ...


class Unavailable(Exception):
    """Raised by ``make`` when this host cannot have the family (no such kernel interface): the
    agent logs the message once, without a traceback, and samples the other families."""
