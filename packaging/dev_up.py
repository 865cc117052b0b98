"""The development launcher (`dev-up.sh`): a whole local system in one command (broker, collector,
this host's agent). Not part of the installed product.

Starts a private Mosquitto with a generated config on loopback, the collector on the embedded
SQLite store and an agent for this host, all under one state directory; prints where to look;
Ctrl-C (or SIGTERM) stops the agent, then the collector, then the broker, each cleanly.

The broker wants a password from everyone, as in a fleet (packaging/SECURITY.md): a broker auth
directory holds a collector user, a host user for this host and a reader user for ``tail``. Their
passwords are made once and written only into the generated configs (mode 0600); a restart keeps
them (a subscriber configured with ``tail.toml``'s credentials keeps working) and makes a new one
only for a user whose config is missing or no longer matches. Likewise the HTTP API's admin
token ``edgemon-local`` in ``<state>/api-token`` (0600) is kept while it is valid. The broker
config is ``broker-auth mosquitto-conf``'s (client ids bound to users, persistence in the state
directory). Loopback only, so no TLS.

Restarting at once after a stop works: the port check binds with ``SO_REUSEADDR`` as Mosquitto
and the collector do, so sockets of the previous run still in TIME_WAIT do not count as taken.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from edgemon.agent.config import default_host_id
from edgemon.collector.broker.auth import (
    DEFAULT_COLLECTOR,
    AuthDir,
    BrokerAuthError,
    mosquitto_conf,
)
from edgemon.collector.http.tokens import (
    TokenStore,
    create_token,
    default_tokens_path,
    read_tokens,
    revoke_token,
)

DEFAULT_MQTT_PORT = 18830  # not 1883: leave a system broker alone
DEFAULT_HTTP_PORT = 9400


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. Binds as Mosquitto and aiohttp do, with
    SO_REUSEADDR: connections of a previous run in TIME_WAIT do not block a new listener (a
    listening socket still does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
        return True


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"edgemon-local: {what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"edgemon-local: {what} did not listen on 127.0.0.1:{port} in {timeout}s")


TAIL_READER = "edgemon-tail"


def _issue_credentials(auth_dir: Path, host_id: str,
                       kept: dict[str, str]) -> dict[str, tuple[str, str]]:
    """(user, password) for the collector, this host and the tail reader: the password in
    ``kept`` (from the previous run's configs) while it still matches, else a new one."""
    if (auth_dir / "users.json").exists():
        auth = AuthDir(auth_dir)
    else:
        auth, kept[DEFAULT_COLLECTOR] = AuthDir.init(auth_dir)

    def issue(name: str, role: str) -> tuple[str, str]:
        user = auth.get(name)
        if user is None:
            return name, auth.add(name, role)
        if user.role != role:
            raise BrokerAuthError(f"{auth_dir}: user {name!r} is a {user.role}, not a {role}; "
                                  "remove the state directory to start afresh")
        password = kept.get(name)
        if password is not None and auth.check(name, password):
            return name, password
        return name, auth.rotate(name)[1]

    return {"collector": issue(DEFAULT_COLLECTOR, "collector"),
            "agent": issue(host_id, "host"), "tail": issue(TAIL_READER, "reader")}


def _kept_passwords(state: Path) -> dict[str, str]:
    """{user: password} from the configs an earlier run generated (missing or broken: none)."""
    kept: dict[str, str] = {}
    for name, section in (("collector.toml", "mqtt"), ("agent.toml", "broker"),
                          ("tail.toml", "mqtt")):
        try:
            doc = tomllib.loads((state / name).read_text()).get(section, {})
        except (OSError, ValueError):
            continue
        user, password = doc.get("username"), doc.get("password")
        if isinstance(user, str) and isinstance(password, str):
            kept[user] = password
    return kept


def _private(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
    return path


LOCAL_TOKEN_NAME = "edgemon-local"


def _issue_api_token(state: Path, db_path: Path) -> Path:
    """The admin token in ``<state>/api-token``: kept while valid, else a new one (earlier
    edgemon-local tokens are revoked then)."""
    tokens_path = default_tokens_path(None, db_path)
    tokens_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file = state / "api-token"
    tokens = read_tokens(tokens_path)
    with contextlib.suppress(OSError):
        store = TokenStore(tokens_path)
        store.load()
        token, _ = store.verify(token_file.read_text().strip())
        if token is not None and token.name == LOCAL_TOKEN_NAME:
            return token_file
    for token in tokens.values():
        if token.name == LOCAL_TOKEN_NAME and not token.revoked:
            revoke_token(tokens_path, token.id)
    _, text = create_token(tokens_path, LOCAL_TOKEN_NAME, "admin")
    return _private(token_file, text + "\n")


def _write_configs(state: Path, mqtt_port: int, http_port: int, interval: float) -> dict[str, Path]:
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    auth_dir = state / "broker-auth"
    host_id = default_host_id()
    try:
        creds = _issue_credentials(auth_dir, host_id, _kept_passwords(state))
    except BrokerAuthError as exc:
        raise SystemExit(f"edgemon-local: {exc}") from None
    db_path = state / "collector" / "edgemon.db"
    broker_conf = state / "mosquitto.conf"
    broker_conf.write_text(
        "# generated by edgemon-local\n"
        + mosquitto_conf(AuthDir(auth_dir), port=mqtt_port, bind="127.0.0.1",
                         persistence_location=state)
        + f"user {getpass.getuser()}\nlog_dest stderr\n"
    )

    def login(role: str) -> str:
        user, password = creds[role]
        return f"username = {json.dumps(user)}\npassword = {json.dumps(password)}\n"

    collector_conf = _private(state / "collector.toml", (
        "# generated by edgemon-local\n[mqtt]\nhost = \"127.0.0.1\"\n"
        f"port = {mqtt_port}\n{login('collector')}\n"
        f"[storage]\npath = \"{db_path}\"\n\n"
        f"[http]\nhost = \"127.0.0.1\"\nport = {http_port}\n"
    ))
    agent_conf = _private(state / "agent.toml", (
        f"# generated by edgemon-local\nhost_id = {json.dumps(host_id)}\n"
        f"interval_seconds = {interval}\n\n[broker]\n"
        f"host = \"127.0.0.1\"\nport = {mqtt_port}\n{login('agent')}\n[buffer]\n"
        f"path = \"{state / 'agent' / 'buffer.db'}\"\n"
    ))
    # a reader's view: `edgemon-collector tail -c tail.toml` (only [mqtt] is read)
    tail_conf = _private(state / "tail.toml", (
        "# generated by edgemon-local: read-only MQTT credentials for edgemon-collector tail\n"
        f"[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n{login('tail')}"
    ))
    return {"broker": broker_conf, "collector": collector_conf, "agent": agent_conf,
            "tail": tail_conf, "token": _issue_api_token(state, db_path)}


def _stop(proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"edgemon-local: {what} did not stop in {timeout}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dev-up.sh", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=Path("edgemon-local"),
                        help="where configs, the broker's file, the database and the buffer live")
    parser.add_argument("--mqtt-port", type=int, default=DEFAULT_MQTT_PORT)
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--interval", type=float, default=10.0, help="agent sampling interval (s)")
    args = parser.parse_args(argv)

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        print("edgemon-local: mosquitto not found; install it: sudo apt-get install mosquitto",
              file=sys.stderr)
        return 1
    for port, what in ((args.mqtt_port, "--mqtt-port"), (args.http_port, "--http-port")):
        if not _port_free(port):
            print(f"edgemon-local: port {port} is taken; pick another with {what}",
                  file=sys.stderr)
            return 1
    state = args.state_dir.resolve()
    conf = _write_configs(state, args.mqtt_port, args.http_port, args.interval)
    bindir = Path(sys.executable).parent
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        broker = subprocess.Popen([mosquitto, "-c", str(conf["broker"])],
                                  stdout=open(state / "mosquitto.log", "ab"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(("broker", broker))
        _wait_port(args.mqtt_port, broker, "mosquitto")
        collector = subprocess.Popen([str(bindir / "edgemon-collector"), "run", "-c",
                                      str(conf["collector"])], start_new_session=True)
        procs.append(("collector", collector))
        _wait_port(args.http_port, collector, "collector")
        agent = subprocess.Popen([str(bindir / "edgemon-agent"), "run", "-c", str(conf["agent"])],
                                 start_new_session=True)
        procs.append(("agent", agent))
        api = f"http://127.0.0.1:{args.http_port}"
        print(
            f"\nedgemon is up (state in {state}). Ctrl-C stops everything.\n"
            f"  broker     mqtt://127.0.0.1:{args.mqtt_port}\n"
            f"  collector  {api}   (first batch after about {6 * args.interval:.0f} s)\n"
            f"  dashboard  {api}/   (sign in with the API token below)\n\n"
            f"  API token (admin) in {conf['token']}:\n"
            f"  export EDGEMON_TOKEN=$(cat {conf['token']})\n"
            f"  curl -s -H \"Authorization: Bearer $EDGEMON_TOKEN\" {api}/edgemon/api/v1/hosts\n"
            f"  curl -s -H \"Authorization: Bearer $EDGEMON_TOKEN\" "
            f"'{api}/edgemon/api/v1/query?metric=cpu_usage_percent&label.cpu=total&step=60'\n"
            f"  curl -s -H \"Authorization: Bearer $EDGEMON_TOKEN\" {api}/metrics\n"
            f"  edgemon-collector tail -c {conf['tail']}\n",
            flush=True,
        )
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"edgemon-local: {name} exited with code {proc.returncode}",
                          file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
    finally:
        for name, proc in reversed(procs):
            _stop(proc, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
