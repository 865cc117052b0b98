"""System family: boot time and uptime."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgemon.agent.families._procstat import SOURCE
from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import GAUGE, MetricDef

BOOT_TIME = MetricDef("system_boot_time_seconds", GAUGE, "seconds")
UPTIME = MetricDef("system_uptime_seconds", GAUGE, "seconds")


def collect(source: Any = SOURCE, clock: Callable[[], float] = time.time) -> list[Reading]:
    """Boot time (unix seconds) and uptime (seconds, never negative) as whole seconds."""
    boot = source.boot_time()
    return [(BOOT_TIME, (), round(boot)), (UPTIME, (), max(0, round(clock() - boot)))]


def make(source: Any = SOURCE, clock: Callable[[], float] = time.time) -> Collect:
    """A stateless collector bound to ``source`` and ``clock``."""
    return lambda: collect(source, clock)
