"""Agent configuration: a TOML file checked by hand (no pydantic), overridable from the environment.

Every key has a default; ``agent.example.toml`` shows them all and is what the docs show. An
environment variable ``EDGEMON_AGENT_<SECTION>_<KEY>`` (``EDGEMON_AGENT_BROKER_PORT=1884``) or,
for top-level keys, ``EDGEMON_AGENT_<KEY>`` (``EDGEMON_AGENT_INTERVAL_SECONDS=0.1``) overrides
the file and is checked the same way. Every problem names the key and where its value came from:
``agent.toml:7: broker.port: must be an integer 1..65535, got "abc"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from edgemon.agent.families import DEFAULT_FAMILIES, DEFAULT_INTERVALS, FAMILIES
from edgemon.common.private_files import check_not_world_accessible
from edgemon.common.toml_config import (
    ConfigError,
    TomlLines,
    at_line,
    env_overrides,
    read_toml,
)
from edgemon.protocol.limits import MAX_HOST_LENGTH, MAX_TIMESTAMPS
from edgemon.protocol.topics import validate_host_id

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "BrokerConfig",
    "BufferConfig",
    "ConfigError",
    "LogConfig",
    "as_dict",
    "default_host_id",
    "family_cycles",
    "load_config",
]

ENV_PREFIX = "EDGEMON_AGENT_"
LEVELS = ("debug", "info", "warning", "error")


class BrokerConfig(NamedTuple):
    host: str
    port: int
    keepalive: int
    client_id: str
    username: str | None
    password: str | None
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    reconnect_max_seconds: float


class BufferConfig(NamedTuple):
    path: Path
    max_bytes: int
    max_age_hours: float
    ack_timeout_seconds: float
    backfill_batches_per_second: float
    max_inflight: int


class LogConfig(NamedTuple):
    level: str


class AgentConfig(NamedTuple):
    host_id: str
    interval_seconds: float
    batch_cycles: int
    families: tuple[str, ...]
    intervals: dict[str, float]  # [intervals]: family -> seconds, as set (see family_cycles)
    broker: BrokerConfig
    buffer: BufferConfig
    log: LogConfig


def default_host_id(hostname: str | None = None) -> str:
    """The host name made a valid protocol host id: other characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", hostname or socket.gethostname())
    name = name.lstrip("._-")[:MAX_HOST_LENGTH]
    return name or "localhost"


# --- checkers: value (TOML value, or str from the environment) -> clean value, or ValueError ---

Check = Callable[[Any, bool], Any]  # (value, from_environment) -> value


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _integer(low: int, high: int | None = None) -> Check:
    span = f"{low}..{high}" if high is not None else f">= {low}"

    def check(value: Any, from_env: bool) -> int:
        if from_env and isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        if type(value) is not int or value < low or (high is not None and value > high):
            raise ValueError(f"must be an integer {span}, got {_show(value)}")
        return value

    return check


def _number(low: float, high: float, *, open_low: bool = False) -> Check:
    span = f"{'>' if open_low else '>='} {low:g} and <= {high:g}"

    def check(value: Any, from_env: bool) -> float:
        if from_env and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if type(value) not in (int, float) or not (
                (value > low if open_low else value >= low) and value <= high):
            raise ValueError(f"must be a number {span}, got {_show(value)}")
        return float(value)

    return check


def _boolean(value: Any, from_env: bool) -> bool:
    if from_env and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        value = value.lower() in ("true", "1")
    if type(value) is not bool:
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _text(*, empty: bool = False, printable: bool = True) -> Check:
    def check(value: Any, from_env: bool) -> str:
        if not isinstance(value, str) or (not empty and not value):
            raise ValueError(f"must be a {'' if empty else 'non-empty '}string, got {_show(value)}")
        if printable and not value.isprintable():
            raise ValueError(f"must be printable text, got {_show(value)}")
        return value

    return check


def _host(value: Any, from_env: bool) -> str:
    host = _text()(value, from_env)
    try:
        return validate_host_id(host)
    except ValueError:
        raise ValueError(f"must be 1-{MAX_HOST_LENGTH} of letters, digits, '.', '-', '_' "
                         f"starting with a letter or digit, got {_show(value)}") from None


def _client_id(value: Any, from_env: bool) -> str:
    client_id = _text()(value, from_env)
    if any(c in client_id for c in "+#/") or len(client_id) > 128:
        raise ValueError(f"must be at most 128 characters without '+', '#', '/', "
                         f"got {_show(value)}")
    return client_id


def _families(value: Any, from_env: bool) -> tuple[str, ...]:
    if from_env and isinstance(value, str):
        value = [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of family names, got {_show(value)}")
    unknown = [v for v in value if v not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(_show, unknown))}; known: {', '.join(FAMILIES)}")
    return tuple(dict.fromkeys(value))


def _level(value: Any, from_env: bool) -> str:
    if not isinstance(value, str) or value.lower() not in LEVELS:
        raise ValueError(f"must be one of {', '.join(LEVELS)}, got {_show(value)}")
    return value.lower()


def _path(value: Any, from_env: bool) -> Path:
    return Path(_text()(value, from_env)).expanduser()


def _file(*, private: bool = False) -> Check:
    """A readable regular file; ``private``: one other users cannot access (a private key)."""

    def check(value: Any, from_env: bool) -> Path:
        path = _path(value, from_env)
        try:
            info = path.stat()
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode) or not os.access(path, os.R_OK):
            raise ValueError(f"{str(path)!r} is not a readable file")
        if private:  # InsecureFileMode is a ValueError: reported like any bad value
            check_not_world_accessible(path, "private key", owner="the agent")
        return path

    return check


def _tls_problems(broker: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for TLS settings that do not fit together or files ssl cannot load."""
    files = [k for k in ("ca_file", "cert_file", "key_file") if broker[k] is not None]
    if files and not broker["tls"]:
        return [(files[0], f"{', '.join(files)} set but broker.tls is false: set tls = true")]
    if (broker["cert_file"] is None) != (broker["key_file"] is None):
        key = "key_file" if broker["key_file"] is None else "cert_file"
        return [(key, "a client certificate needs both cert_file and key_file")]
    if not broker["tls"]:
        return []
    import ssl  # only with TLS: an agent without it never loads ssl (lean_paho.py)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if broker["ca_file"] is not None:
            context.load_verify_locations(cafile=broker["ca_file"])
    except (ssl.SSLError, ValueError) as exc:
        return [("ca_file", f"not a PEM CA certificate: {exc}")]

    def encrypted() -> bytes:
        raise ValueError("the key is encrypted; give a key without a passphrase")

    try:
        if broker["cert_file"] is not None:
            context.load_cert_chain(broker["cert_file"], broker["key_file"], password=encrypted)
    except (ssl.SSLError, ValueError) as exc:
        return [("cert_file", f"cannot load the certificate and key_file: {exc}")]
    return []


class _Key(NamedTuple):
    check: Check
    default: Any  # None: computed (host_id, client_id) or absent (username, password)


SCHEMA: dict[str, dict[str, _Key]] = {
    "": {
        "host_id": _Key(_host, None),
        "interval_seconds": _Key(_number(0.05, 3600), 10.0),
        "batch_cycles": _Key(_integer(1, MAX_TIMESTAMPS), 6),
        "families": _Key(_families, DEFAULT_FAMILIES),
    },
    "broker": {
        "host": _Key(_text(), "localhost"),
        "port": _Key(_integer(1, 65535), 1883),
        "keepalive": _Key(_integer(5, 3600), 60),
        "client_id": _Key(_client_id, None),
        "username": _Key(_text(), None),
        "password": _Key(_text(printable=False), None),
        "tls": _Key(_boolean, False),
        "ca_file": _Key(_file(), None),
        "cert_file": _Key(_file(), None),
        "key_file": _Key(_file(private=True), None),
        "reconnect_max_seconds": _Key(_number(0.1, 3600), 60.0),
    },
    "buffer": {
        "path": _Key(_path, Path("/var/lib/edgemon-agent/buffer.db")),
        "max_bytes": _Key(_integer(128 << 10), 64 << 20),
        "max_age_hours": _Key(_number(0, 100_000, open_low=True), 720.0),
        "ack_timeout_seconds": _Key(_number(0.1, 86_400), 60.0),
        "backfill_batches_per_second": _Key(_number(0, 10_000, open_low=True), 10.0),
        "max_inflight": _Key(_integer(1, 1000), 16),
    },
    "log": {
        "level": _Key(_level, "info"),
    },
    # [intervals] <family> = seconds: sample that family less often than every cycle
    "intervals": {name: _Key(_number(0.05, 86_400), None) for name in FAMILIES},
}


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None,
                hostname: str | None = None) -> AgentConfig:
    """Read ``path`` (optional), apply the environment, check every key; raise ``ConfigError``."""
    environ = os.environ if environ is None else environ
    text, data = read_toml(path) if path is not None else ("", {})
    lines = TomlLines(text)
    where = str(path)
    problems: list[str] = []

    def file_problem(section: str, key: str, message: str) -> None:
        line = lines.find(section, [key])
        problems.append(f"{where}{at_line(line)}: {_dotted(section, key)}: {message}")

    raw: dict[tuple[str, str], tuple[Any, bool, str | None]] = {}  # value, from env, env var
    for name, value in data.items():
        if name in SCHEMA and name and isinstance(value, dict):
            for key, item in value.items():
                if key in SCHEMA[name]:
                    raw[(name, key)] = (item, False, None)
                else:
                    file_problem(name, key, "unknown key")
        elif name in SCHEMA[""]:
            raw[("", name)] = (value, False, None)
        elif name in SCHEMA and name:
            file_problem("", name, f"must be a table ([{name}])")
        elif isinstance(value, dict):
            line = lines.find(name) or lines.find("", [name])
            problems.append(f"{where}{at_line(line)}: [{name}]: unknown section; "
                            f"expected one of {', '.join(f'[{s}]' for s in SCHEMA if s)}")
        else:
            file_problem("", name, "unknown key")
    env, env_problems = env_overrides(environ, ENV_PREFIX, SCHEMA, "agent.example.toml")
    problems += env_problems
    for (section, key), setting in env.items():
        raw[(section, key)] = (setting.value, True, setting.variable)

    clean: dict[str, dict[str, Any]] = {section: {} for section in SCHEMA}
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if (section, key) not in raw:
                clean[section][key] = spec.default
                continue
            value, from_env, var = raw[(section, key)]
            try:
                clean[section][key] = spec.check(value, from_env)
            except ValueError as exc:
                if var is not None:
                    problems.append(f"{var} (environment): {_dotted(section, key)}: {exc}")
                else:
                    file_problem(section, key, str(exc))
    broker = clean["broker"]
    if broker["password"] is not None and broker["username"] is None:
        problems.append(f"{where}: broker.password: set broker.username too")

    def key_problem(section: str, key: str, message: str) -> None:
        var = raw.get((section, key), (None, False, None))[2]
        if var is not None:
            problems.append(f"{var} (environment): {_dotted(section, key)}: {message}")
        else:
            file_problem(section, key, message)

    if not problems:
        for key, problem in _tls_problems(broker):
            key_problem("broker", key, problem)
    top = clean[""]
    host_id = top["host_id"] or default_host_id(hostname)
    if not problems and broker["username"] not in (None, host_id):
        # the broker's ACL lets user U write only edgemon/v1/U/...: anything else is dropped
        key_problem("broker", "username", f"must equal host_id ({_show(host_id)}), got "
                    f"{_show(broker['username'])}: the broker only lets a host's user publish "
                    "on its own topics; set host_id to the user name the credentials were "
                    "made for, or use that host's credentials")
    intervals: dict[str, float] = {}
    interval = top.get("interval_seconds")
    for name, seconds in clean["intervals"].items():
        if interval is None or "families" not in top:
            break  # checked once interval_seconds and families are valid
        if seconds is None:
            continue
        cycles = round(seconds / interval)
        if cycles < 1 or abs(cycles * interval - seconds) > 1e-9 * seconds:
            key_problem("intervals", name, f"must be a whole multiple of interval_seconds "
                        f"({interval:g}), got {_show(seconds)}")
        elif name not in top["families"]:
            key_problem("intervals", name, f"family {_show(name)} is not in families: "
                        "add it there to sample it")
        else:
            intervals[name] = seconds
    if problems:
        raise ConfigError(problems)

    broker["client_id"] = broker["client_id"] or f"edgemon-agent-{host_id}"
    return AgentConfig(
        host_id=host_id,
        interval_seconds=top["interval_seconds"],
        batch_cycles=top["batch_cycles"],
        families=top["families"],
        intervals=intervals,
        broker=BrokerConfig(**broker),
        buffer=BufferConfig(**clean["buffer"]),
        log=LogConfig(**clean["log"]),
    )


def family_cycles(config: AgentConfig) -> dict[str, int]:
    """Family -> sampled every N cycles, for the families not sampled every cycle: as
    ``[intervals]`` says, else at most every ``DEFAULT_INTERVALS`` seconds (processes)."""
    out: dict[str, int] = {}
    for name in config.families:
        if name in config.intervals:
            cycles = round(config.intervals[name] / config.interval_seconds)
        else:
            cycles = math.ceil(DEFAULT_INTERVALS.get(name, 0) / config.interval_seconds - 1e-9)
        if cycles > 1:
            out[name] = cycles
    return out


def as_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective configuration as plain data for display; the password is masked."""
    out: dict[str, Any] = {}
    for key, value in config._asdict().items():
        if isinstance(value, tuple) and hasattr(value, "_asdict"):
            out[key] = {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in value._asdict().items()}
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    if out["broker"]["password"] is not None:
        out["broker"]["password"] = "***"
    return out
