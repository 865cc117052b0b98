"""Real remote-write receivers on free loopback ports in temp dirs: VictoriaMetrics and
Prometheus (``--web.enable-remote-write-receiver``), both from Debian."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .broker import free_port
from .processes import Process
from .waiting import wait_until

VICTORIA = shutil.which("victoria-metrics")
PROMETHEUS = shutil.which("prometheus")


def _get(url: str, context: ssl.SSLContext | None = None,
         authorization: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Tsdb(Process):
    write_path = ""
    ready_path = ""
    scheme = "http"
    context: ssl.SSLContext | None = None  # the tests' own reads over TLS
    authorization: str | None = None  # and with credentials

    def __init__(self, name: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        super().__init__(name, self.argv(workdir), workdir / f"{name}.log", {})

    def _get(self, url: str) -> tuple[int, bytes]:
        return _get(url, self.context, self.authorization)

    def argv(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def write_url(self) -> str:
        return self.base + self.write_path

    def start(self, timeout: float = 30.0) -> Tsdb:  # type: ignore[override]
        super().start()

        def ready() -> bool:
            assert self.running(), f"{self.name} exited:\n{self.output()[-2000:]}"
            return self._get(self.base + self.ready_path)[0] == 200
        wait_until(ready, timeout, f"{self.name} ready")
        return self

    def query(self, promql: str, at_s: float) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql, "time": f"{at_s:.3f}"})
        status, body = self._get(f"{self.base}/api/v1/query?{q}")
        assert status == 200, body[:500]
        return json.loads(body)["data"]["result"]  # type: ignore[no-any-return]


class VictoriaMetrics(Tsdb):
    write_path = "/api/v1/write"
    ready_path = "/health"

    def __init__(self, workdir: Path, *, tls: tuple[Path, Path, Path] | None = None,
                 basic_auth: tuple[str, str] | None = None) -> None:
        """``tls``: (CA, server certificate, key): serve HTTPS only; ``basic_auth``: (user,
        password) every request must carry (``-httpAuth.*``)."""
        assert VICTORIA, "victoria-metrics is not installed (packaging/dev-env.sh)"
        self.tls, self.basic_auth = tls, basic_auth
        if tls is not None:
            self.scheme = "https"
            self.context = ssl.create_default_context(cafile=str(tls[0]))
        if basic_auth is not None:
            pair = ":".join(basic_auth).encode()
            self.authorization = "Basic " + base64.b64encode(pair).decode()
        super().__init__("victoria-metrics", workdir)

    def argv(self, workdir: Path) -> list[str]:
        extra = []
        if self.tls is not None:
            extra += ["-tls", f"-tlsCertFile={self.tls[1]}", f"-tlsKeyFile={self.tls[2]}"]
        if self.basic_auth is not None:
            extra += [f"-httpAuth.username={self.basic_auth[0]}",
                      f"-httpAuth.password={self.basic_auth[1]}"]
        return [str(VICTORIA), f"-storageDataPath={workdir / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
                "-search.latencyOffset=0s", "-loggerLevel=WARN", *extra]

    def export(self, match: str) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """Every raw sample of the matching series (``/api/v1/export``), after a flush."""
        self._get(f"{self.base}/internal/force_flush")
        q = urllib.parse.urlencode({"match[]": match})
        status, body = self._get(f"{self.base}/api/v1/export?{q}")
        assert status == 200, body[:500]
        out: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for line in body.decode().splitlines():
            doc = json.loads(line)
            key = tuple(sorted(doc["metric"].items()))
            out.setdefault(key, []).extend(zip(doc["timestamps"], doc["values"], strict=True))
        return {k: sorted(v) for k, v in out.items()}


class Prometheus(Tsdb):
    write_path = "/api/v1/write"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path) -> None:
        assert PROMETHEUS, "prometheus is not installed (packaging/dev-env.sh)"
        super().__init__("prometheus", workdir)

    def argv(self, workdir: Path) -> list[str]:
        config = workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1h\n")
        return [str(PROMETHEUS), f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-remote-write-receiver", "--log.level=warn"]

    def samples(self, selector: str, start_ms: int, end_ms: int,
                ) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """Raw samples via an instant query of a range selector at ``end_ms``."""
        seconds = max(1, (end_ms - start_ms) // 1000 + 1)
        out = {}
        for r in self.query(f"{selector}[{seconds}s]", end_ms / 1000):
            key = tuple(sorted(r["metric"].items()))
            out[key] = [(round(float(t) * 1000), float(v)) for t, v in r["values"]]
        return out
