"""[cluster] settings, the shared subscription filters and the role in collector presence."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.collector.config import (
    ClusterConfig,
    CollectorConfig,
    ConfigError,
    cluster_problems,
    load_config,
)
from edgemon.collector.ingest.subscriptions import Subscriptions, shared
from edgemon.protocol.presence import decode_collector_state, encode_collector_state

GROUP = "edgemon-3f9c2a8e1b7d4c6a"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    return path


def test_default_is_one_collector_without_a_shared_group() -> None:
    cfg = CollectorConfig()
    assert cfg.cluster.shared_group == "" and cfg.mqtt.protocol == "3.1.1"
    assert cluster_problems(cfg) == []


def test_shared_group_on_postgresql_with_mqtt5_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f'[mqtt]\nprotocol = "5"\n[storage]\npath = "postgresql://db/em"\n'
                           f'[cluster]\nshared_group = "{GROUP}"\nsession_expiry_seconds = 10\n')
    cfg = load_config(path, environ={})
    assert cfg.cluster.shared_group == GROUP and cfg.mqtt.protocol == "5"
    assert cfg.cluster.session_expiry_seconds == 10


def test_shared_group_with_mqtt_311_names_the_protocol_line(tmp_path: Path) -> None:
    path = write(tmp_path, f'[mqtt]\nhost = "b"\nprotocol = "3.1.1"\n[storage]\n'
                           f'path = "postgresql://db/em"\n[cluster]\nshared_group = "{GROUP}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    [problem] = err.value.problems
    assert problem.startswith(f"{path}:3: mqtt.protocol: a shared group needs protocol")


def test_shared_group_on_sqlite_is_refused_unless_single_node(tmp_path: Path) -> None:
    text = f'[mqtt]\nprotocol = 5\n\n[cluster]\nshared_group = "{GROUP}"\n'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    [problem] = err.value.problems
    assert ":5: cluster.shared_group: a shared group needs a store the collectors share" \
        in problem and "single_node = true" in problem
    cfg = load_config(write(tmp_path, text + "single_node = true\n"), environ={})
    assert cfg.cluster.single_node and cfg.mqtt.protocol == "5"


def test_environment_overrides_are_named_in_cross_checks(tmp_path: Path) -> None:
    env = {"EDGEMON_COLLECTOR_CLUSTER_SHARED_GROUP": GROUP,
           "EDGEMON_COLLECTOR_CLUSTER_SINGLE_NODE": "true"}
    with pytest.raises(ConfigError, match=r"mqtt\.protocol"):
        load_config(None, environ=env)
    env["EDGEMON_COLLECTOR_MQTT_PROTOCOL"] = "3.1.1"
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=env)
    assert err.value.problems[0].startswith("EDGEMON_COLLECTOR_MQTT_PROTOCOL (environment): ")
    env["EDGEMON_COLLECTOR_MQTT_PROTOCOL"] = "5"
    assert load_config(None, environ=env).cluster.shared_group == GROUP


@pytest.mark.parametrize("name, message", [
    ("edgemon", "at least 16 characters"),
    ("edgemon/collectors-group", "no '/'"),
    ("edgemon+collectors-group", "no '/', '+'"),
    ("edgemon collectors group", "spaces"),
])
def test_group_names_that_are_guessable_or_not_one_level_are_refused(
        tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f'[cluster]\nshared_group = "{name}"\n'), environ={})
    assert ":2: cluster.shared_group:" in err.value.problems[0]
    assert message in err.value.problems[0]


def test_lease_must_cover_two_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least twice leader_check_seconds"):
        load_config(write(tmp_path, "[cluster]\nleader_check_seconds = 2\n"
                                    "leader_lease_seconds = 3\n"), environ={})
    assert ClusterConfig(leader_check_seconds=2, leader_lease_seconds=4).leader_lease_seconds == 4


def test_bad_protocol_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: mqtt\.protocol:"):
        load_config(write(tmp_path, '[mqtt]\nprotocol = "3.1"\n'), environ={})


def test_shared_filters_wrap_the_data_topics_and_never_the_probe() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    hosts = ["h1", "h2"]
    subs = Subscriptions(client, "edgemon/v1/_collectors/c/probe", isolated=dict,
                         known_hosts=lambda: hosts, share=GROUP)
    assert subs.wanted() == {f"$share/{GROUP}/edgemon/v1/+/metrics",
                             f"$share/{GROUP}/edgemon/v1/+/backfill",
                             f"$share/{GROUP}/edgemon/v1/+/status",
                             f"$share/{GROUP}/edgemon/v1/+/catalogue",
                             "edgemon/v1/_collectors/c/probe"}
    # a flooding host is left out by subscribing to the others by name: shared as well
    subs.isolated = lambda: {"h2": 60.0}
    assert f"$share/{GROUP}/edgemon/v1/h1/metrics" in subs.wanted()
    assert not any("h2" in t or t.startswith("edgemon/v1/h1") for t in subs.wanted())
    # a session that was subscribed without the group (or with it) is cleaned up either way
    assert {"edgemon/v1/+/metrics", f"$share/{GROUP}/edgemon/v1/+/metrics"} <= subs._ever
    assert shared(None, "a/b") == "a/b" and shared("g", "a/b") == "$share/g/a/b"


def test_presence_carries_the_role_only_while_online() -> None:
    state = decode_collector_state(encode_collector_state("c1", online=True, ts_ms=5,
                                                          role="follower"))
    assert state.role == "follower" and state.online
    offline = encode_collector_state("c1", online=False, ts_ms=6)
    assert b"role" not in offline and decode_collector_state(offline).role is None
    unknown = b'{"v":1,"state":"online","collector":"c1","ts":7,"role":"emperor"}'
    assert decode_collector_state(unknown).role is None  # informational: unknown is none
    with pytest.raises(ValueError):
        encode_collector_state("c1", online=True, ts_ms=5, role="emperor")


def test_broker_auth_adds_a_collector_whose_snippet_sets_its_client_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from edgemon.collector.broker.auth import AuthDir
    from edgemon.collector.cli import main as collector_main

    directory = tmp_path / "auth"
    assert collector_main(["broker-auth", "init", str(directory)]) == 0
    capsys.readouterr()
    assert collector_main(["broker-auth", "add-collector", str(directory), "collector-2"]) == 0
    snippet = capsys.readouterr().out
    printed = tomllib.loads(snippet)["mqtt"]
    assert printed["username"] == printed["client_id"] == "collector-2"
    assert AuthDir(directory).check("collector-2", printed["password"])
    assert AuthDir(directory).get("collector-2").role == "collector"  # type: ignore[union-attr]
    acl = (directory / "acl").read_text()
    assert ("user collector-2\ntopic deny edgemon/v1/collector-2/#\n"
            "topic read edgemon/v1/+/metrics") in acl
    # the snippet, merged into [mqtt], is a valid collector configuration
    config = tmp_path / "collector.toml"
    config.write_text(snippet)
    assert load_config(config, environ={}).mqtt.presence_id == "collector-2"


def test_check_config_hides_the_group_name(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from edgemon.collector.cli import main as collector_main

    path = write(tmp_path, f'[mqtt]\nprotocol = "5"\n[cluster]\nshared_group = "{GROUP}"\n'
                           "single_node = true\n")
    path.chmod(0o600)
    assert collector_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert GROUP not in out and '"shared_group": "********"' in out


def test_cluster_metrics_as_a_prometheus_client_collector() -> None:
    from edgemon.collector.cluster import AlwaysLeader
    from edgemon.collector.cluster.status import ClusterStatus

    leader = AlwaysLeader()
    leader.start()
    status = ClusterStatus(leader, collector_id="c1", shared_group=GROUP, store="sqlite")
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    registry.register(status)
    exposed = prometheus_client.generate_latest(registry).decode()
    assert "\nedgemon_cluster_leader 1.0\n" in exposed
    assert "\nedgemon_cluster_leader_changes_total 1.0\n" in exposed
    assert "# TYPE edgemon_cluster_leader_changes_total counter" in exposed
    assert GROUP not in exposed
    assert status.document()["role"] == "leader" and GROUP not in str(status.document())
