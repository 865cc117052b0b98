"""The rules file: shipped defaults, validation errors (rule, key, file:line), templates,
check_rules."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from edgemon.collector.alerting import DEFAULT_RULES_PATH, RulesError, check_rules, load_rules
from edgemon.collector.alerting.rules import parse_duration_ms, parse_rules
from edgemon.collector.alerting.templates import check_template, render


def test_shipped_example_is_the_builtin_default() -> None:
    builtin = load_rules()
    example = load_rules(DEFAULT_RULES_PATH)
    assert builtin.rules == example.rules and builtin.settings == example.settings
    by_name = {r.name: r for r in builtin.enabled}
    cpu = by_name["cpu-high"]
    assert (cpu.kind, cpu.metric, cpu.match, cpu.threshold, cpu.for_) == \
        ("threshold", "cpu_usage_percent", {"cpu": "total"}, 80.0, 300_000)
    assert by_name["memory-high"].threshold == 85.0
    assert by_name["disk-usage-high"].threshold == 90.0
    eta = by_name["disk-full-soon"]
    assert eta.kind == "disk_full_eta" and eta.within == 24 * 3_600_000
    assert by_name["host-down"].kind == "host_down"
    assert by_name["network-receive-errors"].kind == "rate"
    assert sorted(by_name) == ["cpu-high", "disk-full-soon", "disk-usage-high", "host-down",
                               "memory-high", "network-receive-errors",
                               "network-transmit-errors"]
    assert [r.name for r in builtin.rules if not r.enabled] == ["load-anomaly"]
    assert builtin.receivers == {}


def test_every_default_rule_can_be_turned_off(tmp_path: Path) -> None:
    text = DEFAULT_RULES_PATH.read_text().replace("enabled = true", "enabled = false")
    rules = parse_rules(text)
    assert rules.enabled == [] and len(rules.rules) == 8


BAD = """[settings]
interval = "soon"

[[receiver]]
name = "ops"
url = "ftp://nope"

[[rule]]
name = "cpu"
kind = "threshold"
metric = "cpu_usage_percent"
threshold = "high"

[[rule]]
name = "mem"
kind = "threshold"
metric = "memory_usage_percent"
threshold = 80
clear_threshold = 90
receivers = ["ops"]

[[rule]]
name = "tpl"
kind = "host_down"
[rule.annotations]
summary = "{host.__class__}"

[[rule]]
name = "what"
kind = "magic"

[[rule]]
name = "cpu2"
kind = "threshold"
metric = "x"
threshold = 1
bogus = 3
"""


def test_errors_name_the_file_line_rule_and_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(BAD)
    with pytest.raises(RulesError, match=r"rules\.toml:2: settings") as info:
        load_rules(path)
    errors = info.value.errors
    p = str(path)
    assert f"{p}:2: settings: key 'interval': 'soon' is not a duration: use e.g. 90s, 5m, " \
           "1h30m, 2d" in errors
    assert f"{p}:6: receiver 'ops': key 'url': must be an http:// or https:// URL" in errors
    assert f"{p}:12: rule 'cpu': key 'threshold': Input should be a valid number, unable to " \
           "parse string as a number" in errors
    assert any(e.startswith(f"{p}:14: rule 'mem': key '(rule)': clear_threshold must be <= "
                            "threshold") for e in errors)
    assert any(e.startswith(f"{p}:25: rule 'tpl': key 'annotations'") and
               "attribute and index access are not allowed" in e for e in errors)
    assert any(e.startswith(f"{p}:30: rule 'what': key 'kind': unknown kind 'magic'")
               for e in errors)
    assert f"{p}:37: rule 'cpu2': key 'bogus': unknown key" in errors
    assert len(errors) == 7


def test_more_errors() -> None:
    with pytest.raises(RulesError, match="invalid TOML"):
        parse_rules("[[rule]\nname=1")
    with pytest.raises(RulesError, match="duplicate name"):
        parse_rules('[[rule]]\nname="a"\nkind="host_down"\n[[rule]]\nname="a"\nkind="host_down"')
    with pytest.raises(RulesError, match="unknown receiver 'pager'"):
        parse_rules('[[rule]]\nname="a"\nkind="host_down"\nreceivers=["pager"]')
    with pytest.raises(RulesError, match="missing 'kind'"):
        parse_rules('[[rule]]\nname="a"')
    with pytest.raises(RulesError, match="unknown top-level key 'rules'"):
        parse_rules('[[rules]]\nname="a"')
    with pytest.raises(RulesError, match="label 'host' is set by the engine"):
        parse_rules('[[rule]]\nname="a"\nkind="host_down"\nlabels={host="x"}')
    with pytest.raises(RulesError, match="key 'name'"):
        parse_rules('[[rule]]\nname="a/b"\nkind="host_down"')  # must be one MQTT topic level
    with pytest.raises(RulesError, match="window must be a whole number of seconds"):
        parse_rules('[[rule]]\nname="a"\nkind="threshold"\nmetric="m"\nthreshold=1\n'
                    'window="1500ms"')


@pytest.mark.parametrize("template, problem", [
    ("{value.real}", "attribute and index access"),
    ("{labels.__class__}", r"labels as \{labels\[key\]\}"),
    ("{0}", "positional"),
    ("{}", "positional"),
    ("{nope}", "unknown field"),
    ("{host:.1f}", "Unknown format code"),
    ("{value:zz}", "Unknown format code"),
    ("{host", "bad template syntax"),
    ("{value:{host}}", "nested fields"),
    ("{host!a}", "only !s and !r"),
])
def test_bad_templates_are_validation_errors(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_template(template)
    with pytest.raises(RulesError, match="key 'annotations'"):
        parse_rules(f'[[rule]]\nname="a"\nkind="host_down"\nannotations={{s={template!r}}}')


def test_templates_render_safely() -> None:
    text = "{host} {value:.1f} {labels[mount]}{labels[missing]} {threshold:g} {rule!r}"
    check_template(text)
    assert render(text, host="h", value=12.345, rule="r", severity="warning",
                  labels={"mount": "/"}, threshold=80.0) == "h 12.3 / 80 'r'"
    # values that do not fit the spec at run time render plainly, never raise
    assert render("{value:.1f} {threshold:g}", host="h", value=None, rule="r",
                  severity="w", labels={}) == "n/a "
    assert render("{value:.1f}", host="h", value=math.inf, rule="r", severity="w",
                  labels={}) == "inf"


def test_durations() -> None:
    assert parse_duration_ms("90s") == 90_000
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms(1.5) == 1500
    assert parse_duration_ms("250ms") == 250
    for bad in ("5 minutes", "", "m5", -1, True, "1h 30m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration_ms(bad)


def test_check_rules_command(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_rules(None, out, err) == 0
    assert "OK: 8 rules (7 enabled), 0 receivers" in out.getvalue()
    assert "cpu-high: threshold cpu_usage_percent, warning" in out.getvalue()
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    out, err = io.StringIO(), io.StringIO()
    assert check_rules(path, out, err) == 1
    assert f"{path}:12: rule 'cpu': key 'threshold'" in err.getvalue()
    assert err.getvalue().rstrip().endswith("7 error(s)")
    assert check_rules(tmp_path / "missing.toml", io.StringIO(), err) == 1
    assert "cannot read" in err.getvalue()
