"""Real Prometheus clients against a real collector process: promtool (query instant, range,
series, labels) and a real Prometheus scraping the collector's /federate and /metrics.

promtool has no authentication flag for instant queries, so the collector runs in its
documented local-only mode: ``[http] auth = "none"`` bound to 127.0.0.1 (collector/PROMETHEUS.md);
``promtool query range --header`` carries a read token against a token-mode collector.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from edgemon.collector.storage import open_storage
from tests.support import promdata
from tests.support.broker import Broker
from tests.support.processes import Collector
from tests.support.prometheus import PROMTOOL, Prometheus, available
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="Debian's prometheus package missing "
                                                         "(packaging/dev-env.sh installs it)")]

MINUTE = 60_000


class Fleet:
    def __init__(self, collector: Collector, end_ms: int) -> None:
        self.collector = collector
        self.end_ms = end_ms
        self.url = f"http://127.0.0.1:{collector.http_port}"

    def api(self, path: str, **params: Any) -> Any:
        return self.collector.get(f"/api/v1/{path}?{urlencode(params, doseq=True)}")["data"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("clients")
    broker = Broker(work / "broker").start()
    collector = Collector(work / "collector", broker, extra='auth = "none"')
    end = int(time.time() * 1000)  # the data reach "now": federation reads the last 5 minutes
    store = open_storage(collector.db)
    promdata.fill(store, end - 2 * 3_600_000, end, hosts=promdata.HOSTS[:3])
    store.close()
    collector.start()
    try:
        yield Fleet(collector, end)
    finally:
        collector.terminate()
        broker.kill()


def promtool(*args: str) -> str:
    result = subprocess.run([PROMTOOL, "query", *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"promtool {args}: {result.stdout}{result.stderr}"
    return result.stdout


def test_promtool_instant(fleet: Fleet) -> None:
    at = (fleet.end_ms - 5 * MINUTE) / 1000
    expr = 'sort_desc(sum by (host) (rate(network_received_bytes_total[5m])))'
    out = json.loads(promtool("-o", "json", "instant", "--time", str(at), fleet.url, expr))
    assert out == fleet.api("query", query=expr, time=at)["result"]
    assert [s["metric"]["host"] for s in out] and len(out) == 3
    text = promtool("instant", "--time", str(at), fleet.url, 'load1{host="web-01"}')
    assert text.startswith('load1{host="web-01"} => ') and f"@[{int(at)}" in text


def test_promtool_range(fleet: Fleet) -> None:
    start, end = (fleet.end_ms - 60 * MINUTE) / 1000, (fleet.end_ms - MINUTE) / 1000
    expr = 'avg by (host) (cpu_usage_percent{cpu!="total"})'
    out = json.loads(promtool("-o", "json", "range", "--start", str(start), "--end", str(end),
                              "--step", "1m", fleet.url, expr))
    assert out == fleet.api("query_range", query=expr, start=start, end=end, step=60)["result"]
    assert len(out) == 3 and all(len(s["values"]) == 60 for s in out)


def test_promtool_series_and_labels(fleet: Fleet) -> None:
    out = promtool("series", "--match", 'disk_free_bytes{host="db-01"}', "--match", "load1",
                   fleet.url)
    assert out.splitlines() == [
        '{__name__="disk_free_bytes", host="db-01", mount="/"}',
        '{__name__="disk_free_bytes", host="db-01", mount="/data"}',
        '{__name__="load1", host="db-01"}', '{__name__="load1", host="web-01"}',
        '{__name__="load1", host="web-02"}']
    assert promtool("labels", fleet.url, "host").split() == ["db-01", "web-01", "web-02"]
    names = promtool("labels", fleet.url, "__name__").split()
    stored = sorted(m.name for m in promdata.METRICS)
    assert [n for n in names if not n.startswith("node_")] == stored
    assert {"node_load1", "node_network_receive_bytes_total"} <= set(names)  # aliases


DASHBOARDS = Path(__file__).resolve().parent.parent / "packaging" / "grafana"


def panel_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_every_shipped_dashboard_panel_returns_data(fleet: Fleet) -> None:
    """The Grafana dashboards' expressions, with their variables filled in the way Grafana
    does, run as the range queries Grafana sends, and each answers with data."""
    files = sorted(DASHBOARDS.glob("*.json"))
    assert [f.name for f in files] == ["edgemon-fleet.json", "edgemon-host.json"]
    hosts = fleet.api("label/host/values", **{"match[]": "load1"})  # label_values(load1, host)
    assert "web-01" in hosts
    start, end = (fleet.end_ms - 60 * MINUTE) / 1000, fleet.end_ms / 1000
    checked = 0
    for file in files:
        dashboard = json.loads(file.read_text())
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert "datasource" in variables and ("host" in variables) == (file.stem == "edgemon-host")
        for title, expr in panel_expressions(dashboard):
            query = expr.replace("$host", "web-01").replace("$__rate_interval", "2m")
            assert "$" not in query, (file.name, title, expr)
            result = fleet.api("query_range", query=query, start=start, end=end, step=60)
            assert result["resultType"] == "matrix" and result["result"], (file.name, title,
                                                                            query)
            assert all(s["values"] for s in result["result"])
            checked += 1
    assert checked >= 20


def test_promtool_with_a_read_token(tmp_path: Path) -> None:
    """A token-mode collector: promtool's range query sends the token with --header."""
    broker = Broker(tmp_path / "broker").start()
    collector = Collector(tmp_path / "collector", broker)
    end = int(time.time() * 1000)
    store = open_storage(collector.db)
    promdata.fill(store, end - 30 * MINUTE, end, hosts=promdata.HOSTS[:1])
    store.close()
    collector.start()
    try:
        read = collector.create_token("promtool", "read")
        url = f"http://127.0.0.1:{collector.http_port}"
        args = ["-o", "json", "range", "--start", str((end - 20 * MINUTE) / 1000), "--end",
                str(end / 1000), "--step", "5m"]
        refused = subprocess.run([PROMTOOL, "query", *args, url, "load1"], capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr
        out = json.loads(promtool(*args, "--header", f"Authorization: Bearer {read}", url,
                                  "load1"))
        assert [s["metric"] for s in out] == [{"__name__": "load1", "host": "web-01"}]
    finally:
        collector.terminate()
        broker.kill()


def test_prometheus_scrapes_federate_and_metrics(fleet: Fleet, tmp_path: Path) -> None:
    target = f"127.0.0.1:{fleet.collector.http_port}"
    config = f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: edgemon-federate
    metrics_path: /federate
    params:
      'match[]': ['{{__name__=~"load1|memory_.*"}}', 'network_received_bytes_total']
    static_configs: [{{targets: ['{target}']}}]
  - job_name: edgemon-metrics
    static_configs: [{{targets: ['{target}']}}]
"""
    with Prometheus(tmp_path / "prometheus", config=config) as prom:
        def both_up() -> bool:
            result = prom.api("query", query="up == 1")["data"]["result"]
            return {s["metric"]["job"] for s in result} == {"edgemon-federate",
                                                             "edgemon-metrics"}

        wait_until(both_up, 60, "both edgemon scrape jobs up == 1")
        wait_until(lambda: prom.api("query", query='load1{job="edgemon-federate"}')["data"]
                   ["result"], 30, "federated load1 in Prometheus")
        federated = prom.api("query", query='count by (__name__) ({job="edgemon-federate", '
                                            '__name__!~"up|scrape_.*"})')["data"]["result"]
        assert {s["metric"]["__name__"]: s["value"][1] for s in federated} == {
            "load1": "3", "memory_available_bytes": "3", "memory_total_bytes": "3",
            "network_received_bytes_total": "6"}
        hosts = prom.api("label/host/values", **{"match[]": 'load1{job="edgemon-federate"}'})
        assert hosts["data"] == ["db-01", "web-01", "web-02"]  # host survives federation
        metrics = prom.api("query", query='scrape_samples_scraped{job="edgemon-metrics"}')
        assert float(metrics["data"]["result"][0]["value"][1]) > 10
        targets = prom.api("targets")["data"]["activeTargets"]
        assert all(t["health"] == "up" and t["lastError"] == "" for t in targets), targets
