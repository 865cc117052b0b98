"""HTTP API handlers against an in-memory fake storage (aiohttp test client, no network mocks)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.http.api import auto_step_ms, create_app, parse_time_ms
from edgemon.collector.storage.base import QueryTooLarge, SeriesInfo, SeriesResult
from tests.support.fake_storage import MemoryStorage

NOW_MS = 1_800_000_000_000


def api(storage: MemoryStorage, test: Callable[[TestClient], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        app = create_app(storage, clock_ms=lambda: NOW_MS, **kw)
        async with TestClient(TestServer(app)) as client:
            await test(client)

    asyncio.run(main())


@pytest.fixture
def storage() -> MemoryStorage:
    s = MemoryStorage()
    s.status["web-01"] = ("abc", True, NOW_MS - 1000)
    s.status["db-01"] = ("def", False, NOW_MS - 5000)
    s.series_list = [SeriesInfo("web-01", "load1", {}, "gauge", "", 1, 2)]
    s.query_results = [
        SeriesResult("web-01", "cpu_usage_percent", {"cpu": "total"}, "gauge", "percent",
                     [(NOW_MS - 120_000, 12.5), (NOW_MS - 60_000, math.nan),
                      (NOW_MS - 30_000, math.inf), (NOW_MS, 13.0)], tier="raw"),
        SeriesResult("db-01", "cpu_usage_percent", {"cpu": "0"}, "gauge", "percent",
                     [(NOW_MS, 80.25)], tier="raw"),
    ]
    return s


async def get_json(client: TestClient, url: str, status: int = 200, **kw: Any) -> Any:
    resp = await client.get(url, **kw)
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json"
    # NaN/Infinity are not JSON: a strict parser must accept every body.
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON body"))


def test_hosts(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        doc = await get_json(client, "/edgemon/api/v1/hosts")
        by = {h["host"]: h for h in doc["hosts"]}
        assert by["web-01"]["online"] is True and by["web-01"]["instance"] == "abc"
        assert by["db-01"]["online"] is False
        assert set(by["web-01"]) >= {"last_seen", "clock_offset_ms", "instances"}
        await get_json(client, "/edgemon/api/v1/hosts?bogus=1", 400)

    api(storage, t)


def test_series_and_unknown_host(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        doc = await get_json(client, "/edgemon/api/v1/hosts/web-01/series")
        assert [s["name"] for s in doc["series"]] == ["load1"]
        doc = await get_json(client, "/edgemon/api/v1/hosts/nosuch/series", 404)
        assert "nosuch" in doc["error"]
        doc = await get_json(client, "/edgemon/api/v1/hosts/bad%20host/series", 400)
        assert "'host'" in doc["error"]
        doc = await get_json(client, "/edgemon/api/v1/gaps?host=nosuch", 404)
        assert (await get_json(client, "/edgemon/api/v1/gaps?host=web-01")) == {"gaps": []}

    api(storage, t)


def test_query_json_never_contains_nan(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        doc = await get_json(client, "/edgemon/api/v1/query?metric=cpu_usage_percent"
                             "&label.cpu=total"
                                     "&host=web-*&host=db-01&agg=max&step=60&start=now-2h")
        assert doc["metric"] == "cpu_usage_percent" and doc["step"] == 60 and doc["tier"] == "raw"
        web = doc["series"][0]
        assert web["host"] == "web-01" and web["labels"] == {"cpu": "total"}
        assert web["points"] == [[NOW_MS - 120_000, 12.5], [NOW_MS, 13]]  # NaN and inf omitted
        q = storage.queries[-1]
        assert q.hosts == ("web-*", "db-01") and q.labels == {"cpu": "total"}
        assert q.aggregation == "max" and q.step_ms == 60_000
        assert (q.start_ms, q.end_ms) == (NOW_MS - 7_200_000, NOW_MS)

    api(storage, t)


def test_query_defaults_and_time_formats(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        await get_json(client, "/edgemon/api/v1/query?metric=load1")
        q = storage.queries[-1]
        assert (q.start_ms, q.end_ms) == (NOW_MS - 3_600_000, NOW_MS)
        assert q.step_ms == 15_000  # ~ 1 h / 300, rounded up to a nice step
        assert q.tier == "auto" and q.rate is False and q.group_by is None
        await get_json(client, "/edgemon/api/v1/query?metric=load1"
                       "&start=1700000000&end=1700000600000"
                               "&rate=true&group_by=host,cpu&tier=1m")
        q = storage.queries[-1]
        assert (q.start_ms, q.end_ms) == (1_700_000_000_000, 1_700_000_600_000)
        assert q.rate is True and q.group_by == ("host", "cpu") and q.tier == "1m"
        await get_json(client, "/edgemon/api/v1/query?metric=load1&start=2023-11-14T22:13:20Z"
                               "&end=2023-11-14T23:23:20%2B01:00")
        q = storage.queries[-1]
        assert (q.start_ms, q.end_ms) == (1_700_000_000_000, 1_700_000_600_000)

    api(storage, t)


@pytest.mark.parametrize(("query", "param"), [
    ("", "metric"),
    ("metric=load-1", "metric"),
    ("metric=load1&start=yesterday", "start"),
    ("metric=load1&end=2024-01-01T00:00:00", "end"),
    ("metric=load1&start=2000&end=1000", "start"),
    ("metric=load1&step=0", "step"),
    ("metric=load1&step=fast", "step"),
    ("metric=load1&agg=median", "agg"),
    ("metric=load1&tier=5m", "tier"),
    ("metric=load1&rate=maybe", "rate"),
    ("metric=load1&host=a/b", "host"),
    ("metric=load1&label.bad-key=x", "label.bad-key"),
    ("metric=load1&group_by=host;cpu", "group_by"),
    ("metric=load1&format=xml", "format"),
    ("metric=load1&colour=red", "colour"),
    ("metric=load1&metric=load5", "metric"),
])
def test_query_bad_parameters_are_400_naming_the_parameter(storage: MemoryStorage, query: str,
                                                          param: str) -> None:
    async def t(client: TestClient) -> None:
        doc = await get_json(client, f"/edgemon/api/v1/query?{query}", 400)
        assert f"parameter '{param}'" in doc["error"], doc

    api(storage, t)
    assert storage.queries == []


def test_query_unknown_host_is_404_glob_is_not(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        doc = await get_json(client, "/edgemon/api/v1/query?metric=load1&host=nosuch", 404)
        assert "nosuch" in doc["error"]
        await get_json(client, "/edgemon/api/v1/query?metric=load1&host=nosuch*")

    api(storage, t)


def test_query_too_large_and_storage_value_error_are_400(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        storage.query_error = QueryTooLarge("2000 series > 1000: add host= or label. filters")
        doc = await get_json(client, "/edgemon/api/v1/query?metric=load1", 400)
        assert doc["error"] == "2000 series > 1000: add host= or label. filters"
        storage.query_error = ValueError("rate needs a counter")
        doc = await get_json(client, "/edgemon/api/v1/query?metric=load1&rate=1", 400)
        assert doc["error"] == "rate needs a counter"
        storage.query_error = RuntimeError("boom")
        doc = await get_json(client, "/edgemon/api/v1/query?metric=load1", 500)
        assert "boom" not in doc["error"]

    api(storage, t)


def test_query_csv(storage: MemoryStorage) -> None:
    async def t(client: TestClient) -> None:
        for kw in ({"params": {"metric": "cpu_usage_percent", "format": "csv"}},
                   {"params": {"metric": "cpu_usage_percent"},
                    "headers": {"Accept": "text/csv"}}):
            resp = await client.get("/edgemon/api/v1/query", **kw)
            assert resp.status == 200 and resp.content_type == "text/csv"
            rows = list(csv.reader(io.StringIO(await resp.text())))
            assert rows[0] == ["timestamp_ms", "time", "host", "cpu", "value"]
            assert rows[1] == [str(NOW_MS - 120_000), "2027-01-15T07:58:00.000Z", "web-01",
                               "total", "12.5"]
            assert len(rows) == 4  # NaN and inf rows omitted
            assert not any("nan" in c.lower() or "inf" in c.lower() for r in rows for c in r)

    api(storage, t)


def test_health_ready_metrics_openapi(storage: MemoryStorage) -> None:
    state = {"mqtt": False, "storage": True}

    async def t(client: TestClient) -> None:
        assert (await get_json(client, "/healthz")) == {"status": "ok"}
        doc = await get_json(client, "/readyz", 503)
        assert doc["ready"] is False and doc["mqtt"] is False
        state["mqtt"] = True
        assert (await get_json(client, "/readyz"))["ready"] is True
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert "edgemon_collector_x 1" in await resp.text()
        spec = await get_json(client, "/edgemon/api/v1/openapi.json")
        routes = {r.resource.canonical for r in client.app.router.routes()  # type: ignore
                  if r.resource is not None}
        assert routes == set(spec["paths"]), routes ^ set(spec["paths"])
        doc = await get_json(client, "/edgemon/api/v1/nothing", 404)
        assert "error" in doc

    api(storage, t, ready=lambda: dict(state), metrics=lambda: "edgemon_collector_x 1\n")


def test_time_parsing_and_auto_step() -> None:
    assert parse_time_ms("1700000000", NOW_MS) == 1_700_000_000_000
    assert parse_time_ms("1700000000.5", NOW_MS) == 1_700_000_000_500
    assert parse_time_ms("1700000000123", NOW_MS) == 1_700_000_000_123
    assert parse_time_ms("now-5m", NOW_MS) == NOW_MS - 300_000
    assert parse_time_ms("2023-11-14T22:13:20.5+00:00", NOW_MS) == 1_700_000_000_500
    with pytest.raises(ValueError, match="'nan' is not a time"):
        parse_time_ms("nan", NOW_MS)
    assert auto_step_ms(3_600_000) == 15_000
    assert auto_step_ms(86_400_000) == 300_000
    assert auto_step_ms(365 * 86_400_000) == 2 * 86_400_000


def test_only_a_bad_request_is_a_400_an_internal_error_is_a_500_with_a_traceback(
        storage: MemoryStorage, caplog: pytest.LogCaptureFixture) -> None:
    def broken_hosts() -> list[Any]:
        raise ValueError("a bug, not the client's fault")

    async def t(client: TestClient) -> None:
        doc = await get_json(client, "/edgemon/api/v1/hosts?bogus=1", 400)
        assert doc == {"error": "unknown parameter 'bogus'"}
        storage.hosts = broken_hosts  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR):
            doc = await get_json(client, "/edgemon/api/v1/hosts", 500)
        assert doc == {"error": "internal error (see the collector's log)"}
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "GET /edgemon/api/v1/hosts failed" in record.getMessage()
        assert record.exc_info is not None and "a bug" in str(record.exc_info[1])

    api(storage, t)


def test_the_published_dictionaries_are_served_with_their_digests(storage: MemoryStorage
                                                                  ) -> None:
    """A reader that meets a dictionary it lacks (SPEC.md §2) fetches it from the collector and
    checks it: the bytes are the published file's, the digest is theirs, and the based test
    vector decodes with what was fetched."""
    vectors = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
    files = Path(__file__).resolve().parents[1] / "protocol" / "dictionaries"

    async def t(client: TestClient) -> None:
        listed = (await get_json(client, "/edgemon/api/v1/dictionaries"))["dictionaries"]
        on_disk = sorted(int(p.stem) for p in files.glob("*.zdict"))
        assert [d["id"] for d in listed] == on_disk and {1, 2} <= set(on_disk)
        fetched: dict[int, bytes] = {}
        for d in listed:
            resp = await client.get(d["url"])
            assert resp.status == 200 and resp.content_type == "application/octet-stream"
            body = await resp.read()
            assert body == (files / f"{d['id']}.zdict").read_bytes()
            assert hashlib.sha256(body).hexdigest() == d["sha256"] and len(body) == d["size"]
            assert resp.headers["ETag"] == f'"{d["sha256"]}"'
            again = await client.get(d["url"], headers={"If-None-Match": resp.headers["ETag"]})
            assert again.status == 304 and not await again.read()
            fetched[d["id"]] = body
        frame = bytes.fromhex((vectors / "v1-based.hex").read_text().split()[0])
        assert zstandard.get_frame_parameters(frame).dict_id == 2
        plain = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(
            fetched[2], dict_type=zstandard.DICT_TYPE_FULLDICT)).decompress(frame)
        expected = json.loads((vectors / "v1-based.json").read_text())
        assert msgpack.unpackb(plain) == expected  # the based vector, read with what was fetched
        assert "error" in await get_json(client, "/edgemon/api/v1/dictionaries/999", 404)
        for bad in ("abc", "-1", "1e3", "9" * 30):
            assert "error" in await get_json(client, f"/edgemon/api/v1/dictionaries/{bad}", 400)

    api(storage, t)
