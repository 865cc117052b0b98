"""One remote-write receiver (``[[forward]]``): POST an encoded ``WriteRequest``, classify the
answer as the remote-write spec asks: 2xx confirmed; 5xx, 408, 429 and no answer retried (with
back-off, the same data again); any other 4xx will never succeed (counted by status, skipped,
with the receiver's reason logged).

Except 401, 403 and 404: they say nothing about the data but that this collector's credentials
or URL are wrong (a password rotated on one side first, a proxy's path), which an operator
fixes (a ``password_file`` or ``bearer_token_file`` is read again at every request). Prometheus
drops the data then; here it is retried with back-off and logged as an error, the queue and
its lag growing visibly (``max_pending_samples`` still bounds it), so nothing is lost to a
configuration fault."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

import aiohttp

from edgemon.collector.config import ForwardConfig
from edgemon.collector.forward.remote_write import HEADERS
from edgemon.collector.outbound import authorization, client_ssl_context

__all__ = ["Outcome", "RemoteWriteClient"]

log = logging.getLogger("edgemon.collector.forward")


class Outcome(enum.Enum):
    CONFIRMED = "confirmed"
    RETRY = "retry"
    REJECTED = "rejected"  # 4xx but 408/429 (and the configuration faults): data skipped


# 4xx answers about this collector's credentials or URL, not about the data: retried
CONFIGURATION_FAULTS = (401, 403, 404)


@dataclass
class RemoteWriteClient:
    config: ForwardConfig
    session: aiohttp.ClientSession
    failures: dict[str, int] = field(default_factory=dict)  # by HTTP status or "network"
    last_error: str = ""

    def __post_init__(self) -> None:
        self._ssl = client_ssl_context(self.config) or True

    @property
    def name(self) -> str:
        return self.config.display_name

    async def post(self, body: bytes) -> Outcome:
        headers = dict(HEADERS)
        auth = authorization(self.config)
        if auth:
            headers["Authorization"] = auth
        try:
            async with self.session.post(
                    self.config.url, data=body, headers=headers, ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds)) as resp:
                status = resp.status
                text = "" if 200 <= status < 300 else (await resp.text())[:500]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._count("network", f"{type(exc).__name__}: {exc}")
            return Outcome.RETRY
        if 200 <= status < 300:
            return Outcome.CONFIRMED
        self._count(str(status), f"HTTP {status}: {text.strip()}")
        if status >= 500 or status in (408, 429):
            return Outcome.RETRY
        if status in CONFIGURATION_FAULTS:
            log.error("forward %s: %s: check the receiver's url and credentials; the data "
                      "waits and is sent again", self.name, self.last_error)
            return Outcome.RETRY
        log.error("forward %s rejected a request for good, skipped: %s", self.name,
                  self.last_error)
        return Outcome.REJECTED

    def _count(self, reason: str, error: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self.last_error = error
