"""Collector configuration: a TOML file validated with pydantic, overridable from the environment.

Every key has a default (``collector.example.toml`` lists them all). An environment variable
``EDGEMON_COLLECTOR_<SECTION>_<KEY>`` (e.g. ``EDGEMON_COLLECTOR_HTTP_PORT=9500``) overrides the
file. Errors name the key and where its value came from: ``file:line`` or the variable's name.
"""

from __future__ import annotations

import os
import re
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
    "CollectorConfig",
    "ConfigError",
    "HttpConfig",
    "IngestConfig",
    "LogConfig",
    "MqttConfig",
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


class StorageConfig(_Section):
    path: Path = Path("./edgemon-data/edgemon.db")
    retention_raw_days: Positive = 7
    retention_1m_days: Positive = 90
    retention_1h_days: Positive = 730
    maintain_interval_seconds: float = Field(10.0, gt=0, le=3600)


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


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class AlertingConfig(_Section):
    enabled: bool = True
    # None: the shipped default rules (collector/alerting/rules.example.toml)
    rules_path: Path | None = None
    # None: alerts.db beside the storage database
    state_path: Path | None = None


class CollectorConfig(_Section):
    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    ingest: IngestConfig = IngestConfig()
    alerting: AlertingConfig = AlertingConfig()
    log: LogConfig = LogConfig()


SECTIONS: dict[str, type[_Section]] = {
    name: info.annotation  # type: ignore[misc]
    for name, info in CollectorConfig.model_fields.items()
}


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Read ``path`` (optional), apply environment overrides, validate; raise ``ConfigError``."""
    environ = os.environ if environ is None else environ
    where = "<defaults>" if path is None else str(path)
    text, data = read_toml(path) if path is not None else ("", {})
    lines = TomlLines(text)

    problems: list[str] = []
    for section, body in data.items():
        if section not in SECTIONS:
            line = lines.find(section) or lines.find("", [section])
            problems.append(f"{where}{at_line(line)}: [{section}]: unknown section; expected one "
                            "of " + ", ".join(f"[{s}]" for s in SECTIONS))
        elif not isinstance(body, dict):
            problems.append(f"{where}{at_line(lines.find('', [section]))}: {section}: "
                            "must be a table ([" + section + "])")
    schema = {name: model.model_fields.keys() for name, model in SECTIONS.items()}
    env, env_problems = env_overrides(environ, ENV_PREFIX, schema, "collector.example.toml")
    problems += env_problems
    if problems:
        raise ConfigError(problems)

    merged: dict[str, dict[str, Any]] = {s: dict(data.get(s, {})) for s in SECTIONS}
    for (section, key), setting in env.items():
        merged[section][key] = setting.value
    try:
        return CollectorConfig.model_validate(merged)
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
                source = f"{where}{at_line(lines.find(section, [key]))}"
            problems.append(f"{source}: {dotted}: {message}")
        raise ConfigError(problems) from None
