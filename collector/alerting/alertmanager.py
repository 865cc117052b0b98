"""Alerts to Alertmanagers (``[[alerting.alertmanagers]]``), the way Prometheus's notifier does.

Prometheus (``rules/alerting.go``, ``needsSending`` and ``sendAlerts``) sends an alert when it
fires, again every ``resendDelay`` (``--rules.alert.resend-delay``, 1 m) while it fires, each time
with ``endsAt = now + 4 * max(evaluation interval, resendDelay)`` ("allow for two Eval or
Alertmanager send failures"): an Alertmanager that stops hearing about an alert resolves it by
itself after that, and one that restarted or missed messages has it again within a resend delay.
A resolved alert is sent at once with ``endsAt`` = its resolve time, and again every resend
delay for ``ResolvedRetention`` (15 min).

We do the same, from the engine's stored state rather than memory, so a collector restart
loses nothing: the firing set is the ``alerts`` table (firing, with fresh data: a back-filled
alert that is not current is not sent), the resolutions are the history's firing -> resolved
rows of the last 15 minutes. Each Alertmanager has its own task, its own record of what it was
sent and when, and its own back-off while it is down (capped at the resend delay), so an HA pair
gets every alert and a dead member never holds back the other. Because the whole set is sent
again, an Alertmanager that was down has every alert back as soon as it answers - no new
transition needed. edgemon's silences do not apply here: silencing and inhibition are the
Alertmanager's (edgemon's silences keep applying to the direct receivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from edgemon.collector.alerting.notify import alert_link
from edgemon.collector.config import AlertmanagerConfig
from edgemon.collector.outbound import Backoff, authorization, client_ssl_context
from edgemon.common.clock import rfc3339_ms

if TYPE_CHECKING:
    from edgemon.collector.alerting.engine import AlertEngine

__all__ = ["RESOLVED_RETENTION_MS", "AlertmanagerNotifier", "alertmanager_alerts"]

log = logging.getLogger("edgemon.collector.alerting.alertmanager")

RESOLVED_RETENTION_MS = 15 * 60_000  # Prometheus's resolvedRetention
MAX_BATCH = 64  # alerts per POST, as Prometheus's notifier (maxBatchSize)


@dataclass(frozen=True, slots=True)
class AmAlert:
    """One alert as an Alertmanager gets it (``postableAlert`` of the v2 API)."""

    fingerprint: str
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: int
    ends_at: int | None  # resolve time; None while firing (set when sent)
    link: str

    def document(self, valid_until: int) -> dict[str, Any]:
        ends = self.ends_at if self.ends_at is not None else valid_until
        return {"labels": self.labels, "annotations": self.annotations,
                "startsAt": rfc3339_ms(self.starts_at), "endsAt": rfc3339_ms(ends),
                "generatorURL": self.link}


def alertmanager_alerts(engine: AlertEngine, now: int) -> dict[str, AmAlert]:
    """What every Alertmanager should know now, by fingerprint: the firing alerts with fresh
    data, and the resolutions of the last ``RESOLVED_RETENTION_MS`` of alerts not firing again
    (blocking: reads the store)."""
    store, base = engine.store, engine.external_url
    fresh_after = now - engine.settings.notify_max_age
    out: dict[str, AmAlert] = {}
    for tr in store.resolutions_since(now - RESOLVED_RETENTION_MS):
        if tr.historical and not tr.notified:
            continue  # a back-filled episode nobody was told about
        out[tr.fingerprint] = AmAlert(
            tr.fingerprint, "resolved", _alert_labels(engine, tr.rule, tr.host, tr.labels),
            tr.annotations, int(tr.starts_at or tr.at_ms), int(tr.ends_at or tr.at_ms),
            alert_link(base, tr.rule, tr.host))
    for a in store.alerts(status="firing"):
        # the stored time lags by up to written.ALERT_REFRESH_MS; the evaluating engine knows it now
        last = max(a.last_data if a.last_data is not None else -1,
                   engine.last_data_ms(a.rule, a.key) or -1)
        if last < 0 or last < fresh_after:
            continue
        out[a.fingerprint] = AmAlert(a.fingerprint, "firing", a.alert_labels, a.annotations,
                                     int(a.fired_at or a.active_since or a.updated_ms), None,
                                     alert_link(base, a.rule, a.host))
    return out


def _alert_labels(engine: AlertEngine, rule: str, host: str,
                  labels: dict[str, str]) -> dict[str, str]:
    """A resolution's alert labels: those of the identical alert, as the history keeps only
    the series' labels (the fingerprint is of these)."""
    from edgemon.collector.alerting.transitions import rule_identity

    spec = next((r for r in engine.ruleset.rules if r.name == rule), None)
    if spec is None:  # the rule is gone: the labels the engine always sets
        return {**labels, "alertname": rule, "host": host}
    return rule_identity(spec, host, labels).alert_labels


@dataclass
class _Target:
    config: AlertmanagerConfig
    url: str
    backoff: Backoff
    ssl: Any  # an SSLContext, or True (aiohttp's default verification)
    sent: dict[str, tuple[str, int, int | None]] = field(default_factory=dict)
    retry_at_ms: int = 0
    # counters for /metrics
    alerts_sent: int = 0
    posts_ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_success_ms: int | None = None
    last_error: str = ""

    @property
    def name(self) -> str:
        return self.config.display_name


class AlertmanagerNotifier:
    """``await start()`` after the engine exists, ``await stop()`` before ``engine.close()``.

    ``resend_delay_ms``: how often a firing alert is sent again (Prometheus: 1 m).
    ``poll_s``: the longest sleep between checks; a cycle with transitions wakes it at once."""

    def __init__(self, engine: AlertEngine, configs: list[AlertmanagerConfig] | tuple[
                 AlertmanagerConfig, ...], *, resend_delay_ms: int = 60_000,
                 session: aiohttp.ClientSession | None = None, poll_s: float = 5.0,
                 should_run: Callable[[], bool] = lambda: True) -> None:
        self.engine = engine
        self.should_run = should_run  # leadership: only the leader tells Alertmanager
        self.resend_delay_ms = resend_delay_ms
        self.poll_s = poll_s
        self._session = session
        self._own_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakes: list[asyncio.Event] = []
        self._tasks: list[asyncio.Task[None]] = []
        settings = engine.settings
        cap = min(settings.retry_max, resend_delay_ms) / 1000
        self.targets = [_Target(c, c.url.rstrip("/") + "/api/v2/alerts",
                                Backoff(settings.retry_initial / 1000, max(cap, 0.001)),
                                client_ssl_context(c) or True)
                        for c in configs]

    def valid_for_ms(self) -> int:
        """How far ahead of now a firing alert's ``endsAt`` is: 4 x max(interval, resend)."""
        return 4 * max(int(self.engine.settings.interval), self.resend_delay_ms)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.engine.add_listener(self.wake)
        for target in self.targets:
            wake = asyncio.Event()
            self._wakes.append(wake)
            self._tasks.append(asyncio.create_task(self._run(target, wake),
                                                   name=f"edgemon-alertmanager-{target.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._wakes = []
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Thread-safe: check now (the engine calls it after a cycle with transitions)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for event in self._wakes:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def _run(self, target: _Target, wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            try:
                due = await self.send_due(target)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sending to alertmanager %s failed", target.name)
                due = None
            now = self.engine.clock_ms()
            timeout = self.poll_s if due is None else min(self.poll_s, max(0.0, (due - now)
                                                                             / 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def _due(self, target: _Target, alerts: dict[str, AmAlert], now: int) -> list[AmAlert]:
        out = []
        for fp, alert in alerts.items():
            sent = target.sent.get(fp)
            if (sent is None or sent[0] != alert.status or sent[2] != alert.ends_at
                    or sent[1] + self.resend_delay_ms <= now):
                out.append(alert)
        for fp in [fp for fp in target.sent if fp not in alerts]:
            del target.sent[fp]  # resolved long ago (or gone): forget
        return out

    async def send_due(self, target: _Target) -> int | None:
        """Send what ``target`` has not been told lately; return when to look again (ms)."""
        now = self.engine.clock_ms()
        if target.retry_at_ms > now:
            return target.retry_at_ms
        if not self.should_run():  # lost the lead: the new leader's notifier sends
            return now + int(self.poll_s * 1000)
        alerts = await asyncio.to_thread(alertmanager_alerts, self.engine, now)
        due = self._due(target, alerts, now)
        valid_until = now + self.valid_for_ms()
        for start in range(0, len(due), MAX_BATCH):
            batch = due[start:start + MAX_BATCH]
            if not await self._post(target, [a.document(valid_until) for a in batch]):
                delay = target.backoff.failed()
                target.retry_at_ms = self.engine.clock_ms() + int(delay * 1000)
                log.warning("alertmanager %s failed (%s); retry in %.1f s", target.name,
                            target.last_error, delay)
                return target.retry_at_ms
            for a in batch:
                target.sent[a.fingerprint] = (a.status, now, a.ends_at)
        target.backoff.succeeded()
        if not target.sent:
            return None
        return min(s[1] for s in target.sent.values()) + self.resend_delay_ms

    async def _post(self, target: _Target, docs: list[dict[str, Any]]) -> bool:
        """True when the Alertmanager took the batch (2xx) or refused it for good (4xx but
        408/429: counted, logged, tried again only at the next resend)."""
        assert self._session is not None
        cfg = target.config
        headers = {"Content-Type": "application/json",
                   "User-Agent": "edgemon-collector-alerting"}
        status: int | None = None
        try:
            auth = authorization(cfg)
            if auth:
                headers["Authorization"] = auth
            async with self._session.post(
                    target.url, data=json.dumps(docs).encode(), headers=headers,
                    ssl=target.ssl,
                    timeout=aiohttp.ClientTimeout(total=cfg.timeout_seconds)) as resp:
                status = resp.status
                text = "" if 200 <= status < 300 else (await resp.text())[:300]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            target.last_error = f"{type(exc).__name__}: {exc}"
            target.errors["network"] = target.errors.get("network", 0) + 1
            return False
        if 200 <= status < 300:
            target.posts_ok += 1
            target.alerts_sent += len(docs)
            target.last_success_ms = self.engine.clock_ms()
            return True
        target.last_error = f"HTTP {status}: {text}"
        target.errors[str(status)] = target.errors.get(str(status), 0) + 1
        if 400 <= status < 500 and status not in (408, 429):
            log.error("alertmanager %s refused %d alerts: %s", target.name, len(docs),
                      target.last_error)
            return True
        return False
