"""``GET /edgemon/api/v1/alerts`` page by page: bounds, a stable order with no alert missed or
repeated across pages, and the totals of every page (a real aiohttp server on loopback, a real
SQLite alert state)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.alerting import AlertEngine
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.http.alerts_api import (
    ALERTS_LIMIT,
    ALERTS_LIMIT_MAX,
    OPENAPI_PATHS,
    active_alerts,
    active_alerts_page,
    decode_cursor,
    every_active_alert,
)
from edgemon.collector.http.alerts_cache import state_cache
from edgemon.collector.http.api import EXECUTOR_KEY
from edgemon.collector.http.prometheus_api import routes as prometheus_routes
from tests.test_alerting_api import RULES as API_RULES
from tests.test_alerting_api import T0, Clock, get, with_client

HOSTS = 23
# every host down: "host-down" fires at once, "host-down-long" stays pending for an hour
RULES = API_RULES + """
[[rule]]
name = "host-down-long"
kind = "host_down"
no_data_for = "1h"
for = "1h"
"""


def all_down(engine: AlertEngine, store: InMemoryGridStorage) -> None:
    """Every one of HOSTS hosts down, and a cycle that sees it."""
    for i in range(HOSTS):
        store.set_status(f"h{i:03d}", False, T0 - 1000)
    engine.run_cycle()


def test_pages_cover_every_alert_once_in_order(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        everything = await get(client, "/edgemon/api/v1/alerts")
        assert set(everything) == {"alerts"}  # under the default limit: the answer as before
        expected = [(a["rule"], a["host"]) for a in everything["alerts"]]
        assert len(expected) == 2 * HOSTS and expected == sorted(expected)

        seen: list[tuple[str, str]] = []
        url = "/edgemon/api/v1/alerts?limit=5"
        pages = 0
        while True:
            page = await get(client, url)
            pages += 1
            assert len(page["alerts"]) <= 5 and page["limit"] == 5
            assert page["total"] == 2 * HOSTS
            assert page["counts"] == {"firing": HOSTS, "pending": HOSTS}
            assert page["rules"] == [{"rule": "host-down", "pending": 0, "firing": HOSTS},
                                     {"rule": "host-down-long", "pending": HOSTS, "firing": 0}]
            seen += [(a["rule"], a["host"]) for a in page["alerts"]]
            if page["next"] is None:
                break
            url = f"/edgemon/api/v1/alerts?limit=5&after={page['next']}"
        assert seen == expected  # none missed, none twice, the same order
        assert pages == -(-2 * HOSTS // 5)

        firing = await get(client, "/edgemon/api/v1/alerts?status=firing&limit=10")
        assert firing["total"] == HOSTS and firing["counts"] == {"firing": HOSTS, "pending": 0}
        assert {a["status"] for a in firing["alerts"]} == {"firing"}
        one = await get(client, "/edgemon/api/v1/alerts?host=h007&limit=1")
        assert one["total"] == 2 and len(one["alerts"]) == 1 and one["next"] is not None
        rest = await get(client, f"/edgemon/api/v1/alerts?host=h007&after={one['next']}")
        assert [a["rule"] for a in one["alerts"] + rest["alerts"]] == \
            ["host-down", "host-down-long"]
        assert rest["next"] is None and rest["limit"] == ALERTS_LIMIT

    with_client(tmp_path, test, RULES)


def test_a_page_stays_in_place_when_earlier_alerts_go(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        first = await get(client, "/edgemon/api/v1/alerts?limit=4&status=firing")
        assert [a["host"] for a in first["alerts"]] == ["h000", "h001", "h002", "h003"]
        store.set_status("h001", True, T0 + 1)  # an alert of the first page resolves
        store.set_last_seen("h001", T0 + 1)
        engine.run_cycle(T0 + 10_000)
        second = await get(client, f"/edgemon/api/v1/alerts?limit=4&status=firing"
                                   f"&after={first['next']}")
        assert [a["host"] for a in second["alerts"]] == ["h004", "h005", "h006", "h007"]
        assert second["total"] == HOSTS - 1

    with_client(tmp_path, test, RULES)


def test_more_alerts_than_the_default_limit(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        for i in range(HOSTS, ALERTS_LIMIT // 2 + 3):
            store.set_status(f"h{i:03d}", False, T0 - 1000)
        engine.run_cycle(T0 + 10_000)
        plain = await get(client, "/edgemon/api/v1/alerts")
        total = 2 * (ALERTS_LIMIT // 2 + 3)
        assert len(plain["alerts"]) == ALERTS_LIMIT  # bounded, and it says there is more
        assert plain["total"] == total and plain["next"] is not None
        rest = await get(client, f"/edgemon/api/v1/alerts?after={plain['next']}")
        assert len(rest["alerts"]) == total - ALERTS_LIMIT and rest["next"] is None

    with_client(tmp_path, test, RULES)


def test_bad_paging_parameters(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        for bad, word in (("limit=0", "'limit'"), (f"limit={ALERTS_LIMIT_MAX + 1}", "'limit'"),
                          ("limit=-3", "'limit'"), ("limit=ten", "'limit'"),
                          ("after=%%%", "'after'"), ("after=bm90IGpzb24", "'after'"),
                          ("after=WzEsMl0", "'after'"), ("after=WyJhIl0", "'after'"),
                          ("limit=1&limit=2", "more than once")):
            body = await get(client, f"/edgemon/api/v1/alerts?{bad}", 400)
            assert word in body["error"], (bad, body)
        limit = next(p for p in OPENAPI_PATHS["/edgemon/api/v1/alerts"]["get"]["parameters"]
                     if p["name"] == "limit")
        assert limit["schema"]["minimum"] == 1
        assert limit["schema"]["maximum"] == ALERTS_LIMIT_MAX
        assert (await get(client, f"/edgemon/api/v1/alerts?limit={ALERTS_LIMIT_MAX}"))[
            "total"] == 2 * HOSTS

    with_client(tmp_path, test, RULES)


# --- the cache of what the endpoints build (http/alerts_cache.py) -------------------------------

def test_an_unchanged_state_is_built_once_and_a_change_is_seen_at_once(tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        cache = state_cache(engine)
        url = "/edgemon/api/v1/alerts?limit=10&status=firing"
        first = await get(client, url)
        built = cache.builds
        assert await get(client, url) == first and cache.builds == built  # kept
        assert every_active_alert(engine) is every_active_alert(engine)

        store.set_status("h100", False, T0 - 1000)  # a new host goes down: a cycle commits it
        engine.run_cycle()
        assert (await get(client, url))["total"] == HOSTS + 1
        assert len(every_active_alert(engine)) == 2 * (HOSTS + 1)
        assert cache.builds > built

        # a silence made through the API: the next answer shows it
        resp = await client.post("/edgemon/api/v1/silences", json={
            "matchers": [{"name": "host", "value": "h000"}], "duration": "1h"})
        assert resp.status == 201, await resp.text()
        sid = (await resp.json())["id"]
        assert (await get(client, url))["alerts"][0]["silenced_by"] == sid
        assert {a["silenced_by"] for a in every_active_alert(engine)
                if a["host"] == "h000"} == {sid}

    with_client(tmp_path, test, RULES)


def test_a_silence_starting_later_covers_its_alerts_when_the_clock_gets_there(
        tmp_path: Path) -> None:
    async def test(client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        resp = await client.post("/edgemon/api/v1/silences", json={
            "matchers": [{"name": "host", "value": "h001"}], "startsAt": T0 + 60_000,
            "duration": "1h"})
        assert resp.status == 201, await resp.text()
        sid = (await resp.json())["id"]
        url = "/edgemon/api/v1/alerts?host=h001&limit=5"
        assert [a["silenced_by"] for a in (await get(client, url))["alerts"]] == [None, None]
        assert (await get(client, url))["alerts"][0]["silenced_by"] is None  # kept
        writes = engine.store.writes
        Clock.ms = T0 + 60_000  # no write at all: only the clock moves
        assert [a["silenced_by"] for a in (await get(client, url))["alerts"]] == [sid, sid]
        assert {a["silenced_by"] for a in every_active_alert(engine)
                if a["host"] == "h001"} == {sid}
        Clock.ms = T0 + 60_000 + 3_600_000  # and it ends
        assert [a["silenced_by"] for a in (await get(client, url))["alerts"]] == [None, None]
        Clock.ms = T0 + 60_000  # a clock set back: built again, not the later answer
        assert [a["silenced_by"] for a in (await get(client, url))["alerts"]] == [sid, sid]
        assert engine.store.writes == writes

    with_client(tmp_path, test, RULES)


def test_prometheus_alerts_are_kept_until_the_state_changes(tmp_path: Path) -> None:
    async def test(_client: TestClient, engine: AlertEngine, store: InMemoryGridStorage,
                   _path: Path) -> None:
        all_down(engine, store)
        app = web.Application()
        app[EXECUTOR_KEY] = None  # the loop's default executor
        app.router.add_routes(prometheus_routes(store, alerting=engine))
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            cache = state_cache(engine)
            doc = await get(client, "/api/v1/alerts")
            assert doc["status"] == "success" and len(doc["data"]["alerts"]) == 2 * HOSTS
            built = cache.builds
            assert await get(client, "/api/v1/alerts") == doc and cache.builds == built
            store.set_status("h000", True, T0 + 1)
            store.set_last_seen("h000", T0 + 1)
            Clock.ms = T0 + 10_000
            engine.run_cycle()
            after = (await get(client, "/api/v1/alerts"))["data"]["alerts"]
            assert "h000" not in {a["labels"]["host"] for a in after
                                  if a["labels"]["alertname"] == "host-down"}
        finally:
            await client.close()

    with_client(tmp_path, test, RULES)


def test_pages_and_counts_on_sqlite_and_postgresql(tmp_path: Path,
                                                    alert_state: Path | str) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    Clock.ms = T0
    store = InMemoryGridStorage()
    engine = AlertEngine(store, alert_state, rules_path=tmp_path / "rules.toml", clock_ms=Clock())
    try:
        all_down(engine, store)
        every = [(a["rule"], a["host"]) for a in active_alerts(engine)]
        seen: list[tuple[str, str]] = []
        after = None
        while True:
            page = active_alerts_page(engine, limit=7, after=after)
            assert page["total"] == 2 * HOSTS
            assert page["counts"] == {"firing": HOSTS, "pending": HOSTS}
            seen += [(a["rule"], a["host"]) for a in page["alerts"]]
            if page["next"] is None:
                break
            after = decode_cursor(page["next"])
        assert seen == every and len(every) == 2 * HOSTS
        cache = state_cache(engine)
        built = cache.builds
        every_active_alert(engine)
        every_active_alert(engine)
        # a shared state (PostgreSQL) is written by other collectors too: read every time
        assert cache.builds - built == (2 if engine.store.shared else 1)
    finally:
        engine.close()
