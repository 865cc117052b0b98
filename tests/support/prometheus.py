"""A real Prometheus (Debian's ``prometheus`` package) for conformance and federation tests.

    data = Prometheus.backfill(openmetrics_file, workdir / "data")   # promtool tsdb ...
    with Prometheus(workdir, data_dir=data) as prom:
        prom.query("up")                                               # the JSON "data"
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .broker import free_port
from .waiting import wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def available() -> bool:
    return Path(PROMETHEUS).exists() and Path(PROMTOOL).exists()


class Prometheus:
    """One private Prometheus on a free loopback port, its TSDB and config in ``workdir``."""

    def __init__(self, workdir: Path, *, data_dir: Path | None = None, config: str = "",
                 lookback: str = "5m") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_dir = data_dir or workdir / "data"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(config or "global:\n  scrape_interval: 1m\n")
        self.log = workdir / "prometheus.log"
        self.lookback = lookback
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def backfill(openmetrics: Path, data_dir: Path) -> Path:
        """``promtool tsdb create-blocks-from openmetrics`` into ``data_dir``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics",
                                 str(openmetrics), str(data_dir)], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise AssertionError(f"promtool backfill failed: {result.stderr[-2000:]}")
        return data_dir

    def start(self, timeout: float = 60.0) -> Prometheus:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.data_dir}",
                 "--storage.tsdb.retention.time=100y",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--query.lookback-delta={self.lookback}",
                 "--web.enable-lifecycle"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, timeout, f"prometheus ready ({self.log})", interval=0.2)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """GET ``/api/v1/<path>``; the whole JSON document (errors included)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=60) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
