"""edgemon.common.toml_config: lines of tables and keys, TOML errors, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemon.common.toml_config import (
    ConfigError,
    TomlLines,
    env_overrides,
    parse_toml,
    read_toml,
)

TEXT = """\
interval = 5
broker.port = 1
log = { level = "x" }

[broker]
host = "mq"
"port" = 2
tls.ca = "x"

[broker.extra]
key = 1

[[rule]]
name = "a"

[[rule]]
name = "b"
labels = { team = "ops" }
[rule.annotations]
summary = "s"

[ "quoted" ]  # comment
k = 1
"""


def test_keys_are_found_in_their_own_table() -> None:
    lines = TomlLines(TEXT)
    assert lines.find("", ["interval"]) == 1
    assert lines.find("broker", ["host"]) == 6
    assert lines.find("broker", ["port"]) == 7  # quoted key, not the top-level dotted one
    assert lines.find("broker", ["tls"]) == 8  # a dotted key inside the table
    assert lines.find("broker", ["extra"]) == 10  # a sub-table header
    assert lines.find("broker", ["nope"]) == 5  # unknown key: the table's header
    assert lines.find("quoted", ["k"]) == 23
    assert lines.find("nothing", ["k"]) is None


def test_tables_without_a_header_are_found_at_the_top_level() -> None:
    lines = TomlLines(TEXT)
    assert lines.find("log", ["level"]) == 3  # inline table
    assert TomlLines("broker.port = 1\n[x]\n").find("broker", ["port"]) == 1
    assert lines.find("", ["log"]) == 3
    assert lines.find("", ["host"]) is None  # only [broker] has one


def test_arrays_of_tables_by_index_with_the_deepest_key_first() -> None:
    lines = TomlLines(TEXT)
    assert lines.header("rule", 0) == 13 and lines.header("rule", 1) == 16
    assert lines.find("rule", ["name"], 0) == 14
    assert lines.find("rule", ["name"], 1) == 17
    assert lines.find("rule", ["labels", "team"], 1) == 18  # inside the inline table
    assert lines.find("rule", ["annotations", 0], 1) == 19  # the sub-table, ints skipped
    assert lines.find("rule", ["annotations"], 0) == 13  # not rule #0's: its header
    assert lines.find("rule", ["name"], 2) is None


def test_read_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^<t>:2: invalid TOML"):
        parse_toml("a = 1\nb = \n", "<t>")
    path = tmp_path / "c.toml"
    with pytest.raises(ConfigError, match=r"c\.toml: cannot read: No such file"):
        read_toml(path)
    path.write_bytes(b"a = '\xff'\n")
    with pytest.raises(ConfigError, match=r"c\.toml: not UTF-8 text"):
        read_toml(path)
    path.write_text("a = 1\n")
    assert read_toml(path) == ("a = 1\n", {"a": 1})


def test_environment_overrides_by_section_and_key() -> None:
    schema = {"": ["interval_seconds"], "broker": ["port", "client_id"]}
    found, problems = env_overrides({
        "APP_BROKER_PORT": "1884", "APP_BROKER_CLIENT_ID": "c", "APP_INTERVAL_SECONDS": "1",
        "APP_BROKER_PROT": "1", "OTHER": "x"}, "APP_", schema, "app.example.toml")
    assert {k: (v.value, v.variable) for k, v in found.items()} == {
        ("broker", "port"): ("1884", "APP_BROKER_PORT"),
        ("broker", "client_id"): ("c", "APP_BROKER_CLIENT_ID"),
        ("", "interval_seconds"): ("1", "APP_INTERVAL_SECONDS")}
    assert problems == ["APP_BROKER_PROT (environment): unknown setting; expected APP_<KEY> "
                        "or APP_<SECTION>_<KEY> for a key of app.example.toml"]
    _, problems = env_overrides({"APP_PORT": "1"}, "APP_", {"broker": ["port"]}, "a.toml")
    assert problems == ["APP_PORT (environment): unknown setting; expected APP_<SECTION>_<KEY> "
                        "for a key of a.toml"]
