"""The agent's own health, sampled every cycle like any family and stored in the same buffer."""

from __future__ import annotations

import os
from typing import NamedTuple

from edgemon.agent.buffer_file import BufferStats
from edgemon.agent.families import Reading
from edgemon.agent.families._proc import ProcFile
from edgemon.common import clock
from edgemon.protocol.batch import COUNTER, GAUGE, MetricDef

__all__ = ["AgentHealth", "readings"]

CYCLE_DURATION = MetricDef("agent_cycle_duration_seconds", GAUGE, "seconds", 4)
BUFFER_BATCHES = MetricDef("agent_buffer_batches", GAUGE, "")
BUFFER_SAMPLES = MetricDef("agent_buffer_samples", GAUGE, "")
BUFFER_BYTES = MetricDef("agent_buffer_bytes", GAUGE, "bytes")
BUFFER_OLDEST_AGE = MetricDef("agent_buffer_oldest_age_seconds", GAUGE, "seconds")
BUFFER_MEMORY_CYCLES = MetricDef("agent_buffer_memory_cycles", GAUGE, "")
# appended = acknowledged + dropped + agent_buffer_samples, at the same instant (BUFFER.md)
APPENDED = MetricDef("agent_appended_samples_total", COUNTER, "")
ACKNOWLEDGED = MetricDef("agent_acknowledged_samples_total", COUNTER, "")
DROPPED = MetricDef("agent_dropped_samples_total", COUNTER, "")
# Dropped after publication, yet delivered by the broker and acknowledged later.
DELIVERED_AFTER_DROP = MetricDef("agent_dropped_then_delivered_samples_total", COUNTER, "")
RECONNECTS = MetricDef("agent_reconnects_total", COUNTER, "")
RECOVERIES = MetricDef("agent_buffer_recoveries_total", COUNTER, "")
BUFFER_ERRORS = MetricDef("agent_buffer_errors_total", COUNTER, "")
PUBLISH_ERRORS = MetricDef("agent_publish_errors_total", COUNTER, "")
RSS = MetricDef("agent_memory_rss_bytes", GAUGE, "bytes")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class AgentHealth(NamedTuple):
    """What the runner knows about itself at the start of a cycle."""

    cycle_seconds: float | None  # duration of the previous cycle; None on the first
    buffer: BufferStats
    memory_cycles: int  # cycles held in memory because the buffer refused them
    reconnects: int
    buffer_recoveries: int
    buffer_errors: int
    publish_errors: int


_STATM = ProcFile("/proc/self/statm")  # kept open: read again every cycle


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        return int(_STATM.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def readings(health: AgentHealth, now_ms: int | None = None) -> list[Reading]:
    """The agent_* readings of one cycle (counters: dropped samples persist across restarts)."""
    now_ms = clock.now_ms() if now_ms is None else now_ms
    stats = health.buffer
    out: list[Reading] = [
        (BUFFER_BATCHES, (), stats.batches),
        (BUFFER_SAMPLES, (), stats.buffered_samples),
        (BUFFER_BYTES, (), stats.disk_bytes),
        (BUFFER_OLDEST_AGE, (), 0 if stats.oldest_ms is None
         else max(0, (now_ms - stats.oldest_ms) // 1000)),
        (BUFFER_MEMORY_CYCLES, (), health.memory_cycles),
        (APPENDED, (), stats.appended_samples_total),
        (ACKNOWLEDGED, (), stats.acknowledged_samples_total),
        (DROPPED, (), stats.dropped_samples_total),
        (DELIVERED_AFTER_DROP, (), stats.delivered_after_drop_total),
        (RECONNECTS, (), health.reconnects),
        (RECOVERIES, (), health.buffer_recoveries),
        (BUFFER_ERRORS, (), health.buffer_errors),
        (PUBLISH_ERRORS, (), health.publish_errors),
    ]
    if health.cycle_seconds is not None:
        out.append((CYCLE_DURATION, (), round(health.cycle_seconds, 4)))
    rss = rss_bytes()
    if rss is not None:
        out.append((RSS, (), rss))
    return out
