"""``/metrics`` of the forwarder, from ``ForwardService.status()`` snapshots."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from edgemon.collector.forward.service import ForwardStatus

__all__ = ["ForwardMetrics"]

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
    ("retries_total", "counter", "Requests sent again after 5xx, 408, 429, no answer, or "
     "401/403/404 (the collector's credentials or URL).",
     lambda s: s.retries),
    ("bytes_sent_total", "counter", "Request bodies confirmed, bytes on the wire.",
     lambda s: s.bytes_sent),
]


class ForwardMetrics:
    """The forwarder's metrics as a prometheus-client collector (``CollectorMetrics.register``),
    read from ``status()`` (``ForwardService.status``) at every scrape: a snapshot, no I/O."""

    def __init__(self, status: Callable[[], Sequence[ForwardStatus]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.status()
        if not status:
            return
        for name, kind, help_text, value in _PER_RECEIVER:
            family = (CounterMetricFamily(P + name.removesuffix("_total"), help_text,
                                          labels=["receiver"]) if kind == "counter" else
                      GaugeMetricFamily(P + name, help_text, labels=["receiver"]))
            for s in status:
                family.add_metric([s.name], value(s))
            yield family
        failures = CounterMetricFamily(P + "failures", "Failed requests, by HTTP status or "
                                       "'network'.", labels=["receiver", "reason"])
        for s in status:
            for reason, n in sorted(s.failures.items()):
                failures.add_metric([s.name, reason], n)
        yield failures
