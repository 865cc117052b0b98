"""`edgemon-collector` as a process: run + SIGTERM (drain, exit 0, JSON logs), tail, version."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from edgemon.protocol import metrics_topic
from tests.support.broker import Broker, free_port
from tests.support.stand_in_agent import TIMEOUT, StandInAgent, make_batch
from tests.support.waiting import wait_until

CLI = [sys.executable, "-m", "edgemon.collector.cli"]


class Lines:
    """Collect a pipe's lines in a thread so the test can wait on them with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        self._thread.join(10)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEMON_COLLECTOR_")}


@contextlib.contextmanager
def collector_cli(*args: str, **extra_env: str,
                  ) -> Iterator[tuple[subprocess.Popen[str], Lines, Lines]]:
    """``edgemon-collector ARGS`` with its stdout and stderr lines collected; killed if it
    still runs when the block ends, its output complete after it."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env(), **extra_env})
    out, err = Lines(proc.stdout), Lines(proc.stderr)  # type: ignore[arg-type]
    try:
        yield proc, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.join()
        err.join()


def test_version() -> None:
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("edgemon-collector ")


def test_run_stores_acks_and_exits_0_on_sigterm(tmp_path: Path, broker: Broker) -> None:
    http_port = free_port()
    config = tmp_path / "collector.toml"
    config.write_text(f'[mqtt]\nport = {broker.port}\nclient_id = "cli-test"\n\n'
                      f'[storage]\npath = "{tmp_path / "db" / "edgemon.db"}"\n\n'
                      f'[http]\nport = {http_port}\n')
    config.chmod(0o600)  # a configuration others may read is refused
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(TIMEOUT)
    agent = StandInAgent(broker, "cli-host")
    try:
        with collector_cli("run", "-c", str(config),
                           NOTIFY_SOCKET=str(notify_path)) as (proc, out, err):
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"collector exited {proc.returncode}: "
                                         f"{out.lines[-5:]} {err.lines[-5:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz",
                                                timeout=1) as resp:
                        return resp.status == 200
                except OSError:
                    return False

            wait_until(ready, 20, "collector /readyz")
            assert notify.recv(4096).decode().startswith("READY=1")  # systemd Type=notify
            agent.publish(metrics_topic("cli-host"), make_batch("cli-host", 1))
            agent.wait_acked(1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
            assert notify.recv(4096) == b"STOPPING=1"
    finally:
        notify.close()
        agent.close()
    logs = [json.loads(line) for line in out.lines]  # every stdout line is a JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(doc) for doc in logs)
    assert any(doc["msg"] == "collector stopped" for doc in logs), out.lines[-5:]
    assert (tmp_path / "db").is_dir()


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[http]\nport = 99999\n")
    config.chmod(0o600)
    result = subprocess.run([*CLI, "run", "-c", str(config)], capture_output=True, text=True,
                            timeout=30, env=env())
    assert result.returncode == 2
    assert f"{config}:2: http.port" in result.stderr


def test_tail_prints_samples_as_json_lines(broker: Broker) -> None:
    agent = StandInAgent(broker, "tail-host")
    try:
        with collector_cli("tail", "--broker", f"127.0.0.1:{broker.port}", "--host",
                           "tail-host", "--count", "2") as (proc, out, err):
            wait_until(lambda: any('"subscribed"' in line for line in err.lines), 20,
                       f"tail subscribed ({err.lines})")
            agent.publish(metrics_topic("tail-host"), b"garbage")
            agent.publish(metrics_topic("tail-host"), make_batch("tail-host", 9, n=2))
            assert proc.wait(TIMEOUT) == 0
    finally:
        agent.close()
    samples = [json.loads(line) for line in out.lines]
    assert len(samples) == 4  # 2 metrics x 2 timestamps
    assert {s["name"] for s in samples} == {"cpu_usage_percent", "load1"}
    assert all(s["host"] == "tail-host" and s["seq"] == 9 for s in samples)
    cpu = sorted(s["value"] for s in samples if s["name"] == "cpu_usage_percent")
    assert cpu == [10.09, 11.09]
    undecodable = [json.loads(line) for line in err.lines if "undecodable" in line]
    assert undecodable and undecodable[0]["reason"] == "not_zstd"


def test_tail_reads_batches_that_name_a_catalogue(broker: Broker) -> None:
    from edgemon.protocol import decode, encode
    from edgemon.protocol.catalogue import compact, encode_catalogue
    from edgemon.protocol.topics import catalogue_topic

    metrics, ident, referencing = compact(decode(make_batch("tail-host", 9, n=2)))
    agent = StandInAgent(broker, "tail-host")
    try:
        agent.publish(catalogue_topic("tail-host"), encode_catalogue(
            host="tail-host", instance="inst-1", metrics=metrics, ident=ident), retain=True)
        with collector_cli("tail", "--broker", f"127.0.0.1:{broker.port}", "--host",
                           "tail-host", "--count", "1") as (proc, out, err):
            wait_until(lambda: any('"subscribed"' in line for line in err.lines), 20,
                       f"tail subscribed ({err.lines})")
            agent.publish(metrics_topic("tail-host"), encode(referencing))
            assert proc.wait(TIMEOUT) == 0
    finally:
        agent.close()
    samples = [json.loads(line) for line in out.lines]
    assert sorted(s["value"] for s in samples if s["name"] == "cpu_usage_percent") == [10.09,
                                                                                        11.09]
    assert len(samples) == 4 and all(s["seq"] == 9 for s in samples)


def test_sighup_reloads_alert_rules_and_keeps_running(tmp_path: Path) -> None:
    """SIGHUP re-reads the rules file; a broken file keeps the old rules; the process lives."""
    import signal

    from tests.support.broker import Broker
    from tests.support.processes import Collector
    from tests.support.waiting import wait_until

    rules = tmp_path / "rules.toml"
    rule = '[[rule]]\nname = "{}"\nkind = "threshold"\nmetric = "load1"\nthreshold = 5.0\n'
    rules.write_text(rule.format("first"))
    broker = Broker(tmp_path / "broker").start()
    collector = Collector(tmp_path / "c", broker,
                          extra=f'\n[alerting]\nrules_path = "{rules}"\n')
    try:
        collector.start()
        def names() -> set[str]:
            return {r["name"] for r in collector.get("/edgemon/api/v1/rules")["rules"]}

        assert names() == {"first"}
        rules.write_text(rule.format("second"))
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: names() == {"second"}, 10, "the new rules after SIGHUP")
        rules.write_text("[[rule]]\nname = 1\n")
        collector.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "alert rules not reloaded" in collector.output(), 10, "the refusal")
        assert names() == {"second"} and collector.running()
        assert collector.terminate() == 0
    finally:
        collector.kill()
        broker.kill()
