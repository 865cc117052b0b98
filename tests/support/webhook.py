"""A webhook receiver on a loopback port (stdlib HTTP server in a thread): records every POST
it accepts. ``status``: what it answers (200; e.g. 503 to be down: then the POST is counted in
``refused``, not recorded)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 200
        self.refused = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner._lock:
                    status = owner.status
                    if status == 200:
                        owner.messages.append(json.loads(body))
                    else:
                        owner.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Webhook:
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a for m in self.messages for a in m.get("alerts", [])]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
