"""A real Alertmanager (Debian's prometheus-alertmanager) on a free loopback port in a temp dir."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .broker import free_port
from .processes import Process
from .waiting import wait_until

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")


class Alertmanager(Process):
    """``resolve_timeout`` applies to alerts sent without ``endsAt`` (ours always have one)."""

    def __init__(self, workdir: Path, *, resolve_timeout: str = "2s",
                 port: int | None = None, webhook: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None,
                 basic_auth: tuple[str, str, str] | None = None) -> None:
        """``webhook``: a URL the Alertmanager notifies (firing and resolved, at once);
        ``tls``: (CA, certificate, key): HTTPS only; ``basic_auth``: (user, password, its bcrypt
        hash): every request must carry them (``--web.config.file``)."""
        assert BINARY, "prometheus-alertmanager is not installed (packaging/dev-env.sh)"
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.scheme = "http"
        self.context: ssl.SSLContext | None = None
        self.headers: dict[str, str] = {}
        web = ""
        if tls is not None:
            self.scheme = "https"
            self.context = ssl.create_default_context(cafile=str(tls[0]))
            web += f"tls_server_config:\n  cert_file: {tls[1]}\n  key_file: {tls[2]}\n"
        if basic_auth is not None:
            user, password, hashed = basic_auth
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {pair}"
            web += f"basic_auth_users:\n  {user}: {hashed}\n"
        flags = []
        if web:
            (workdir / "web.yml").write_text(web)
            flags.append(f"--web.config.file={workdir / 'web.yml'}")
        config = workdir / "alertmanager.yml"
        receiver = "  - name: blackhole\n"
        if webhook is not None:
            receiver += (f"    webhook_configs:\n      - url: {webhook}\n"
                         "        send_resolved: true\n")
        config.write_text(f"global:\n  resolve_timeout: {resolve_timeout}\n"
                          "route:\n  receiver: blackhole\n  group_wait: 0s\n"
                          "  group_interval: 1s\n  repeat_interval: 1h\n"
                          f"receivers:\n{receiver}")
        super().__init__("alertmanager", [
            BINARY, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
            "--log.level=warn", *flags], workdir / "alertmanager.log", {})

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _open(self, path: str, timeout: float) -> Any:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        return urllib.request.urlopen(request, timeout=timeout, context=self.context)

    def start(self, timeout: float = 20.0) -> Alertmanager:  # type: ignore[override]
        super().start()
        wait_until(self.ready, timeout, "alertmanager ready")
        return self

    def ready(self) -> bool:
        try:
            with self._open("/-/ready", 1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            assert self.running(), f"alertmanager exited:\n{self.output()[-2000:]}"
            return False

    def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        """The v2 API's alerts (active, not silenced or inhibited by default)."""
        query = "?active=true&silenced=false&inhibited=false" if active_only else ""
        with self._open(f"/api/v2/alerts{query}", 5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def amtool_query(self, *matchers: str) -> list[dict[str, Any]]:
        """``amtool alert query`` (JSON output): the active alerts as operators list them."""
        assert AMTOOL, "amtool is not installed"
        out = subprocess.run([AMTOOL, "alert", "query", f"--alertmanager.url={self.url}",
                              "-o", "json", *matchers], capture_output=True, text=True,
                             timeout=20, check=True)
        return json.loads(out.stdout or "[]")  # type: ignore[no-any-return]
