"""``/metrics`` lines of the forwarder, from ``ForwardService.status()`` snapshots (any
renderer can call ``status()`` itself; this is the plain-text one the collector uses now)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgemon.collector.forward.service import ForwardStatus

__all__ = ["metrics_lines"]

P = "edgemon_collector_forward_"

# name, type, help, value of a status
_PER_RECEIVER: list[tuple[str, str, str, Callable[[ForwardStatus], float]]] = [
    ("samples_sent_total", "counter", "Samples a remote-write receiver confirmed (2xx).",
     lambda s: s.samples_sent),
    ("samples_rejected_total", "counter", "Samples refused for good (4xx) or unreadable: "
     "skipped, reason logged.", lambda s: s.samples_rejected),
    ("samples_skipped_total", "counter", "Samples dropped unsent: the receiver was more than "
     "max_pending_samples behind.", lambda s: s.samples_skipped),
    ("samples_resent_total", "counter", "Samples sent again after a restart (the request in "
     "flight when the collector stopped).", lambda s: s.samples_resent),
    ("pending_samples", "gauge", "Samples stored and not yet sent (the queue depth).",
     lambda s: s.pending_samples),
    ("pending_batches", "gauge", "Batches stored and not yet sent.", lambda s: s.pending_batches),
    ("lag_seconds", "gauge", "Age of the oldest stored batch not yet sent (0: none).",
     lambda s: s.lag_seconds),
    ("requests_total", "counter", "Remote-write requests sent (this process).",
     lambda s: s.requests),
    ("retries_total", "counter", "Requests sent again after 5xx, 408, 429 or no answer.",
     lambda s: s.retries),
    ("bytes_sent_total", "counter", "Request bodies confirmed, bytes on the wire.",
     lambda s: s.bytes_sent),
]


def metrics_lines(status: Sequence[ForwardStatus]) -> list[str]:
    if not status:
        return []
    out: list[str] = []
    for name, kind, help_text, value in _PER_RECEIVER:
        out += [f"# HELP {P}{name} {help_text}", f"# TYPE {P}{name} {kind}"]
        out += [f'{P}{name}{{receiver="{s.name}"}} {value(s)}' for s in status]
    out += [f"# HELP {P}failures_total Failed requests, by HTTP status or 'network'.",
            f"# TYPE {P}failures_total counter"]
    out += [f'{P}failures_total{{receiver="{s.name}",reason="{r}"}} {n}'
            for s in status for r, n in sorted(s.failures.items())]
    return out
