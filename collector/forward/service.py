"""Forwarding in the collector: one ``Forwarder`` task per ``[[forward]]`` receiver, a thread
for their storage work, a worker process that encodes (``encoder.py``), and a housekeeping
task that trims the log (the ``max_pending_samples`` bound) and refreshes the status that
``/metrics`` and ``GET /edgemon/api/v1/forward`` show without touching the storage.

``start()`` always runs, with or without receivers: it makes the store's cursors match the
configuration, so a receiver removed from the file stops costing log space at once.

Forwarding is singleton work: among collectors that share a store (issue 20) only the leader
sends, else every receiver would get the log once per collector. ``leading`` says whether this
process leads; ``start()`` opens the cursors and runs the receivers only then, and the app calls
``resume()`` / ``pause()`` on a change of leadership. The cursors (and the in-flight mark) are
in the shared store, so a new leader goes on exactly where the old one stopped: at most the one
request in flight when it died is sent again, counted as re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from edgemon.collector.config import ForwardConfig
from edgemon.collector.forward.client import RemoteWriteClient
from edgemon.collector.forward.encoder import Encoder
from edgemon.collector.forward.forwarder import Forwarder
from edgemon.collector.storage.base import ForwardPosition, Storage
from edgemon.common.clock import now_ms

__all__ = ["STATUS_KEY", "STATUS_PATH", "ForwardService", "ForwardStatus"]

log = logging.getLogger("edgemon.collector.forward")

STATUS_PATH = "/edgemon/api/v1/forward"
# on the HTTP app: ``() -> list[ForwardStatus]``, for the accounting endpoint's summary
STATUS_KEY = web.AppKey("forward_status", object)


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    """What one receiver's numbers are, for any ``/metrics`` renderer (``metrics.py``)."""

    name: str
    url: str
    samples_sent: int  # confirmed by the receiver (all time: kept with the cursor)
    samples_rejected: int  # refused for good (4xx) or unreadable, skipped
    samples_skipped: int  # dropped unsent: more than max_pending_samples behind
    samples_resent: int  # sent again after a restart (at most one request each time)
    pending_samples: int  # the queue depth, in samples and batches
    pending_batches: int
    lag_seconds: float  # age of the oldest batch not yet sent (0 when none)
    requests: int  # this process: requests sent, retried, bytes, failures by reason
    retries: int
    bytes_sent: int
    failures: dict[str, int] = field(default_factory=dict)
    last_success_ms: int | None = None

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "samples_sent": self.samples_sent,
                "samples_rejected": self.samples_rejected,
                "samples_skipped": self.samples_skipped,
                "samples_resent": self.samples_resent, "pending_samples": self.pending_samples,
                "pending_batches": self.pending_batches, "lag_seconds": self.lag_seconds,
                "requests": self.requests, "retries": self.retries,
                "bytes_sent": self.bytes_sent, "failures": dict(self.failures),
                "last_success_ms": self.last_success_ms}


class ForwardService:
    def __init__(self, receivers: tuple[ForwardConfig, ...], storage: Storage, *,
                 refresh_seconds: float = 5.0, poll_seconds: float = 1.0,
                 encode_in_process: bool = True,
                 leading: Callable[[], bool] = lambda: True) -> None:
        self.receivers = receivers
        self.leading = leading
        self.running = False  # cursors opened and receivers sent to by this process
        self._started = False
        self._unsupported = False
        self.storage = storage
        self.refresh_seconds = refresh_seconds
        self.poll_seconds = poll_seconds
        self.forwarders: list[Forwarder] = []
        self.positions: dict[str, ForwardPosition] = {}
        self.enabled = False  # False: the storage backend cannot forward
        self._executor = ThreadPoolExecutor(max_workers=max(1, min(4, len(receivers))),
                                            thread_name_prefix="edgemon-forward")
        self._session: aiohttp.ClientSession | None = None
        # a worker process encodes (encoder.py); False: threads of this process (tests)
        self.encoder = Encoder() if encode_in_process and receivers else None
        self._tasks: list[asyncio.Task[None]] = []
        self._encoder_started = False

    async def start(self) -> None:
        """Open the cursors and send, if this process leads; else wait for ``resume()``."""
        self._started = True
        if self.leading():
            await self.resume()

    async def resume(self) -> None:
        """Leadership gained: make the cursors match the configuration, count what was in
        flight at the last stop (whichever collector it was) as re-sent, and send."""
        if self.running or not self._started or self._unsupported:
            return
        loop = asyncio.get_running_loop()
        starts = {r.display_name: r.start for r in self.receivers}
        try:
            resent = await loop.run_in_executor(self._executor, self.storage.forward_open,
                                                starts, now_ms())
        except (NotImplementedError, AttributeError):
            self._unsupported = True
            if self.receivers:
                log.error("this storage backend cannot forward: [[forward]] ignored")
            return
        # Before ``running``: should the storage fail here (a database connection dropped),
        # this raises with nothing half started, and the caller's next ``resume`` starts it all.
        await self._housekeeping_once()
        self.enabled = self.running = True
        for name, n in resent.items():
            log.warning("forward %s: %d samples in flight at the last stop are sent again",
                        name, n, extra={"receiver": name, "samples": n})
        if not self.receivers:
            return
        if self.encoder is not None and not self._encoder_started:
            self._encoder_started = True
            try:
                await self.encoder.start()
            except Exception as exc:
                log.warning("forward: no encoder process (%s); encoding in this process", exc)
                self.encoder.close()
                self.encoder = None
        self._session = aiohttp.ClientSession()
        self.forwarders = []
        for cfg in self.receivers:
            fwd = Forwarder(cfg, self.storage, RemoteWriteClient(cfg, self._session),
                            self._executor, poll_seconds=self.poll_seconds,
                            encoder=self.encoder)
            self.forwarders.append(fwd)
            self._tasks.append(asyncio.create_task(fwd.run(), name=f"forward-{fwd.name}"))
            log.info("forwarding to %s (%s)", fwd.name, cfg.url)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="forward-trim"))

    async def _housekeeping_once(self) -> None:
        loop = asyncio.get_running_loop()
        limits = {r.display_name: r.max_pending_samples for r in self.receivers}
        skipped = await loop.run_in_executor(self._executor, self.storage.forward_trim,
                                             limits, now_ms())
        for name, n in skipped.items():
            log.error("forward %s: more than %d samples behind: the oldest %d skipped unsent",
                      name, limits[name], n, extra={"receiver": name, "samples": n})
        positions = await loop.run_in_executor(self._executor, self.storage.forward_positions)
        self.positions = {p.name: p for p in positions}

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self._housekeeping_once()
            except Exception:
                log.exception("forward housekeeping failed; trying again")

    async def pause(self, timeout: float = 5.0) -> None:
        """Leadership lost (or stopping): stop sending (a request in flight gets ``timeout``
        seconds to be answered, else the next leader sends it again), keep the cursors. The
        receivers' last figures stay in ``status()``."""
        self.running = False
        for fwd in self.forwarders:
            fwd.stop()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop sending (as ``pause()``), keep the cursors, release the encoder."""
        await self.pause(timeout)
        if self.encoder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.encoder.close)
        self._executor.shutdown(wait=True)

    def status(self) -> list[ForwardStatus]:
        """A snapshot (no storage access): persisted totals as of the last refresh, this
        process's request counts now."""
        out = []
        now = now_ms()
        for fwd in self.forwarders:
            p = self.positions.get(fwd.name)
            c = fwd.counters
            oldest = p.oldest_pending_ms if p else None
            out.append(ForwardStatus(
                name=fwd.name, url=fwd.config.url,
                samples_sent=p.sent if p else 0, samples_rejected=p.rejected if p else 0,
                samples_skipped=p.skipped if p else 0, samples_resent=p.resent if p else 0,
                pending_samples=p.pending_samples if p else 0,
                pending_batches=p.pending_batches if p else 0,
                lag_seconds=max(0.0, (now - oldest) / 1000) if oldest is not None else 0.0,
                requests=c.requests, retries=c.retries, bytes_sent=c.bytes_sent,
                failures=dict(c.failures), last_success_ms=c.last_success_ms))
        return out

    def routes(self) -> list[web.RouteDef]:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"receivers": [s.doc() for s in self.status()]})
        return [web.get(STATUS_PATH, handler)]
