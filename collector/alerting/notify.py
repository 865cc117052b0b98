"""Delivery of the outbox: Alertmanager-compatible webhooks (aiohttp) and MQTT publishes.

Per receiver, strictly oldest first: the oldest pending row starts a message once it is
``group_wait`` old; the message holds every pending row of the same receiver and rule created
within ``group_wait`` of it (at most one transition per alert: a later transition of the same
alert goes in the next message, so order per alert is kept). While a receiver fails, nothing
newer is sent to it: it is retried with capped exponential back-off, and the queue is kept in
the alert store (``store.py``: SQLite, or the collectors' shared PostgreSQL database), so a
restart, or a new leader, resumes where it stopped.

A 2xx answer marks the rows delivered in the same transaction that records the delivery. A
crash between the receiver's answer and that commit sends the same message again after the
restart, with the same ``Idempotency-Key`` header and the same per-transition
``idempotencyKey`` in every alert: receivers that care can drop the repeat. So does a leader
that dies (kill -9, lost lease) between the answer and the commit: the new leader sends that
message again, with the same keys. Only the leader delivers (``should_run``, asked before
every message).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from edgemon.collector.alerting.mail import send_email
from edgemon.collector.alerting.messages import email_message, slack_payload, teams_payload
from edgemon.common.clock import rfc3339_ms

if TYPE_CHECKING:  # the engine imports this module: it queues what these functions build
    from edgemon.collector.alerting.engine import AlertEngine
    from edgemon.collector.alerting.transitions import Transition

__all__ = ["MQTT_RECEIVER", "MQTT_TOPIC_PREFIX", "DeliveryWorker", "alert_link", "alert_topic",
           "mqtt_message", "receiver_alert",
           "webhook_alert", "webhook_payload"]

log = logging.getLogger("edgemon.collector.alerting.notify")

MQTT_TOPIC_PREFIX = "edgemon/v1/_alerts"
MQTT_RECEIVER = "mqtt"  # the outbox's receiver name for MQTT publishes
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end time"
_PERMANENT = {400, 401, 403, 404, 405, 410, 413, 422}  # retrying will not help


def alert_topic(rule: str, host: str) -> str:
    """``edgemon/v1/_alerts/<rule>/<host>``: five levels, so it never matches the collector's
    own ``edgemon/v1/+/<kind>`` subscriptions, and ``_alerts`` is never a host id."""
    return f"{MQTT_TOPIC_PREFIX}/{rule}/{host}"


def alert_link(external_url: str, rule: str, host: str) -> str:
    """The alert's ``generatorURL``: its history in the collector's API."""
    query = urllib.parse.urlencode({"rule": rule, "host": host})
    return f"{external_url.rstrip('/')}/edgemon/api/v1/alerts/history?{query}"


def webhook_alert(tr: Transition, idempotency_key: str, external_url: str) -> dict[str, Any]:
    """One entry of a webhook's ``alerts[]`` (Alertmanager format, plus idempotencyKey)."""
    return {"status": "resolved" if tr.status == "resolved" else "firing",
            "labels": tr.alert_labels, "annotations": tr.annotations,
            "startsAt": rfc3339_ms(tr.starts_at) or rfc3339_ms(tr.at_ms),
            "endsAt": rfc3339_ms(tr.ends_at) if tr.status == "resolved" else ZERO_TIME,
            "generatorURL": alert_link(external_url, tr.rule, tr.host),
            "fingerprint": tr.fingerprint, "idempotencyKey": idempotency_key}


def receiver_alert(receiver: Any, tr: Transition, idempotency_key: str,
                   external_url: str) -> dict[str, Any]:
    """What the outbox keeps for ``receiver``: the webhook alert, plus (for the Slack, Teams
    and e-mail messages) the rule, host and value."""
    alert = webhook_alert(tr, idempotency_key, external_url)
    if receiver.type != "webhook":
        finite = tr.value is not None and math.isfinite(tr.value)
        alert.update(rule=tr.rule, host=tr.host, value=tr.value if finite else None)
    return alert


def mqtt_message(tr: Transition, idempotency_key: str) -> dict[str, Any]:
    """The JSON published on ``alert_topic(rule, host)`` for a transition."""
    return {"v": 1, "id": idempotency_key, "rule": tr.rule, "host": tr.host,
            "labels": tr.labels, "alert_labels": tr.alert_labels, "status": tr.status,
            "from": tr.from_status, "at_ms": tr.at_ms, "value": tr.value,
            "starts_at_ms": tr.starts_at, "ends_at_ms": tr.ends_at,
            "historical": tr.historical, "silenced": tr.silenced, "notified": tr.notified,
            "reason": tr.reason, "fingerprint": tr.fingerprint, "annotations": tr.annotations}


def webhook_payload(receiver: str, rule: str, alerts: list[dict[str, Any]],
                    external_url: str) -> dict[str, Any]:
    """The body Alertmanager POSTs to a webhook receiver (version "4")."""
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    common_labels = dict(alerts[0]["labels"]) if alerts else {}
    common_annotations = dict(alerts[0]["annotations"]) if alerts else {}
    for a in alerts[1:]:
        common_labels = {k: v for k, v in common_labels.items() if a["labels"].get(k) == v}
        common_annotations = {k: v for k, v in common_annotations.items()
                              if a["annotations"].get(k) == v}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="{rule}"}}', "truncatedAlerts": 0,
            "status": status, "receiver": receiver, "groupLabels": {"alertname": rule},
            "commonLabels": common_labels, "commonAnnotations": common_annotations,
            "externalURL": external_url, "alerts": alerts}


class DeliveryWorker:
    """``await start()`` after the engine exists, ``await stop()`` before ``engine.close()``.

    ``session``: an aiohttp ClientSession to use (default: its own). ``poll_s``: the longest
    sleep between checks (it also wakes when a cycle queued notifications)."""

    def __init__(self, engine: AlertEngine, *, session: aiohttp.ClientSession | None = None,
                 poll_s: float = 1.0, should_run: Callable[[], bool] = lambda: True) -> None:
        self.engine = engine
        self.should_run = should_run  # asked before every message (the collector's leadership)
        self.store = engine.store
        self.poll_s = poll_s
        self._session = session
        self._own_session = session is None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.delivered_messages = 0
        self.failed_attempts = 0
        # by receiver, for /metrics (http/metrics.py lists every receiver, zero or not)
        self.delivered_by_receiver: Counter[str] = Counter()
        self.failures_by_receiver: Counter[str] = Counter()
        self.after_post: Callable[[str, list[int]], None] | None = None  # test hook

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.engine.add_listener(self.wake)
        self._task = asyncio.create_task(self._run(), name="edgemon-alert-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Thread-safe: deliver now (called by the engine after it queued notifications)."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                due = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alert delivery failed")
                due = None
            now = self.engine.clock_ms()
            timeout = self.poll_s if due is None else min(self.poll_s, max(0.0, (due - now)
                                                                             / 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # --- one pass -------------------------------------------------------------------------

    async def run_once(self) -> int | None:
        """Send everything that is due; return when the next message will be due (ms) or
        None if nothing is waiting."""
        receivers = await asyncio.to_thread(self.store.pending_receivers)
        dues = await asyncio.gather(*(self._drain(name) for name in receivers))
        known = [d for d in dues if d is not None]
        return min(known) if known else None

    def _next(self, receiver: str, now: int) -> tuple[list[Any], int | None]:
        """(rows of the next message, None) or ([], when something will be due)."""
        settings = self.engine.settings
        retry_at = self.store.next_attempt_ms(receiver)
        first = self.store.oldest_pending(receiver)
        if first is None:
            return [], None
        wait = 0 if receiver == MQTT_RECEIVER else settings.group_wait
        due = max(retry_at, first["created_ms"] + wait)
        if due > now:
            return [], due
        if receiver == MQTT_RECEIVER:
            return self.store.pending_rows(receiver, 500), None
        return self.store.group_rows(receiver, first, wait, settings.max_alerts_per_message), None

    async def _drain(self, name: str) -> int | None:
        while True:
            if not self.should_run():
                return None
            now = self.engine.clock_ms()
            rows, due = await asyncio.to_thread(self._next, name, now)
            if not rows:
                return due
            if name == MQTT_RECEIVER:
                ok = await self._publish(rows)
            else:
                receiver = self.engine.ruleset.receivers.get(name)
                if receiver is None:  # removed by a reload: dropped there
                    return None
                ok = await self._post(receiver, rows)
            if not ok:
                return None

    async def _post(self, receiver: Any, rows: list[Any]) -> bool:
        """Deliver one message to ``receiver``; False when it is to be retried later."""
        settings = self.engine.settings
        rule = rows[0]["rule"]
        alerts = [json.loads(r["body"]) for r in rows]
        payload = webhook_payload(receiver.name, rule, alerts, self.engine.external_url)
        ids = [int(r["id"]) for r in rows]
        keys = [r["idempotency_key"] for r in rows]
        message_key = hashlib.sha256(f"{receiver.name}|{'|'.join(keys)}".encode()).hexdigest()[:32]
        if receiver.type == "email":
            status, error = await asyncio.to_thread(
                send_email, receiver, email_message(receiver, rule, alerts, message_key))
        else:
            body = {"webhook": payload, "slack": slack_payload(receiver, rule, alerts),
                    "teams": teams_payload(receiver, rule, alerts)}[receiver.type]
            status, error = await self._http_post(receiver, body, message_key)
        now = self.engine.clock_ms()
        if status is not None and 200 <= status < 300:
            if self.after_post is not None:
                self.after_post(receiver.name, ids)
            await asyncio.to_thread(self.store.mark_delivered, ids, receiver.name,
                                    payload["groupKey"], message_key, now, status)
            self.delivered_messages += 1
            self.delivered_by_receiver[receiver.name] += 1
            return True
        if status in _PERMANENT:
            log.error("receiver %s rejected a message for good (%s); dropped %d alerts",
                      receiver.name, error, len(ids))
            await asyncio.to_thread(self.store.mark_delivered, ids, receiver.name,
                                    payload["groupKey"], message_key, now, status, "rejected")
            return True
        self.failed_attempts += 1
        self.failures_by_receiver[receiver.name] += 1
        retry_at = await asyncio.to_thread(self.store.record_failure, receiver.name, ids, error,
                                           now, settings.retry_initial, settings.retry_max)
        log.warning("receiver %s failed (%s); retry in %.1f s", receiver.name, error,
                    (retry_at - now) / 1000)
        return False

    async def _http_post(self, receiver: Any, payload: dict[str, Any],
                         message_key: str) -> tuple[int | None, str]:
        """POST the JSON; (HTTP status or None when there was no answer, error text)."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", "Idempotency-Key": message_key,
                   "User-Agent": "edgemon-collector-alerting", **receiver.headers}
        timeout = aiohttp.ClientTimeout(total=receiver.timeout / 1000)
        try:
            async with self._session.post(receiver.url, data=json.dumps(payload).encode(),
                                          headers=headers, timeout=timeout) as resp:
                if 200 <= resp.status < 300:
                    return resp.status, ""
                return resp.status, f"HTTP {resp.status}: {(await resp.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def _publish(self, rows: list[Any]) -> bool:
        publish = self.engine.publish
        settings = self.engine.settings
        now = self.engine.clock_ms()
        if publish is None:  # queued by an earlier run that had a publisher: nobody to send to
            await asyncio.to_thread(self.store.mark_delivered, [int(r["id"]) for r in rows],
                                    MQTT_RECEIVER, "mqtt", f"mqtt-dropped-{rows[0]['id']}", now,
                                    None, "dropped")
            return True
        done: list[int] = []
        error = ""
        for r in rows:
            body = json.loads(r["body"])
            try:
                await asyncio.to_thread(publish, alert_topic(body["rule"], body["host"]),
                                        r["body"].encode())
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            done.append(int(r["id"]))
        now = self.engine.clock_ms()
        if done:
            await asyncio.to_thread(self.store.mark_delivered, done, MQTT_RECEIVER, "mqtt",
                                    f"mqtt-{done[0]}-{done[-1]}-{now}", now, None)
            self.delivered_by_receiver[MQTT_RECEIVER] += 1
        if error:
            self.failed_attempts += 1
            self.failures_by_receiver[MQTT_RECEIVER] += 1
            rest = [int(r["id"]) for r in rows if int(r["id"]) not in set(done)]
            await asyncio.to_thread(self.store.record_failure, MQTT_RECEIVER, rest[:1], error,
                                    now, settings.retry_initial, settings.retry_max)
            return False
        return True
