"""AlertingService: the alerting engine, its delivery worker and Alertmanager notifiers
wired to a collector (storage, HTTP routes, MQTT publish)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edgemon.collector.alerting.alertmanager import AlertmanagerNotifier
from edgemon.collector.alerting.engine import AlertEngine
from edgemon.collector.alerting.notify import (
    DeliveryWorker,
)
from edgemon.collector.alerting.rules import (
    RuleSet,
)
from edgemon.collector.alerting.store import AlertStore
from edgemon.collector.config import AlertmanagerConfig
from edgemon.collector.http.alerts_api import (
    routes,
)
from edgemon.collector.storage.base import Storage
from edgemon.common.clock import now_ms


class AlertingService:
    """The engine's evaluation loop and the delivery worker, started and stopped together.

    ``storage``: the collector's ``Storage``; ``db_path``: the alerting SQLite file (created),
    or the ``postgresql://`` URL of the store the collectors share (``store.py``);
    ``rules_path``: the rules file (None = built-in defaults); ``publish(topic, payload)``: MQTT
    publisher for transitions (None = none); ``executor``: where blocking cycles run (None = the
    loop's default executor); ``should_run()``: asked before every evaluation cycle and every
    delivery (the collector's leadership: a step begun just before it ended may finish, so a
    message can be sent twice across a fail-over, with the same idempotency key). Construct it
    off the event loop if you mind a few ms of SQLite.
    """

    def __init__(self, storage: Storage, db_path: str | Path | AlertStore, *,
                 rules_path: str | Path | None = None, rules: RuleSet | None = None,
                 publish: Callable[[str, bytes], Any] | None = None,
                 executor: Executor | None = None,
                 clock_ms: Callable[[], int] = now_ms,
                 session: aiohttp.ClientSession | None = None,
                 external_url: str = "",
                 alertmanagers: Sequence[AlertmanagerConfig] = (),
                 resend_delay_ms: int = 60_000,
                 should_run: Callable[[], bool] = lambda: True) -> None:
        self.engine = AlertEngine(storage, db_path, rules=rules, rules_path=rules_path,
                                  clock_ms=clock_ms, publish=publish, external_url=external_url)
        self.should_run = should_run
        self.worker = DeliveryWorker(self.engine, session=session, should_run=should_run)
        self.alertmanagers = (AlertmanagerNotifier(self.engine, alertmanagers,
                                                   resend_delay_ms=resend_delay_ms,
                                                   session=session, should_run=should_run)
                              if alertmanagers else None)
        self.executor = executor
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return routes(self.engine)

    async def start(self) -> None:
        """Evaluate and deliver from the state in the store: on a shared store another
        collector may have led since this one last did (or since it started)."""
        if self.engine.store.shared:
            await asyncio.get_running_loop().run_in_executor(self.executor,
                                                             self.engine.reload_state)
        self.engine.evaluating = True
        await self.worker.start()
        if self.alertmanagers is not None:
            await self.alertmanagers.start()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            self.engine.run(self._stop, self.executor, self.should_run),
            name="edgemon-alert-evaluation")

    @property
    def running(self) -> bool:
        """Evaluating and delivering (between ``start`` and ``pause``/``stop``)."""
        return self._task is not None

    async def pause(self) -> None:
        """Finish the running cycle and stop delivering (the outbox keeps the rest), but keep
        the engine open for the API: another collector leads now. ``start`` resumes."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        self.engine.evaluating = False
        await self.worker.stop()
        if self.alertmanagers is not None:
            await self.alertmanagers.stop()

    async def stop(self) -> None:
        """Finish the running cycle, stop delivering (the outbox keeps the rest), close."""
        await self.pause()
        await asyncio.get_running_loop().run_in_executor(self.executor, self.engine.close)
