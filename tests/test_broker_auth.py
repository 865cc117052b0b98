"""broker_auth (password hashes, users, ACL, files, CLI) and the TLS/identity settings of the agent
and collector configurations. The broker-side proof is in tests/test_mqtt_security.py."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from edgemon.agent.config import ConfigError as AgentConfigError
from edgemon.agent.config import load_config as load_agent_config
from edgemon.agent.publisher import connect_error
from edgemon.collector.broker.auth import (
    MAX_PACKET_SIZE,
    AuthDir,
    BrokerAuthError,
    acl_text,
    hash_password,
    verify_password,
)
from edgemon.collector.cli import main as collector_main
from edgemon.collector.config import ConfigError as CollectorConfigError
from edgemon.collector.config import load_config as load_collector_config
from edgemon.protocol.limits import MAX_COMPRESSED_BYTES

FLEET_CA = Path(__file__).resolve().parent.parent / "packaging" / "fleet-ca.sh"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def auth(tmp_path: Path) -> AuthDir:
    return AuthDir.init(tmp_path / "auth")[0]


# --- hashes -------------------------------------------------------------------------------------

def test_hash_is_mosquitto_2_format_and_verifies() -> None:
    encoded = hash_password("s3cret", salt=bytes(range(12)))
    prefix, kind, iterations, salt, digest = encoded.split("$")
    assert (prefix, kind, iterations, salt) == ("", "7", "101", "AAECAwQFBgcICQoL")
    assert len(digest) == 88  # base64 of 64 bytes of PBKDF2-SHA512
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret!", encoded)
    assert not verify_password("s3cret", "$6$bad")
    assert hash_password("s3cret") != hash_password("s3cret")  # a fresh salt each time


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")
def test_hashes_written_by_mosquitto_passwd_verify(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "web-01", "pw-from-tool"],
                   check=True, capture_output=True)
    name, _, encoded = passwd.read_text().strip().partition(":")
    assert name == "web-01" and verify_password("pw-from-tool", encoded)


# --- users and the ACL --------------------------------------------------------------------------

def test_init_makes_a_private_directory_with_a_collector(tmp_path: Path) -> None:
    auth, password = AuthDir.init(tmp_path / "auth")
    assert len(password) >= 32
    assert [(u.name, u.role) for u in auth.users()] == [("edgemon-collector", "collector")]
    assert auth.check("edgemon-collector", password)
    assert mode(auth.path) == 0o700
    for name in ("users.json", "passwd", "acl"):
        assert mode(auth.path / name) == 0o600, name
    assert auth.passwd_file.read_text().startswith("edgemon-collector:$7$101$")
    assert password not in "".join(p.read_text() for p in auth.path.iterdir() if p.is_file())
    with pytest.raises(BrokerAuthError, match="already initialised"):
        AuthDir.init(tmp_path / "auth")


def test_a_group_readable_directory_gives_the_broker_group_read_access(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    auth, _ = AuthDir.init(tmp_path / "auth", group=group)
    assert mode(auth.path) == 0o750
    assert (mode(auth.passwd_file), mode(auth.acl_file)) == (0o640, 0o640)
    assert mode(auth.users_file) == 0o600  # the broker does not need it
    auth.add("web-01", "host")  # rewrites keep the mode
    assert (mode(auth.passwd_file), mode(auth.acl_file)) == (0o640, 0o640)
    with pytest.raises(BrokerAuthError, match="no group 'no-such-group-x'"):
        AuthDir.init(tmp_path / "other", group="no-such-group-x")


def test_acl_patterns_and_roles(auth: AuthDir) -> None:
    auth.add("web-01", "host")
    auth.add("grafana", "reader")
    text = auth.acl_file.read_text()
    assert text == acl_text(auth.users())
    for line in ("pattern write edgemon/v1/%u/metrics", "pattern write edgemon/v1/%u/backfill",
                 "pattern write edgemon/v1/%u/status", "pattern read edgemon/v1/%u/ack",
                 "pattern write edgemon/v1/%u/catalogue",  # its series catalogue (SPEC §9)
                 # everyone may see whether a collector is online (SPEC: collector presence)
                 "pattern read edgemon/v1/_collectors/+/state"):
        assert f"\n{line}\n" in text
    collector = text.split("user edgemon-collector\n")[1].split("\n\n")[0].splitlines()
    assert [line for line in collector if not line.startswith("#")] == [
        "topic deny edgemon/v1/edgemon-collector/#",
        "topic read edgemon/v1/+/metrics", "topic read edgemon/v1/+/backfill",
        "topic read edgemon/v1/+/status", "topic read edgemon/v1/+/catalogue",
        "topic write edgemon/v1/+/ack",
        "topic write edgemon/v1/_alerts/#", "topic readwrite edgemon/v1/_collectors/#"]
    reader = text.split("user grafana\n")[1].strip().splitlines()
    assert reader == ["topic deny edgemon/v1/grafana/#", "topic read edgemon/v1/#"]
    assert "web-01" not in text  # hosts are covered by the patterns alone


def test_names_are_checked_and_never_shared_between_roles(auth: AuthDir) -> None:
    auth.add("web-01", "host")
    auth.add("grafana", "reader")
    with pytest.raises(BrokerAuthError, match="the collector user's name; a host id must differ"):
        auth.add("edgemon-collector", "host")
    with pytest.raises(BrokerAuthError, match="the reader user's name"):
        auth.add("grafana", "host")
    with pytest.raises(BrokerAuthError, match="the host user's name"):
        auth.add("web-01", "reader")
    with pytest.raises(BrokerAuthError, match=r"exists; give a new password with: .* rotate"):
        auth.add("web-01", "host")
    for bad in ("web/01", "+", "_alerts", "", "a b", "x" * 65):
        with pytest.raises(BrokerAuthError, match="host"):
            auth.add(bad, "host")
    with pytest.raises(BrokerAuthError, match="role 'admin'"):
        auth.add("root", "admin")
    assert [u.name for u in auth.users()] == ["edgemon-collector", "grafana", "web-01"]


def test_rotate_and_remove(auth: AuthDir) -> None:
    first = auth.add("web-01", "host")
    user, second = auth.rotate("web-01")
    assert user.role == "host" and second != first
    assert auth.check("web-01", second) and not auth.check("web-01", first)
    assert "web-01:" in auth.passwd_file.read_text()
    auth.remove("web-01")
    assert "web-01" not in auth.passwd_file.read_text()
    with pytest.raises(BrokerAuthError, match="no user 'web-01'"):
        auth.remove("web-01")
    with pytest.raises(BrokerAuthError, match="only collector user"):
        auth.remove("edgemon-collector")


def test_a_damaged_or_missing_directory_is_explained(tmp_path: Path, auth: AuthDir) -> None:
    with pytest.raises(BrokerAuthError, match="broker-auth init"):
        AuthDir(tmp_path / "nowhere").users()
    auth.users_file.write_text("{}")
    with pytest.raises(BrokerAuthError, match="not an edgemon broker auth file"):
        auth.users()


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_provisions_a_host_with_a_ready_agent_snippet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "auth"
    collector_out = tmp_path / "collector-mqtt.toml"
    assert collector_main(["broker-auth", "init", str(directory), "--out",
                           str(collector_out)]) == 0
    assert mode(collector_out) == 0o600
    mqtt = tomllib.loads(collector_out.read_text())["mqtt"]
    assert AuthDir(directory).check(mqtt["username"], mqtt["password"])
    capsys.readouterr()

    out = tmp_path / "web-01.toml"
    assert collector_main(["broker-auth", "add-host", str(directory), "web-01", "--out",
                           str(out)]) == 0
    assert "reload mosquitto" in capsys.readouterr().err
    assert mode(out) == 0o600
    broker = tomllib.loads(out.read_text())["broker"]
    assert broker["username"] == "web-01"
    assert AuthDir(directory).check("web-01", broker["password"])
    # merged into an agent configuration for that host id, it is accepted as is
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text('host_id = "web-01"\n' + out.read_text())
    assert load_agent_config(agent_toml, environ={}).broker.username == "web-01"

    assert collector_main(["broker-auth", "add-reader", str(directory), "grafana"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)["mqtt"]
    assert AuthDir(directory).check("grafana", printed["password"])
    assert collector_main(["broker-auth", "list", str(directory)]) == 0
    assert capsys.readouterr().out.split() == ["edgemon-collector", "collector", "grafana",
                                               "reader", "web-01", "host"]
    assert collector_main(["broker-auth", "remove", str(directory), "grafana"]) == 0
    assert collector_main(["broker-auth", "add-host", str(directory), "edgemon-collector"]) == 2
    assert "host id must differ" in capsys.readouterr().err
    assert collector_main(["broker-auth", "list", str(tmp_path / "none")]) == 2
    assert "broker-auth init" in capsys.readouterr().err


def test_cli_prints_the_mosquitto_conf_lines(tmp_path: Path, auth: AuthDir,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert collector_main(["broker-auth", "mosquitto-conf", str(auth.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in ("listener 1883", "allow_anonymous false", f"password_file {auth.passwd_file}",
                 f"acl_file {auth.acl_file}", f"max_packet_size {MAX_PACKET_SIZE}",
                 # client ids belong to their user; persistence and bounded queues
                 "use_username_as_clientid true", "set_tcp_nodelay true",
                 "persistence true", "autosave_interval 60",
                 "persistent_client_expiration 14d", "max_queued_messages 1000",
                 "max_queued_bytes 67108864"):
        assert line in lines
    # Debian's mosquitto.conf sets persistence_location, and a second one is an error
    assert not any(line.startswith("persistence_location") for line in lines)
    assert MAX_COMPRESSED_BYTES < MAX_PACKET_SIZE <= MAX_COMPRESSED_BYTES + 8192
    assert any("SIGHUP" in line for line in lines)
    assert collector_main(["broker-auth", "mosquitto-conf", str(auth.path), "--cafile", "ca.crt",
                           "--certfile", "s.crt", "--keyfile", "s.key",
                           "--require-certificate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in ("listener 8883", "cafile ca.crt", "certfile s.crt", "keyfile s.key",
                 "require_certificate true", "use_identity_as_username true"):
        assert line in lines
    assert collector_main(["broker-auth", "mosquitto-conf", str(auth.path),
                           "--persistence-location", str(tmp_path / "state")]) == 0
    assert f"persistence_location {tmp_path / 'state'}/" in capsys.readouterr().out.splitlines()
    assert collector_main(["broker-auth", "mosquitto-conf", str(auth.path), "--certfile",
                           "s.crt"]) == 2
    assert "--keyfile" in capsys.readouterr().err


def test_tail_refuses_a_password_file_others_can_read(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    assert collector_main(["tail", "--username", "grafana", "--password-file", str(secret)]) == 2
    err = capsys.readouterr().err
    assert f"run: chmod 600 {secret}" in err and "hunter2" not in err


# --- agent and collector configuration ----------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    for args in (["init"], ["client", "web-01"]):
        subprocess.run(["bash", str(FLEET_CA), "-d", str(root), *args], check=True,
                       capture_output=True)
    return root


def agent_problems(tmp_path: Path, broker: str, environ: dict[str, str] | None = None,
                   top: str = 'host_id = "web-01"\n') -> list[str]:
    path = tmp_path / "agent.toml"
    path.write_text(f"{top}[broker]\n{broker}")
    with pytest.raises(AgentConfigError, match=r"broker\.") as info:
        load_agent_config(path, environ=environ or {})
    return info.value.problems


def test_agent_tls_settings(tmp_path: Path, pki: Path) -> None:
    ca, crt, key = pki / "ca.crt", pki / "clients" / "web-01.crt", pki / "clients" / "web-01.key"
    path = tmp_path / "agent.toml"
    path.write_text(f'host_id = "web-01"\n[broker]\nport = 8883\ntls = true\nca_file = "{ca}"\n'
                    f'cert_file = "{crt}"\nkey_file = "{key}"\n')
    broker = load_agent_config(path, environ={}).broker
    assert (broker.tls, broker.ca_file, broker.cert_file, broker.key_file) == (True, ca, crt, key)

    assert agent_problems(tmp_path, f'ca_file = "{ca}"\n') == [
        f"{path}:3: broker.ca_file: ca_file set but broker.tls is false: set tls = true"]
    assert agent_problems(tmp_path, f'tls = true\ncert_file = "{crt}"\n') == [
        f"{path}:2: broker.key_file: a client certificate needs both cert_file and key_file"]
    [problem] = agent_problems(tmp_path, f'tls = true\nca_file = "{tmp_path / "nope.crt"}"\n')
    assert problem.startswith(f"{path}:4: broker.ca_file: cannot read") and "No such" in problem
    [problem] = agent_problems(tmp_path, f'tls = true\nca_file = "{key}"\n')
    assert "broker.ca_file: not a PEM CA certificate" in problem
    [problem] = agent_problems(tmp_path, f'tls = true\ncert_file = "{ca}"\nkey_file = "{key}"\n')
    assert "broker.cert_file: cannot load the certificate and key_file" in problem

    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    [problem] = agent_problems(tmp_path, f'tls = true\ncert_file = "{crt}"\n'
                                         f'key_file = "{loose}"\n')
    assert f"mode 0644); run: chmod 600 {loose}" in problem
    loose.chmod(0o640)  # the agent's group may read it
    path.write_text(f'host_id = "web-01"\n[broker]\ntls = true\ncert_file = "{crt}"\n'
                    f'key_file = "{loose}"\n')
    assert load_agent_config(path, environ={}).broker.key_file == loose


def test_agent_user_name_must_be_its_host_id(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    [problem] = agent_problems(tmp_path, 'username = "web-02"\npassword = "x"\n')
    assert problem.startswith(f'{path}:3: broker.username: must equal host_id ("web-01"), got '
                              '"web-02": the broker only lets a host\'s user publish')
    [problem] = agent_problems(tmp_path, "", environ={"EDGEMON_AGENT_BROKER_USERNAME": "web-03"})
    assert problem.startswith("EDGEMON_AGENT_BROKER_USERNAME (environment): broker.username: "
                              'must equal host_id ("web-01")')
    path.write_text('host_id = "web-02"\n[broker]\nusername = "web-02"\npassword = "x"\n')
    assert load_agent_config(path, environ={}).broker.username == "web-02"


def test_collector_tls_settings(tmp_path: Path, pki: Path) -> None:
    ca, crt, key = pki / "ca.crt", pki / "clients" / "web-01.crt", pki / "clients" / "web-01.key"
    path = tmp_path / "collector.toml"

    def problems(text: str) -> list[str]:
        path.write_text(text)
        with pytest.raises(CollectorConfigError, match="mqtt") as info:
            load_collector_config(path, environ={})
        return info.value.problems

    path.write_text(f'[mqtt]\ntls = true\nca_file = "{ca}"\ncert_file = "{crt}"\n'
                    f'key_file = "{key}"\n')
    mqtt = load_collector_config(path, environ={}).mqtt
    assert (mqtt.tls, mqtt.ca_file, mqtt.cert_file, mqtt.key_file) == (True, ca, crt, key)
    env = {"EDGEMON_COLLECTOR_MQTT_TLS": "true", "EDGEMON_COLLECTOR_MQTT_CA_FILE": str(ca)}
    assert load_collector_config(None, environ=env).mqtt.ca_file == ca

    [problem] = problems(f'[mqtt]\nca_file = "{ca}"\n')
    assert problem.startswith(f"{path}:1: mqtt: ") and "set tls = true" in problem
    [problem] = problems(f'[mqtt]\ntls = true\nkey_file = "{key}"\n')
    assert "needs both cert_file and key_file" in problem
    [problem] = problems(f'[mqtt]\ntls = true\nca_file = "{tmp_path / "no.crt"}"\n')
    assert problem.startswith(f"{path}:3: mqtt.ca_file: ") and "not a readable file" in problem
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o604)
    [problem] = problems(f'[mqtt]\ntls = true\ncert_file = "{crt}"\nkey_file = "{loose}"\n')
    assert problem.startswith(f"{path}:4: mqtt.key_file: ")
    assert f"(mode 0604); run: chmod 600 {loose}" in problem


def test_connect_errors_name_the_tls_cause() -> None:
    import ssl

    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    message, is_tls = connect_error(verify)
    assert is_tls and "(unable to get local issuer certificate)" in message
    assert "broker.ca_file" in message and "broker.host" in message
    assert connect_error(ConnectionRefusedError(111, "Connection refused")) == (
        "[Errno 111] Connection refused", False)
