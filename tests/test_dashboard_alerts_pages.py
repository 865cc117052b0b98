"""The alerts page with more alerts than it shows at once, in a real headless Chromium against
a real broker and collector: a site whose every host went down. The page shows the counts of
all of them, one page of rows, and walks the pages with its keyboard-usable buttons."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from edgemon.protocol import encode_status, status_topic
from tests.support import browser as chromium
from tests.support.broker import Broker
from tests.support.processes import Collector
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium.available() is not None,
                                 reason=str(chromium.available()))]

HOSTS = 230  # the page shows 100 rows: three pages, the last one partly full
PAGE = 100
DASH = "\u2013"  # between the first and last row shown
RULES = """[settings]
interval = "1s"
settle = "0s"

[[rule]]
name = "host-down"
kind = "host_down"
no_data_for = "10m"
"""


def host_name(i: int) -> str:
    return f"site-{i:04d}"


def publish_all_down(broker: Broker) -> None:
    """Every host's retained status: offline (its uplink died)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    now = int(time.time() * 1000)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"site-{uuid.uuid4().hex}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        sent = [client.publish(status_topic(host_name(i)), encode_status(
            online=False, instance=f"i{i}", timestamp_ms=now - 60_000), qos=1, retain=True)
            for i in range(HOSTS)]
        for message in sent:
            message.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    root = tmp_path_factory.mktemp("alerts-pages")
    broker = Broker(root / "broker").start()
    (root / "rules.toml").write_text(RULES)
    collector = Collector(root / "collector", broker,
                          extra=f'\n[alerting]\nrules_path = "{root / "rules.toml"}"\n').start()
    try:
        publish_all_down(broker)
        wait_until(lambda: collector.get("/edgemon/api/v1/alerts?limit=1&status=firing")
                   ["total"] == HOSTS, 60, "host-down firing for every host")
        yield collector
    finally:
        collector.terminate()
        broker.kill()


def shown(b: chromium.Browser) -> list[str]:
    return b.js("return [...document.querySelectorAll('#active-rows tr[data-host]')]"  # type: ignore[no-any-return]
                ".map(r => r.dataset.host)")


def text(b: chromium.Browser, css: str) -> str:
    return b.js("const e = document.querySelector(arguments[0]);"  # type: ignore[no-any-return]
                "return e ? e.innerText : '';", css)


def test_the_alerts_page_shows_the_total_and_walks_the_pages(collector: Collector) -> None:
    everyone = [host_name(i) for i in range(HOSTS)]
    with chromium.Browser() as b:
        b.sign_in(f"http://127.0.0.1:{collector.http_port}", collector.token or "")
        b.get(f"http://127.0.0.1:{collector.http_port}/alerts")
        b.wait_ready()
        wait_until(lambda: len(shown(b)) == PAGE, 15, "the first page of rows")
        assert shown(b) == everyone[:PAGE]
        assert text(b, "#alert-counts").split() == ["230", "firing", "0", "pending"]
        assert text(b, "#alert-rules [data-rule='host-down']") == \
            "host-down: 230 firing, 0 pending"
        assert text(b, "#active-range") == f"Showing 1{DASH}100 of 230"
        assert b.find("#active-prev").get_attribute("disabled") is not None

        seen = list(shown(b))
        from selenium.webdriver.common.keys import Keys
        for first, last in ((101, 200), (201, 230)):
            b.find("#active-next").send_keys(Keys.ENTER)  # a button: the keyboard works it
            wait_until(lambda first=first: text(b, "#active-range").startswith(
                f"Showing {first}{DASH}"), 15, f"the page from {first}")
            assert text(b, "#active-range") == f"Showing {first}{DASH}{last} of 230"
            seen += shown(b)
        assert seen == everyone  # every alert once, in order
        assert b.find("#active-next").get_attribute("disabled") is not None

        b.find("#active-prev").send_keys(Keys.ENTER)
        wait_until(lambda: text(b, "#active-range") == f"Showing 101{DASH}200 of 230", 15,
                   "back a page")
        assert shown(b) == everyone[PAGE:2 * PAGE]

        b.find("#host-filter").send_keys(host_name(150), Keys.ENTER)
        wait_until(lambda: shown(b) == [host_name(150)], 15, "only the host filtered on")
        assert text(b, "#active-range") == f"Showing 1{DASH}1 of 1"
        assert text(b, "#alert-counts").split() == ["1", "firing", "0", "pending"]
        assert b.find("#active-next").get_attribute("disabled") is not None
        assert b.find("#active-prev").get_attribute("disabled") is not None
        assert not [e for e in b.console()
                    if e["level"] == "SEVERE" and e.get("source") != "network"]
