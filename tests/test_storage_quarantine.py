"""Defence in depth: a stored batch that storage cannot read is quarantined, never fatal.

Unreadable payloads are written straight into the store (bypassing ingest, as a bug in ingest's
checks or an older collector would have). Whatever the class of damage, compaction, queries
(one host and fleet-wide), the series list and the maintenance runner keep working for every
other batch and host; the bad batch is moved to ``quarantine`` once, counted per host, logged
once, and never read again. Storage reads payloads with ingest's own decoder, so what that
decoder and the schema accept, storage reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

from edgemon.collector.http.metrics import CollectorMetrics
from edgemon.collector.ingest.pipeline import IngestStats
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage.base import IngestItem, RangeQuery
from edgemon.collector.storage.batches import BatchReader, UnreadableBatch, read_batch
from edgemon.collector.storage.maintenance import MaintenanceRunner
from edgemon.collector.storage.sql import SQLStorage
from edgemon.protocol import GAUGE, BatchBuilder, MetricDef, ProtocolError, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support.storages import Stores

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_780_012_800_000  # a UTC midnight
CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
GOOD_HOSTS = ("good-01", "good-02")
BAD = "bad-01"
CYCLES = 6


def raw_batch(host: str, seq: int, start: int = T0) -> dict[str, Any]:
    builder = BatchBuilder()
    for k in range(CYCLES):
        for cpu in ("0", "1"):
            builder.add(start + k * 10_000, CPU, (cpu,), 1000 + seq * 10 + k)
    return builder.build(host=host, instance="i1", seq=seq, sent_ms=start + CYCLES * 10_000)


def item(host: str, seq: int, payload: bytes | None = None) -> IngestItem:
    """A batch as ingest would store it; ``payload`` replaces the bytes kept (bypassing ingest's
    checks, like a bug in them would)."""
    raw = raw_batch(host, seq, T0 + seq * CYCLES * 10_000)
    good = encode(raw)
    batch = validate_batch(decode(good))
    return IngestItem(batch, good if payload is None else payload, batch.sent + 100, False)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(data)


def _packed(doc: Any) -> bytes:
    return _zstd(msgpack.packb(doc, use_bin_type=True))


def _mutated(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = raw_batch(BAD, 1)
    change(doc)
    return _packed(doc)


def _other_dictionary(payload: bytes) -> bytes:
    """The frame, naming a dictionary id nobody published (its 1-byte id field patched)."""
    descriptor = payload[4]
    assert descriptor & 0x03 == 1, "expected a 1-byte dictionary id field"
    at = 5 + (0 if descriptor & 0x20 else 1)  # after the window descriptor, if any
    assert zstandard.get_frame_parameters(payload).dict_id == payload[at]
    return payload[:at] + bytes([200]) + payload[at + 1:]


def _set_entry(part: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["metrics"][0][5][0][part] = value
    return change


# One payload per class of damage: the transport, the encoding, the layout, the values.
UNREADABLE: dict[str, bytes] = {
    "not zstd": b"\x00garbage, not a zstd frame" * 4,
    "truncated frame": encode(raw_batch(BAD, 1))[:-7],
    "unknown dictionary": _other_dictionary(encode(raw_batch(BAD, 1))),
    "not msgpack": _zstd(b"\xc1\xc1\xc1 never msgpack"),
    "not a map": _packed([1, 2, 3]),
    "wrong version": _mutated(lambda d: d.update(v=99)),
    "series past the timestamps": _mutated(_set_entry(1, CYCLES + 3)),
    "negative offset": _mutated(_set_entry(1, -1)),
    "labels do not match keys": _mutated(_set_entry(0, ["0", "extra"])),
    "float values": _mutated(_set_entry(2, [1.5, 2.5])),
    "string values": _mutated(_set_entry(2, ["1", "2"])),
    "empty values": _mutated(_set_entry(2, [])),
    "value beyond 64 bits": _mutated(_set_entry(2, [2**64 - 1])),
    "decreasing timestamps": _mutated(lambda d: d.update(t=[T0, -5, 10_000, 10_000, 1, 1])),
    "metric not a list": _mutated(lambda d: d.update(metrics=[{"name": "x"}])),
    "unknown kind": _mutated(lambda d: d["metrics"][0].__setitem__(1, "histogram")),
    "scale out of range": _mutated(lambda d: d["metrics"][0].__setitem__(3, 40)),
}


def store(stores: Stores, **opts: Any) -> SQLStorage:
    opts.setdefault("compact_delay_ms", 0)
    return stores.open(**opts)


def fleet_query(**kw: Any) -> RangeQuery:
    return RangeQuery(name=CPU.name, start_ms=T0, end_ms=T0 + DAY, step_ms=HOUR,
                      aggregation="count", **kw)


def stored_with_poison(stores: Stores, payload: bytes, **opts: Any) -> SQLStorage:
    st = store(stores, **opts)
    items = [item(h, seq) for h in GOOD_HOSTS for seq in (1, 2, 3)]
    items.insert(2, item(BAD, 1, payload))  # between the good ones, in one transaction
    items.append(item(BAD, 2))  # the bad host's next batch is fine
    assert all(r.stored for r in st.store_batches(items))
    return st


def count_by_host(st: SQLStorage, **kw: Any) -> dict[str | None, float]:
    return {r.host: sum(v for _, v in r.points)
            for r in st.query(fleet_query(group_by=("host",), **kw))}


GOOD_SAMPLES = 3 * CYCLES * 2  # per good host: 3 batches x 6 cycles x 2 cpus


@pytest.mark.parametrize("damage", sorted(UNREADABLE))
def test_unreadable_batch_is_quarantined_and_stops_nothing(
        stores: Stores, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UnreadableBatch):
        read_batch(UNREADABLE[damage])
    st = stored_with_poison(stores, UNREADABLE[damage])
    caplog.set_level(logging.WARNING, logger="edgemon.collector.storage")
    expected = {**dict.fromkeys(GOOD_HOSTS, GOOD_SAMPLES), BAD: CYCLES * 2}

    # pending: queries for one host, for every host, and the series list all answer
    assert count_by_host(st) == expected
    assert count_by_host(st, hosts=("good-01",)) == {"good-01": GOOD_SAMPLES}
    assert {s.host for s in st.series()} == {*GOOD_HOSTS, BAD}
    assert len(st.series(host=BAD)) == 2  # the readable batch's two series

    # compaction proceeds for every other batch and host, and finishes
    steps = st.compact_all(T0 + 2 * DAY)
    assert steps < 20
    assert st.backlog(T0 + 2 * DAY)["pending_batches"] == 0
    assert count_by_host(st) == expected
    assert st.stats().quarantined == {BAD: 1}

    # never retried: more maintenance and queries neither decode nor log it again
    decoded = st.reader.decoded
    st.compact_all(T0 + 2 * DAY)
    count_by_host(st)
    st.series()
    assert st.reader.decoded == decoded
    assert st.stats().quarantined == {BAD: 1}
    warnings = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(warnings) == 1 and f"{BAD}/i1/1" in warnings[0].getMessage()
    with st._read() as db:
        row = db.execute("SELECT h.name, q.instance, q.seq, q.reason, q.payload, "
                         "q.quarantined_ms FROM quarantine q JOIN hosts h ON "
                         "h.id = q.host_id").fetchall()
    assert [r[:3] for r in row] == [(BAD, "i1", 1)]
    assert row[0][3] and row[0][4] == UNREADABLE[damage] and row[0][5] == T0 + 2 * DAY
    st.close()


def test_readers_have_it_quarantined_before_its_compaction_is_due(stores: Stores) -> None:
    """A query that meets the bad batch skips it; the next maintenance step moves it aside
    even though no compaction is due yet (the other batches stay pending)."""
    st = stored_with_poison(stores, UNREADABLE["not zstd"], compact_delay_ms=HOUR)
    now = T0 + 10 * MIN  # before the compaction delay
    assert count_by_host(st)[BAD] == CYCLES * 2
    assert st.maintain_step(now) is False
    assert st.stats().quarantined == {BAD: 1}
    assert st.backlog()["pending_batches"] == 2 * 3 + 1
    assert count_by_host(st)["good-02"] == GOOD_SAMPLES
    st.close()


def test_quarantine_survives_a_restart_and_reaches_metrics(stores: Stores) -> None:
    st = stored_with_poison(stores, UNREADABLE["series past the timestamps"])
    st.compact_all(T0 + DAY)
    st.close()
    st = store(stores)
    runner = MaintenanceRunner(st, clock_ms=lambda: T0 + DAY)
    assert runner.run_round() is False
    assert runner.stats.quarantined == {BAD: 1}
    metrics = CollectorMetrics(process=False)
    metrics.attach(stats=IngestStats(), rejects=Rejects(), maintenance=runner)
    text = metrics.text()
    assert f'edgemon_storage_quarantined_batches_total{{host="{BAD}"}} 1.0\n' in text
    assert "# TYPE edgemon_storage_quarantined_batches_total counter" in text
    st.close()


def test_quarantined_payload_is_dropped_with_the_raw_tier(stores: Stores) -> None:
    """The row (and the count) stays; the payload goes once raw data of its time expired."""
    st = stored_with_poison(stores, UNREADABLE["not zstd"], raw_retention_ms=DAY)
    st.compact_all(T0 + HOUR)
    assert Stores.sql(st, "SELECT length(payload) FROM quarantine") > 0
    st.compact_all(T0 + 3 * DAY)
    assert Stores.sql(st, "SELECT length(payload) FROM quarantine") == 0
    assert st.stats().quarantined == {BAD: 1}
    st.close()


# Payloads ingest's decoder may or may not accept (unknown keys, odd values): storage agrees
# with it either way. Accepted and valid -> readable; refused -> quarantined, never a crash.
def _unknown_key(value: Any) -> bytes:
    doc = raw_batch(BAD, 1)
    packed = msgpack.packb(doc, use_bin_type=True)
    extra = msgpack.packb({"zz_unknown": 0})[1:]  # one more key/value pair
    key, _ = extra[:11], extra[11:]
    body = bytearray(packed)
    body[0] += 1  # fixmap header: one more entry
    return _zstd(bytes(body) + key + value)


EDGE_CASES = {
    "unknown key, invalid UTF-8": _unknown_key(b"\xa2\xff\xfe"),
    "unknown key, timestamp ext": _unknown_key(b"\xd6\xff\x00\x00\x00\x01"),
    "unknown key, map keyed by an array": _unknown_key(b"\x81\x91\x01\x02"),
    "unknown key, big empty arrays": _unknown_key(b"\x93" + b"\x90" * 3),
    "version as a float": _mutated(lambda d: d.update(v=1.0)),
    "version as a boolean": _mutated(lambda d: d.update(v=True)),
    "second frame after the batch": encode(raw_batch(BAD, 1)) + encode(raw_batch(BAD, 1)),
}


def _ingest_accepts(payload: bytes) -> bool:
    try:
        validate_batch(decode(payload))
    except ProtocolError:
        return False
    return True


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_storage_reads_what_ingest_accepts_and_quarantines_the_rest(stores: Stores,
                                                                    case: str) -> None:
    payload = EDGE_CASES[case]
    st = stored_with_poison(stores, payload)
    st.compact_all(T0 + DAY)
    accepted = _ingest_accepts(payload)
    assert st.stats().quarantined == ({} if accepted else {BAD: 1})
    expected_bad = CYCLES * 2 * (2 if accepted else 1)
    assert count_by_host(st) == {**dict.fromkeys(GOOD_HOSTS, GOOD_SAMPLES), BAD: expected_bad}
    st.close()


def test_batch_reader_caches_within_its_bound_and_forgets() -> None:
    payloads = [encode(raw_batch("h", seq)) for seq in range(1, 6)]
    one = read_batch(payloads[0]).nbytes + len(payloads[0])
    reader = BatchReader(max_bytes=int(one * 2.5))
    for p in payloads + payloads:
        reader.read(p)
    assert reader.decoded == 5 + 3  # the first two stayed cached, the others did not fit
    assert reader.used <= reader.max_bytes
    reader.forget(payloads[:2])
    assert reader.used == 0
    reader.read(payloads[4], keep=False)
    assert reader.used == 0  # a last read is not kept
    with pytest.raises(UnreadableBatch, match="not_zstd"):
        reader.read(b"nope")
    with pytest.raises(UnreadableBatch, match="not_zstd"):
        reader.read(b"nope")
    assert reader.decoded == 5 + 3 + 1 + 1  # the failure was remembered


def test_alert_rules_keep_evaluating_the_fleet(stores: Stores, tmp_path: Path) -> None:
    """The issue's worst case: one unreadable batch made every metric rule fail for everyone."""
    from edgemon.collector.alerting import AlertEngine, parse_rules

    rules = parse_rules('[settings]\nsettle = "0s"\n\n[[receiver]]\nname = "ops"\n'
                        'url = "http://127.0.0.1:9/hook"\n\n[[rule]]\nname = "cpu-busy"\n'
                        'kind = "threshold"\nmetric = "cpu_usage_percent"\nwindow = "1m"\n'
                        'threshold = 5\nfor = "1m"\n')
    st = stored_with_poison(stores, UNREADABLE["not msgpack"], compact_delay_ms=HOUR)
    engine = AlertEngine(st, tmp_path / "alerts.db", rules=rules,
                         clock_ms=lambda: T0 + 4 * MIN)
    report = engine.run_cycle()
    assert "error" not in report.rules["cpu-busy"], report.rules
    assert report.rules["cpu-busy"]["series"] == 3 * 2  # two cpus of every host, bad-01 too
    from edgemon.collector.http.alerts_api import active_alerts  # after the engine: no cycle

    firing = {a["host"] for a in active_alerts(engine, status="firing")}
    assert set(GOOD_HOSTS) <= firing  # three minutes above the threshold: firing
    st.maintain_step(T0 + 4 * MIN)
    assert st.stats().quarantined == {BAD: 1}
    engine.close()
    st.close()


# --- with compaction in its own process (storage/compaction_process.py) -------------------------

KEEP_ALL = {"raw_retention_ms": 3000 * DAY, "rollup_1m_retention_ms": 3000 * DAY,
            "rollup_1h_retention_ms": 3000 * DAY}  # the test data is months old


def _compaction_options(stores: Stores, delay_ms: int) -> dict[str, Any]:
    return {"compact_delay_ms": delay_ms, **KEEP_ALL,
            **({"pool_size": 2} if stores.backend == "postgres" else {})}


def _exported_csv(st: SQLStorage, host: str) -> list[dict[str, str]]:
    import csv
    import io

    from edgemon.collector.http import export

    req = export.ExportRequest(hosts=(host,), metrics=(CPU.name,), start_ms=T0,
                               end_ms=T0 + DAY, step_ms=None, agg="avg", csv=True)
    text = "".join(export.samples_csv(st, req, export.select_series(st, req)))
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("damage", ["not msgpack", "value beyond 64 bits"])
def test_the_compaction_process_quarantines_and_compacts_everyone_else(
        stores: Stores, damage: str) -> None:
    """An unreadable batch written straight into the store, compaction in its own process:
    the child compacts every other batch, quarantines the bad one (counted in the parent's
    view, for /metrics), and fails no round; queries and the export of other hosts answer."""
    from edgemon.collector.storage.compaction_process import CompactionProcess
    from tests.support.waiting import wait_until

    options = _compaction_options(stores, 0)
    st = stored_with_poison(stores, UNREADABLE[damage], **options)
    proc = CompactionProcess(stores.location, options, st, interval=0.05)
    proc.start()
    try:
        wait_until(lambda: proc.stats.quarantined == {BAD: 1}
                   and st.backlog()["pending_batches"] == 0, 120, "the child's quarantine")
        assert proc.errors == 0 and proc.restarts == 0
    finally:
        proc.stop()
    assert count_by_host(st) == {**dict.fromkeys(GOOD_HOSTS, GOOD_SAMPLES), BAD: CYCLES * 2}
    assert len(_exported_csv(st, "good-01")) == GOOD_SAMPLES
    assert len(_exported_csv(st, BAD)) == CYCLES * 2  # its readable batch
    assert Stores.sql(st, "SELECT count(*) FROM quarantine") == 1
    st.close()


def test_a_batch_the_parents_readers_met_is_quarantined_by_the_child(stores: Stores) -> None:
    """Nothing is due for compaction yet: a query in the collector's process meets the bad
    batch, skips it and notes it; the compaction process quarantines it at its next step."""
    from edgemon.collector.storage.compaction_process import CompactionProcess
    from tests.support.waiting import wait_until

    options = _compaction_options(stores, 3000 * DAY)
    st = stored_with_poison(stores, UNREADABLE["truncated frame"], **options)
    proc = CompactionProcess(stores.location, options, st, interval=0.05)
    proc.start()
    try:
        wait_until(lambda: proc.runs > 0, 120, "a round of the child")
        assert proc.stats.quarantined == {}  # nothing read it yet: nothing known
        assert count_by_host(st)[BAD] == CYCLES * 2  # the query skips it (and notes it)
        wait_until(lambda: proc.stats.quarantined == {BAD: 1}, 120, "the child's quarantine")
        assert st.backlog()["pending_batches"] == 2 * 3 + 1  # the others wait for their time
        assert count_by_host(st)["good-02"] == GOOD_SAMPLES
        assert proc.errors == 0
    finally:
        proc.stop()
    st.close()
