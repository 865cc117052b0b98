"""The dashboard in a real headless Chromium, against a real broker, collector and agents.

One stack for the module (about a minute in all): Mosquitto, a collector with alert rules whose
thresholds are lowered to fire at once and a webhook receiver, three agents sampling every
half second, and a hand-made host whose label values are hostile. With EDGEMON_SCREENSHOTS=DIR
the pages' screenshots are written there (README's come from docs/screenshots/).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgemon.protocol import (
    GAUGE,
    BatchBuilder,
    MetricDef,
    encode,
    encode_status,
    metrics_topic,
    status_topic,
    to_scaled,
)
from tests.support import browser as chromium
from tests.support.broker import Broker
from tests.support.processes import Agent, Collector
from tests.support.waiting import wait_until
from tests.support.webhook import Webhook

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium.available() is not None,
                                 reason=str(chromium.available()))]

HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>window.__pwned=1</script>"
NO_VALUE = "\u2013"  # what a cell shows without a value
LONG_NAME = "m" + "_very_long" * 12 + "_name"  # 126 characters, no space to break at
FAMILIES = ("cpu", "load", "memory", "disk", "network", "system", "agent")
RULES = """[settings]
interval = "1s"
settle = "0s"
group_wait = "0s"
retry_initial = "1s"

[[receiver]]
name = "hook"
url = "{url}"

[[rule]]
name = "memory-above-zero"
kind = "threshold"
metric = "memory_usage_percent"
window = "1s"
op = ">"
threshold = 0.0
annotations = {{ summary = "memory on {{host}} at {{value:.1f}} % (threshold lowered to 0)" }}

[[rule]]
name = "disk-above-zero"
kind = "threshold"
metric = "disk_usage_percent"
window = "1s"
op = ">"
threshold = 0.0

[[rule]]
name = "host-down"
kind = "host_down"
no_data_for = "10m"
"""


class Stack:
    def __init__(self, root: Path) -> None:
        self.webhook = Webhook().start()
        self.broker = Broker(root / "broker").start()
        rules = self.rules = root / "rules.toml"
        rules.write_text(RULES.format(url=self.webhook.url))
        self.collector = Collector(root / "collector", self.broker,
                                   extra=f'\n[alerting]\nrules_path = "{rules}"\n').start()
        self.base = f"http://127.0.0.1:{self.collector.http_port}"
        self.read_token = self.collector.create_token("viewer", "read")
        self.agents = {name: Agent(root / name, self.broker, host_id=name, interval=0.5,
                                   batch_cycles=1).start()
                       for name in ("dash-host", "dash-quiet", "dash-loud")}
        self.publish_hostile_host()

    def publish_hostile_host(self, seq: int = 0) -> None:
        """A host (not an agent) whose label values are markup and prototype names; batch
        ``seq`` holds the three seconds before now."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        disk = MetricDef("disk_usage_percent", GAUGE, "percent", 2, ("mount", "device", "fstype"))
        # ``__*`` label keys and control characters never get past ingest (reserved, not
        # printable); these are the hazards left
        weird = MetricDef("weird_metric", GAUGE, "", 0, ("constructor", "prototype", "label"))
        long = MetricDef(LONG_NAME, GAUGE, "", 0, ("quote",))
        now = int(time.time() * 1000)
        b = BatchBuilder()
        for i in range(3):
            b.add(now - 3000 + i * 1000, disk, (HOSTILE, "/dev/x", "ext4"), to_scaled(42.0, 2))
            b.add(now - 3000 + i * 1000, weird, (SCRIPT, "toString", HOSTILE), i)
            b.add(now - 3000 + i * 1000, long, ('"quoted" & <b>', ), i)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"evil-{uuid.uuid4().hex}")
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            status = encode_status(online=True, instance="evil1", timestamp_ms=now - 4000)
            client.publish(status_topic("evil-host"), status, qos=1,
                           retain=True).wait_for_publish(10)
            client.publish(metrics_topic("evil-host"), encode(b.build(
                host="evil-host", instance="evil1", seq=seq, sent_ms=now)), qos=1
            ).wait_for_publish(10)
        finally:
            client.loop_stop()
            client.disconnect()

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.collector.terminate()
        self.broker.kill()
        self.webhook.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("dashboard"))
    try:
        wait_until(lambda: len(s.collector.get("/edgemon/api/v1/hosts")["hosts"]) >= 4, 30,
                   "every host stored")
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[chromium.Browser]:
    with chromium.Browser() as b:
        b.sign_in(stack.base, stack.collector.token or "")
        yield b


def shoot(b: chromium.Browser, name: str, *, full_page: bool = False) -> None:
    folder = os.environ.get("EDGEMON_SCREENSHOTS")
    if folder:
        b.screenshot(Path(folder) / f"{name}.png", full_page=full_page)
        b.driver.set_window_size(1280, 800)


def fleet_row(b: chromium.Browser, host: str) -> dict[str, str] | None:
    """The row the fleet table shows for ``host`` now, or None while it has not drawn one (the
    page is ready before its first answer arrives)."""
    cells: list[str] | None = b.js(
        "const r = document.querySelector(`#rows tr[data-host='${arguments[0]}']`);"
        "return r ? [r.dataset.state, ...[...r.children].map(c => c.textContent)] : null;", host)
    if not cells:
        return None
    keys = ["state", "host", "state_text", "last_seen", "cpu", "memory", "disk", "network",
            "alerts", "backlog", "dropped", "clock"]
    return dict(zip(keys, cells, strict=True))


def attr(b: chromium.Browser, css: str, name: str) -> str | None:
    """An attribute read afresh (pages redraw: element references go stale)."""
    return b.js("const e = document.querySelector(arguments[0]);"  # type: ignore[no-any-return]
                "return e ? e.getAttribute(arguments[1]) : null;", css, name)


def click(b: chromium.Browser, css: str) -> None:
    """Click what ``css`` names now (a redrawn table or chart has new elements)."""
    assert b.js("const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;",
                css), f"nothing to click at {css}"


def text(b: chromium.Browser, css: str) -> str:
    return b.js("const e = document.querySelector(arguments[0]);"  # type: ignore[no-any-return]
                "return e ? e.innerText : '';", css)


def percent(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+) %", text.strip())
    assert match, text
    return float(match.group(1))


def javascript_errors(b: chromium.Browser) -> list[dict[str, Any]]:
    return [e for e in b.console() if e["level"] == "SEVERE" and e.get("source") != "network"]


# --- tests --------------------------------------------------------------------------------------

def test_without_a_session_every_page_goes_to_sign_in(stack: Stack) -> None:
    with chromium.Browser() as b:
        for path in ("/", "/alerts", "/hosts/dash-host?range=6h"):
            b.get(stack.base + path)
            wait_until(lambda: "/login" in b.url, 10, f"{path} to redirect")
            expected = "/login" if path == "/" else "/login?next="
            assert b.url.startswith(stack.base + expected), b.url
        status = b.js_async("const done = arguments[0];"
                            "fetch('/edgemon/api/v1/fleet').then(r => done(r.status))")
        assert status == 401
        b.wait_ready()
        shoot(b, "sign-in")
        b.find("#token").send_keys("edm_000000000000_" + "A" * 43)
        b.find("#sign-in button[type=submit]").click()
        wait_until(lambda: "unknown token" in text(b, "#message"), 10, "refusal shown")
        assert "/login" in b.url
        cookies = b.driver.get_cookies()
        assert cookies == []


def test_the_fleet_page_lists_this_host_online_with_plausible_figures(
        stack: Stack, admin: chromium.Browser) -> None:
    admin.get(stack.base + "/")
    admin.wait_ready()

    def figures_in() -> dict[str, str] | None:
        row = fleet_row(admin, "dash-host")
        if row is None or NO_VALUE in (row["cpu"], row["memory"]):
            admin.find("#clear").click()  # refresh now rather than wait for the next tick
            return None
        return row

    row = wait_until(figures_in, 20, "CPU and memory of dash-host")
    assert row["state"] == "online" and row["host"] == "dash-host"
    assert 0 <= percent(row["cpu"]) <= 100
    assert abs(percent(row["memory"]) - psutil.virtual_memory().percent) < 15
    assert row["last_seen"] in ("just now", "2 s ago", "3 s ago") or "s ago" in row["last_seen"]
    online = text(admin, ".count-online .count-n")
    assert int(online.replace(",", "")) >= 3
    shoot(admin, "fleet")
    # sort by CPU, then filter by name: the server answers, the URL remembers
    from selenium.webdriver.common.keys import Keys

    admin.find("#head th:nth-child(4) button").send_keys(Keys.ENTER)  # the keyboard is enough
    wait_until(lambda: attr(admin, "#head th:nth-child(4)", "aria-sort") == "descending", 10,
               "sorted by CPU")
    assert admin.js("return document.activeElement.closest('th').dataset.column") == \
        "cpu_percent"  # focus stays where it was
    admin.find("#q").send_keys("dash-h")
    wait_until(lambda: admin.js("return [...document.querySelectorAll('#rows tr')]"
                                ".map(r => r.dataset.host).join()") == "dash-host", 10,
               "filtered to dash-host")
    assert "q=dash-h" in admin.url and "sort=cpu_percent" in admin.url
    with chromium.Browser(390, 844, mobile=True, profile=None) as phone:
        phone.sign_in(stack.base, stack.collector.token or "")
        phone.wait_ready()
        width = phone.js("return document.documentElement.scrollWidth")
        assert width <= 400  # the table scrolls inside its box; the page does not
        shoot(phone, "fleet-phone")


def test_the_host_page_draws_every_family_and_updates_live(
        stack: Stack, admin: chromium.Browser) -> None:
    admin.get(stack.base + "/hosts/dash-host?range=15m")
    admin.wait_ready()
    for family in FAMILIES:
        drawn = admin.js("return [...document.querySelectorAll(arguments[0])]"
                         ".filter(f => Number(f.dataset.points) > 0).map(f => f.dataset.chart)",
                         f"#family-{family} figure.chart")
        assert drawn, f"no {family} chart with data"
        assert coloured_pixels(admin, drawn[0]) > 20, f"{family}: the line is not drawn"
    cpu = "figure[data-metric='cpu_usage_percent']"
    assert "total" in text(admin, cpu) and "%" in text(admin, cpu)
    admin.js("window.__sameDocument = 42")
    first = int(attr(admin, cpu, "data-newest") or 0)
    wait_until(lambda: int(attr(admin, cpu, "data-newest") or 0) > first, 20,
               "a newer sample drawn without reload")
    assert admin.js("return window.__sameDocument") == 42
    age = text(admin, "#newest-age")
    assert age == "just now" or re.fullmatch(r"\d+ s ago", age), age
    assert text(admin, "#live-mark") == "live"
    shoot(admin, "host")
    # per-core series can be picked; the legend says the unit on hover
    click(admin, f"{cpu} summary")
    click(admin, f"{cpu} .picks input")
    assert "2 of" in text(admin, f"{cpu} summary")
    admin.find("button.range[data-range='24h']").click()
    wait_until(lambda: "range=24h" in admin.url and admin.js(
        "return document.getElementById('charts').getAttribute('aria-busy')") == "false",
        20, "24 h drawn")
    assert "1-minute rollups" in text(admin, "#tier") or "raw" in text(admin, "#tier")
    assert javascript_errors(admin) == []


def coloured_pixels(b: chromium.Browser, chart: str) -> int:
    """Pixels of the first shown series' colour on the canvas of the chart with this id."""
    return int(b.js("""
        const fig = [...document.querySelectorAll('figure.chart')]
          .find(f => f.dataset.chart === arguments[0]);
        const marker = fig.querySelector('.u-series:not(.u-off) .u-marker');
        const want = getComputedStyle(marker).borderColor.match(/\\d+/g).map(Number);
        const canvas = fig.querySelector('canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 128 && Math.abs(data[i] - want[0]) < 40 &&
              Math.abs(data[i + 1] - want[1]) < 40 && Math.abs(data[i + 2] - want[2]) < 40) n++;
        }
        return n;""", chart))


def test_hostile_label_values_are_shown_as_text_and_run_nothing(
        stack: Stack, admin: chromium.Browser) -> None:
    admin.get(stack.base + "/hosts/evil-host?range=15m")
    admin.wait_ready()
    text = admin.js("return document.body.innerText")
    assert HOSTILE in text and "constructor=" + SCRIPT in text
    assert LONG_NAME in text and 'quote="quoted" & <b>' in text
    assert admin.js("return document.documentElement.scrollWidth <= window.innerWidth")
    assert admin.js("return document.querySelectorAll('img, script:not([src])').length") == 0
    assert admin.js("return window.__pwned === undefined && ({}).toString !== 'toString'")
    assert int(attr(admin, "figure[data-metric='disk_usage_percent']", "data-points") or 0) > 0
    admin.get(stack.base + "/alerts")
    admin.wait_ready()
    sent = {"seq": 0, "at": time.monotonic()}

    def hostile_alert_shown() -> bool:
        if HOSTILE in admin.js("return document.getElementById('active').innerText"):
            return True
        # the rules settle for 0 s: a batch stored after the evaluation passed its samples'
        # time (a slow start) is never evaluated; newer samples now and then until it fires
        if time.monotonic() - sent["at"] > 3:
            sent["seq"] += 1
            sent["at"] = time.monotonic()
            stack.publish_hostile_host(sent["seq"])
        return False

    wait_until(hostile_alert_shown, 30, "the hostile label in the alerts table")
    assert admin.js("return document.querySelectorAll('img').length") == 0
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException, match="no such alert"):
        admin.driver.switch_to.alert.text  # noqa: B018 - raises when no dialog ran
    assert javascript_errors(admin) == []


def test_a_read_token_sees_everything_but_cannot_create_a_silence(stack: Stack) -> None:
    before = len(stack.collector.get("/edgemon/api/v1/silences")["silences"])
    with chromium.Browser() as b:
        b.sign_in(stack.base, stack.read_token)
        b.get(stack.base + "/alerts")
        b.wait_ready()
        assert b.find("#create-silence").get_attribute("disabled") is not None
        assert b.find("#silence-note").is_displayed()
        assert b.find("#reload-rules").get_attribute("disabled") is not None
        assert b.find("#reload-note").is_displayed()
        status = b.js_async("const done = arguments[0];"
                            "fetch('/edgemon/api/v1/rules/reload', {method: 'POST'})"
                            ".then(r => done(r.status))")
        assert status == 403
        status = b.js_async("""const done = arguments[0];
            fetch('/edgemon/api/v1/silences', {method: 'POST', headers:
              {'Content-Type': 'application/json'}, body: JSON.stringify({matchers:
              [{name: 'host', value: 'dash-host'}], duration: '1h'})})
              .then(r => r.json().then(j => done([r.status, j.error])))""")
        assert status[0] == 403 and "needs an admin token" in status[1]
        b.get(stack.base + "/")
        b.wait_ready()
        b.find("#sign-out").click()
        wait_until(lambda: "/login" in b.url, 10, "signed out")
        b.get(stack.base + "/alerts")
        wait_until(lambda: "/login" in b.url, 10, "signed out for good")
    assert len(stack.collector.get("/edgemon/api/v1/silences")["silences"]) == before


def test_an_alert_fires_on_the_page_and_a_silence_made_there_stops_its_notification(
        stack: Stack, admin: chromium.Browser) -> None:
    admin.get(stack.base + "/alerts")
    admin.wait_ready()
    wait_until(lambda: admin.find_all(
        "#active-rows tr[data-rule='memory-above-zero'][data-host='dash-host']"
        "[data-status='firing']"), 30, "memory-above-zero firing for dash-host on the page")
    assert "threshold lowered to 0" in text(admin, "#active")
    wait_until(lambda: any(a["labels"].get("alertname") == "memory-above-zero"
                           for a in stack.webhook.alerts()), 20, "the firing notification")
    # silence host-down for dash-quiet, in the page's form
    name = admin.find("#matchers .matcher .m-name")
    name.clear()
    name.send_keys("alertname")
    admin.find("#matchers .matcher .m-value").send_keys("host-down")
    admin.find("#add-matcher").click()
    rows = admin.find_all("#matchers .matcher")
    rows[1].find_element("css selector", ".m-name").send_keys("host")
    rows[1].find_element("css selector", ".m-value").send_keys("dash-quiet")
    admin.find("#comment").send_keys("planned maintenance")
    admin.find("#create-silence").click()
    wait_until(lambda: "created" in text(admin, "#status"), 10, "silence created")
    wait_until(lambda: "host=dash-quiet" in text(admin, "#silence-rows tr[data-state='active']"),
               10, "the silence listed")
    assert "alertname=host-down" in text(admin, "#silence-rows tr[data-state='active']")
    shoot(admin, "alerts", full_page=True)
    # both hosts go down: the silenced one is recorded, the other one is notified
    stack.agents["dash-quiet"].terminate()
    history = "/edgemon/api/v1/alerts/history?rule=host-down&status=firing"
    wait_until(lambda: any(h["host"] == "dash-quiet" for h in
                           stack.collector.get(history)["history"]), 20, "dash-quiet down")
    stack.agents["dash-loud"].terminate()
    wait_until(lambda: any(a["labels"] == {**a["labels"], "alertname": "host-down",
                                           "host": "dash-loud"}
                           for a in stack.webhook.alerts()), 30, "dash-loud's notification")
    quiet = [h for h in stack.collector.get(history)["history"] if h["host"] == "dash-quiet"]
    assert quiet and all(h["silenced"] and not h["notified"] for h in quiet)
    assert not [a for a in stack.webhook.alerts() if a["labels"].get("host") == "dash-quiet"
                and a["labels"].get("alertname") == "host-down"]
    wait_until(lambda: "dash-quiet" in text(admin, "#history"), 20, "history on the page")
    assert json.dumps(stack.webhook.alerts()).count("dash-loud") >= 1
    # and an admin can end it early
    click(admin, "#silence-rows tr[data-state='active'] button")
    wait_until(lambda: "expired" in text(admin, "#status"), 10, "silence expired")
    assert not [s for s in stack.collector.get("/edgemon/api/v1/silences")["silences"]
                if s["state"] == "active"]


def test_an_admin_reloads_the_rules_on_the_page_and_a_bad_file_keeps_the_old_ones(
        stack: Stack, admin: chromium.Browser) -> None:
    def rule_names() -> list[str]:
        return [r["name"] for r in stack.collector.get("/edgemon/api/v1/rules")["rules"]]

    before = rule_names()
    good = RULES.format(url=stack.webhook.url)
    admin.get(stack.base + "/alerts")
    admin.wait_ready()
    stack.rules.write_text(good + '\n[[rule]]\nname = "half-written"\nkind = "threshold"\n')
    admin.find("#reload-rules").click()
    wait_until(lambda: "not reloaded" in text(admin, "#status"), 10, "the refusal on the page")
    assert str(stack.rules) in text(admin, "#status")  # the file's own complaint, with its line
    assert rule_names() == before
    stack.rules.write_text(good + '\n[[rule]]\nname = "memory-above-everything"\n'
                           'kind = "threshold"\nmetric = "memory_usage_percent"\n'
                           'window = "1s"\nop = ">"\nthreshold = 1000.0\n')
    admin.find("#reload-rules").click()
    wait_until(lambda: "Rules reloaded" in text(admin, "#status"), 10, "the reload on the page")
    assert f"{len(before) + 1} rules" in text(admin, "#status")
    assert rule_names() == [*before, "memory-above-everything"]
    assert javascript_errors(admin) == []
