"""Agent configuration: defaults, the example file, environment overrides, errors with file:line."""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path

import pytest

from edgemon.agent.cli import main
from edgemon.agent.config import (
    SCHEMA,
    ConfigError,
    default_host_id,
    family_cycles,
    load_config,
)
from edgemon.agent.families import DEFAULT_FAMILIES, FAMILIES

EXAMPLE = Path(str(files("edgemon.agent") / "agent.example.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    path.chmod(0o600)  # the agent refuses a configuration other users can read
    return path


def problems(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {}, hostname="web-01")
    return info.value.problems


def test_the_example_file_is_exactly_the_defaults() -> None:
    example = load_config(EXAMPLE, environ={}, hostname="web-01")
    assert example == load_config(None, environ={}, hostname="web-01")
    assert example.families == DEFAULT_FAMILIES
    assert set(FAMILIES) - set(DEFAULT_FAMILIES) == {"top_processes"}  # opt-in only


def test_the_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, keys in SCHEMA.items():
        if section:
            assert f"\n[{section}]\n" in text
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", text, re.M), f"{section}.{key} not in example"


def test_defaults() -> None:
    config = load_config(None, environ={}, hostname="web 01.example/com")
    assert config.host_id == "web-01.example-com"
    assert config.broker.client_id == "edgemon-agent-web-01.example-com"
    assert (config.interval_seconds, config.batch_cycles) == (10.0, 6)
    assert (config.broker.host, config.broker.port, config.broker.tls) == ("localhost", 1883,
                                                                          False)
    assert config.buffer.max_bytes == 64 << 20
    assert config.buffer.path == Path("/var/lib/edgemon-agent/buffer.db")


@pytest.mark.parametrize(("hostname", "host_id"), [
    ("web-01", "web-01"), ("_under", "under"), ("ünïcode", "n-code"), ("...", "localhost"),
    ("x" * 100, "x" * 64)])
def test_default_host_id_is_a_valid_protocol_host_id(hostname: str, host_id: str) -> None:
    assert default_host_id(hostname) == host_id


def test_a_bad_value_names_file_line_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'interval_seconds = 5\n\n[broker]\nhost = "mq"\n'
                           '# the port:\nport = "abc"\n')
    assert problems(path) == [
        f'{path}:6: broker.port: must be an integer 1..65535, got "abc"']


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([
        "intervall_seconds = 1",      # 1: typo
        "batch_cycles = 0",           # 2
        'families = ["cpu", "gpu"]',  # 3
        "[buffer]",                   # 4
        "max_bytes = 10",             # 5
        "max_inflight = 1.5",         # 6
        "[log]",                      # 7
        'level = "loud"',             # 8
        "[metrics]",                  # 9
        "x = 1",                      # 10
    ]))
    assert problems(path) == [
        f"{path}:1: intervall_seconds: unknown key",
        f"{path}:9: [metrics]: unknown section; expected one of [broker], [buffer], [log], "
        "[intervals]",
        f"{path}:2: batch_cycles: must be an integer 1..4096, got 0",
        f'{path}:3: families: unknown family "gpu"; known: {", ".join(FAMILIES)}',
        f"{path}:5: buffer.max_bytes: must be an integer >= 131072, got 10",
        f"{path}:6: buffer.max_inflight: must be an integer 1..1000, got 1.5",
        f'{path}:8: log.level: must be one of debug, info, warning, error, got "loud"',
    ]


def test_unknown_key_in_a_section_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nhost = "mq"\n\n[buffer]\nhost = "x"\n')
    assert problems(path) == [f"{path}:5: buffer.host: unknown key"]


def test_dotted_keys_are_found_too(tmp_path: Path) -> None:
    path = write(tmp_path, 'batch_cycles = 3\nbroker.keepalive = 1\n')
    assert problems(path) == [f"{path}:2: broker.keepalive: must be an integer 5..3600, got 1"]


def test_invalid_toml_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nport = \n')
    [problem] = problems(path)
    assert problem.startswith(f"{path}:2: invalid TOML")


def test_types_are_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_seconds = true\n[broker]\nport = 1883.0\ntls = 1\n")
    assert problems(path) == [
        f"{path}:1: interval_seconds: must be a number >= 0.05 and <= 3600, got true",
        f"{path}:3: broker.port: must be an integer 1..65535, got 1883.0",
        f"{path}:4: broker.tls: must be true or false, got 1",
    ]


def test_environment_overrides_the_file_with_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'interval_seconds = 5\n[broker]\nport = 1883\nhost = "mq"\n')
    config = load_config(path, environ={
        "EDGEMON_AGENT_BROKER_PORT": "1884",
        "EDGEMON_AGENT_INTERVAL_SECONDS": "0.1",
        "EDGEMON_AGENT_FAMILIES": "cpu, memory",
        "EDGEMON_AGENT_BUFFER_PATH": str(tmp_path / "b.db"),
        "EDGEMON_AGENT_HOST_ID": "edge-7",
        "EDGEMON_AGENT_LOG_LEVEL": "DEBUG",
        "OTHER_VARIABLE": "ignored",
    })
    assert config.broker.port == 1884 and config.broker.host == "mq"
    assert config.interval_seconds == 0.1
    assert config.families == ("cpu", "memory")
    assert config.buffer.path == tmp_path / "b.db"
    assert config.host_id == "edge-7" and config.broker.client_id == "edgemon-agent-edge-7"
    assert config.log.level == "debug"


def test_a_bad_environment_value_names_the_variable() -> None:
    assert problems(None, {"EDGEMON_AGENT_BROKER_PORT": "abc",
                           "EDGEMON_AGENT_INTERVAL_SECONDS": "0.01",
                           "EDGEMON_AGENT_BROKER_PORTT": "1"}) == [
        "EDGEMON_AGENT_BROKER_PORTT (environment): unknown setting; expected "
        "EDGEMON_AGENT_<KEY> or EDGEMON_AGENT_<SECTION>_<KEY> for a key of agent.example.toml",
        "EDGEMON_AGENT_INTERVAL_SECONDS (environment): interval_seconds: must be a number "
        ">= 0.05 and <= 3600, got 0.01",
        'EDGEMON_AGENT_BROKER_PORT (environment): broker.port: must be an integer 1..65535, '
        'got "abc"',
    ]


def test_credentials_and_tls(tmp_path: Path) -> None:
    path = write(tmp_path, 'host_id = "u"\n[broker]\nusername = "u"\npassword = "p"\n')
    config = load_config(path, environ={})
    assert (config.broker.username, config.broker.password) == ("u", "p")
    assert problems(write(tmp_path, '[broker]\npassword = "p"\n')) == [
        f"{tmp_path / 'agent.toml'}: broker.password: set broker.username too"]
    # more TLS and credential checks: tests/test_broker_auth.py
    assert load_config(write(tmp_path, "[broker]\ntls = true\n"), environ={}).broker.tls


def test_check_config_prints_ok_or_the_error_and_exits_2(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [v for v in os.environ if v.startswith("EDGEMON_AGENT_")]:
        monkeypatch.delenv(name)
    good = write(tmp_path, 'host_id = "u"\n[broker]\nusername = "u"\npassword = "secret"\n')
    assert main(["check-config", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK\n") and '"username": "u"' in out
    assert "secret" not in out  # the password is masked
    bad = write(tmp_path, "[broker]\nport = 0\n")
    assert main(["check-config", "-c", str(bad)]) == 2
    assert f"{bad}:2: broker.port: must be an integer 1..65535, got 0" in capsys.readouterr().err


def test_family_intervals_are_whole_multiples_of_the_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_seconds = 10\n[intervals]\nprocesses = 60\ncpu = 10.0\n")
    config = load_config(path, environ={"EDGEMON_AGENT_INTERVALS_DISK": "30"})
    assert config.intervals == {"processes": 60.0, "cpu": 10.0, "disk": 30.0}
    assert family_cycles(config) == {"processes": 6, "disk": 3}  # cpu: every cycle anyway
    # by default processes (a /proc scan) is sampled at most once a minute, the rest every cycle
    assert family_cycles(load_config(None, environ={})) == {"processes": 6}
    assert family_cycles(load_config(None, environ={"EDGEMON_AGENT_INTERVAL_SECONDS": "7"})
                         ) == {"processes": 9}
    assert family_cycles(load_config(None, environ={"EDGEMON_AGENT_INTERVALS_PROCESSES": "10"})
                         ) == {}
    assert family_cycles(load_config(None, environ={"EDGEMON_AGENT_INTERVAL_SECONDS": "60"})
                         ) == {}
    assert family_cycles(load_config(None, environ={"EDGEMON_AGENT_FAMILIES": "cpu"})) == {}
    path = write(tmp_path, 'families = ["cpu"]\n[intervals]\ncpu = 15\nload = 20\n'
                           "top_processes = 5\n")
    assert problems(path) == [
        f"{path}:3: intervals.cpu: must be a whole multiple of interval_seconds (10), got 15.0",
        f'{path}:4: intervals.load: family "load" is not in families: add it there to sample it',
        f"{path}:5: intervals.top_processes: must be a whole multiple of interval_seconds (10), "
        "got 5.0",
    ]
    assert problems(write(tmp_path, "[intervals]\ngpu = 60\n")) == [
        f"{path}:2: intervals.gpu: unknown key"]
