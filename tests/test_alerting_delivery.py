"""Notification delivery against a real HTTP receiver (aiohttp on a loopback port): outages,
ordering, restarts, kill -9, silences, grouping, MQTT publishing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from edgemon.collector.alerting import (
    AlertEngine,
    DeliveryWorker,
    RuleSet,
    alert_topic,
    parse_rules,
)
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.alerting.store import AlertStore
from edgemon.collector.http.alerts_api import active_alerts, alert_history
from edgemon.common.clock import now_ms
from tests.support.waiting import DistinctClock, wait_until_async


class Receiver:
    """A webhook endpoint: records every POST; answers 503 while ``down`` (or ``fail`` > 0)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.down = False
        self.down_after: int | None = None  # go down after accepting this many messages
        self.fail = 0
        self.attempts = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.down or self.fail > 0:
            self.fail = max(0, self.fail - 1)
            return web.Response(status=503, text="maintenance")
        self.messages.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.down_after is not None and len(self.messages) >= self.down_after:
            self.down = True
        return web.Response(text="ok")

    def alerts(self) -> list[dict[str, Any]]:
        return [a for m in self.messages for a in m["alerts"]]


def rules_text(url: str, *, group_wait: str = "0s", extra_receiver: str | None = None,
               for_: str = "0s") -> str:
    text = f"""[settings]
group_wait = "{group_wait}"
retry_initial = "50ms"
retry_max = "200ms"
external_url = "http://collector.test:8080"

[[receiver]]
name = "ops"
url = "{url}"
"""
    if extra_receiver:
        text += f'\n[[receiver]]\nname = "pager"\nurl = "{extra_receiver}"\n'
    return text + f"""
[[rule]]
name = "host-down"
kind = "host_down"
severity = "critical"
no_data_for = "1h"
for = "{for_}"
annotations = {{ summary = "{{host}} is down" }}
"""


def pending(engine: AlertEngine) -> int:
    return int(engine.store.query("SELECT count(*) FROM outbox WHERE state='pending'")[0][0])


async def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    await wait_until_async(check, timeout, "the delivery condition")


def down(store: InMemoryGridStorage, *hosts: str) -> None:
    for h in hosts:
        store.set_status(h, False, now_ms())


def up(store: InMemoryGridStorage, *hosts: str) -> None:
    for h in hosts:
        store.set_status(h, True, now_ms())
        store.set_last_seen(h, now_ms())


def new_engine(store: InMemoryGridStorage, path: Path, rules: RuleSet,
               **kw: Any) -> AlertEngine:
    """An engine whose clock never reads the same twice: each cycle's outbox rows get a later
    creation time than the previous cycle's, so group_wait = 0 never groups two cycles."""
    return AlertEngine(store, path, rules=rules, clock_ms=DistinctClock(), **kw)


def cycle(engine: AlertEngine) -> None:
    engine.run_cycle()


def sequence(receiver: Receiver) -> list[tuple[str, str]]:
    return [(a["labels"]["host"], a["status"]) for a in receiver.alerts()]


def test_receiver_down_then_up_delivers_every_transition_once_in_order(
        tmp_path: Path, alert_state: Path | str) -> None:
    async def main() -> None:
        receiver = await Receiver().start()
        receiver.down = True
        store = InMemoryGridStorage()
        engine = new_engine(store, alert_state, parse_rules(rules_text(receiver.url)))
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            down(store, "h1")
            cycle(engine)  # h1 firing
            up(store, "h1")
            down(store, "h2")
            cycle(engine)  # h1 resolved, h2 firing
            down(store, "h1")
            cycle(engine)  # h1 firing again
            await wait_for(lambda: receiver.attempts >= 3)
            assert receiver.messages == [] and pending(engine) == 4
            receiver.down = False
            await wait_for(lambda: pending(engine) == 0)
        finally:
            await worker.stop()
            engine.close()
            await receiver.stop()
        assert sequence(receiver) == [("h1", "firing"), ("h1", "resolved"), ("h2", "firing"),
                                      ("h1", "firing")]
        keys = [a["idempotencyKey"] for a in receiver.alerts()]
        assert len(set(keys)) == 4
        assert worker.failed_attempts >= 3
        first = receiver.messages[0]
        assert first["version"] == "4" and first["receiver"] == "ops"
        assert first["groupKey"] == '{}:{alertname="host-down"}'
        assert first["groupLabels"] == {"alertname": "host-down"}
        assert first["externalURL"] == "http://collector.test:8080"
        alert = first["alerts"][0]
        assert alert["labels"] == {"alertname": "host-down", "host": "h1",
                                   "severity": "critical"}
        assert alert["annotations"] == {"summary": "h1 is down"}
        assert alert["generatorURL"].startswith("http://collector.test:8080/edgemon/api/v1/alerts/")
        assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"].endswith("Z")
        resolved = receiver.messages[1]["alerts"][0]
        assert resolved["status"] == "resolved" and resolved["endsAt"] != alert["endsAt"]
        assert resolved["fingerprint"] == alert["fingerprint"]
        assert all(h.get("Idempotency-Key") for h in receiver.headers)

    asyncio.run(main())


def test_restart_mid_notification_loses_nothing_and_duplicates_nothing(
        tmp_path: Path, alert_state: Path | str) -> None:
    async def main() -> None:
        receiver = await Receiver().start()
        store = InMemoryGridStorage()
        rules = parse_rules(rules_text(receiver.url))
        engine = new_engine(store, alert_state, rules)
        for h in ("h1", "h2", "h3"):
            down(store, h)
            cycle(engine)  # three messages (one host each)
        receiver.down_after = 1  # accept the first message, then be down
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        await wait_for(lambda: len(receiver.messages) == 1 and receiver.attempts >= 2)
        await worker.stop()
        engine.close()
        reopened = AlertStore(alert_state)  # committed: another handle sees it
        assert reopened.query("SELECT count(*) FROM outbox WHERE state='pending'")[0][0] == 2
        reopened.close()
        # a new engine object on the same file, receiver back
        receiver.down, receiver.down_after = False, None
        engine2 = new_engine(store, alert_state, rules)
        worker2 = DeliveryWorker(engine2, poll_s=0.05)
        await worker2.start()
        try:
            await wait_for(lambda: pending(engine2) == 0)
            # still down: nothing new to notify (every message is delivered: none can follow)
            assert engine2.run_cycle().notifications == 0
        finally:
            await worker2.stop()
            engine2.close()
            await receiver.stop()
        assert sequence(receiver) == [("h1", "firing"), ("h2", "firing"), ("h3", "firing")]
        assert len({a["idempotencyKey"] for a in receiver.alerts()}) == 3

    asyncio.run(main())


def test_crash_between_post_and_commit_resends_with_the_same_keys(
        tmp_path: Path, alert_state: Path | str) -> None:
    """HTTP cannot be exactly-once by itself: the repeat carries the same idempotency keys."""
    async def main() -> None:
        receiver = await Receiver().start()
        store = InMemoryGridStorage()
        engine = new_engine(store, alert_state, parse_rules(rules_text(receiver.url)))
        down(store, "h1")
        cycle(engine)
        worker = DeliveryWorker(engine, poll_s=0.05)
        crashes = []

        def crash(_receiver: str, ids: list[int]) -> None:
            if not crashes:
                crashes.append(ids)
                raise RuntimeError("killed before the commit")

        worker.after_post = crash
        await worker.start()
        try:
            await wait_for(lambda: pending(engine) == 0)
        finally:
            await worker.stop()
            engine.close()
            await receiver.stop()
        assert len(receiver.messages) == 2
        assert receiver.messages[0]["alerts"] == receiver.messages[1]["alerts"]
        assert receiver.headers[0]["Idempotency-Key"] == receiver.headers[1]["Idempotency-Key"]

    asyncio.run(main())


KILL_SCRIPT = """
import os, signal, sys
from edgemon.collector.alerting import AlertEngine, parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage
db, rules, now = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = InMemoryGridStorage()
for h in ("h1", "h2", "h3"):
    store.set_status(h, False, now)
engine = AlertEngine(store, db, rules=parse_rules(open(rules).read()))
engine.run_cycle()  # state, history and outbox committed ...
os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before delivering
"""


def test_kill_9_after_writing_the_outbox_delivers_once_after_restart(
        tmp_path: Path, alert_state: Path | str) -> None:
    async def main() -> None:
        receiver = await Receiver().start()
        rules_file = tmp_path / "rules.toml"
        rules_file.write_text(rules_text(receiver.url))
        db = alert_state
        when = now_ms()
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", KILL_SCRIPT, str(db), str(rules_file),
                             str(when)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        store = InMemoryGridStorage()
        for h in ("h1", "h2", "h3"):
            store.set_status(h, False, when)
        engine = new_engine(store, db, parse_rules(rules_file.read_text()))
        assert pending(engine) == 3
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            await wait_for(lambda: pending(engine) == 0)
            # the restored state knows these are notified already
            assert engine.run_cycle().notifications == 0
        finally:
            await worker.stop()
            engine.close()
            await receiver.stop()
        assert len(receiver.messages) == 1
        assert sorted(h for h, _ in sequence(receiver)) == ["h1", "h2", "h3"]

    asyncio.run(main())


def test_silence_suppresses_notifications_but_not_history(
        tmp_path: Path, alert_state: Path | str) -> None:
    async def main() -> None:
        receiver = await Receiver().start()
        store = InMemoryGridStorage()
        engine = new_engine(store, alert_state, parse_rules(rules_text(receiver.url)))
        now = now_ms()
        sid = engine.store.add_silence([{"name": "host", "value": "h1|h9", "isRegex": True,
                                         "isEqual": True}], now - 1000, now + 3_600_000,
                                       "test", "maintenance", now)
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            down(store, "h1", "h2")
            cycle(engine)
            await wait_for(lambda: pending(engine) == 0 and len(receiver.messages) == 1)
            assert sequence(receiver) == [("h2", "firing")]
            hist = {h["host"]: h for h in alert_history(engine)}
            assert hist["h1"]["silenced"] and not hist["h1"]["notified"]
            assert not hist["h2"]["silenced"] and hist["h2"]["notified"]
            assert {a["host"]: a["silenced_by"] for a in active_alerts(engine)} == \
                {"h1": sid, "h2": None}
            # the silence ends while h1 is still down: now it is notified, once
            engine.store.expire_silence(sid, now_ms())
            cycle(engine)
            cycle(engine)
            await wait_for(lambda: pending(engine) == 0 and len(receiver.messages) == 2)
        finally:
            await worker.stop()
            engine.close()
            await receiver.stop()
        assert sequence(receiver) == [("h2", "firing"), ("h1", "firing")]

    asyncio.run(main())


def test_a_200_host_outage_is_one_message_per_receiver(tmp_path: Path) -> None:
    async def main() -> None:
        ops = await Receiver().start()
        pager = await Receiver().start()
        store = InMemoryGridStorage()
        engine = new_engine(store, tmp_path / "a.db", parse_rules(rules_text(
            ops.url, group_wait="1s", extra_receiver=pager.url)))
        hosts = [f"edge-{i:03d}" for i in range(200)]
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            down(store, *hosts[:120])  # the outage is seen over two cycles
            cycle(engine)
            down(store, *hosts[120:])
            cycle(engine)
            await wait_for(lambda: pending(engine) == 0)  # all delivered: no message can follow
        finally:
            await worker.stop()
            engine.close()
            await ops.stop()
            await pager.stop()
        for receiver, name in ((ops, "ops"), (pager, "pager")):
            assert len(receiver.messages) == 1
            message = receiver.messages[0]
            assert message["receiver"] == name and message["status"] == "firing"
            assert sorted(a["labels"]["host"] for a in message["alerts"]) == hosts
            assert message["commonLabels"] == {"alertname": "host-down",
                                               "severity": "critical"}
            assert message["commonAnnotations"] == {}

    asyncio.run(main())


def test_transitions_are_published_on_mqtt(tmp_path: Path) -> None:
    async def main() -> None:
        receiver = await Receiver().start()
        store = InMemoryGridStorage()
        published: list[tuple[str, dict[str, Any]]] = []
        failures = [1]

        def publish(topic: str, payload: bytes) -> None:
            if failures[0]:
                failures[0] -= 1
                raise OSError("broker not connected")
            published.append((topic, json.loads(payload)))

        engine = new_engine(store, tmp_path / "a.db", parse_rules(rules_text(receiver.url)),
                            publish=publish)
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            down(store, "h1")
            cycle(engine)
            up(store, "h1")
            cycle(engine)
            await wait_for(lambda: len(published) == 2 and pending(engine) == 0)
        finally:
            await worker.stop()
            engine.close()
            await receiver.stop()
        assert [t for t, _ in published] == [alert_topic("host-down", "h1")] * 2
        assert published[0][0] == "edgemon/v1/_alerts/host-down/h1"
        first, second = published[0][1], published[1][1]
        assert (first["status"], second["status"]) == ("firing", "resolved")
        assert first["v"] == 1 and first["rule"] == "host-down" and first["host"] == "h1"
        assert first["historical"] is False and first["fingerprint"] == second["fingerprint"]

    asyncio.run(main())
