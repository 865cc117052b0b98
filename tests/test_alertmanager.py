"""Alerts to a real Alertmanager (Debian's prometheus-alertmanager on a loopback port): an alert
fired by a lowered threshold shows up with its labels, stays active past the Alertmanager's
resolve_timeout while edgemon fires (re-sent with endsAt ahead), resolves with edgemon, and is
back after the Alertmanager restarts without a new transition. An HA pair gets everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.alerting import AlertingService, parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.config import AlertmanagerConfig, ConfigError, load_config
from edgemon.collector.http.metrics import CollectorMetrics
from edgemon.common.clock import now_ms
from tests.support.alertmanager import BINARY, Alertmanager
from tests.support.waiting import wait_until_async
from tests.support.webhook import Webhook

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BINARY is None, reason="prometheus-alertmanager missing")]

EXTERNAL = "https://edgemon.example:9400"


def rules(threshold: float) -> str:
    return f"""[settings]
interval = "200ms"
settle = "1s"
group_wait = "0s"
retry_initial = "100ms"
retry_max = "500ms"

[[rule]]
name = "cpu-high"
kind = "threshold"
metric = "cpu_usage_percent"
match = {{ cpu = "total" }}
window = "1s"
threshold = {threshold}
severity = "critical"
labels = {{ team = "edge" }}
annotations = {{ summary = "CPU {{value:.0f}} % on {{host}}" }}
"""


class Feeder:
    """Writes one CPU sample per second per host into the storage, value settable."""

    def __init__(self, store: InMemoryGridStorage, hosts: dict[str, float]) -> None:
        self.store, self.values = store, hosts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            second = now_ms() // 1000 * 1000
            for host, value in list(self.values.items()):
                self.store.write("cpu_usage_percent", host, {"cpu": "total"}, second, value)
            self._stop.wait(0.2)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, alertmanagers: list[AlertmanagerConfig],
                  hosts: dict[str, float], threshold: float = 20, **options: Any
                  ) -> AsyncIterator[tuple[AlertingService, Feeder]]:
    """An alerting service (the ``cpu-high`` rule at ``threshold``) sending to
    ``alertmanagers``, with a ``Feeder`` writing ``hosts``' CPU, started; stopped on leaving."""
    store = InMemoryGridStorage(interval_ms=1000)
    service = AlertingService(store, tmp_path / "alerts.db",
                              rules=parse_rules(rules(threshold)), external_url=EXTERNAL,
                              resend_delay_ms=1000, alertmanagers=alertmanagers, **options)
    with Feeder(store, hosts) as feeder:
        await service.start()
        try:
            yield service, feeder
        finally:
            await service.stop()


def cpu_alerts(am: Alertmanager) -> list[dict[str, Any]]:
    return [a for a in am.alerts() if a["labels"].get("alertname") == "cpu-high"]


def transitions(service: AlertingService) -> int:
    return int(service.engine.store.query(
        "SELECT count(*) FROM history WHERE status IN ('firing','resolved')")[0][0])


def metrics_text(service: AlertingService) -> str:
    """The collector's ``/metrics`` text with this alerting service attached."""
    metrics = CollectorMetrics(process=False)
    metrics.attach(alerting=service)
    return metrics.text()


def am_config(am: Alertmanager, name: str) -> AlertmanagerConfig:
    return AlertmanagerConfig(url=am.url, name=name, timeout_seconds=2)


def test_alert_lifecycle_in_a_real_alertmanager_pair(tmp_path: Path) -> None:
    am1 = Alertmanager(tmp_path / "am1").start()
    am2 = Alertmanager(tmp_path / "am2").start()

    async def main() -> None:
        # 30 % CPU: quiet at a threshold of 50; the operator lowers it to 20
        async with running(tmp_path, [am_config(am1, "am1"), am_config(am2, "am2")],
                           {"web-01": 30.0, "web-02": 10.0}, threshold=50) as (service, feeder):
            await asyncio.sleep(0)  # let the loops begin
            assert cpu_alerts(am1) == []
            service.engine.set_rules(parse_rules(rules(20)))
            for am in (am1, am2):
                await wait_until_async(lambda am=am: cpu_alerts(am), 20,
                                       "the alert in both Alertmanagers")
            alert = cpu_alerts(am1)[0]
            assert alert["labels"] == {"alertname": "cpu-high", "host": "web-01",
                                       "cpu": "total", "severity": "critical",
                                       "team": "edge"}
            assert alert["annotations"] == {"summary": "CPU 30 % on web-01"}
            assert alert["generatorURL"].startswith(
                f"{EXTERNAL}/edgemon/api/v1/alerts/history?rule=cpu-high&host=web-01")
            assert alert["status"]["state"] == "active"
            listed = am1.amtool_query("alertname=cpu-high")
            assert [a["labels"]["host"] for a in listed] == ["web-01"]

            # past resolve_timeout (2 s) and past one endsAt (4 x 1 s): still active
            fired = transitions(service)
            started = alert["startsAt"]
            deadline = time.monotonic() + 7
            while time.monotonic() < deadline:
                await asyncio.to_thread(time.sleep, 0.5)
                current = cpu_alerts(am1)
                assert len(current) == 1 and current[0]["startsAt"] == started
            assert transitions(service) == fired

            # the Alertmanager goes down, comes back empty: the alert is there again,
            # without a new transition
            am2.terminate()
            await asyncio.to_thread(time.sleep, 1.5)  # a few failed sends, backing off
            am2.start()
            await wait_until_async(lambda: cpu_alerts(am2), 10,
                                   "the alert back in the restarted Alertmanager")
            assert transitions(service) == fired
            assert cpu_alerts(am2)[0]["startsAt"] == started

            # edgemon resolves: both Alertmanagers resolve it
            feeder.values["web-01"] = 5.0
            for am in (am1, am2):
                await wait_until_async(lambda am=am: not cpu_alerts(am), 20,
                                       "the alert resolved in both Alertmanagers")
            resolved = [a for a in am1.alerts(active_only=False)
                        if a["labels"].get("alertname") == "cpu-high"]
            assert resolved == [] or resolved[0]["status"]["state"] != "active"
            assert 'edgemon_alertmanager_errors_total{alertmanager="am2",reason="network"}' \
                in metrics_text(service)

    try:
        asyncio.run(main())
    finally:
        am1.terminate()
        am2.terminate()


def resolved(webhook: Webhook, host: str) -> list[dict[str, Any]]:
    """The resolved alerts of ``host`` in the notifications the Alertmanager sent."""
    return [a for a in webhook.alerts()
            if a["status"] == "resolved" and a["labels"].get("host") == host]


def test_resolution_ends_at_the_resolve_time(tmp_path: Path) -> None:
    """A resolution is sent with endsAt = when edgemon resolved it (not when it was sent):
    the Alertmanager's own resolved notification carries it."""
    webhook = Webhook().start()
    am = Alertmanager(tmp_path / "am", webhook=webhook.url).start()

    async def main() -> None:
        async with running(tmp_path, [am_config(am, "am")], {"db-01": 40.0}) as (service, feeder):
            await wait_until_async(lambda: cpu_alerts(am), 20, "the alert")
            feeder.values["db-01"] = 1.0
            await wait_until_async(lambda: not cpu_alerts(am), 20, "its resolution")
            history = service.engine.store.history(status="resolved")
            assert len(history) == 1
            every = [a for a in am.alerts(active_only=False)
                     if a["labels"].get("host") == "db-01"]
            ends = {a["endsAt"] for a in every}
            # Alertmanager keeps it with the endsAt we sent: the resolve (sample) time
            assert len(every) <= 1 and all(
                e.startswith(_iso_second(history[0].ends_at)) for e in ends)
            await wait_until_async(lambda: resolved(webhook, "db-01"), 20,
                                   "the Alertmanager's resolved notification")
            [first] = resolved(webhook, "db-01")[:1]
            ends_at = datetime.fromisoformat(first["endsAt"])  # Go: ns, zeros dropped
            assert round(ends_at.timestamp() * 1000) == history[0].ends_at

    try:
        asyncio.run(main())
    finally:
        am.terminate()
        webhook.stop()


def _iso_second(ms: int | None) -> str:
    assert ms is not None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000))


def test_alertmanager_config_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text('[alerting]\nexternal_url = "https://edgemon.example/"\n\n'
                    '[[alerting.alertmanagers]]\nurl = "http://am-a:9093"\n\n'
                    '[[alerting.alertmanagers]]\nurl = "http://am-b:9093"\nusername = "edgemon"\n'
                    'password = "pw"\n')
    cfg = load_config(path, environ={})
    assert [a.display_name for a in cfg.alerting.alertmanagers] == ["am-a:9093", "am-b:9093"]
    assert cfg.external_url() == "https://edgemon.example"
    path.write_text('[[alerting.alertmanagers]]\nurl = "http://am-a:9093"\n\n'
                    '[[alerting.alertmanagers]]\nurl = "ftp://am-b"\n')
    with pytest.raises(ConfigError, match=r"collector.toml:5: alerting.alertmanagers.1.url"):
        load_config(path, environ={})
    path.write_text('[[alerting.alertmanagers]]\nurl = "http://am"\nbearer_token = "t"\n'
                    'username = "u"\n')
    with pytest.raises(ConfigError, match="choose one"):
        load_config(path, environ={})
    assert load_config(None, environ={}).external_url() == "http://127.0.0.1:9400"


def test_check_config_shows_the_derived_external_url(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Receivers configured, no ``external_url``: ``check-config`` shows the one links will
    use (from [http]) and says it was derived; the receivers' secrets are masked."""
    from edgemon.collector.cli import main

    path = tmp_path / "collector.toml"
    receivers = ('[[alerting.alertmanagers]]\nurl = "http://am:9093"\nbearer_token = "s3cret"\n'
                 '\n[[forward]]\nurl = "http://vm:8428/api/v1/write"\nusername = "u"\n'
                 'password = "s3cret"\n')
    path.write_text('[http]\nhost = "10.1.2.3"\nport = 9444\n\n' + receivers)
    path.chmod(0o600)
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out.split("\n", 1)[1])
    assert doc["alerting"]["external_url"] == "http://10.1.2.3:9444"
    assert doc["alerting"]["external_url_derived"] is True
    assert "s3cret" not in out
    path.write_text('[alerting]\nexternal_url = "https://mon.example"\n\n' + receivers)
    assert main(["check-config", "-c", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert doc["alerting"]["external_url"] == "https://mon.example"
    assert "external_url_derived" not in doc["alerting"]


# bcrypt (cost 4: Alertmanager checks it at every request) of "edgemon-test-pw", made once with
# crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
PASSWORD, HASHED = "edgemon-test-pw", "$2b$04$itKRo1swQH0lottoRVP/Oe/xpxETCab/4JyHoPnJFBVwJ.FSsKi4i"


def test_an_alertmanager_over_tls_with_basic_auth(tmp_path: Path) -> None:
    """The Alertmanager serves HTTPS only and wants a user and password (its web config): the
    alert arrives through ``ca_file`` and the credentials; a member given a wrong password
    counts the 401 and gets nothing."""
    from tests.test_receivers import Certs

    certs = Certs(tmp_path / "ca")
    am = Alertmanager(tmp_path / "am", tls=(certs.ca, certs.crt, certs.key),
                      basic_auth=("edgemon", PASSWORD, HASHED)).start()
    assert am.url.startswith("https://")

    async def main() -> None:
        good = AlertmanagerConfig(url=am.url, name="good", timeout_seconds=2,
                                  ca_file=certs.ca, username="edgemon", password=PASSWORD)
        wrong = AlertmanagerConfig(url=am.url, name="wrong", timeout_seconds=2,
                                   ca_file=certs.ca, username="edgemon", password="nope")
        async with running(tmp_path, [good, wrong], {"tls-01": 40.0}) as (service, _):
            await wait_until_async(lambda: cpu_alerts(am), 20, "the alert over TLS")
            assert [a["labels"]["host"] for a in cpu_alerts(am)] == ["tls-01"]
            await wait_until_async(
                lambda: 'edgemon_alertmanager_errors_total{alertmanager="wrong",reason="401"}'
                in metrics_text(service), 20, "the wrong password's 401 counted")
            good_errors = [line for line in metrics_text(service).splitlines()
                           if line.startswith('edgemon_alertmanager_errors_total'
                                              '{alertmanager="good"')]
            assert good_errors and all(line.endswith(" 0.0") for line in good_errors)

    try:
        asyncio.run(main())
    finally:
        am.terminate()


def test_a_collector_that_lost_the_lead_tells_alertmanager_nothing(tmp_path: Path) -> None:
    """Only the leader sends to Alertmanager: after the lease is lost, a due resend is not
    posted (the new leader's notifier sends it)."""
    am = Alertmanager(tmp_path / "am").start()
    leading = {"now": True}

    async def main() -> None:
        async with running(tmp_path, [am_config(am, "am")], {"db-01": 40.0},
                           should_run=lambda: leading["now"]) as (service, _):
            notifier = service.alertmanagers
            assert notifier is not None
            await wait_until_async(lambda: cpu_alerts(am), 20, "the alert, sent while leading")
            [target] = notifier.targets
            leading["now"] = False
            target.sent.clear()  # everything is due again
            await notifier.send_due(target)
            assert target.sent == {}, "a follower posted to Alertmanager"
            leading["now"] = True
            await notifier.send_due(target)
            assert target.sent, "the leader did not post the due alert"

    try:
        asyncio.run(main())
    finally:
        am.terminate()
