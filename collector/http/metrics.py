"""The collector's own counters in the Prometheus text exposition format (0.0.4)."""

from __future__ import annotations

from collections.abc import Iterable

from edgemon.collector.ingest.mqtt import Inbox, MqttIngest
from edgemon.collector.ingest.pipeline import IngestStats
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage.maintenance import MaintenanceRunner

__all__ = ["render_metrics"]

PREFIX = "edgemon_collector_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _format(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, str], float]], prefix: str = PREFIX) -> None:
        full = prefix + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self.lines.append(f"{full}{_labels(labels)} {_format(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.metric(name, kind, help_text, [({}, value)])


def render_metrics(*, stats: IngestStats, rejects: Rejects, inbox: Inbox | None,
                   mqtt: MqttIngest | None, storage_open: bool,
                   maintenance: MaintenanceRunner | None = None) -> str:
    w = _Writer()
    w.one("messages_total", "counter", "MQTT messages processed (stored, duplicate, status or "
          "rejected)", stats.messages)
    w.one("batches_stored_total", "counter", "Batches stored for the first time",
          stats.batches_stored)
    w.one("samples_stored_total", "counter", "Samples in batches stored for the first time",
          stats.samples_stored)
    w.one("duplicates_total", "counter", "Batches received again (acknowledged, not stored "
          "twice)", stats.duplicates)
    w.one("status_messages_total", "counter", "Birth/death status messages recorded",
          stats.status_messages)
    w.metric("rejects_total", "counter", "Messages rejected, by reason",
             [({"reason": r}, n) for r, n in sorted(rejects.by_reason().items())])
    w.metric("host_rejects_total", "counter", "Messages rejected, by host and reason",
             [({"host": h, "reason": r}, n)
              for (h, r), n in sorted(rejects.by_host_reason().items())])
    w.metric("series_rejects_total", "counter", "Series dropped from stored batches (no real "
             "host sends them, or over the host's cardinality bound), by reason",
             [({"reason": r}, n) for r, n in sorted(rejects.series_by_reason().items())])
    w.metric("host_series_rejects_total", "counter", "Series dropped from stored batches, by "
             "host and reason",
             [({"host": h, "reason": r}, n)
              for (h, r), n in sorted(rejects.series_by_host_reason().items())])
    w.one("transactions_total", "counter", "Storage transactions", stats.transactions)
    w.one("transaction_seconds_total", "counter", "Time spent decoding and storing",
          round(stats.transaction_seconds, 6))
    w.one("storage_errors_total", "counter", "Batches that could not be stored",
          stats.storage_errors)
    if maintenance is not None:
        w.one("maintenance_runs_total", "counter", "Storage maintenance rounds", maintenance.runs)
        w.one("maintenance_errors_total", "counter", "Failed storage maintenance rounds",
              maintenance.errors)
        w.metric("storage_quarantined_batches_total", "counter", "Stored batches the storage "
                 "could not read, moved aside (never read again), by host",
                 [({"host": h}, n) for h, n in sorted(maintenance.stats.quarantined.items())],
                 prefix="edgemon_")
    w.one("agent_acks_published_total", "counter", "Acknowledgements published to agents",
          stats.acks_published)
    w.one("catalogues_stored_total", "counter", "Series catalogues stored and acknowledged "
          "(protocol SPEC.md §9)", stats.catalogues_stored)
    w.one("referencing_batches_total", "counter", "Batches received naming a series catalogue "
          "instead of carrying it inline", stats.referencing_batches)
    if inbox is not None:
        w.one("queue_depth", "gauge", "Messages received and not yet stored/acknowledged",
              inbox.held)
        w.one("queue_bytes", "gauge", "Payload bytes received and not yet stored/acknowledged",
              inbox.held_bytes)
        w.one("queue_max", "gauge", "Back-pressure bound on queue_depth", inbox.max_messages)
    if mqtt is not None:
        w.one("mqtt_connected", "gauge", "1 when connected and subscribed", int(mqtt.ready))
        w.one("mqtt_messages_received_total", "counter", "MQTT messages received",
              mqtt.received)
        w.one("mqtt_refused_total", "counter", "Messages left unacknowledged because the queue "
              "was full (the broker delivers them again)", mqtt.refused)
        w.one("mqtt_redelivery_reconnects_total", "counter", "Reconnects made to get refused "
              "messages delivered again", mqtt.redelivery_reconnects)
        w.one("mqtt_connections_total", "counter", "Successful MQTT connections",
              mqtt.generation)
        w.one("rate_limited_total", "counter", "Messages over their host's rate limit: "
              "acknowledged and dropped before queueing (also in rejects_total)",
              mqtt.rate_limited)
        _mqtt_delivery(w, mqtt)
        if mqtt.rate_limiter is not None:
            w.one("rate_limit_hosts", "gauge", "Hosts with a rate-limit bucket of their own "
                  "(the rest share one)", mqtt.rate_limiter.hosts_tracked)
    w.one("storage_open", "gauge", "1 when the storage is open", int(storage_open))
    w.metric("host_lag_seconds", "gauge", "Receive time minus send time of the host's newest "
             "live batch (includes clock offset)",
             [({"host": h}, lag / 1000) for h, lag in sorted(stats.host_lag_ms.items())])
    w.metric("host_last_received_timestamp_seconds", "gauge", "When the host's newest batch "
             "arrived (unix seconds)",
             [({"host": h}, ms / 1000)
              for h, ms in sorted(stats.host_last_received_ms.items())])
    return "\n".join(w.lines) + "\n"


def _mqtt_delivery(w: _Writer, mqtt: MqttIngest) -> None:
    """Transport health: agent acks that could not be sent, and the stall detector."""
    w.one("mqtt_acks_queued_offline_total", "counter", "Agent acks published while "
          "disconnected (sent after the reconnect)", mqtt.acks_queued_offline)
    w.one("mqtt_ack_publish_failures_total", "counter", "Agent acks that could not be queued "
          "(dropped; the agent sends its batch again)", mqtt.ack_publish_failures)
    w.one("mqtt_handover_errors_total", "counter", "Messages acknowledged and dropped after an "
          "unexpected error while handing them to ingest", mqtt.handover_errors)
    state = mqtt.stall_state()
    w.one("mqtt_delivery_stalled", "gauge", "1 while MQTT delivery is stalled (see "
          "mqtt_stalls_total); the collector reconnects", int(state.stalled is not None))
    w.metric("mqtt_stalls_total", "counter", "Delivery stalls detected (each followed by a "
             "reconnect), by reason", [({"reason": r}, n) for r, n in mqtt.stall.stalls.items()])
    w.one("mqtt_stall_bound_seconds", "gauge", "How long a message may wait for its PUBACK, or "
          "the connection stay silent after a probe, before it counts as a stall",
          mqtt.stall.bound_s)
    w.one("mqtt_oldest_unacked_seconds", "gauge", "Age of the oldest message received and not "
          "yet PUBACKed (0: none)", round(state.oldest_unacked_s or 0.0, 3))
    w.one("mqtt_oldest_unconfirmed_publish_seconds", "gauge", "Age of the oldest QoS 1 publish "
          "(agent ack, presence, alert, probe) the broker has not PUBACKed (0: none)",
          round(state.oldest_unconfirmed_s or 0.0, 3))
    w.one("mqtt_receive_silence_seconds", "gauge", "Seconds since the last message arrived "
          "(0 while disconnected)", round(state.silence_s or 0.0, 3))
    w.one("mqtt_flood_isolations_total", "counter", "Times a flooding host was left out of the "
          "subscriptions (its messages dropped by the broker)", mqtt.flood.isolations)
    w.metric("mqtt_flood_isolated_seconds", "gauge", "Hosts left out of the subscriptions for "
             "flooding, with the seconds until they are let back in",
             [({"host": h}, round(left, 1)) for h, left in sorted(mqtt.flood.isolated().items())])
