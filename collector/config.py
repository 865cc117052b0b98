"""Collector configuration: a TOML file validated with pydantic, overridable from the environment.

Every key has a default (``collector.example.toml`` lists them all). An environment variable
``EDGEMON_COLLECTOR_<SECTION>_<KEY>`` (e.g. ``EDGEMON_COLLECTOR_HTTP_PORT=9500``) overrides the
file. Errors name the key and where its value came from: ``file:line`` or the variable's name.
"""

from __future__ import annotations

import os
import re
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
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_max_seconds: int = Field(30, ge=1, le=3600)
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

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
        if files and not self.tls:
            raise ValueError(f"{', '.join(files)} set but tls = false: set tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


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
    # Cardinality bound per host (collector/ingest/cardinality.py): at most this many distinct
    # series seen in the last 24 h, and this many new ones per hour once a host's first
    # max_series_per_host are in. Series beyond are dropped (counted); the rest keep flowing.
    max_series_per_host: int = Field(5000, ge=1, le=10_000_000)
    max_new_series_per_hour: int = Field(1000, ge=1, le=10_000_000)


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


class ConfigError(Exception):
    """Invalid configuration. ``str()`` is one line per problem: ``where: key: what``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _key_line(text: str, section: str, key: str | None) -> int | None:
    """1-based line of ``key`` inside ``[section]`` (or of the header when key is None)."""
    current: str | None = None
    header_line: int | None = None
    key_re = re.compile(rf"""\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""") \
        if key else None
    dotted_re = re.compile(rf"\s*{re.escape(section)}\s*\.\s*{re.escape(key)}\s*=") \
        if key else None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]\s*(#.*)?", stripped)
        if header:
            current = header.group(1).strip().strip("\"'")
            if current == section and header_line is None:
                header_line = number
            continue
        if key_re is None:
            continue
        if current == section and key_re.match(line):
            return number
        if current is None and dotted_re is not None and dotted_re.match(line):
            return number
    return header_line


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict, list]:
    """{section: {key: value}}, {(section, key): variable}, problems with unknown variables."""
    values: dict[str, dict[str, str]] = {}
    origin: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS or key not in SECTIONS[section].model_fields:
            problems.append(f"{var} (environment): unknown setting; expected "
                            f"{ENV_PREFIX}<SECTION>_<KEY> with a key of collector.example.toml")
            continue
        values.setdefault(section, {})[key] = environ[var]
        origin[(section, key)] = var
    return values, origin, problems


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Read ``path`` (optional), apply environment overrides, validate; raise ``ConfigError``."""
    environ = os.environ if environ is None else environ
    text = ""
    where = "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{where}: not UTF-8 text"]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"at line (\d+)", str(exc))
            line = f":{match.group(1)}" if match else ""
            raise ConfigError([f"{where}{line}: invalid TOML: {exc}"]) from None

    problems: list[str] = []
    for section, body in data.items():
        if section not in SECTIONS:
            line = _key_line(text, section, None) or _top_level_line(text, section)
            problems.append(f"{where}{_fmt(line)}: [{section}]: unknown section; expected one of "
                            + ", ".join(f"[{s}]" for s in SECTIONS))
        elif not isinstance(body, dict):
            problems.append(f"{where}{_fmt(_top_level_line(text, section))}: {section}: "
                            "must be a table ([" + section + "])")
    env_values, env_origin, env_problems = _env_overrides(environ)
    problems += env_problems
    if problems:
        raise ConfigError(problems)

    merged: dict[str, dict[str, Any]] = {s: dict(data.get(s, {})) for s in SECTIONS}
    for section, overrides in env_values.items():
        merged[section].update(overrides)
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
            if key is not None and (section, key) in env_origin:
                source = f"{env_origin[(section, key)]} (environment)"
            else:
                source = f"{where}{_fmt(_key_line(text, section, key) if text else None)}"
            problems.append(f"{source}: {dotted}: {message}")
        raise ConfigError(problems) from None


def _top_level_line(text: str, name: str) -> int | None:
    pattern = re.compile(rf"\s*{re.escape(name)}\s*[=.]")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _fmt(line: int | None) -> str:
    return f":{line}" if line else ""
