"""Real edgemon processes for integration tests: agents and collectors with generated configs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgemon.common.clock import now_ms

from .broker import Broker, free_port
from .waiting import wait_until

BIN = Path(sys.executable).parent


class Process:
    """A child process whose output goes to a log file; killed at the latest by ``close``."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        assert not self.running(), f"{self.name} already running"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the program's clean shutdown path."""
        assert self.proc is not None
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.proc is not None and self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines of its output (``level``, ``msg``, ...), other lines left out."""
        lines = []
        for line in self.output().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines


class Agent(Process):
    def __init__(self, workdir: Path, broker: Broker, *, host_id: str = "test-host",
                 interval: float = 0.1, batch_cycles: int = 2, extra: str = "",
                 buffer_extra: str = "", broker_extra: str = "",
                 broker_port: int | None = None) -> None:
        """``broker_extra``: more [broker] keys (credentials, TLS); ``broker_port``: instead of
        ``broker.port`` (e.g. ``broker.tls_port``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.buffer = workdir / "buffer.db"
        self.config = workdir / "agent.toml"
        self.config.write_text(
            f'host_id = "{host_id}"\ninterval_seconds = {interval}\nbatch_cycles = {batch_cycles}\n'
            f"{extra}\n[broker]\nhost = \"127.0.0.1\"\nport = {broker_port or broker.port}\n"
            f"keepalive = 5\nreconnect_max_seconds = 2\n{broker_extra}\n\n"
            f"[buffer]\npath = \"{self.buffer}\"\n{buffer_extra}\n"
        )
        self.config.chmod(0o600)
        self.host_id = host_id
        super().__init__(f"agent-{host_id}", [str(BIN / "edgemon-agent"), "run", "-c",
                                              str(self.config)], workdir / "agent.log", {})

    def start(self, timeout: float = 20.0) -> Agent:
        """Start and wait until the agent's loop runs (its signal handlers are in place)."""
        before = self.output().count('"agent starting"')
        super().start()
        wait_until(lambda: self.output().count('"agent starting"') > before or not self.running(),
                   timeout, f"agent start ({self.log})")
        return self


class Collector(Process):
    def __init__(self, workdir: Path, broker: Broker, *, extra: str = "", mqtt_extra: str = "",
                 mqtt_port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.db = workdir / "edgemon.db"
        self.config = workdir / "collector.toml"
        self.config.write_text(
            f"[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port or broker.port}\n"
            f"reconnect_max_seconds = 2\n{mqtt_extra}\n\n"
            f"[storage]\npath = \"{self.db}\"\nmaintain_interval_seconds = 0.5\n\n"
            f"[http]\nhost = \"127.0.0.1\"\nport = {self.http_port}\n{extra}\n"
        )
        self.config.chmod(0o600)
        # The admin token get()/request() send; created with the CLI before the first start.
        self.token: str | None = None
        # HTTPS (the config has tls_cert_file/tls_key_file): the CA file to verify it with.
        self.tls_ca: Path | None = None
        super().__init__("collector", [str(BIN / "edgemon-collector"), "run", "-c",
                                       str(self.config)], workdir / "collector.log", {})

    def start(self, timeout: float = 30.0) -> Collector:
        if self.token is None:
            self.token = self.create_token("tests", "admin")
        super().start()
        wait_until(lambda: self._ready(), timeout, f"collector ready ({self.log})")
        return self

    def token_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``edgemon-collector token <args> -c <config>``; fails the test on a non-zero exit."""
        result = subprocess.run([str(BIN / "edgemon-collector"), "token", *args, "-c",
                                 str(self.config)], capture_output=True, text=True, timeout=30,
                                env={**os.environ, **self.env})
        assert result.returncode == 0, f"token {args}: {result.stderr}"
        return result

    def create_token(self, name: str, role: str) -> str:
        return self.token_cli("create", "--name", name, "--role", role).stdout.strip()

    def request(self, method: str, path: str, *, body: bytes | None = None,
                token: str | None = "", headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of any request, error statuses included. ``token``: "" for
        the admin token, None for none."""
        try:
            with self._open(method, path, body, token, headers) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def _open(self, method: str, path: str, body: bytes | None = None, token: str | None = "",
              headers: dict[str, str] | None = None, timeout: float = 10) -> Any:
        scheme = "https" if self.tls_ca else "http"
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{self.http_port}{path}",
                                         data=body, method=method, headers=dict(headers or {}))
        if token is not None and (token or self.token):
            request.add_header("Authorization", f"Bearer {token or self.token}")
        context = ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    def _ready(self) -> bool:
        if not self.running():
            raise AssertionError(f"collector exited:\n{self.output()[-3000:]}")
        try:
            return self.get("/readyz", raw=True) is not None
        except (OSError, urllib.error.URLError):
            return False

    def get(self, path: str, *, raw: bool = False, timeout: float = 10) -> Any:
        """GET with the admin token; raises ``HTTPError`` on an error status."""
        with self._open("GET", path, timeout=timeout) as resp:
            body = resp.read()
        return body if raw else json.loads(body)


def cluster_roles(collectors: dict[str, Collector]) -> dict[str, str]:
    """The role each running collector states now (a dead or busy one is left out)."""
    out = {}
    for name, collector in collectors.items():
        if collector.running():
            with contextlib.suppress(OSError):
                out[name] = collector.get("/edgemon/api/v1/cluster")["role"]
    return out


def the_leader(collectors: dict[str, Collector]) -> str | None:
    """The one collector that says it leads (None: none, or more than one)."""
    leaders = [n for n, role in cluster_roles(collectors).items() if role == "leader"]
    return leaders[0] if len(leaders) == 1 else None


def buffer_meta(path: Path) -> dict[str, int]:
    """The agent buffer's counters, read-only (the agent may be running or dead). A buffer the
    agent is still creating (some tables not made yet) reads as empty."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        batches = db.execute("SELECT coalesce(sum(samples), 0), count(*) FROM batches").fetchone()
        cycles = db.execute("SELECT coalesce(sum(samples), 0) FROM cycles").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        meta, batches, cycles = {}, (0, 0), 0
    finally:
        db.close()
    return {"appended": int(meta.get("appended_samples_total", 0)),
            "acknowledged": int(meta.get("acknowledged_samples_total", 0)),
            # dropped for good: some batches dropped after publication still arrive (and are
            # acknowledged later); the agent counts those apart
            "dropped": int(meta.get("dropped_samples_total", 0))
            - int(meta.get("delivered_after_drop_samples_total", 0)),
            "dropped_gross": int(meta.get("dropped_samples_total", 0)),
            "buffered": int(batches[0]) + int(cycles), "batches": int(batches[1])}


def stored_samples(collector: Collector, host: str) -> int:
    """Every sample the collector holds for ``host``: count over one step spanning all time."""
    total = 0
    now = now_ms()
    series = collector.get(f"/edgemon/api/v1/hosts/{host}/series")["series"]
    for name in sorted({s["name"] for s in series}):
        doc = collector.get(f"/edgemon/api/v1/query?metric={name}&host={host}&agg=count&tier=raw"
                            f"&start={now - 86_400_000}&end={now + 3_600_000}&step=2d")
        total += sum(int(p[1]) for s in doc["series"] for p in s["points"])
    return total
