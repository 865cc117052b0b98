"""The collector's own metrics for Prometheus (``/metrics``), exposed with ``prometheus-client``.

``CollectorMetrics`` holds one private ``CollectorRegistry`` (never the library's global one: a
test process runs several collectors). In it: ``edgemon_build_info``, the process and Python
collectors of prometheus-client (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``, ``process_start_time_seconds``, ``python_info``, ...) and one collector
per part of edgemon that reads that part's counters when scraped:

* ingest, MQTT and the queue (``edgemon_collector_*``, names unchanged since 0.1);
* storage (``edgemon_storage_*``): bytes per tier, on disk, maintenance backlog and compaction
  lag, read from ``MaintenanceRunner.gauges`` (refreshed by the maintenance thread: a scrape
  never touches the storage);
* alerting (``edgemon_alert_*``, ``edgemon_alertmanager_*``), when it runs.

A scrape only reads counters kept in memory: no storage or database query runs for it. It is
rendered off the event loop (``api.metrics_handler``): prometheus-client formats ~3,000 samples
(1000 hosts) in ~0.1 s on the development VM, about 3.5x the hand-written writer it replaced
(``benchmarks/export_metrics.py``), which is 0.7 % of a core at a 15 s scrape interval.
Labelled counters whose label values are known in advance (every reject reason, every
receiver, every rule, every Alertmanager) are exported from the start with 0, so
``rate(...) > 0`` / ``increase(...)`` alerts work from the first scrape.

Hook for other parts (forwarding, ...): ``CollectorMetrics.register(collector)`` takes any
prometheus-client ``Collector`` (an object with ``collect()`` yielding metric families; see
``prometheus_client.core``); ``CollectorService.metrics`` is the instance.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgemon.collector.ingest.outcomes import IngestStats
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage.maintenance import MaintenanceRunner

if TYPE_CHECKING:
    from edgemon.collector.alerting.service import AlertingService
    from edgemon.collector.ingest.backpressure import BackPressure
    from edgemon.collector.ingest.mqtt import Inbox, MqttIngest

__all__ = ["CONTENT_TYPE", "REJECT_REASONS", "SERIES_REJECT_REASONS", "CollectorMetrics",
           "build_info"]

PREFIX = "edgemon_collector_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Every reason a whole message is rejected for (``rejects_total{reason}``), exported at 0 from
# the start. Limits named after what overflowed (``too_many_<what>``) are added as they happen;
# tests/test_collector_metrics.py checks that every literal reason in protocol/ and
# collector/ingest/ is listed here.
REJECT_REASONS: tuple[str, ...] = (
    "bad_collector_id", "bad_host", "bad_topic", "catalogue_hash", "decode_error",
    "decompressed_too_large", "future_timestamp", "host_mismatch", "invalid", "limit",
    "malformed", "not_json", "not_msgpack", "not_zstd", "past_timestamp", "rate_limited",
    "schema", "storage_error", "too_large", "too_many_extension_elements", "too_many_keys",
    "too_many_label_values", "too_many_metrics", "too_many_samples", "trailing_bytes",
    "unexpected_topic", "unknown_base", "unknown_catalogue", "unknown_dictionary", "version",
    "worker_crash",
)
# Every reason series are dropped from a stored batch for (``series_rejects_total{reason}``).
SERIES_REJECT_REASONS: tuple[str, ...] = (
    "negative_value", "new_series_limit", "not_printable", "reserved_name", "series_limit",
    "value_too_large",
)
# storage part -> what it holds (tier_bytes keys, see storage/base.py)
STORAGE_PARTS: dict[str, str] = {
    "pending": "batches as received, not yet compacted",
    "raw": "compacted raw samples",
    "1m": "1-minute rollups",
    "1h": "1-hour rollups",
    "quarantine": "batches the storage could not read",
}


# (name, attribute of IngestStats, help) of the plain ingest counters
_STATS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("messages_total", "messages", "MQTT messages processed (stored, duplicate, status or "
                                   "rejected)"),
    ("batches_stored_total", "batches_stored", "Batches stored for the first time"),
    ("samples_stored_total", "samples_stored", "Samples in batches stored for the first time"),
    ("duplicates_total", "duplicates", "Batches received again (acknowledged, not stored "
                                       "twice)"),
    ("status_messages_total", "status_messages", "Birth/death status messages recorded"),
    ("transactions_total", "transactions", "Storage transactions"),
    ("transaction_seconds_total", "transaction_seconds", "Time spent decoding and storing"),
    ("storage_errors_total", "storage_errors", "Batches that could not be stored"),
    ("agent_acks_published_total", "acks_published", "Acknowledgements published to agents"),
    ("catalogues_stored_total", "catalogues_stored", "Series catalogues stored and "
     "acknowledged (protocol SPEC.md §9)"),
    ("referencing_batches_total", "referencing_batches", "Batches received naming a series "
     "catalogue instead of carrying it inline"),
    ("worker_restarts_total", "worker_restarts", "Ingest worker processes started again after "
     "dying or hanging ([ingest] workers)"),
    ("worker_crashes_total", "worker_crashes", "Messages that killed an ingest worker twice "
     "(rejected, reason worker_crash)"),
)
# (full name, attribute of MqttIngest, help) of the plain MQTT counters
_M = PREFIX + "mqtt_"
_MQTT_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (_M + "messages_received_total", "received", "MQTT messages received"),
    (_M + "refused_total", "refused", "Messages left unacknowledged because the queue was full "
                                      "(the broker delivers them again)"),
    (_M + "redelivery_reconnects_total", "redelivery_reconnects", "Reconnects made to get "
                                                                  "refused messages delivered "
                                                                  "again"),
    (_M + "connections_total", "generation", "Successful MQTT connections"),
    (PREFIX + "rate_limited_total", "rate_limited", "Messages over their host's rate limit: "
                                                    "acknowledged and dropped before queueing "
                                                    "(also in rejects_total)"),
    (_M + "acks_queued_offline_total", "acks_queued_offline", "Agent acks published while "
                                                              "disconnected (sent after the "
                                                              "reconnect)"),
    (_M + "ack_publish_failures_total", "ack_publish_failures", "Agent acks that could not be "
                                                                "queued (dropped; the agent "
                                                                "sends its batch again)"),
    (_M + "handover_errors_total", "handover_errors", "Messages acknowledged and dropped after "
                                                      "an unexpected error while handing them "
                                                      "to ingest"),
)


# --- building families -------------------------------------------------------------------------

def _family(name: str, kind: str, help_text: str, labels: Iterable[str] = (),
            samples: Iterable[tuple[Iterable[str], float]] = ()) -> Metric:
    """A counter or gauge family; ``name`` is the full name (counters end in ``_total``)."""
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    family = cls(name, help_text, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), float(value))
    return family


def _one(name: str, kind: str, help_text: str, value: float) -> Metric:
    return _family(name, kind, help_text, (), [((), value)])


def _zeroed(known: Iterable[str], counts: Mapping[str, float]) -> list[tuple[list[str], float]]:
    """One sample per known label value (0 when not counted yet), plus any other counted."""
    values = {**dict.fromkeys(known, 0), **counts}
    return [([k], v) for k, v in sorted(values.items())]


# --- build info --------------------------------------------------------------------------------

def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgemon")
    except Exception:
        return "unknown"


def _revision() -> str:
    """``EDGEMON_REVISION`` (packaging may set it), else the git commit of a source checkout,
    else ``unknown``."""
    revision = os.environ.get("EDGEMON_REVISION", "").strip()
    if revision:
        return revision[:40]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"],
                             cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = out.stdout.strip()
    return text if out.returncode == 0 and text else "unknown"


@functools.cache
def build_info() -> dict[str, str]:
    return {"version": _version(), "revision": _revision(),
            "python": platform.python_version()}


class _BuildInfo(Collector):
    def __init__(self) -> None:
        self.labels = dict(build_info())

    def collect(self) -> Iterator[Metric]:
        yield _family("edgemon_build_info", "gauge", "Always 1; the labels say which edgemon "
                      "runs (version, git revision or unknown, Python version)",
                      self.labels, [(self.labels.values(), 1)])


# --- ingest ------------------------------------------------------------------------------------

def _ingest_families(stats: IngestStats, rejects: Rejects, inbox: Inbox | None,
                     mqtt: MqttIngest | None, storage_open: bool,
                     clock: Callable[[], float] = time.time,
                     backpressure: BackPressure | None = None) -> Iterator[Metric]:
    p = PREFIX
    for name, attribute, help_text in _STATS_COUNTERS:
        yield _one(p + name, "counter", help_text, round(getattr(stats, attribute), 6))
    yield _family(p + "rejects_total", "counter", "Messages rejected, by reason (every known "
                  "reason from the start)", ["reason"],
                  _zeroed(REJECT_REASONS, rejects.by_reason()))
    yield _family(p + "host_rejects_total", "counter", "Messages rejected, by host and reason",
                  ["host", "reason"], [((h, r), n) for (h, r), n in
                                       sorted(rejects.by_host_reason().items())])
    yield _family(p + "series_rejects_total", "counter", "Series dropped from stored batches "
                  "(no real host sends them, or over the host's cardinality bound), by reason",
                  ["reason"], _zeroed(SERIES_REJECT_REASONS, rejects.series_by_reason()))
    yield _family(p + "host_series_rejects_total", "counter", "Series dropped from stored "
                  "batches, by host and reason", ["host", "reason"],
                  [((h, r), n) for (h, r), n in sorted(rejects.series_by_host_reason().items())])
    if inbox is not None:
        yield _one(p + "queue_depth", "gauge", "Messages received and not yet "
                   "stored/acknowledged", inbox.held)
        yield _one(p + "queue_bytes", "gauge", "Payload bytes received and not yet "
                   "stored/acknowledged", inbox.held_bytes)
        yield _one(p + "queue_max", "gauge", "Back-pressure bound on queue_depth",
                   inbox.max_messages)
        oldest = inbox.oldest_received_ms()
        yield _one(p + "ingest_lag_seconds", "gauge", "Age of the oldest message waiting in "
                   "the queue to be stored (0: none waits)",
                   0.0 if oldest is None else max(0.0, round(clock() - oldest / 1000, 3)))
    if mqtt is not None:
        yield from _mqtt_families(mqtt)
    if backpressure is not None:
        yield from _backpressure_families(backpressure)
    yield _one(p + "storage_open", "gauge", "1 when the storage is open", int(storage_open))
    yield _family(p + "host_lag_seconds", "gauge", "Receive time minus send time of the host's "
                  "newest live batch (includes clock offset)", ["host"],
                  [([h], lag / 1000) for h, lag in sorted(stats.host_lag_ms.items())])
    yield _family(p + "host_last_received_timestamp_seconds", "gauge", "When the host's newest "
                  "batch arrived (unix seconds)", ["host"],
                  [([h], ms / 1000) for h, ms in sorted(stats.host_last_received_ms.items())])


def _mqtt_families(mqtt: MqttIngest) -> Iterator[Metric]:
    """The MQTT connection, agent acks that could not be sent, and the stall detector."""
    p = PREFIX + "mqtt_"
    yield _one(p + "connected", "gauge", "1 when connected and subscribed", int(mqtt.ready))
    for name, attribute, help_text in _MQTT_COUNTERS:
        yield _one(name, "counter", help_text, getattr(mqtt, attribute))
    state = mqtt.stall_state()
    yield _one(p + "delivery_stalled", "gauge", "1 while MQTT delivery is stalled (see "
               "mqtt_stalls_total); the collector reconnects", int(state.stalled is not None))
    yield _family(p + "stalls_total", "counter", "Delivery stalls detected (each followed by a "
                  "reconnect), by reason", ["reason"],
                  [([r], n) for r, n in mqtt.stall.stalls.items()])
    yield _one(p + "stall_bound_seconds", "gauge", "How long a message may wait for its "
               "PUBACK, or the connection stay silent after a probe, before it counts as a "
               "stall", mqtt.stall.bound_s)
    yield _one(p + "oldest_unacked_seconds", "gauge", "Age of the oldest message received and "
               "not yet PUBACKed (0: none)", round(state.oldest_unacked_s or 0.0, 3))
    yield _one(p + "oldest_unconfirmed_publish_seconds", "gauge", "Age of the oldest QoS 1 "
               "publish (agent ack, presence, alert, probe) the broker has not PUBACKed "
               "(0: none)", round(state.oldest_unconfirmed_s or 0.0, 3))
    yield _one(p + "receive_silence_seconds", "gauge", "Seconds since the last message arrived "
               "(0 while disconnected)", round(state.silence_s or 0.0, 3))
    yield _one(p + "flood_isolations_total", "counter", "Times a flooding host was left out of "
               "the subscriptions (its messages dropped by the broker)", mqtt.flood.isolations)
    yield _family(p + "flood_isolated_seconds", "gauge", "Hosts left out of the subscriptions "
                  "for flooding, with the seconds until they are let back in", ["host"],
                  [([h], round(left, 1)) for h, left in sorted(mqtt.flood.isolated().items())])
    if mqtt.rate_limiter is not None:
        yield _one(PREFIX + "rate_limit_hosts", "gauge", "Hosts with a rate-limit bucket of "
                   "their own (the rest share one)", mqtt.rate_limiter.hosts_tracked)


def _backpressure_families(bp: BackPressure) -> Iterator[Metric]:
    """Agent acks held while the compaction back-log is over its budget (backpressure.py), as
    the event loop last published them (this renders on another thread)."""
    p, f = PREFIX + "backlog_", bp.seen
    yield _one(p + "budget_samples", "gauge", "Samples due for compaction (old enough for it, "
               "not yet taken) allowed before the agent acks of the hosts holding most of them "
               "are held ([ingest] backlog_budget_samples; 0: never)", f.budget_samples)
    yield _one(p + "due_samples", "gauge", "Samples due for compaction as ingest last saw them "
               "(read every 0.5-2 s, plus what it stored since for hosts due in full)",
               f.due_samples)
    yield _one(p + "pending_samples", "gauge", "Samples not yet compacted, due or not, as ingest "
               "last saw them (the whole back-log; the budget is about the due part)",
               f.pending_samples)
    yield _one(p + "fair_level_samples", "gauge", "Due samples a host may hold before its "
               "acks are held (+Inf while the back-log is within its budget)", f.fair_level_samples)
    yield _one(p + "acks_held", "gauge", "Agent acks held now (one per host and instance)",
               f.acks_held)
    yield _one(p + "hosts_held", "gauge", "Hosts whose agent acks are held now",
               f.hosts_held)
    yield _one(p + "acks_held_total", "counter", "Agent acks held (each published later)",
               f.acks_held_total)
    yield _one(p + "acks_released_late_total", "counter", "Held agent acks published because "
               "they were held for [ingest] backlog_max_hold_seconds", f.acks_released_late_total)
    yield _one(p + "acks_over_cap_total", "counter", "Agent acks published at once because too "
               "many were held already", f.acks_over_cap_total)
    yield _one(p + "poll_seconds", "gauge", "How long the last read of the back-log "
               "by host took (a thread's, not the event loop's)", round(f.poll_seconds, 6))


# --- storage -----------------------------------------------------------------------------------

def _storage_families(maintenance: MaintenanceRunner,
                      clock: Callable[[], float] = time.time) -> Iterator[Metric]:
    yield _one(PREFIX + "maintenance_runs_total", "counter", "Storage maintenance rounds",
               maintenance.runs)
    yield _one(PREFIX + "maintenance_errors_total", "counter", "Failed storage maintenance "
               "rounds", maintenance.errors)
    yield _family("edgemon_storage_quarantined_batches_total", "counter", "Stored batches the "
                  "storage could not read, moved aside (never read again), by host", ["host"],
                  [([h], n) for h, n in sorted(maintenance.stats.quarantined.items())])
    yield _family("edgemon_storage_compaction_events_total", "counter", "Compaction and "
                  "ingest's writer, by event: l0_prepared (L0 transactions written from a plan "
                  "prepared without the write lock), l0_in_lock_<reason> (done inside it, and "
                  "why), l0_series_transactions (series made ahead of a plan), gave_way and "
                  "gave_way_seconds (compaction leaving the lock to the waiting writer), "
                  "<who>_transactions, <who>_wait_seconds, <who>_waits_over_100ms, "
                  "<who>_hold_seconds (who: writer, ingest's; compaction: its write "
                  "transactions, waiting for and holding the write lock)", ["event"],
                  [([k], round(v, 6)) for k, v in sorted(maintenance.stats.compaction.items())])
    g = maintenance.gauges
    if g.tier_bytes:
        yield _family("edgemon_storage_bytes", "gauge", "Bytes of stored data (compressed "
                      "payloads, without the database's own overhead) by part: "
                      + "; ".join(f"{k}: {v}" for k, v in STORAGE_PARTS.items())
                      + f". Refreshed every {maintenance.sizes_interval:g} s", ["part"],
                      [([part], n) for part, n in g.tier_bytes.items()])
        yield _one("edgemon_storage_size_scan_seconds", "gauge", "How long the last read of "
                   "edgemon_storage_bytes took (the maintenance thread's, not a scrape's)",
                   round(g.sizes_seconds, 6))
    if g.disk_bytes is not None:
        yield _one("edgemon_storage_disk_bytes", "gauge", "Bytes the store takes on disk "
                   "(SQLite: the file with its WAL; PostgreSQL: pg_database_size)", g.disk_bytes)
    backlog = g.backlog
    if backlog:
        for key, help_text in (("pending_batches", "Stored batches not yet compacted"),
                               ("pending_samples", "Samples in stored batches not yet "
                                                   "compacted"),
                               ("dirty_windows", "Windows whose blocks are not yet merged "
                                                 "and rolled up")):
            if key in backlog:
                yield _one(f"edgemon_storage_{key}", "gauge", help_text, backlog[key])
        oldest = backlog.get("oldest_pending_received_ms")
        now_ms = g.backlog_ms if g.backlog_ms is not None else int(clock() * 1000)
        yield _one("edgemon_storage_compaction_lag_seconds", "gauge", "Age of the oldest "
                   "stored batch not yet compacted when maintenance last looked (0: none)",
                   0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))
    if g.backlog_at is not None:
        yield _one("edgemon_storage_gauges_age_seconds", "gauge", "Seconds since the "
                   "maintenance thread last read the storage's gauges",
                   round(time.monotonic() - g.backlog_at, 3))


# --- alerting ----------------------------------------------------------------------------------

def _alerting_families(service: AlertingService) -> Iterator[Metric]:
    from edgemon.collector.alerting.notify import MQTT_RECEIVER

    engine, worker = service.engine, service.worker
    ruleset = engine.ruleset
    rules = [r.name for r in ruleset.enabled]
    receivers = [*ruleset.receivers, MQTT_RECEIVER]
    yield _one("edgemon_alert_evaluation_cycles_total", "counter", "Alert evaluation cycles "
               "run", engine.cycles)
    yield _one("edgemon_alert_evaluation_cycle_failures_total", "counter", "Alert evaluation "
               "cycles that failed as a whole", engine.cycle_failures)
    yield _one("edgemon_alert_evaluation_cycle_seconds", "gauge", "How long the last "
               "evaluation cycle took", round(engine.last_cycle_seconds, 6))
    yield _family("edgemon_alert_rule_evaluations_total", "counter", "Evaluations of a rule",
                  ["rule"], _zeroed(rules, engine.rule_evaluations))
    yield _family("edgemon_alert_rule_evaluation_failures_total", "counter", "Evaluations of a "
                  "rule that failed (the rule's error is in /edgemon/api/v1/rules)", ["rule"],
                  _zeroed(rules, engine.rule_failures))
    yield _family("edgemon_alert_transitions_total", "counter", "Alert state changes recorded, "
                  "by new status", ["status"],
                  _zeroed(("pending", "firing", "resolved", "inactive"),
                          engine.transitions_by_status))
    yield _family("edgemon_alert_notifications_total", "counter", "Notification messages "
                  "delivered, by receiver (mqtt: alert publishes)", ["receiver"],
                  _zeroed(receivers, worker.delivered_by_receiver))
    yield _family("edgemon_alert_notification_failures_total", "counter", "Failed attempts to "
                  "deliver a notification (retried with back-off), by receiver", ["receiver"],
                  _zeroed(receivers, worker.failures_by_receiver))
    if service.alertmanagers is not None:
        yield from _alertmanager_families(service.alertmanagers.targets)


def _alertmanager_families(targets: list[Any]) -> Iterator[Metric]:
    yield _family("edgemon_alertmanager_alerts_sent_total", "counter", "Alerts accepted by an "
                  "Alertmanager (re-sends included)", ["alertmanager"],
                  [([t.name], t.alerts_sent) for t in targets])
    yield _family("edgemon_alertmanager_errors_total", "counter", "Failed POSTs to an "
                  "Alertmanager, by HTTP status or 'network' (network from the start)",
                  ["alertmanager", "reason"],
                  [([t.name, r], n) for t in targets
                   for r, n in sorted({"network": 0, **t.errors}.items())])
    yield _family("edgemon_alertmanager_up", "gauge", "1 if the last POST to an Alertmanager "
                  "succeeded", ["alertmanager"],
                  [([t.name], int(t.backoff.failures == 0 and bool(t.last_success_ms)))
                   for t in targets])


class _Outbox(Collector):
    """Notifications waiting in the outbox, by receiver: a query of the alert database, so it
    is read in a thread at most every ``ttl`` seconds and the scrape gets the last figures."""

    def __init__(self, service: AlertingService, ttl: float = 10.0) -> None:
        self.service = service
        self.ttl = ttl
        self._figures: dict[str, int] | None = None
        self._read_at = -float("inf")
        self._reading = threading.Lock()

    def _read(self) -> None:
        if not self._reading.acquire(blocking=False):
            return
        try:
            rows = self.service.engine.store.query(
                "SELECT receiver, count(*) FROM outbox WHERE state='pending' GROUP BY receiver")
            self._figures = {str(r[0]): int(r[1]) for r in rows}
        except Exception:
            self._figures = None
        finally:
            self._read_at = time.monotonic()
            self._reading.release()

    def collect(self) -> Iterator[Metric]:
        if time.monotonic() - self._read_at >= self.ttl:
            threading.Thread(target=self._read, name="edgemon-metrics-outbox",
                             daemon=True).start()
        from edgemon.collector.alerting.notify import MQTT_RECEIVER

        if self._figures is not None:
            receivers = [*self.service.engine.ruleset.receivers, MQTT_RECEIVER]
            yield _family("edgemon_alert_outbox_pending", "gauge", "Notifications waiting in "
                          f"the outbox, by receiver (read at most every {self.ttl:g} s)",
                          ["receiver"], _zeroed(receivers, self._figures))


# --- the registry ------------------------------------------------------------------------------

class _Parts(Collector):
    """Reads the collector's parts when scraped (``CollectorMetrics.attach``)."""

    def __init__(self) -> None:
        self.ingest: Callable[[], Iterator[Metric]] | None = None
        self.maintenance: MaintenanceRunner | None = None
        self.alerting: AlertingService | None = None

    def collect(self) -> Iterator[Metric]:
        if self.ingest is not None:
            yield from self.ingest()
        if self.maintenance is not None:
            yield from _storage_families(self.maintenance)
        if self.alerting is not None:
            yield from _alerting_families(self.alerting)


class CollectorMetrics:
    """The collector's ``/metrics``: ``text()`` renders it; ``register`` adds a collector."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_BuildInfo())
        if process:  # process_* (Linux /proc), python_info, python_gc_*
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._parts = _Parts()
        self.registry.register(self._parts)
        self._outbox: _Outbox | None = None

    def attach(self, *, stats: IngestStats | None = None, rejects: Rejects | None = None,
               inbox: Inbox | None = None, mqtt: MqttIngest | None = None,
               storage_open: Callable[[], bool] = lambda: True,
               maintenance: MaintenanceRunner | None = None,
               alerting: AlertingService | None = None,
               backpressure: BackPressure | None = None) -> None:
        """Point the metrics at the collector's parts (any may be absent)."""
        if stats is not None and rejects is not None:
            self._parts.ingest = lambda: _ingest_families(stats, rejects, inbox, mqtt,
                                                          storage_open(),
                                                          backpressure=backpressure)
        if maintenance is not None:
            self._parts.maintenance = maintenance
        if alerting is not None:
            self._parts.alerting = alerting
            self._outbox = _Outbox(alerting)
            self.registry.register(self._outbox)

    def register(self, collector: Collector) -> None:
        """Add a prometheus-client collector (e.g. forwarding queues); its names must not
        clash with those already here (prometheus-client raises ``ValueError`` if they do and
        the collector has ``describe()``)."""
        self.registry.register(collector)

    def unregister(self, collector: Collector) -> None:
        self.registry.unregister(collector)

    def text(self) -> str:
        """The Prometheus text exposition format 0.0.4 (``CONTENT_TYPE``)."""
        return generate_latest(self.registry).decode()
