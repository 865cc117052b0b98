"""Network family: raw per-interface counters, loopback skipped."""

from __future__ import annotations

from typing import Any

import psutil

from edgemon.agent.families._types import Collect, Reading
from edgemon.protocol.batch import COUNTER, MetricDef

_IFACE = ("iface",)
RECV_BYTES = MetricDef("network_received_bytes_total", COUNTER, "bytes", 0, _IFACE)
SENT_BYTES = MetricDef("network_sent_bytes_total", COUNTER, "bytes", 0, _IFACE)
RECV_PACKETS = MetricDef("network_received_packets_total", COUNTER, "packets", 0, _IFACE)
SENT_PACKETS = MetricDef("network_sent_packets_total", COUNTER, "packets", 0, _IFACE)
RECV_ERRORS = MetricDef("network_receive_errors_total", COUNTER, "errors", 0, _IFACE)
SENT_ERRORS = MetricDef("network_transmit_errors_total", COUNTER, "errors", 0, _IFACE)
RECV_DROPS = MetricDef("network_receive_drops_total", COUNTER, "packets", 0, _IFACE)
SENT_DROPS = MetricDef("network_transmit_drops_total", COUNTER, "packets", 0, _IFACE)

SKIPPED = frozenset({"lo", "lo0"})  # loopback (Linux, BSD/macOS)
_FIELDS = ((RECV_BYTES, "bytes_recv"), (SENT_BYTES, "bytes_sent"),
           (RECV_PACKETS, "packets_recv"), (SENT_PACKETS, "packets_sent"),
           (RECV_ERRORS, "errin"), (SENT_ERRORS, "errout"),
           (RECV_DROPS, "dropin"), (SENT_DROPS, "dropout"))


def collect(source: Any = psutil) -> list[Reading]:
    """Counters from ``source.net_io_counters(pernic=True)`` (psutil de-wraps them)."""
    nics = source.net_io_counters(pernic=True) or {}
    return [(m, (name,), int(getattr(io, f)))
            for name, io in sorted(nics.items()) if name not in SKIPPED
            for m, f in _FIELDS]


def make(source: Any = psutil) -> Collect:
    """A stateless collector bound to ``source``."""
    return lambda: collect(source)
