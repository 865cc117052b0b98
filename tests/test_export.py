"""Export for people (collector/http/export.py): several metrics or whole hosts as JSON and CSV
with raw timestamps, alert history as CSV, streamed with bounded memory, limits and errors.

The data is promdata's fleet stored in a real SQLite store; the exported samples are counted
against what ``store_batches`` stored, read in many small slices (the slice size is lowered) so
that slice boundaries are crossed everywhere."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.alerting.store import AlertStore, HistoryRecord
from edgemon.collector.config import HttpConfig
from edgemon.collector.http import export
from edgemon.collector.http.api import create_app
from edgemon.collector.http.auth import security_middlewares
from edgemon.collector.http.tokens import TokenStore, create_token
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import RangeQuery, Storage
from tests.support import promdata

HOUR, MINUTE, DAY = 3_600_000, 60_000, 86_400_000
END = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
START = END - 2 * HOUR
HOSTS = promdata.HOSTS[:3]  # web-01, web-02, db-01


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Storage, int]]:
    store = open_storage(tmp_path_factory.mktemp("export") / "edgemon.db")
    stored = promdata.fill(store, START, END, hosts=HOSTS)
    store.compact_all(END + 10 * MINUTE)  # some compacted, the last window still open
    yield store, stored
    store.close()


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 7 minutes: boundaries fall between and on samples all over the range."""
    monkeypatch.setattr(export, "SLICE_MS", 7 * MINUTE)
    monkeypatch.setattr(export, "FLUSH_BYTES", 1024)


class FakeEngine:
    """The part of the alert engine the history export reads: its store."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store


def run(storage: Storage, test: Callable[[TestClient], Awaitable[None]], *,
        engine: Any = None, middlewares: tuple[Any, ...] = ()) -> None:
    async def main() -> None:
        app = create_app(storage, extra_routes=export.routes(engine),
                         clock_ms=lambda: END + MINUTE, middlewares=middlewares)
        async with TestClient(TestServer(app)) as client:
            await test(client)

    asyncio.run(main())


def csv_rows(text: str) -> list[dict[str, str]]:
    assert text.endswith("\r\n")
    return list(csv.DictReader(io.StringIO(text, newline="")))


# --- samples -----------------------------------------------------------------------------------

def test_whole_fleet_csv_has_every_stored_sample_once_with_raw_times(
        fleet: tuple[Storage, int]) -> None:
    storage, stored = fleet

    async def t(client: TestClient) -> None:
        resp = await client.get(export.PATH, params=[
            ("host", "*"), ("start", str(START)), ("end", str(END)), ("format", "csv")])
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "attachment" in resp.headers["Content-Disposition"]
        rows = csv_rows(await resp.text())
        assert len(rows) == stored  # every sample, none twice across slice boundaries
        assert {r["host"] for r in rows} == {h.name for h in HOSTS}
        assert list(rows[0])[:6] == ["timestamp_ms", "time", "host", "metric", "kind", "unit"]
        assert list(rows[0])[-1] == "value" and "label.cpu" in rows[0]
        seen: dict[tuple[str, ...], int] = {}
        for r in rows:
            ts = int(r["timestamp_ms"])
            assert START <= ts <= END
            key = (r["host"], r["metric"], *(v for k, v in r.items() if k.startswith("label.")))
            assert ts > seen.get(key, -1), "each series in time order, no repeats"
            seen[key] = ts
        net = next(r for r in rows if r["metric"] == "network_received_bytes_total")
        assert net["kind"] == "counter" and net["unit"] == "bytes" and net["label.iface"]
        # RFC 3339 beside the raw ms timestamp, which is the sample's own (not step-aligned)
        from datetime import datetime
        for r in rows[:50]:
            parsed = datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
            assert round(parsed.timestamp() * 1000) == int(r["timestamp_ms"])
        assert any(int(r["timestamp_ms"]) % 1000 for r in rows)  # promdata jitters by ms

    run(storage, t)


def test_json_of_two_metrics_matches_the_storage_sample_for_sample(
        fleet: tuple[Storage, int]) -> None:
    storage, _ = fleet

    async def t(client: TestClient) -> None:
        resp = await client.get(export.PATH, params=[
            ("host", "web-02"), ("metric", "cpu_usage_percent"), ("metric", "load1"),
            ("start", str(START + 13 * MINUTE + 7)), ("end", str(END - 5 * MINUTE))])
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = await resp.json()
        assert doc["complete"] is True and doc["resolution"] == "raw"
        series = doc["series"]
        assert {s["metric"] for s in series} == {"cpu_usage_percent", "load1"}
        assert len([s for s in series if s["metric"] == "cpu_usage_percent"]) == 5  # total+4
        assert doc["samples"] == sum(len(s["points"]) for s in series)
        for s in series:
            want = storage.query(RangeQuery(
                name=s["metric"], start_ms=START + 13 * MINUTE + 7, end_ms=END - 5 * MINUTE + 1,
                step_ms=1, aggregation="last", hosts=("web-02",), labels=s["labels"],
                tier="raw", max_points=10**9))
            [match] = [r for r in want if r.labels == s["labels"]]
            assert [(p[0], p[2]) for p in s["points"]] == [(t, v) for t, v in match.points]
            assert all(p[1].endswith("Z") for p in s["points"])
        assert series[0]["unit"] == "percent" and series[0]["kind"] == "gauge"

    run(storage, t)


def test_step_export_is_aligned_aggregates(fleet: tuple[Storage, int]) -> None:
    storage, _ = fleet

    async def t(client: TestClient) -> None:
        resp = await client.get(export.PATH, params=[
            ("host", "db-01"), ("metric", "load1"), ("start", str(START)), ("end", str(END)),
            ("step", "5m"), ("agg", "max"), ("format", "csv")])
        rows = csv_rows(await resp.text())
        times = [int(r["timestamp_ms"]) for r in rows]
        assert times == sorted(set(times)) and all(t % (5 * MINUTE) == 0 for t in times)
        want = storage.query(RangeQuery("load1", START, END + 1, 5 * MINUTE, "max",
                                        hosts=("db-01",)))
        assert [(int(r["timestamp_ms"]), float(r["value"])) for r in rows] == \
            [(t, pytest.approx(v)) for t, v in want[0].points]

    run(storage, t)


def test_parameters_limits_and_unknowns_are_clear_errors(fleet: tuple[Storage, int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    storage, _ = fleet
    monkeypatch.setattr(export, "MAX_SERIES", 10)

    async def t(client: TestClient) -> None:
        async def error(params: list[tuple[str, str]], status: int = 400) -> str:
            resp = await client.get(export.PATH, params=params)
            assert resp.status == status, await resp.text()
            return str((await resp.json())["error"])

        assert "host" in await error([])
        assert "more than 10 series" in await error([("host", "*")])
        assert "days" in await error([("host", "web-01"), ("start", "0"),
                                      ("end", str(END))])
        assert "agg" in await error([("host", "web-01"), ("agg", "max")])
        assert "step" in await error([("host", "web-01"), ("step", "10ms")])
        assert "unknown parameter 'nope'" in await error([("host", "web-01"), ("nope", "1")])
        assert "metric" in await error([("host", "web-01"), ("metric", "a b")])
        assert "no series" in await error([("host", "nowhere-01")], 404)
        assert "no series" in await error([("host", "web-01"), ("metric", "absent_metric")],
                                          404)

    run(storage, t)


def test_read_token_may_export(fleet: tuple[Storage, int], tmp_path: Path) -> None:
    storage, _ = fleet
    tokens = tmp_path / "tokens.json"
    reader = create_token(tokens, "people", "read")[1]
    store = TokenStore(tokens)
    store.load()

    async def t(client: TestClient) -> None:
        params = [("host", "web-01"), ("metric", "load1"), ("format", "csv"),
                  ("start", str(END - 10 * MINUTE)), ("end", str(END))]
        assert (await client.get(export.PATH, params=params)).status == 401
        resp = await client.get(export.PATH, params=params,
                                headers={"Authorization": f"Bearer {reader}"})
        assert resp.status == 200 and len(csv_rows(await resp.text())) == 60

    run(storage, t, middlewares=tuple(security_middlewares(HttpConfig(auth="token"), store)))


class FailingStorage:
    """The fleet's storage whose reads fail after ``ok`` range queries."""

    def __init__(self, storage: Storage, ok: int) -> None:
        self.storage, self.ok = storage, ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def query(self, query: RangeQuery) -> Any:
        self.ok -= 1
        if self.ok < 0:
            raise OSError("disk I/O error")
        return self.storage.query(query)


def test_a_failure_midway_is_visible_in_json_and_cuts_csv_off(
        fleet: tuple[Storage, int]) -> None:
    storage, _ = fleet
    params = [("host", "web-01"), ("start", str(START)), ("end", str(END))]

    async def t_json(client: TestClient) -> None:
        resp = await client.get(export.PATH, params=params)
        assert resp.status == 200
        doc = json.loads(await resp.text())  # still a whole JSON document
        assert doc["complete"] is False and "failed midway" in doc["error"]
        assert 0 < doc["samples"] == sum(len(s["points"]) for s in doc["series"])

    async def t_csv(client: TestClient) -> None:
        resp = await client.get(export.PATH, params=[*params, ("format", "csv")])
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()

    run(FailingStorage(storage, 40), t_json)  # type: ignore[arg-type]
    run(FailingStorage(storage, 40), t_csv)  # type: ignore[arg-type]


def test_memory_stays_bounded_whatever_the_range(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """8 h of one host at 10 s, written through the generator: the peak of allocations is
    about one slice, a small fraction of the whole export, and no larger for 4x the range."""
    monkeypatch.setattr(export, "SLICE_MS", 30 * MINUTE)
    monkeypatch.setattr(export, "FLUSH_BYTES", 64 * 1024)
    # the storage's decoded-chunk cache is bounded on its own (decoded_cache_mb); here it would
    # hide what the export itself holds, so it is off
    store = open_storage(tmp_path / "day.db", decoded_cache_mb=0)
    promdata.fill(store, END - 8 * HOUR, END, hosts=promdata.HOSTS[:1])
    store.compact_all(END + HOUR)
    peaks, sizes = [], []
    for span in (2 * HOUR, 8 * HOUR):
        req = export.ExportRequest(("web-01",), (), END - span, END, None, "avg", True)
        series = export.select_series(store, req)
        tracemalloc.start()
        total = sum(len(piece) for piece in export._buffered(
            export.samples_csv(store, req, series)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(total)
    store.close()
    assert sizes[1] > 3.5 * sizes[0]
    assert peaks[1] < sizes[1] / 8, (peaks, sizes)
    assert peaks[1] < 1.5 * peaks[0], (peaks, sizes)  # 4x the data, not 4x the memory


# --- alert history -----------------------------------------------------------------------------

def _history(store: AlertStore, n: int) -> None:
    with store.cycle() as write:
        for i in range(n):
            write.add_history(HistoryRecord(
                rule="disk_full" if i % 2 else "=cmd()", key=f"k{i % 3}", host=f"h{i % 3}",
                labels={"mount": "/"}, from_status="pending", status="firing",
                at_ms=END - (n - i // 2) * MINUTE,  # two rows share each time
                created_ms=END, value=0.5 * i, starts_at=END - HOUR, ends_at=None,
                historical=False, silenced=bool(i % 5 == 0), notified=True, reason="",
                fingerprint=f"f{i}", annotations={}))


def test_alert_history_csv_pages_through_every_row_oldest_first(
        fleet: tuple[Storage, int], alert_state: Path | str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    storage, _ = fleet
    monkeypatch.setattr(export, "HISTORY_PAGE", 7)  # pages end between rows of one time
    store = AlertStore(alert_state)
    _history(store, 50)

    async def t(client: TestClient) -> None:
        resp = await client.get(export.ALERTS_PATH, params={"format": "csv"})
        assert resp.status == 200
        rows = csv_rows(await resp.text())
        assert len(rows) == 50 and len({r["id"] for r in rows}) == 50
        keys = [(int(r["at_ms"]), int(r["id"])) for r in rows]
        assert keys == sorted(keys)
        assert rows[0]["rule"] == "'=cmd()"  # a formula start is neutralised
        assert json.loads(rows[1]["labels"]) == {"mount": "/"}
        assert rows[0]["silenced"] == "1" and rows[0]["at"].endswith("Z")
        resp = await client.get(export.ALERTS_PATH, params={"rule": "disk_full",
                                                            "start": str(END - 40 * MINUTE)})
        doc = await resp.json()
        assert doc["complete"] is True and doc["rows"] == len(doc["alerts"]) > 0
        assert {a["rule"] for a in doc["alerts"]} == {"disk_full"}
        assert all(a["at_ms"] >= END - 40 * MINUTE for a in doc["alerts"])

    run(storage, t, engine=FakeEngine(store))
    store.close()

    async def off(client: TestClient) -> None:
        resp = await client.get(export.ALERTS_PATH)
        assert resp.status == 404 and "alerting" in (await resp.json())["error"]

    run(storage, off)


def test_openapi_describes_both_export_routes() -> None:
    paths = {r.path for r in export.routes(None)}
    document = export.merge_openapi({"paths": {}})
    assert set(document["paths"]) == paths == {export.PATH, export.ALERTS_PATH}
    for path in paths:
        names = {p["name"] for p in document["paths"][path]["get"]["parameters"]}
        assert {"start", "end", "format"} <= names


def test_host_text_that_looks_like_a_formula_is_exported_as_text(tmp_path: Path) -> None:
    """A host chooses its units and label values: in the CSV none of them may start a
    spreadsheet formula (= + - @, tab, CR lead), whatever column it lands in."""
    from edgemon.protocol import GAUGE, MetricDef
    from tests.test_storage_sqlite import make_items

    hostile = ("=HYPERLINK(\"http://x\")", "@SUM(1)", "+1", "-1+cmd", "\t=1", "\r=1")
    metric = MetricDef("temperature_celsius", GAUGE, "=cmd()", 0, ("room",))
    store = open_storage(tmp_path / "hostile.db")
    store.store_batches([make_items("web-01", 1, [(END - HOUR + k * 1000, metric, (v,), k)
                                                  for k, v in enumerate(hostile)])])
    req = export.ExportRequest(("web-01",), (), END - 2 * HOUR, END, None, "avg", True)
    text = "".join(export.samples_csv(store, req, export.select_series(store, req)))
    store.close()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["label.room"] for r in rows) == sorted("'" + v for v in hostile)
    assert {r["unit"] for r in rows} == {"'=cmd()"}
    for row in rows:
        assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r")
                       for key, cell in row.items() if key != "value")
