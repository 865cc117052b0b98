"""Collector accounting: per host and agent instance, batches and samples stored, sequence
ranges, gaps (those at the end of an instance, from the declared last seq, included), and the
samples of a host in a time range; its HTTP endpoint and the gaps endpoint that uses it."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.http.api import create_app
from edgemon.collector.storage.accounting import (
    Accounting,
    SQLiteAccounting,
    accounting_of,
    count_samples,
)
from edgemon.collector.storage.base import IngestItem
from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support.storages import Stores

T0 = 1_780_012_800_000  # a day boundary
LOAD = MetricDef("load1", GAUGE, "", 2)
TEMP = MetricDef("temperature_celsius", GAUGE, "celsius", 1, ("sensor",))


def batch(host: str, instance: str, seq: int, times: list[int], sensors: int = 2) -> IngestItem:
    """One batch: load1 at every time, and temperature of ``sensors`` sensors."""
    builder = BatchBuilder()
    for t in times:
        builder.add(t, LOAD, (), 100 + seq)
        for s in range(sensors):
            builder.add(t, TEMP, (f"s{s}",), 200 + s)
    payload = encode(builder.build(host=host, instance=instance, seq=seq, sent_ms=times[-1]))
    return IngestItem(validate_batch(decode(payload)), payload, times[-1] + 500, False)


def samples_in(item: IngestItem) -> int:
    return item.batch.sample_count


def open_store(where: Path | Stores) -> SQLStorage:
    """The store of ``where``: a SQLite file in a directory, or the backend under test."""
    if isinstance(where, Stores):
        return where.open(compact_delay_ms=0)
    return SQLiteStorage(where / "edgemon.db", compact_delay_ms=0)


def accounts(storage: SQLStorage) -> Accounting:
    found = accounting_of(storage)
    assert found is not None
    return found


def fill(storage: SQLStorage) -> dict[tuple[str, str, int], IngestItem]:
    """web-01: instance a seqs 0-9 without 3, 4 and 7 (declared last 12), instance b 0-2;
    db-01: instance c 5-6 (nothing declared). One cycle every 10 s, 3 cycles a batch."""
    items: dict[tuple[str, str, int], IngestItem] = {}
    for host, instance, seqs, offset in (("web-01", "a", [0, 1, 2, 5, 6, 8, 9], 0),
                                         ("web-01", "b", [0, 1, 2], 600_000),
                                         ("db-01", "c", [5, 6], 0)):
        for seq in seqs:
            start = T0 + offset + seq * 30_000
            items[(host, instance, seq)] = batch(host, instance, seq,
                                                 [start, start + 10_000, start + 20_000])
    storage.store_batches(list(items.values()))
    storage.record_status("web-01", "a", False, T0 + 400_000, T0 + 400_000, last_seq=12)
    storage.record_status("web-01", "a", True, T0 + 100_000, T0 + 100_000, last_seq=4)  # older
    storage.record_status("web-01", "b", True, T0 + 600_000, T0 + 600_000)  # no last_seq
    return items


def test_instances_batches_samples_ranges_and_gaps_at_the_end(stores: Stores) -> None:
    storage = open_store(stores)
    items = fill(storage)
    # duplicates count nothing
    storage.store_batches([items[("web-01", "a", 0)], items[("db-01", "c", 5)]])
    accounting = accounts(storage)
    [web] = accounting.hosts("web-01")
    a, b = web.instances
    per_batch = samples_in(items[("web-01", "a", 0)])
    assert per_batch == 9
    assert (a.instance, a.batches, a.samples, a.samples_complete) == ("a", 7, 7 * 9, True)
    assert (a.first_seq, a.last_seq, a.declared_last_seq, a.declared_ms) == (0, 9, 12, T0 + 400_000)
    assert a.seq_ranges == [(0, 2), (5, 6), (8, 9)]
    assert [(g.first_missing, g.last_missing) for g in a.gaps] == [(3, 4), (7, 7), (10, 12)]
    assert a.missing_batches == 2 + 1 + 3
    assert (b.batches, b.samples, b.declared_last_seq, b.missing_batches) == (3, 27, None, 0)
    assert (web.batches, web.samples, web.missing_batches) == (10, 90, 6)
    hosts = {h.host: h for h in accounting.hosts(detail=False)}
    assert (hosts["db-01"].batches, hosts["db-01"].samples, hosts["db-01"].missing_batches) == (
        2, 18, 0)
    assert hosts["db-01"].instances[0].gaps == []  # not listed without detail
    assert [(g.host, g.instance, g.first_missing, g.last_missing) for g in accounting.gaps()] == [
        ("web-01", "a", 3, 4), ("web-01", "a", 7, 7), ("web-01", "a", 10, 12)]

    # compaction moves the samples elsewhere; what was stored stays counted
    storage.compact_all(T0 + 86_400_000)
    assert accounting.hosts("web-01")[0].samples == 90
    # the missing batches arrive late: the gaps close, the counts grow
    late = [batch("web-01", "a", seq, [T0 + seq * 30_000]) for seq in (3, 4, 7, 10, 11, 12)]
    storage.store_batches(late)
    [web] = accounting.hosts("web-01")
    assert (web.instances[0].missing_batches, web.instances[0].gaps) == (0, [])
    assert web.samples == 90 + 6 * 3
    storage.close()


def test_an_instance_whose_every_batch_was_lost_shows_them_all_missing(stores: Stores) -> None:
    storage = open_store(stores)
    storage.record_status("edge-7", "gone", False, T0, T0, last_seq=4)
    [edge] = accounts(storage).hosts("edge-7")
    assert (edge.batches, edge.missing_batches) == (0, 5)
    assert [(g.first_missing, g.last_missing) for g in edge.instances[0].gaps] == [(0, 4)]
    storage.close()


def test_a_database_from_before_accounting_counts_what_it_can_and_says_so(
        tmp_path: Path) -> None:
    storage = open_store(tmp_path)
    items = fill(storage)
    storage.compact_all(T0 + 86_400_000)  # web-01 and db-01 batches compacted
    storage.store_batches([batch("web-01", "b", 3, [T0 + 700_000])])  # pending
    storage.close()
    db = sqlite3.connect(tmp_path / "edgemon.db")
    db.executescript("DROP TRIGGER instance_accounts_stored; DROP TRIGGER "
                     "instance_accounts_forgotten; DROP TABLE instance_accounts;")
    db.close()
    storage = open_store(tmp_path)
    [web] = SQLiteAccounting(storage.path).hosts("web-01")
    a, b = web.instances
    assert (a.batches, a.samples, a.samples_complete) == (7, 0, False)
    assert (b.batches, b.samples, b.samples_complete) == (4, 3, False)
    assert not web.samples_complete
    storage.store_batches([items[("web-01", "a", 0)],  # a duplicate: not counted
                           batch("web-01", "c", 0, [T0 + 800_000])])
    [web] = SQLiteAccounting(storage.path).hosts("web-01")
    assert [(i.instance, i.samples, i.samples_complete) for i in web.instances] == [
        ("a", 0, False), ("b", 3, False), ("c", 3, True)]
    storage.close()


@pytest.mark.parametrize("stage", ["pending", "compacted"])
def test_samples_of_a_host_in_a_time_range_are_counted_exactly(stores: Stores,
                                                               stage: str) -> None:
    storage = open_store(stores)
    rng = random.Random(12)
    times: list[int] = []
    items = []
    t = T0 + 5
    for seq in range(60):
        cycle = []
        for _ in range(4):
            t += rng.randint(900, 11_000)
            cycle.append(t)
        times += cycle
        items.append(batch("web-01", "a", seq, cycle, sensors=rng.randint(0, 3)))
    storage.store_batches(items)
    storage.store_batches([batch("db-01", "z", 0, times[:10])])  # another host: not counted
    if stage == "compacted":
        storage.compact_all(T0 + 86_400_000)
    samples_at = {}
    for item in items:
        for s in range(len(item.batch.t)):
            ts = sum(item.batch.t[:s + 1])
            samples_at[ts] = item.batch.sample_count // len(item.batch.t)
    for _ in range(8):
        lo, hi = sorted(rng.sample(range(T0, t + 2), 2))
        counted = count_samples(storage, "web-01", lo, hi)
        expected = sum(n for ts, n in samples_at.items() if lo <= ts < hi)
        assert (counted.samples, counted.exact, counted.tiers) == (
            expected, True, ["raw"] if expected else []), (lo, hi)
        assert counted.samples == sum(counted.by_metric.values())
    assert count_samples(storage, "web-01", T0, t + 1).samples == sum(samples_at.values())
    with pytest.raises(ValueError, match="start must be before end"):
        count_samples(storage, "web-01", T0, T0)
    storage.close()


# --- HTTP --------------------------------------------------------------------------------------

def api(storage: Any, test: Callable[[TestClient], Awaitable[None]]) -> None:
    async def main() -> None:
        app = create_app(storage, clock_ms=lambda: T0 + 3_600_000)
        async with TestClient(TestServer(app)) as client:
            await test(client)

    asyncio.run(main())


async def get(client: TestClient, url: str, status: int = 200) -> Any:
    resp = await client.get(url)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text)


def test_the_accounting_endpoint(stores: Stores) -> None:
    storage = open_store(stores)
    fill(storage)

    async def t(client: TestClient) -> None:
        doc = await get(client, "/edgemon/api/v1/accounting")
        assert doc["hosts"] == [
            {"host": "db-01", "instances": 1, "batches": 2, "samples": 18,
             "samples_complete": True, "missing_batches": 0},
            {"host": "web-01", "instances": 2, "batches": 10, "samples": 90,
             "samples_complete": True, "missing_batches": 6}]
        doc = await get(client, "/edgemon/api/v1/accounting?host=web-01")
        a = doc["instances"][0]
        assert (a["instance"], a["seq_ranges"], a["declared_last_seq"], a["missing_batches"]) == (
            "a", [[0, 2], [5, 6], [8, 9]], 12, 6)
        assert a["gaps"][-1] == {"host": "web-01", "instance": "a", "first_missing": 10,
                                 "last_missing": 12, "missing": 3}
        assert "range" not in doc
        # instance a's batch 0: 3 cycles of 3 samples from T0; b's start 10 minutes later
        doc = await get(client, f"/edgemon/api/v1/accounting?host=web-01&start={T0}"
                                f"&end={T0 + 20_001}")
        assert doc["range"] == {"start": T0, "end": T0 + 20_001, "samples": 9,
                                "by_metric": {"load1": 3, "temperature_celsius": 6},
                                "tiers": ["raw"], "exact": True}
        doc = await get(client, "/edgemon/api/v1/accounting?host=web-01&start=now-2h")
        assert doc["range"]["samples"] == 90
        gaps = await get(client, "/edgemon/api/v1/gaps?host=web-01")
        assert [(g["first_missing"], g["last_missing"]) for g in gaps["gaps"]] == [
            (3, 4), (7, 7), (10, 12)]
        for bad, status, words in (
                ("host=nosuch", 404, "unknown host"), ("host=bad%20id", 400, "'host'"),
                ("start=now-1h", 400, "'start': needs host"),
                ("host=web-01&end=now", 400, "'start': required with end"),
                ("host=web-01&start=now&end=now-1h", 400, "'start': must be before end"),
                ("host=web-01&start=yesterday", 400, "'start'"),
                ("host=web-01&bogus=1", 400, "'bogus'")):
            doc = await get(client, f"/edgemon/api/v1/accounting?{bad}", status)
            assert words in doc["error"], (bad, doc)
        spec = await get(client, "/edgemon/api/v1/openapi.json")
        params = {p["name"]: p for p in
                  spec["paths"]["/edgemon/api/v1/accounting"]["get"]["parameters"]}
        assert params["host"]["schema"]["maxLength"] == 64
        step = {p["name"]: p for p in
                spec["paths"]["/edgemon/api/v1/query"]["get"]["parameters"]}["step"]
        assert {"type": "number", "minimum": 1} in step["schema"]["oneOf"]

    api(storage, t)
    storage.close()


def test_every_query_parameter_states_its_bounds(tmp_path: Path) -> None:
    """Every parameter of every path of edgemon's own API says its type, and strings their
    syntax: an enum, a pattern, or (free-form times and label values) a description of it."""
    storage = open_store(tmp_path)

    async def t(client: TestClient) -> None:
        spec = await get(client, "/edgemon/api/v1/openapi.json")
        for path, methods in spec["paths"].items():
            if not path.startswith("/edgemon/api/v1/") or "alerts" in path or "silences" in path:
                continue
            for operation in methods.values():
                for p in operation.get("parameters", []):
                    schema = p["schema"]
                    variants = schema.get("oneOf", [schema])
                    for v in variants:
                        v = v.get("items", v)
                        assert "type" in v, (path, p["name"])
                        if v["type"] == "string":
                            assert ("enum" in v or "pattern" in v or "maxLength" in v
                                    or "now" in p["description"]), (path, p["name"])

    api(storage, t)
    storage.close()
