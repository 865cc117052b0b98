"""Collector configuration: a TOML file validated with pydantic, overridable from the environment.

Every key has a default (``collector.example.toml`` lists them all). An environment variable
``EDGEMON_COLLECTOR_<SECTION>_<KEY>`` (e.g. ``EDGEMON_COLLECTOR_HTTP_PORT=9500``) overrides the
file. Errors name the key and where its value came from: ``file:line`` or the variable's name.
``EDGEMON_COLLECTOR_ALERTING_ALERTMANAGERS`` replaces the ``[[alerting.alertmanagers]]`` tables
(comma-separated URLs, or a TOML array of inline tables).

Why ~600 lines in one module: it is the schema of ``collector.example.toml``, one pydantic model
per section in the file's order, with the loader that names the line or variable of a bad value
(``load_config``, using ``common.toml_config``); splitting the sections apart would scatter one
document's keys over several files. What is not schema lives elsewhere (the TOML positions and
environment overrides in ``common/toml_config.py``, the private-file check in
``common/private_files.py``).
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgemon.common.private_files import check_private_file
from edgemon.common.toml_config import ConfigError, TomlLines, at_line, env_overrides, read_toml
from edgemon.protocol.errors import ProtocolError
from edgemon.protocol.presence import collector_state_topic

__all__ = [
    "ENV_PREFIX",
    "AlertingConfig",
    "AlertmanagerConfig",
    "ClusterConfig",
    "CollectorConfig",
    "ConfigError",
    "ForwardConfig",
    "HttpConfig",
    "IngestConfig",
    "LogConfig",
    "MqttConfig",
    "OutboundHttpConfig",
    "StorageConfig",
    "load_config",
]

ENV_PREFIX = "EDGEMON_COLLECTOR_"

Port = Annotated[int, Field(ge=1, le=65535)]
Positive = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    host: str = Field("127.0.0.1", min_length=1)
    port: Port = 1883
    # Stable on purpose: with a persistent session the broker queues for us while we are down.
    client_id: str = Field("edgemon-collector", min_length=1, max_length=128)
    username: str | None = None
    password: SecretStr | None = None
    # The collector's presence id (edgemon/v1/_collectors/<id>/state); None: the client id.
    collector_id: str | None = Field(None, min_length=1, max_length=128)
    keepalive: int = Field(30, ge=5, le=3600)
    # Reconnect delays: uniform in [0, min(max, min * 2**attempt)] ("full jitter").
    reconnect_min_seconds: float = Field(0.25, ge=0.05, le=60)
    reconnect_max_seconds: int = Field(30, ge=1, le=3600)
    # Delivery stall detector (ingest/stall.py): a message un-PUBACKed, a publish unconfirmed
    # by the broker, or a probe not delivered for this long is a stall: reported, reconnected.
    stall_seconds: float = Field(30.0, ge=1, le=3600)
    # A host sending this many messages within a second floods: the collector stops subscribing
    # to its topics for flood_quarantine_seconds (doubled for a repeat within an hour, at most
    # an hour), see ingest/flood_guard.py. 0: never.
    flood_trigger_per_second: int = Field(500, ge=0)
    flood_quarantine_seconds: float = Field(300.0, ge=1, le=3600)
    # TLS: the broker's certificate and host name are verified against ca_file (the system CAs
    # when unset); cert_file + key_file: a client certificate (require_certificate brokers).
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # MQTT protocol version: "3.1.1" or "5". A shared group ([cluster] shared_group) needs "5":
    # only MQTT 5 lets the broker drop a dead collector's session (session expiry) and hand its
    # share to the others.
    protocol: Literal["3.1.1", "5"] = "3.1.1"

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else value

    @field_validator("client_id")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "+#/") or not value.isprintable():
            raise ValueError("client_id must be printable without '+', '#' or '/'")
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None, info: Any) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        if not value.is_file() or not os.access(value, os.R_OK):
            raise ValueError("not a readable file")
        if info.field_name == "key_file":
            check_private_file(value, "private key", owner="the collector")
        return value

    @field_validator("collector_id")
    @classmethod
    def _presence_id(cls, value: str | None) -> str | None:
        if value is not None:
            _check_collector_id(value)
        return value

    @model_validator(mode="after")
    def _effective_collector_id(self) -> MqttConfig:
        if self.collector_id is None:
            try:
                _check_collector_id(self.client_id)
            except ValueError as exc:
                raise ValueError(f"collector_id defaults to client_id {self.client_id!r}, "
                                 f"which is not a valid collector id ({exc}); set "
                                 "collector_id") from None
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise ValueError("reconnect_min_seconds must not exceed reconnect_max_seconds")
        return self

    @property
    def presence_id(self) -> str:
        """The id in this collector's presence and probe topics."""
        return self.collector_id or self.client_id

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
        if files and not self.tls:
            raise ValueError(f"{', '.join(files)} set but tls = false: set tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


def _check_collector_id(value: str) -> None:
    try:
        collector_state_topic(value)
    except ProtocolError:
        raise ValueError("use letters, digits, '.', '-', '_' (starting with a letter or "
                         "digit, at most 128)") from None


class ClusterConfig(_Section):
    """Several collectors on one shared store (``[cluster]``; SCALING.md).

    ``shared_group``: subscribe through the MQTT 5 shared subscription ``$share/<group>/...``
    so that the broker gives each batch to one collector of the group. Mosquitto lets any
    client it admits join a group by naming it (its acl_file cannot restrict subscriptions)
    and then drops the share it would deliver to a member without read access: the name is a
    shared secret of the collectors, hence at least 16 characters (e.g. ``edgemon-`` and
    ``openssl rand -hex 12``). Empty: no shared subscription (one collector)."""

    shared_group: str = Field("", max_length=128)
    # A shared group with an embedded SQLite store is refused (the collectors would each keep
    # part of the data) unless this says there is exactly one collector in the group.
    single_node: bool = False
    # MQTT 5 session expiry of a collector in a shared group: a collector back within this time
    # resumes its session (the broker re-sends what was in flight); after it, the broker drops
    # the session and gives the group's messages to the collectors still connected. Whatever
    # was queued for the dropped session is sent again by its agents (end-to-end acks).
    session_expiry_seconds: int = Field(30, ge=0, le=86_400)
    # Leader election (collector/cluster/): the leader re-checks its PostgreSQL advisory lock
    # every leader_check_seconds and stops leading when no check succeeded for
    # leader_lease_seconds; a collector that takes the lock waits leader_lease_seconds before it
    # leads, so that two never lead at once.
    leader_check_seconds: float = Field(1.0, ge=0.05, le=60)
    leader_lease_seconds: float = Field(5.0, ge=0.2, le=600)

    @field_validator("shared_group")
    @classmethod
    def _group_name(cls, value: str) -> str:
        if not value:
            return value
        if any(c in value for c in "/+#") or not value.isprintable() or " " in value:
            raise ValueError("a shared group name has no '/', '+', '#', spaces or control "
                             "characters")
        if len(value) < 16:
            raise ValueError("at least 16 characters: any client the broker admits can join a "
                             "shared group by naming it and swallow a share of the fleet's "
                             "batches, so the name is the collectors' secret; e.g. edgemon-"
                             "<output of `openssl rand -hex 12`>")
        return value

    @model_validator(mode="after")
    def _lease_covers_checks(self) -> ClusterConfig:
        if self.leader_lease_seconds < 2 * self.leader_check_seconds:
            raise ValueError("leader_lease_seconds must be at least twice leader_check_seconds "
                             "(one late check must not end the leadership)")
        return self


def is_shared_store(storage: StorageConfig) -> bool:
    """Whether ``storage`` names a store several collectors can share (PostgreSQL)."""
    target = str(getattr(storage, "url", None) or storage.path)
    return target.startswith(("postgresql:", "postgres:"))


class StorageConfig(_Section):
    path: Path = Path("./edgemon-data/edgemon.db")
    # "" = the SQLite file at ``path``; "postgresql://user@host:port/db" = PostgreSQL (a
    # password from PGPASSWORD or ~/.pgpass rather than in this file). With PostgreSQL, ``path``
    # still says where the collector's other files go (tokens, alert state, its lock).
    url: str = ""
    retention_raw_days: Positive = 7
    retention_1m_days: Positive = 90
    retention_1h_days: Positive = 730
    maintain_interval_seconds: float = Field(10.0, gt=0, le=3600)
    # compaction, rollups and retention in a process of their own (False: a thread of the
    # collector's, as before; collector/STORAGE.md "Processes")
    compaction_process: bool = True
    # MB of columns of pending batches kept for alert rules and queries (storage/
    # pending_cache.py), in the collector and in the compaction process each; 0: none
    pending_cache_mb: int = Field(128, ge=0, le=65536)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("a postgresql://user@host:port/database URL, or empty for the "
                             "SQLite file at path")
        return url


class HttpConfig(_Section):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(9400, ge=0, le=65535)  # 0 = any free port (tests)
    # "token": every request but /healthz and /readyz needs a bearer token (http/tokens.py)
    auth: Literal["token", "none"] = "token"
    # None: tokens.json beside the storage database
    tokens_path: Path | None = None
    max_body_bytes: int = Field(64 << 10, ge=1 << 10, le=64 << 20)
    max_query_bytes: int = Field(4096, ge=256, le=8000)  # aiohttp's request line limit is 8190
    cors_origins: tuple[str, ...] = ()
    public_metrics: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = Field(None, validate_default=True)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: comma-separated
            return tuple(o.strip() for o in value.split(",") if o.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-fA-F:.]+\]"
                                r"(:[0-9]{1,5})?", origin):
                raise ValueError(f"{origin[:100]!r} is not an origin: give scheme://host[:port] "
                                 "with no path or trailing slash, e.g. https://grafana.example")
        return origins

    @field_validator("tls_key_file")
    @classmethod
    def _tls_pair(cls, key: Path | None, info: Any) -> Path | None:
        if (key is None) != (info.data.get("tls_cert_file") is None):
            raise ValueError("set both tls_cert_file and tls_key_file for HTTPS, or neither")
        return key


class IngestConfig(_Section):
    max_batch_per_txn: int = Field(200, ge=1, le=100_000)
    queue_max: int = Field(1000, ge=1, le=1_000_000)
    queue_max_bytes: int = Field(64 << 20, ge=1 << 20)
    # Messages one host may hold in the inbox (queued or being stored); more from it are dropped
    # as rate_limited (its agent sends them again), so one host never fills the inbox. Twice
    # an agent's default max_inflight (16): room for a reconnection's redeliveries.
    queue_max_per_host: int = Field(32, ge=1, le=1_000_000)
    future_tolerance_seconds: int = Field(300, ge=0)
    past_tolerance_days: Positive = 30
    # Decoded samples held at once by one group; beyond it the group is stored in several
    # transactions (one batch over it is still stored, alone).
    max_samples_per_txn: int = Field(1_000_000, ge=1)
    # Per-host rate limit, applied before a message is queued (0 disables a rate). Bytes are the
    # zstd frame's declared (decompressed) size, or the wire size when larger.
    rate_limit_messages_per_second: float = Field(100.0, ge=0)
    rate_limit_message_burst: int = Field(1000, ge=1)
    rate_limit_bytes_per_second: int = Field(4 << 20, ge=0)
    rate_limit_byte_burst: int = Field(32 << 20, ge=1 << 20)
    rate_limit_max_hosts: int = Field(10_000, ge=1, le=10_000_000)
    # Budget of resolved bytes per host (0 disables): what batches naming a catalogue resolve
    # into (SPEC.md §9), which costs CPU the frame does not show. Lower than the byte rate: a
    # 500-series host back-filling 20 batches/s resolves ~1.1 MB/s. The burst holds one
    # batch of the largest inline size (8 MiB), so every batch within the limits resolves.
    rate_limit_resolved_bytes_per_second: int = Field(2 << 20, ge=0)
    rate_limit_resolved_byte_burst: int = Field(8 << 20, ge=8 << 20)
    # Cardinality bound per host (collector/ingest/cardinality.py): at most this many distinct
    # series seen in the last 24 h, and this many new ones per hour once a host's first
    # max_series_per_host are in. Series beyond are dropped (counted); the rest keep flowing.
    max_series_per_host: int = Field(5000, ge=1, le=10_000_000)
    max_new_series_per_hour: int = Field(1000, ge=1, le=10_000_000)
    # Worker processes that decode, validate and screen received batches (0: the writer thread
    # does, in the collector's own process). collector/STORAGE.md, "Ingest processes".
    workers: int = Field(2, ge=0, le=64)
    # Back-pressure on the compaction back-log (collector/ingest/backpressure.py): samples due
    # for compaction that may wait. While more than this many stored samples are due for
    # compaction and not yet taken (old enough for it, or of a host with step_samples pending),
    # the agent acks of the hosts holding more than their fair share of them are held (the
    # batches are stored and PUBACKed as always), so those agents, and only those, wait. 3 M
    # samples: about 25 s of compaction at ~115 k samples/s behind schedule; a compaction that
    # keeps up leaves none due. 0: never hold.
    backlog_budget_samples: int = Field(3_000_000, ge=0)
    # A held ack is published after this long at the latest: well under the agents'
    # ack_timeout_seconds (60 s by default), so no agent sends a batch again because of a hold.
    backlog_max_hold_seconds: float = Field(20.0, gt=0, le=50)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


def _readable_file(value: Path | None, what: str = "") -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    if not value.is_file() or not os.access(value, os.R_OK):
        raise ValueError("not a readable file")
    if what:
        check_private_file(value, what, owner="the collector")
    return value


class OutboundHttpConfig(_Section):
    """An HTTP endpoint the collector sends to (an Alertmanager, a remote-write receiver):
    its URL, timeout, TLS and credentials (basic or bearer, inline or from a file)."""

    url: str = Field(max_length=2048)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    timeout_seconds: float = Field(10.0, gt=0, le=600)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    # TLS: the server's certificate is verified against ca_file (default: the system's CAs);
    # cert_file + key_file: a client certificate.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        return value

    @field_validator("ca_file", "cert_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        return _readable_file(value)

    @field_validator("key_file", "password_file", "bearer_token_file")
    @classmethod
    def _private(cls, value: Path | None, info: Any) -> Path | None:
        return _readable_file(value, info.field_name.replace("_", " "))

    @model_validator(mode="after")
    def _consistent(self) -> OutboundHttpConfig:
        basic = self.username is not None
        if (self.password is not None or self.password_file is not None) and not basic:
            raise ValueError("password set without username")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        bearer = self.bearer_token is not None or self.bearer_token_file is not None
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("set bearer_token or bearer_token_file, not both")
        if basic and bearer:
            raise ValueError("basic auth (username) and a bearer token: choose one")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self

    @property
    def display_name(self) -> str:
        """``name``, or the URL's host:port."""
        return self.name or self.url.split("://", 1)[1].split("/", 1)[0]


def _distinct_names(what: str, endpoints: tuple[OutboundHttpConfig, ...]) -> None:
    """Endpoints are told apart in logs and /metrics by name: no two may share one."""
    names = [e.display_name for e in endpoints]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what}: {', '.join(dup)} given twice (set distinct names)")


class AlertmanagerConfig(OutboundHttpConfig):
    """One Alertmanager (``[[alerting.alertmanagers]]``): every alert goes to every one."""

    url: str = Field(max_length=2048)  # base URL; alerts are POSTed to <url>/api/v2/alerts


class AlertingConfig(_Section):
    enabled: bool = True
    # None: the shipped default rules (collector/alerting/rules.example.toml)
    rules_path: Path | None = None
    # None: alerts.db beside the storage database
    state_path: Path | None = None
    # Base of the links in notifications (generatorURL, Slack/Teams/e-mail "link"). Empty:
    # derived from [http] (shown by check-config); set it when the API is reached through a
    # proxy or another name. A rules file's [settings] external_url takes precedence.
    external_url: str = Field("", max_length=1024)
    # Alertmanagers: firing alerts are sent again every resend_delay_seconds with endsAt =
    # now + 4 * max(evaluation interval, resend delay), as Prometheus does.
    resend_delay_seconds: float = Field(60.0, ge=1, le=3600)
    alertmanagers: tuple[AlertmanagerConfig, ...] = ()

    @field_validator("alertmanagers", mode="before")
    @classmethod
    def _alertmanagers_from_env(cls, value: Any) -> Any:
        """From the environment (``EDGEMON_COLLECTOR_ALERTING_ALERTMANAGERS``), replacing the
        file's tables: comma-separated URLs, or a TOML array of inline tables for the other
        keys, e.g. ``[{url = "https://am:9093", bearer_token_file = "/etc/am.token"}]``."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"not a TOML array of inline tables: {exc}") from None
        return [{"url": url.strip()} for url in text.split(",") if url.strip()]

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an absolute http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _unique_names(self) -> AlertingConfig:
        _distinct_names("alertmanagers", self.alertmanagers)
        return self


class ForwardConfig(OutboundHttpConfig):
    """One remote-write receiver (``[[forward]]``): every stored sample is sent to it."""

    # Samples per request (Prometheus sends at most 2000 per shard request by default).
    max_samples_per_request: int = Field(2000, ge=1, le=100_000)
    # Back-off after a failure (5xx, 429, refused connection): doubles from ... to ...
    retry_initial_seconds: float = Field(0.5, gt=0, le=60)
    retry_max_seconds: float = Field(30.0, gt=0, le=3600)
    # Extra labels added to every series (e.g. a cluster name); never override a sample's own.
    external_labels: dict[str, str] = {}
    # Where to start on the first run: "all" (every batch the forwarding log holds: all stored
    # since forwarding was first configured on this store) or "now" (only new ones).
    start: Literal["all", "now"] = "all"
    # A receiver more than this many samples behind has its oldest ones skipped (counted in
    # edgemon_collector_forward_samples_skipped_total): the log's disk use stays bounded.
    max_pending_samples: int = Field(50_000_000, ge=1000)

    @field_validator("external_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key) or key.startswith("__"):
                raise ValueError(f"{key!r} is not a label name")
        return value


class CollectorConfig(_Section):
    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    ingest: IngestConfig = IngestConfig()
    alerting: AlertingConfig = AlertingConfig()
    log: LogConfig = LogConfig()
    cluster: ClusterConfig = ClusterConfig()
    forward: tuple[ForwardConfig, ...] = ()

    @model_validator(mode="after")
    def _unique_forward_names(self) -> CollectorConfig:
        _distinct_names("forward", self.forward)
        return self

    def external_url(self) -> str:
        """``alerting.external_url``, or the HTTP API's own address (0.0.0.0 and :: become
        this machine's name)."""
        if self.alerting.external_url:
            return self.alerting.external_url
        http = self.http
        host = http.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if http.tls_cert_file else "http"
        return f"{scheme}://{host}:{http.port}"


ARRAYS: dict[str, type[_Section]] = {"forward": ForwardConfig}  # [[name]] tables
SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation  # type: ignore[misc]
    for name, info in CollectorConfig.model_fields.items() if name not in ARRAYS
}


def _line_of(lines: TomlLines, loc: list[str]) -> int | None:
    """The line of a pydantic ``loc`` (``[[forward]]`` and ``[[alerting.alertmanagers]]``
    entries are found by their index)."""
    if len(loc) > 1 and loc[0] in ARRAYS and loc[1].isdigit():
        return lines.find(loc[0], loc[2:], index=int(loc[1]))
    if len(loc) > 2 and loc[2].isdigit():
        return (lines.find(f"{loc[0]}.{loc[1]}", loc[3:], index=int(loc[2]))
                or lines.find(loc[0], [loc[1]]))
    return lines.find(loc[0] if loc else "", loc[1:2])


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Read ``path`` (optional), apply environment overrides, validate; raise ``ConfigError``."""
    environ = os.environ if environ is None else environ
    where = "<defaults>" if path is None else str(path)
    text, data = read_toml(path) if path is not None else ("", {})
    lines = TomlLines(text)

    problems: list[str] = []
    for section, body in data.items():
        if section in ARRAYS:
            if not isinstance(body, list):
                problems.append(f"{where}{at_line(lines.find(section))}: {section}: must be an "
                                f"array of tables ([[{section}]])")
        elif section not in SECTIONS:
            line = lines.find(section) or lines.find("", [section])
            problems.append(f"{where}{at_line(line)}: [{section}]: unknown section; expected one "
                            "of " + ", ".join([*(f"[{s}]" for s in SECTIONS),
                                               *(f"[[{s}]]" for s in ARRAYS)]))
        elif not isinstance(body, dict):
            problems.append(f"{where}{at_line(lines.find('', [section]))}: {section}: "
                            "must be a table ([" + section + "])")
    schema = {name: model.model_fields.keys() for name, model in SECTIONS.items()}
    env, env_problems = env_overrides(environ, ENV_PREFIX, schema, "collector.example.toml")
    problems += env_problems
    if problems:
        raise ConfigError(problems)

    merged: dict[str, Any] = {s: dict(data.get(s, {})) for s in SECTIONS}
    for (section, key), setting in env.items():
        merged[section][key] = setting.value
    for name in ARRAYS:
        if name in data:
            merged[name] = data[name]
    try:
        config = CollectorConfig.model_validate(merged)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = [str(p) for p in err["loc"]]
            section = loc[0] if loc else ""
            key = loc[1] if len(loc) > 1 else None
            dotted = ".".join(loc) or "config"
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            elif key != "password" and isinstance(err.get("input"), str | int | float | bool):
                message += f", got {err['input']!r}"
            if key is not None and (section, key) in env:
                source = f"{env[(section, key)].variable} (environment)"
            else:
                source = f"{where}{at_line(_line_of(lines, loc))}"
            problems.append(f"{source}: {dotted}: {message}")
        raise ConfigError(problems) from None
    problems = [f"{_source(where, lines, env, section, key)}: {section}.{key}: {message}"
                for section, key, message in cluster_problems(config)]
    if problems:
        raise ConfigError(problems)
    return config


def cluster_problems(config: CollectorConfig) -> list[tuple[str, str, str]]:
    """Settings that contradict each other across sections: (section, key, message)."""
    cluster = config.cluster
    if not cluster.shared_group:
        return []
    problems = []
    if config.mqtt.protocol != "5":
        problems.append(("mqtt", "protocol", "a shared group needs protocol = \"5\": with MQTT "
                         "3.1.1 a dead collector's session never expires, so the broker keeps "
                         "queueing its share instead of giving it to the others (Mosquitto "
                         "accepts $share/ from 3.1.1 clients; the MQTT standard does not)"))
    if not is_shared_store(config.storage) and not cluster.single_node:
        problems.append(("cluster", "shared_group", "a shared group needs a store the "
                         "collectors share (storage postgresql://...): with an embedded SQLite "
                         "store each collector would keep only its share of the batches. One "
                         "collector on its own in the group: set single_node = true"))
    return problems


def _source(where: str, lines: TomlLines, env: Mapping[tuple[str, str], Any], section: str,
            key: str) -> str:
    if (section, key) in env:
        return f"{env[(section, key)].variable} (environment)"
    return f"{where}{at_line(lines.find(section, [key]))}"
