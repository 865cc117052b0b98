"""The alerting HTTP endpoints (a real aiohttp server on loopback via the aiohttp test client)
and their OpenAPI description."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.alerting import (
    OPENAPI_PATHS,
    OPENAPI_SCHEMAS,
    AlertEngine,
    merge_openapi,
    routes,
)
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.http.alerts_api import alert_history
from edgemon.collector.http.responses import errors_middleware

T0 = 1_800_000_000_000
RULES = """[settings]
settle = "0s"

[[rule]]
name = "host-down"
kind = "host_down"
no_data_for = "1h"

[[rule]]
name = "cpu-high"
kind = "threshold"
metric = "cpu_usage_percent"
threshold = 80
"""


class Clock:
    ms = T0

    def __call__(self) -> int:
        return self.ms


def with_client(tmp_path: Path, test: Callable[[TestClient, AlertEngine, InMemoryGridStorage, Path],
                                                Awaitable[None]], rules: str = RULES) -> None:
    async def main() -> None:
        Clock.ms = T0
        path = tmp_path / "rules.toml"
        path.write_text(rules)
        store = InMemoryGridStorage()
        engine = AlertEngine(store, tmp_path / "a.db", rules_path=path, clock_ms=Clock())
        app = web.Application(middlewares=[errors_middleware])
        app.add_routes(routes(engine))
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            await test(client, engine, store, path)
        finally:
            await client.close()
            engine.close()

    asyncio.run(main())


async def get(client: TestClient, url: str, status: int = 200) -> Any:
    resp = await client.get(url)
    assert resp.status == status, await resp.text()
    return await resp.json()


def test_alerts_and_history(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        assert await get(client, "/edgemon/api/v1/alerts") == {"alerts": []}
        store.set_status("h1", False, T0 - 1000)
        store.set_status("h2", False, T0 - 1000)
        engine.run_cycle()
        store.set_status("h2", True, T0 + 1000)
        store.set_last_seen("h2", T0 + 1000)
        Clock.ms = T0 + 10_000
        engine.run_cycle()
        alerts = (await get(client, "/edgemon/api/v1/alerts"))["alerts"]
        assert [(a["host"], a["status"], a["rule"]) for a in alerts] == \
            [("h1", "firing", "host-down")]
        assert alerts[0]["fired_at"] == "2027-01-15T08:00:00.000Z"
        assert (await get(client, "/edgemon/api/v1/alerts?host=h2"))["alerts"] == []
        hist = (await get(client, "/edgemon/api/v1/alerts/history"))["history"]
        assert [(h["host"], h["status"]) for h in hist] == [("h2", "resolved"), ("h2", "firing"),
                                                            ("h1", "firing")]
        one = await get(client, "/edgemon/api/v1/alerts/history?host=h2&status=resolved")
        assert [h["status"] for h in one["history"]] == ["resolved"]
        since = await get(client, f"/edgemon/api/v1/alerts/history?since={T0 + 5_000}")
        assert [h["host"] for h in since["history"]] == ["h2"]
        until = await get(client, "/edgemon/api/v1/alerts/history?until=2027-01-15T08:00:05Z&rule="
                                  "host-down&limit=1")
        assert len(until["history"]) == 1 and until["history"][0]["at_ms"] == T0
        rel = await get(client, "/edgemon/api/v1/alerts/history?since=now-5s")
        assert [h["host"] for h in rel["history"]] == ["h2"]
        for bad, word in (("status=dead", "'status'"), ("since=yesterday", "'since'"),
                          ("limit=0", "'limit'"), ("colour=red", "unknown parameter 'colour'"),
                          (f"since={T0}&until={T0}", "'until' must be after"),
                          ("until=2027-01-15T08:00:05", "no time zone")):
            body = await get(client, f"/edgemon/api/v1/alerts/history?{bad}", 400)
            assert word in body["error"], body
        bad = await get(client, "/edgemon/api/v1/alerts?status=resolved", 400)
        assert "'status'" in bad["error"]

    with_client(tmp_path, test)


def test_rules_and_reload(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, _store: InMemoryGridStorage,
                   path: Path) -> None:
        body = await get(client, "/edgemon/api/v1/rules")
        assert [r["name"] for r in body["rules"]] == ["host-down", "cpu-high"]
        assert body["rules"][1]["for"] == 0 and body["rules"][1]["threshold"] == 80.0
        assert body["rules"][0]["health"]["error"] is None
        assert body["settings"]["group_wait"] == 10_000
        path.write_text(RULES.replace("threshold = 80", "threshold = 'x'"))
        resp = await client.post("/edgemon/api/v1/rules/reload")
        assert resp.status == 400
        bad = await resp.json()
        assert bad["errors"] == [f"{path}:13: rule 'cpu-high': key 'threshold': Input should "
                                 "be a valid number, unable to parse string as a number"]
        assert len(engine.ruleset.rules) == 2
        path.write_text(RULES.replace("threshold = 80", "threshold = 90"))
        resp = await client.post("/edgemon/api/v1/rules/reload")
        assert resp.status == 200 and (await resp.json())["rules"] == 2
        body = await get(client, "/edgemon/api/v1/rules")
        assert body["rules"][1]["threshold"] == 90.0

    with_client(tmp_path, test)


def test_silences(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        resp = await client.post("/edgemon/api/v1/silences", json={
            "matchers": [{"name": "host", "value": "h1"}], "duration": "2h",
            "createdBy": "ops", "comment": "maintenance"})
        assert resp.status == 201, await resp.text()
        sid = (await resp.json())["id"]
        listed = (await get(client, "/edgemon/api/v1/silences"))["silences"]
        assert [(s["id"], s["state"], s["ends_ms"]) for s in listed] == \
            [(sid, "active", T0 + 7_200_000)]
        store.set_status("h1", False, T0)
        engine.run_cycle()
        assert (await get(client, "/edgemon/api/v1/alerts"))["alerts"][0]["silenced_by"] == sid
        assert alert_history(engine)[0]["silenced"] is True
        for body, word in (
                ({"matchers": [], "duration": "1h"}, "matchers"),
                ({"matchers": [{"name": "host", "value": "(", "isRegex": True}],
                  "duration": "1h"}, "bad regular expression"),
                ({"matchers": [{"name": "host", "value": "h1"}]}, "exactly one of"),
                ({"matchers": [{"name": "host", "value": "h1"}], "duration": "soon"},
                 "duration"),
                ({"matchers": [{"name": "host", "value": "h1"}], "endsAt": T0 - 1},
                 "in the future"),
                ({"matchers": [{"name": "bad name", "value": "h1"}], "duration": "1h"},
                 "matchers.0.name"),
                ({"matchers": [{"name": "host", "value": "h1"}], "duration": "1h", "x": 1},
                 "x: Extra inputs")):
            resp = await client.post("/edgemon/api/v1/silences", json=body)
            assert resp.status == 400
            assert word in (await resp.json())["error"], body
        resp = await client.post("/edgemon/api/v1/silences", data=b"{nope")
        assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]
        resp = await client.delete(f"/edgemon/api/v1/silences/{sid}")
        assert resp.status == 200
        assert (await get(client, "/edgemon/api/v1/silences"))["silences"] == []
        assert (await get(client, "/edgemon/api/v1/silences?all=true"))["silences"][0]["state"] == \
            "expired"
        assert (await client.delete(f"/edgemon/api/v1/silences/{'0' * 32}")).status == 404
        assert (await client.delete("/edgemon/api/v1/silences/xyz")).status == 400
        assert (await get(client, "/edgemon/api/v1/alerts"))["alerts"][0]["silenced_by"] is None

    with_client(tmp_path, test)


def test_openapi_describes_every_route(tmp_path: Path) -> None:
    engine = AlertEngine(InMemoryGridStorage(), tmp_path / "a.db")
    try:
        for route in routes(engine):
            assert route.method.lower() in OPENAPI_PATHS[route.path], route
    finally:
        engine.close()
    doc: dict[str, Any] = {"openapi": "3.1.0", "paths": {"/x": {}},
                           "components": {"schemas": {"Error": {}}}}
    merge_openapi(doc)
    assert set(doc["paths"]) == {"/x", *OPENAPI_PATHS}
    assert set(doc["components"]["schemas"]) == {"Error", *OPENAPI_SCHEMAS}
    refs = [v for v in _walk(OPENAPI_PATHS) if isinstance(v, str) and v.startswith("#/")]
    assert refs and all(r.rsplit("/", 1)[1] in OPENAPI_SCHEMAS for r in refs)


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)
    else:
        yield node


def test_rules_show_where_receivers_send_but_not_their_secret_urls() -> None:
    from edgemon.collector.http.alerts_api import _redacted

    slack = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    assert _redacted(slack) == "https://hooks.slack.com/…"
    assert "SECRET" not in str(_redacted("http://relay:8080/hook?token=SECRET"))
    assert _redacted("http://relay:8080") == "http://relay:8080"
