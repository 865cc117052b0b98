"""Collector configuration: defaults, the shipped example, env overrides, errors with file:line."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgemon.collector import config as config_mod
from edgemon.collector.config import CollectorConfig, ConfigError, load_config

EXAMPLE = Path(config_mod.__file__).parent / "collector.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    path.chmod(0o600)  # the CLI refuses a configuration others may read
    return path


def test_defaults() -> None:
    cfg = load_config(None, environ={})
    assert cfg.mqtt.client_id == "edgemon-collector"
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 9400
    assert cfg.storage.path == Path("./edgemon-data/edgemon.db")
    assert cfg.ingest.future_tolerance_seconds == 300


def test_example_file_equals_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == CollectorConfig()


def test_example_file_lists_every_key() -> None:
    """Each key appears in its section, set or commented out, so the example documents all."""
    text = EXAMPLE.read_text()
    parsed = tomllib.loads(text)
    for section, model in config_mod.SECTIONS.items():
        assert section in parsed, f"[{section}] missing from the example"
        for key in model.model_fields:
            if key not in parsed[section]:
                assert re.search(rf"^# {key} = ", text, re.M), f"{section}.{key} not documented"


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nhost = "broker"\n\n[http]\nhost = "0.0.0.0"\nport = "high"\n')
    with pytest.raises(ConfigError, match=r"http\.port") as err:
        load_config(path, environ={})
    assert f"{path}:6: http.port:" in str(err.value)


def test_out_of_range_value_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "# comment\n[ingest]\nqueue_max = 0\n[mqtt]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"ingest\.queue_max") as err:
        load_config(path, environ={})
    problems = err.value.problems
    assert any(p.startswith(f"{path}:3: ingest.queue_max:") for p in problems), problems
    assert any(p.startswith(f"{path}:5: mqtt.port:") for p in problems), problems


def test_same_key_in_another_section_is_not_confused(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nport = 1883\n\n[http]\nport = -1\n")
    with pytest.raises(ConfigError, match=r"http\.port") as err:
        load_config(path, environ={})
    assert str(err.value).startswith(f"{path}:5: http.port:")


def test_unknown_key_and_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nprot = 1\n\n[mqqt]\nport = 1\n")
    with pytest.raises(ConfigError, match="unknown section") as err:
        load_config(path, environ={})
    text = str(err.value)
    assert f"{path}:4: [mqqt]: unknown section" in text
    path = write(tmp_path, "[mqtt]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_config(path, environ={})
    assert str(err.value) == f"{path}:2: mqtt.prot: unknown key"


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nhost = \"a\"\nport = = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML") as err:
        load_config(path, environ={})
    assert str(err.value).startswith(f"{path}:3: invalid TOML")


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9500\n[log]\nlevel = \"debug\"\n")
    cfg = load_config(path, environ={"EDGEMON_COLLECTOR_HTTP_PORT": "9600",
                                     "EDGEMON_COLLECTOR_STORAGE_RETENTION_RAW_DAYS": "3",
                                     "EDGEMON_COLLECTOR_MQTT_PASSWORD": "pw",
                                     "OTHER": "x"})
    assert cfg.http.port == 9600
    assert cfg.storage.retention_raw_days == 3
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "pw"
    assert cfg.log.level == "debug"


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"http\.port") as err:
        load_config(None, environ={"EDGEMON_COLLECTOR_HTTP_PORT": "many"})
    assert str(err.value).startswith("EDGEMON_COLLECTOR_HTTP_PORT (environment): http.port:")
    with pytest.raises(ConfigError, match="unknown setting") as err:
        load_config(None, environ={"EDGEMON_COLLECTOR_HTTP_PROT": "1"})
    assert "EDGEMON_COLLECTOR_HTTP_PROT (environment): unknown setting" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", environ={})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgemon.collector.cli", *args],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"})


def test_check_config_cli(tmp_path: Path) -> None:
    bad = write(tmp_path, "[ingest]\nmax_batch_per_txn = 10\nfuture_tolerance_seconds = -5\n")
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2, result
    assert f"{bad}:3: ingest.future_tolerance_seconds:" in result.stderr
    example = write(tmp_path, EXAMPLE.read_text())  # the installed copy is 0644 in the package
    ok = run_cli("check-config", "-c", str(example))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{example}: ok")


def test_alertmanagers_from_the_environment(tmp_path: Path) -> None:
    """``EDGEMON_COLLECTOR_ALERTING_ALERTMANAGERS`` replaces the file's tables: URLs, or a TOML
    array of inline tables; a bad one names the variable."""
    path = tmp_path / "collector.toml"
    path.write_text('[[alerting.alertmanagers]]\nurl = "http://file-am:9093"\n')
    var = "EDGEMON_COLLECTOR_ALERTING_ALERTMANAGERS"
    assert [a.url for a in load_config(path, environ={}).alerting.alertmanagers] == [
        "http://file-am:9093"]
    cfg = load_config(path, environ={var: "https://am-1:9093, https://am-2:9093"})
    assert [(a.url, a.display_name) for a in cfg.alerting.alertmanagers] == [
        ("https://am-1:9093", "am-1:9093"), ("https://am-2:9093", "am-2:9093")]
    cfg = load_config(path, environ={
        var: '[{url = "https://am:9093", name = "am", timeout_seconds = 3.5}]'})
    [am] = cfg.alerting.alertmanagers
    assert (am.url, am.name, am.timeout_seconds) == ("https://am:9093", "am", 3.5)
    assert load_config(path, environ={var: ""}).alerting.alertmanagers == ()
    with pytest.raises(ConfigError, match=f"{var} \\(environment\\): alerting.alertmanagers"):
        load_config(path, environ={var: "[{url = "})
    with pytest.raises(ConfigError, match=f"{var} \\(environment\\): alerting.alertmanagers.0"
                                          ".timeout_seconds"):
        load_config(path, environ={var: '[{url = "http://am", timeout_seconds = -1}]'})


def test_the_budget_of_resolved_bytes_is_its_own_and_holds_one_maximal_batch(
        tmp_path: Path) -> None:
    """``[ingest] rate_limit_resolved_*``: below the byte rate by default, set by the file or
    the environment, and a burst below one maximal inline batch (8 MiB, which would never
    resolve) is refused with its line."""
    ingest = load_config(None, environ={}).ingest
    assert ingest.rate_limit_resolved_bytes_per_second < ingest.rate_limit_bytes_per_second
    assert ingest.rate_limit_resolved_byte_burst == 8 << 20
    cfg = load_config(None, environ={
        "EDGEMON_COLLECTOR_INGEST_RATE_LIMIT_RESOLVED_BYTES_PER_SECOND": "1048576"})
    assert cfg.ingest.rate_limit_resolved_bytes_per_second == 1 << 20
    path = write(tmp_path, "[ingest]\nrate_limit_resolved_byte_burst = 1048576\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"{path}:2: ingest.rate_limit_resolved_byte_burst:" in str(err.value)


def test_pending_cache_mb_reaches_the_store(tmp_path: Path) -> None:
    """``[storage] pending_cache_mb`` sizes the pending-batch cache of the store the collector
    (and its compaction process) opens; 0 turns it off; a negative size is refused."""
    from edgemon.collector.app import default_storage_spec
    from edgemon.collector.storage import open_storage

    for mb in (0, 3):
        config = load_config(write(tmp_path, f'[storage]\npath = "{tmp_path / "e.db"}"\n'
                                             f"pending_cache_mb = {mb}\n"), environ={})
        target, options = default_storage_spec(config.storage)
        store = open_storage(target, **options)
        try:
            assert store.pending_cache.max_bytes == mb << 20
        finally:
            store.close()
    with pytest.raises(ConfigError, match="pending_cache_mb"):
        load_config(write(tmp_path, "[storage]\npending_cache_mb = -1\n"), environ={})
