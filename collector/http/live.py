"""Server-sent events for the dashboard: one stream per open page, never a queue per client.

A page opens ``GET /edgemon/api/v1/live`` (optionally ``?host=<id>``) once. The stream carries
small notices, never data: ``host`` (the watched host stored a batch: its newest sample and
receive time), ``fleet`` (counts per state and of firing alerts, when they change) and a comment
line every ``keepalive_s`` so proxies keep the connection open and a dead client is noticed.
The page then fetches what it shows through the ordinary API.

Back-pressure: each stream holds at most one pending notice per kind (a newer one replaces an
unsent older one), and a write that does not finish within ``write_timeout_s`` ends the stream.
A slow or stalled client therefore costs a fixed few hundred bytes and never delays another
stream or the ingest path. At most ``max_streams`` are open at once (503 beyond), and a stream
ends when its session does (sign-out, expiry, token revoked).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

__all__ = ["LiveHub", "Stream"]

log = logging.getLogger("edgemon.collector.http.live")

KEEPALIVE_S = 15.0
WRITE_TIMEOUT_S = 30.0
MAX_STREAMS = 1000
RETRY_MS = 3000


class Stream:
    """One open event stream: the newest unsent notice of each kind, and a wake-up."""

    __slots__ = ("host", "pending", "wake")

    def __init__(self, host: str | None) -> None:
        self.host = host
        self.pending: dict[str, dict[str, Any]] = {}
        self.wake = asyncio.Event()

    def offer(self, kind: str, data: dict[str, Any]) -> None:
        self.pending[kind] = data  # replaces an unsent older notice of the same kind
        self.wake.set()

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        out = list(self.pending.items())
        self.pending.clear()
        self.wake.clear()
        return out


def encode_event(kind: str, data: dict[str, Any]) -> bytes:
    """One SSE event; the JSON has no newline, so one ``data:`` line carries it."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"event: {kind}\ndata: {body}\n\n".encode()


class LiveHub:
    """Every open stream, and the notices to hand them. Runs on the event loop only; other
    threads call ``host_stored`` through ``threadsafe_host_stored``."""

    def __init__(self, *, keepalive_s: float = KEEPALIVE_S,
                 write_timeout_s: float = WRITE_TIMEOUT_S, max_streams: int = MAX_STREAMS) -> None:
        self.keepalive_s = keepalive_s
        self.write_timeout_s = write_timeout_s
        self.max_streams = max_streams
        self.streams: set[Stream] = set()
        self._by_host: dict[str, set[Stream]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fleet_notice: dict[str, Any] | None = None
        self.dropped_slow = 0  # streams ended because a write did not finish in time
        self.closing = False

    # --- notices ------------------------------------------------------------------------------

    def threadsafe_host_stored(self, host: str, newest_ms: int | None, received_ms: int) -> None:
        """From the writer thread: cheap when nobody watches ``host``."""
        if host in self._by_host and self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self.host_stored, host, newest_ms, received_ms)

    def host_stored(self, host: str, newest_ms: int | None, received_ms: int) -> None:
        for stream in self._by_host.get(host, ()):
            stream.offer("host", {"host": host, "newest_sample_ms": newest_ms,
                                  "last_seen_ms": received_ms})

    def fleet_changed(self, notice: dict[str, Any]) -> None:
        """Counts per state and firing alerts; handed out only when they changed."""
        if notice == self.fleet_notice:
            return
        self.fleet_notice = notice
        for stream in self.streams:
            stream.offer("fleet", notice)

    async def close(self, _app: web.Application | None = None) -> None:
        """End every stream now (the collector stops: it must not wait for the clients)."""
        self.closing = True
        for stream in self.streams:
            stream.wake.set()

    # --- streams ------------------------------------------------------------------------------

    def full(self) -> bool:
        return len(self.streams) >= self.max_streams

    def _add(self, stream: Stream) -> None:
        self.streams.add(stream)
        if stream.host is not None:
            self._by_host.setdefault(stream.host, set()).add(stream)

    def _remove(self, stream: Stream) -> None:
        self.streams.discard(stream)
        if stream.host is not None:
            watchers = self._by_host.get(stream.host)
            if watchers is not None:
                watchers.discard(stream)
                if not watchers:
                    del self._by_host[stream.host]

    async def serve(self, request: web.Request, host: str | None,
                    still_allowed: Callable[[], Awaitable[bool]],
                    first: list[tuple[str, dict[str, Any]]]) -> web.StreamResponse:
        """Stream notices to ``request`` until the client goes, the session ends (checked by
        ``still_allowed`` at every keep-alive) or a write stalls. ``first``: notices sent at
        once (the current state)."""
        self.loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        stream = Stream(host)
        self._add(stream)
        try:
            await response.prepare(request)
            await self._write(response, f"retry: {RETRY_MS}\n\n".encode()
                              + b"".join(encode_event(k, d) for k, d in first))
            if self.fleet_notice is not None:
                stream.offer("fleet", self.fleet_notice)
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.wake.wait(), self.keepalive_s)
                if self.closing:
                    break
                notices = stream.take()
                if notices:
                    await self._write(response, b"".join(encode_event(k, d)
                                                         for k, d in notices))
                else:
                    if not await still_allowed():
                        await self._write(response, encode_event("signed-out", {}))
                        break
                    await self._write(response, b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the client went away
        except TimeoutError:
            self.dropped_slow += 1
            log.info("live stream ended: the client did not read for %.0f s",
                     self.write_timeout_s, extra={"remote": request.remote})
        finally:
            self._remove(stream)
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        await asyncio.wait_for(response.write(data), self.write_timeout_s)
