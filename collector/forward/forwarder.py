"""One receiver's forwarding loop (one asyncio task per ``[[forward]]``, so a slow or dead
receiver holds back nobody else).

The loop reads logged batches after the receiver's cursor (a bounded number of samples at a
time, in the forward thread), encodes them into requests of at most
``max_samples_per_request`` samples (in the encoder process, ``encoder.py``: never on the
event loop nor under ingest's interpreter lock), and POSTs them one at a time, in order:

* 2xx: the cursor moves past the request's batches and the next request is marked in flight,
  in one commit. So a kill -9 re-sends at most the one request in flight (counted as re-sent
  on the next start), and loses nothing.
* 5xx, 408, 429, no answer: the same request again after a back-off (doubling from
  ``retry_initial_seconds`` to ``retry_max_seconds``, with jitter), for as long as it takes.
* other 4xx: will never succeed. A request of several batches is split and each batch sent
  alone, so one refused batch (e.g. history older than Prometheus's head) does not take its
  neighbours with it; a batch refused alone is counted as rejected, with the reason logged,
  and passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgemon.collector.config import ForwardConfig
from edgemon.collector.forward.client import Outcome, RemoteWriteClient
from edgemon.collector.forward.convert import (
    LabelCache,
    Request,
    encode_batches,
    group,
    to_requests,
)
from edgemon.collector.forward.encoder import Encoder
from edgemon.collector.outbound import Backoff
from edgemon.collector.storage.base import Storage
from edgemon.common.clock import now_ms

__all__ = ["Forwarder", "ForwarderCounters"]

log = logging.getLogger("edgemon.collector.forward")

T = TypeVar("T")

READ_BATCHES = 1000  # batches read from the log at once (and at most READ_REQUESTS requests)
READ_REQUESTS = 8


@dataclass
class ForwarderCounters:
    """This process's counts for one receiver (the persisted totals are in the cursor)."""

    requests: int = 0
    samples_sent: int = 0
    samples_rejected: int = 0
    retries: int = 0
    bytes_sent: int = 0
    last_success_ms: int | None = None
    failures: dict[str, int] = field(default_factory=dict)  # by status or "network"


class Forwarder:
    def __init__(self, config: ForwardConfig, storage: Storage, client: RemoteWriteClient,
                 executor: Executor, *, poll_seconds: float = 1.0,
                 encoder: Encoder | None = None) -> None:
        self.config = config
        self.name = config.display_name
        self.storage = storage
        self.client = client
        self.executor = executor
        self.poll_seconds = poll_seconds
        self.counters = ForwarderCounters(failures=client.failures)
        self.backoff = Backoff(config.retry_initial_seconds, config.retry_max_seconds)
        self.cursor = 0
        self.inflight = 0
        self.labels = LabelCache(config.external_labels)
        self.encoder = encoder  # None: encode in ``executor`` (a thread of this process)
        self._wake = asyncio.Event()
        self._stopping = False

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _requests(self, after: int) -> list[Request]:
        cfg = self.config
        batches = await self._off_loop(
            self.storage.forward_read, self.name, after,
            cfg.max_samples_per_request * READ_REQUESTS, READ_BATCHES)
        if not batches:
            return []
        if self.encoder is None:
            return await self._off_loop(to_requests, batches, cfg.max_samples_per_request,
                                        self.labels)
        groups = group(batches, cfg.max_samples_per_request)
        encoded = await self.encoder.encode(groups, tuple(sorted(cfg.external_labels.items())))
        return [Request(body, samples, g, g[-1].seq, unreadable, series)
                for g, (body, samples, unreadable, series) in zip(groups, encoded, strict=True)]

    async def run(self) -> None:
        """Until ``stop()``; a failing storage call is logged and tried again later. The next
        requests are read before the last one read is confirmed, so the commit that passes a
        request also marks the next one in flight: whenever the loop is behind, the cursor
        says exactly what a kill -9 would make it send again."""
        while not self._stopping:
            try:
                positions = await self._off_loop(self.storage.forward_positions)
                break
            except Exception:
                log.exception("forward %s: reading the cursor failed; trying again", self.name)
                await self._sleep(self.backoff.failed())
        else:
            return
        for p in positions:
            if p.name == self.name:
                self.cursor = self.inflight = p.seq
        requests: list[Request] = []
        ahead: asyncio.Task[list[Request]] | None = None  # the next requests, being encoded
        try:
            while not self._stopping:
                try:
                    if not requests:
                        requests = await (ahead or self._requests(self.cursor))
                        ahead = None
                        if not requests:
                            await self._sleep(self.poll_seconds)
                            continue
                        if self.inflight < requests[0].last_seq:
                            await self._off_loop(self.storage.forward_mark, self.name,
                                                 requests[0].last_seq)
                            self.inflight = requests[0].last_seq
                    if ahead is None:  # encode the next ones while these are sent
                        ahead = asyncio.create_task(self._requests(requests[-1].last_seq))
                    request = requests[0]
                    if not await self._deliver(request):
                        return  # stopping
                    rest = requests[1:]
                    if not rest:
                        rest = await ahead
                        ahead = None
                    await self._confirm(request, rest[0].last_seq if rest else 0)
                    requests = rest
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("forward %s: reading, encoding or advancing failed; trying "
                                  "again", self.name)
                    requests = []
                    if ahead is not None:
                        ahead.cancel()
                        ahead = None
                    await self._sleep(self.backoff.failed())
        finally:
            if ahead is not None:
                ahead.cancel()

    async def _deliver(self, request: Request) -> bool:
        """Send ``request`` until the receiver answers for good; False when stopping first.
        Sets ``request.samples`` to what was confirmed and ``request.unreadable`` to what
        was given up."""
        while not self._stopping:
            outcome = await self.client.post(request.body)
            self.counters.requests += 1
            if outcome is Outcome.CONFIRMED:
                self.backoff.succeeded()
                self.counters.bytes_sent += len(request.body)
                self.counters.last_success_ms = now_ms()
                return True
            if outcome is Outcome.REJECTED:
                if len(request.batches) > 1:
                    return await self._deliver_one_by_one(request)
                self.backoff.succeeded()
                log.error("forward %s: %d samples refused for good, skipped: %s", self.name,
                          request.samples, self.client.last_error,
                          extra={"receiver": self.name, "samples": request.samples,
                                 "reason": self.client.last_error})
                request.unreadable += request.samples
                request.samples = 0
                return True
            self.counters.retries += 1
            delay = self.backoff.failed()
            delay = delay / 2 + random.uniform(0, delay / 2)  # jitter: receivers coming
            log.warning("forward %s: %s; again in %.1f s", self.name,  # back see no herd
                        self.client.last_error, delay, extra={"receiver": self.name})
            await self._sleep(delay)
        return False

    async def _deliver_one_by_one(self, request: Request) -> bool:
        sent, refused = 0, request.unreadable
        for batch in request.batches:
            single = await self._off_loop(encode_batches, [batch], self.labels)
            if not await self._deliver(single):
                return False
            sent += single.samples
            refused += single.unreadable
        request.samples, request.unreadable = sent, refused
        return True

    async def _confirm(self, request: Request, upcoming: int) -> None:
        self.counters.samples_sent += request.samples
        self.counters.samples_rejected += request.unreadable
        await self._off_loop(self.storage.forward_advance, self.name, request.last_seq,
                             sent=request.samples, rejected=request.unreadable,
                             inflight=upcoming, now_ms=now_ms())
        self.cursor = request.last_seq
        self.inflight = max(request.last_seq, upcoming)
