"""Load family: 1, 5 and 15 minute load averages."""

from __future__ import annotations

from typing import Any

import psutil

from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import GAUGE, MetricDef

LOAD1 = MetricDef("load1", GAUGE, "", 2)
LOAD5 = MetricDef("load5", GAUGE, "", 2)
LOAD15 = MetricDef("load15", GAUGE, "", 2)


def collect(source: Any = psutil) -> list[Reading]:
    """Load averages from ``source.getloadavg()``."""
    one, five, fifteen = source.getloadavg()
    return [(LOAD1, (), float(one)), (LOAD5, (), float(five)), (LOAD15, (), float(fifteen))]


def make(source: Any = psutil) -> Collect:
    """A stateless collector bound to ``source``."""
    return lambda: collect(source)
