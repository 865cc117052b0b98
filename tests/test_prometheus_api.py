"""Prometheus's HTTP API on the collector: request and response shapes, status codes, the error
format, recorded Grafana request shapes (form POSTs), read tokens, rules and alerts.

In-process through aiohttp's test client with the collector's security middlewares; the real
clients (promtool, Prometheus) are in test_prometheus_clients.py and
test_promql_conformance.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.alerting.engine import AlertEngine
from edgemon.collector.alerting.rules import parse_rules
from edgemon.collector.config import HttpConfig
from edgemon.collector.http import auth
from edgemon.collector.http.api import create_app
from edgemon.collector.http.auth import security_middlewares
from edgemon.collector.http.prometheus_api import READ_POST_PATHS, routes
from edgemon.collector.http.tokens import TokenStore, create_token
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import Storage
from tests.support import promdata

HOUR = 3_600_000
END = 1_780_012_800_000
START = END - 2 * HOUR
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

RULES = """
[[rule]]
name = "load-high"
kind = "threshold"
metric = "load1"
window = "1m"
op = ">"
threshold = 0.0
hosts = ["web-*"]
annotations = { summary = "load on {host}" }

[[rule]]
name = "down"
kind = "host_down"
"""


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    store = open_storage(tmp_path_factory.mktemp("promapi") / "edgemon.db")
    promdata.fill(store, START, END, hosts=promdata.HOSTS[:3])
    return store


class Api:
    def __init__(self, tmp_path: Path, storage: Storage, *, alerting: AlertEngine | None = None,
                 auth_mode: str = "token") -> None:
        self.tokens = tmp_path / "tokens.json"
        self.read = create_token(self.tokens, "grafana", "read")[1]
        self.store = TokenStore(self.tokens)
        self.store.load()
        http = HttpConfig(auth=auth_mode)
        self.app = create_app(storage, extra_routes=routes(storage, alerting=alerting,
                                                           clock_ms=lambda: END),
                              middlewares=security_middlewares(http, self.store))

    def run(self, test: Callable[[TestClient], Awaitable[None]]) -> None:
        async def main() -> None:
            async with TestClient(TestServer(self.app)) as client:
                await test(client)

        asyncio.run(main())

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read}", **(extra or {})}


async def answer(resp: Any) -> tuple[int, Any]:
    text = await resp.text()
    assert resp.content_type == "application/json", text
    return resp.status, json.loads(text)


def test_read_tokens_may_post_exactly_the_read_only_paths() -> None:
    assert auth.READ_POST_PATHS == READ_POST_PATHS
    for path in READ_POST_PATHS:
        assert auth.required_role("POST", path, public_metrics=False) == "read"
    for path in ("/api/v1/rules", "/api/v1/admin/tsdb/delete_series",
                 "/edgemon/api/v1/silences", "/api/v1/query/x"):
        assert auth.required_role("POST", path, public_metrics=False) == "admin"


def test_grafana_request_shapes(tmp_path: Path, storage: Storage) -> None:
    """What Grafana 10's Prometheus data source sends (recorded), with a read token."""
    api = Api(tmp_path, storage)
    start_s, end_s = (END - HOUR) // 1000, END // 1000

    async def test(client: TestClient) -> None:
        grafana = api.headers({**FORM, "X-Grafana-Org-Id": "1",
                               "User-Agent": "Grafana/10.2.3"})
        body = urlencode({"query": 'sum by (host) (rate(network_received_bytes_total'
                                   '{host=~"web-.*"}[2m]))',
                          "start": str(start_s), "end": str(end_s), "step": "30"})
        status, doc = await answer(await client.post("/api/v1/query_range", data=body,
                                                     headers=grafana))
        assert status == 200, doc
        assert doc["status"] == "success" and doc["data"]["resultType"] == "matrix"
        assert [s["metric"] for s in doc["data"]["result"]] == [{"host": "web-01"},
                                                                {"host": "web-02"}]
        values = doc["data"]["result"][0]["values"]
        assert len(values) == 121 and values[0][0] == start_s
        assert all(isinstance(v[1], str) and float(v[1]) > 0 for v in values)
        # instant query (table panels, stat panels)
        body = urlencode({"query": "count(load1)", "time": f"{end_s}.5"})
        status, doc = await answer(await client.post("/api/v1/query", data=body,
                                                     headers=grafana))
        assert status == 200, doc
        assert doc["data"] == {"resultType": "vector", "result": [
            {"metric": {}, "value": [end_s + 0.5, "3"]}]}
        # the query editor: names, labels, values, series, metadata, build info
        for path, check in [
            (f"/api/v1/label/__name__/values?start={start_s}&end={end_s}",
             lambda d: "load1" in d and d == sorted(d)),
            (f"/api/v1/labels?start={start_s}&end={end_s}",
             lambda d: d == ["__name__", "cpu", "device", "host", "iface", "instance", "job",
                             "mount", "mountpoint"]),
            ("/api/v1/label/host/values?match[]=load1", lambda d: d == ["db-01", "web-01",
                                                                         "web-02"]),
            ("/api/v1/metadata", lambda d: d["load1"] == [{"type": "gauge",
                                                           "help": "edgemon agent gauge",
                                                           "unit": ""}]),
            ("/api/v1/metadata?metric=network_received_bytes_total&limit=5",
             lambda d: list(d) == ["network_received_bytes_total"]
             and d["network_received_bytes_total"][0]["type"] == "counter"),
            ("/api/v1/status/buildinfo", lambda d: d["version"].startswith("2.")
             and d["branch"] == "edgemon"),
        ]:
            status, doc = await answer(await client.get(path, headers=api.headers()))
            assert status == 200 and doc["status"] == "success", (path, doc)
            assert check(doc["data"]), (path, doc["data"])
        body = urlencode([("match[]", 'memory_total_bytes{host="db-01"}'),
                          ("match[]", "load1{host='web-02'}"), ("start", str(start_s)),
                          ("end", str(end_s))])
        status, doc = await answer(await client.post("/api/v1/series", data=body,
                                                     headers=grafana))
        assert status == 200 and doc["data"] == [
            {"__name__": "load1", "host": "web-02"},
            {"__name__": "memory_total_bytes", "host": "db-01"}]
        body = urlencode({"query": "load1", "start": str(start_s), "end": str(end_s)})
        status, doc = await answer(await client.post("/api/v1/query_exemplars", data=body,
                                                     headers=grafana))
        assert (status, doc) == (200, {"status": "success", "data": []})

    api.run(test)


def test_get_and_post_give_the_same_answer_and_the_body_wins(tmp_path: Path,
                                                             storage: Storage) -> None:
    api = Api(tmp_path, storage)
    t = (END - 600_000) / 1000

    async def test(client: TestClient) -> None:
        q = "topk(2, memory_available_bytes)"
        got = await answer(await client.get(f"/api/v1/query?{urlencode({'query': q, 'time': t})}",
                                            headers=api.headers()))
        posted = await answer(await client.post(
            f"/api/v1/query?{urlencode({'query': 'load1', 'time': t})}",
            data=urlencode({"query": q}), headers=api.headers(FORM)))
        assert got == posted and got[0] == 200
        assert len(got[1]["data"]["result"]) == 2

    api.run(test)


@pytest.mark.parametrize(("method", "path", "params", "status", "error_type", "message"), [
    ("GET", "/api/v1/query", {"query": "load1{"}, 400, "bad_data",
     'invalid parameter "query": parse error'),
    ("GET", "/api/v1/query", {}, 400, "bad_data", "no expression found"),
    ("GET", "/api/v1/query", {"query": "load1", "time": "yesterday"}, 400, "bad_data",
     'invalid parameter "time": cannot parse'),
    ("POST", "/api/v1/query", {"query": "rate(load1[5m:1m])"}, 400, "bad_data",
     "unsupported by edgemon's PromQL engine: subquery"),
    ("GET", "/api/v1/query", {"query": "histogram_quantile(0.9, load1)"}, 400, "bad_data",
     "function histogram_quantile()"),
    ("GET", "/api/v1/query", {"query": "cpu_usage_percent / on(host) load1"}, 422,
     "execution", "many-to-one matching must be explicit"),
    ("GET", "/api/v1/query", {"query": "load1", "timeout": "soon"}, 400, "bad_data",
     'invalid parameter "timeout"'),
    ("POST", "/api/v1/query_range", {"query": "load1", "start": "1", "end": "0", "step": "1"},
     400, "bad_data", "end timestamp must not be before start time"),
    ("GET", "/api/v1/query_range", {"query": "load1", "start": "0", "end": "100000",
                                    "step": "1"}, 400, "bad_data",
     "exceeded maximum resolution of 11,000 points per timeseries"),
    ("GET", "/api/v1/query_range", {"query": "load1", "start": "0", "end": "10", "step": "0"},
     400, "bad_data", "zero or negative query resolution step"),
    ("GET", "/api/v1/query_range", {"query": "load1", "start": "0", "end": "10"}, 400,
     "bad_data", 'invalid parameter "step"'),
    ("GET", "/api/v1/query_range", {"query": "load1[5m]", "start": "0", "end": "10",
                                    "step": "1"}, 400, "bad_data",
     'invalid expression type "range vector" for range query'),
    ("GET", "/api/v1/series", {}, 400, "bad_data", "no match[] parameter provided"),
    ("GET", "/api/v1/series", {"match[]": '{host=~".*"}'}, 400, "bad_data",
     "at least one non-empty matcher"),
    ("GET", "/api/v1/label/1x/values", {}, 400, "bad_data", "invalid label name"),
    ("GET", "/api/v1/targets", {}, 404, "not_found", "not part of the Prometheus API"),
    ("POST", "/api/v1/label/host/values", {}, 403, None, "needs an admin token"),
])
def test_errors_have_prometheus_shape_and_status(tmp_path: Path, storage: Storage, method: str,
                                                  path: str, params: dict[str, str],
                                                  status: int, error_type: str | None,
                                                  message: str) -> None:
    api = Api(tmp_path, storage)

    async def test(client: TestClient) -> None:
        if method == "GET":
            resp = await client.get(f"{path}?{urlencode(params)}", headers=api.headers())
        else:
            resp = await client.post(path, data=urlencode(params), headers=api.headers(FORM))
        got, doc = await answer(resp)
        assert got == status, doc
        if error_type is None:  # refused by the token check, before Prometheus's API
            assert message in doc["error"]
            return
        assert set(doc) == {"status", "errorType", "error"}
        assert doc["status"] == "error" and doc["errorType"] == error_type
        assert message in doc["error"]

    api.run(test)


def test_unimplemented_methods_and_paths_stay_prometheus_shaped(tmp_path: Path,
                                                                storage: Storage) -> None:
    api = Api(tmp_path, storage, auth_mode="none")

    async def test(client: TestClient) -> None:
        for method, path in (("DELETE", "/api/v1/query"), ("PUT", "/api/v1/series"),
                             ("POST", "/api/v1/admin/tsdb/snapshot"),
                             ("GET", "/api/v1/status/config")):
            status, doc = await answer(await client.request(method, path))
            assert status == 404 and doc["errorType"] == "not_found", (method, path, doc)

    api.run(test)


def test_time_formats(tmp_path: Path, storage: Storage) -> None:
    api = Api(tmp_path, storage)
    t_ms = END - 600_000

    async def test(client: TestClient) -> None:
        answers = []
        for when in (f"{t_ms / 1000:.3f}", "2026-05-28T23:50:00Z", "2026-05-29T01:50:00+02:00",
                     "2026-05-28T23:50:00.000Z"):
            status, doc = await answer(await client.get(
                f"/api/v1/query?{urlencode({'query': 'vector(time())', 'time': when})}",
                headers=api.headers()))
            assert status == 200, doc
            answers.append(doc["data"]["result"][0]["value"])
        assert answers == [[t_ms / 1000, str(t_ms // 1000)]] * 4

    api.run(test)


def test_rules_and_alerts_in_prometheus_format(tmp_path: Path, storage: Storage) -> None:
    engine = AlertEngine(storage, tmp_path / "alerts.db", rules=parse_rules(RULES),
                         clock_ms=lambda: END)
    engine.run_cycle(END)
    api = Api(tmp_path, storage, alerting=engine)

    async def test(client: TestClient) -> None:
        status, doc = await answer(await client.get("/api/v1/alerts", headers=api.headers()))
        assert status == 200, doc
        alerts = doc["data"]["alerts"]
        assert sorted(a["labels"]["host"] for a in alerts) == ["web-01", "web-02"]
        first = alerts[0]
        assert set(first) == {"labels", "annotations", "state", "activeAt", "value"}
        assert first["state"] == "firing" and first["labels"]["alertname"] == "load-high"
        assert first["annotations"]["summary"].startswith("load on web-0")
        assert first["activeAt"].endswith("Z")
        assert float(first["value"]) > 0 and "e" in first["value"]  # Go's %e form
        status, doc = await answer(await client.get("/api/v1/rules", headers=api.headers()))
        (group,) = doc["data"]["groups"]
        assert group["name"] == "edgemon" and group["interval"] == 10
        by_name = {r["name"]: r for r in group["rules"]}
        load = by_name["load-high"]
        assert load["type"] == "alerting" and load["state"] == "firing"
        assert load["health"] == "ok" and len(load["alerts"]) == 2
        assert load["lastEvaluation"].startswith("20") and load["duration"] == 0
        assert load["query"] == 'avg_over_time(load1{host=~"web-.*"}[1m]) > 0'
        assert by_name["down"]["query"].startswith("edgemon:host_down(no_data_for=2m")
        status, doc = await answer(await client.get("/api/v1/rules?type=record",
                                                    headers=api.headers()))
        assert doc["data"] == {"groups": []}
        status, doc = await answer(await client.get("/api/v1/rules?type=x",
                                                    headers=api.headers()))
        assert status == 400 and doc["errorType"] == "bad_data"

    api.run(test)
    engine.close()


def test_without_alerting_rules_and_alerts_are_empty(tmp_path: Path, storage: Storage) -> None:
    api = Api(tmp_path, storage)

    async def test(client: TestClient) -> None:
        assert await answer(await client.get("/api/v1/rules", headers=api.headers())) == (
            200, {"status": "success", "data": {"groups": []}})
        assert await answer(await client.get("/api/v1/alerts", headers=api.headers())) == (
            200, {"status": "success", "data": {"alerts": []}})

    api.run(test)


def test_federate_text_format(tmp_path: Path, storage: Storage) -> None:
    api = Api(tmp_path, storage)

    async def test(client: TestClient) -> None:
        query = urlencode([("match[]", 'memory_total_bytes{host=~"web-.*"}'),
                           ("match[]", "load1{host='db-01'}")])
        resp = await client.get(f"/federate?{query}", headers=api.headers())
        text = await resp.text()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith(
            "text/plain; version=0.0.4")
        lines = text.splitlines()
        assert lines[0] == "# TYPE load1 untyped" and lines[2] == \
            "# TYPE memory_total_bytes untyped"
        assert lines[1].startswith('load1{host="db-01"} ')
        assert [x.split("{")[1].split("}")[0] for x in lines[3:]] == ['host="web-01"',
                                                                       'host="web-02"']
        value, ts = lines[3].rsplit(" ", 2)[1:]
        assert float(value) > 2**30 and END - 300_000 <= int(ts) <= END
        resp = await client.get("/federate?match[]=load1{", headers=api.headers())
        assert resp.status == 400 and "parse error" in await resp.text()
        resp = await client.get("/federate", headers=api.headers())
        assert resp.status == 200 and await resp.text() == ""

    api.run(test)
