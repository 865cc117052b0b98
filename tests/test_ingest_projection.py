"""Ingest hands the cache of pending batches the columns it needs (``Facts.projected``,
``pending_cache.projection_of``): a batch stored with them is never decoded again for the alert
rules, and what the cache then answers is exactly what decoding the stored payload gives —
whatever form the batch came in (inline, with series screened out, naming a catalogue, based on
an earlier batch) and whether a worker process or the writer thread examined it."""

from __future__ import annotations

import asyncio
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgemon.collector.config import IngestConfig
from edgemon.collector.storage.base import RangeQuery
from edgemon.collector.storage.batches import BatchColumns, read_batch
from edgemon.collector.storage.pending_cache import Projection, project, projection_of
from edgemon.protocol import decode_batch, encode
from edgemon.protocol.topics import metrics_topic
from tests.support.storages import Stores
from tests.test_hostile_references import (
    CPU_NET,
    FIRST,
    LASTS,
    NOW,
    _message,
    _run,
    _started_pipeline,
    based,
    declare,
    referencing,
)

NAMES = ("cpu_usage_percent", "net_bytes_total", "load1")


def _inline(host: str, seq: int, cpu: list[int]) -> tuple[str, bytes]:
    """Two CPUs and load; a CPU over 100 % is screened out (``percent_out_of_range``)."""
    return metrics_topic(host), encode({
        "v": 1, "host": host, "instance": "inst", "seq": seq, "sent": NOW,
        "t": [NOW - 20_000, 10_000, 10_000],
        "metrics": [["cpu_usage_percent", "gauge", "percent", 2, ["cpu"],
                     [[["0"], 0, [cpu[0], 1, -1]], [["1"], 1, [cpu[1], 5]]]],
                    ["load1", "gauge", "", 2, [], [[[], 0, [42, 1, 1]]]]]})


def _same(got: BatchColumns, expected: BatchColumns) -> None:
    assert got.metrics == expected.metrics
    assert got.labels == expected.labels
    for a, b in ((got.bounds, expected.bounds), (got.ts, expected.ts),
                 (got.values, expected.values)):
        assert a.dtype == b.dtype == np.int64 and a.tolist() == b.tolist()
        assert not a.flags.writeable
    assert got.nbytes == expected.nbytes


@pytest.mark.parametrize("names", [frozenset(NAMES), frozenset({"load1"}),
                                   frozenset({"absent"})])
def test_a_projection_is_what_the_stored_payloads_columns_project_to(names: frozenset[str]
                                                                     ) -> None:
    _topic, payload = _inline("h", 1, [1000, 2000])
    batch = decode_batch(payload)
    p = projection_of(batch.t, batch.metrics, names)
    assert p is not None and p.names == names
    expected = project(read_batch(payload), names)
    _same(p.columns, expected)
    again = pickle.loads(pickle.dumps(p))  # as it crosses the pipe from a worker
    assert isinstance(again, Projection) and again.names == names
    _same(again.columns, expected)
    assert projection_of(batch.t, batch.metrics, frozenset()) is None


@pytest.mark.parametrize("pooled", [False, True], ids=["writer-thread", "workers"])
def test_ingest_fills_the_cache_with_what_decoding_the_stored_batch_gives(
        stores: Stores, pooled: bool) -> None:
    storage = stores.open(compact_delay_ms=0)
    for name in NAMES:  # the metrics the alert rules read (``AlertEngine._announce_metrics``)
        storage.pending_cache.read(name)
    ident, catalogue = declare("h-ref", CPU_NET)
    groups = [
        [_message(*_inline("h-in", 1, [1000, 2000]), 1),
         _message(*_inline("h-screened", 1, [1000, 20_000]), 2),  # cpu 1 at 200 %: dropped
         _message(*catalogue, 3)],
        [_message(*referencing("h-ref", ident, 1, FIRST), 4)],
        [_message(*based("h-ref", ident, 2, (1, LASTS), [5, 0, 0, 0, 0, 0]), 5),
         _message(*_inline("h-in", 2, [3000, 4000]), 6)],
    ]
    loop = asyncio.new_event_loop()
    config = IngestConfig(workers=2 if pooled else 0)
    with ThreadPoolExecutor(1) as writer:
        pipeline = _started_pipeline(storage, loop, config, writer)
        try:
            outcomes = [o for group in groups for o in _run(pipeline, *group)]
        finally:
            if pooled:
                loop.run_until_complete(pipeline.close_pool())
    loop.close()
    assert [(o.kind, o.reason) for o in outcomes] == [
        ("metrics", None), ("metrics", None), ("catalogue", None), ("metrics", None),
        ("metrics", None), ("metrics", None)], [(o.kind, o.reason, o.detail) for o in outcomes]
    assert outcomes[1].dropped == {"percent_out_of_range": (1, outcomes[1].dropped[
        "percent_out_of_range"][1])}
    rows = stores.sql(storage, "SELECT count(*) FROM batches")
    assert rows == 5 and len(storage.pending_cache) == 5
    names = storage.pending_cache.hot()
    with storage._read() as db:
        stored = [(i, bytes(b)) for i, b in db.execute("SELECT id, payload FROM batches")]
    for batch_id, payload in stored:
        [entry] = [k for k in storage.pending_cache.idents() if k[0] == batch_id]
        for name in NAMES:
            got = storage.pending_cache.get(entry, name)
            assert got is not None
            _same(got, project(read_batch(payload), names))
    # the rules' queries decode no payload, and answer what a reader without the cache does
    queries = [RangeQuery(name=name, start_ms=NOW - 60_000, end_ms=NOW + 60_000, step_ms=1,
                          aggregation="last", max_points=10**9) for name in NAMES]
    got = [storage.query(q) for q in queries]
    assert storage.reader.decoded == 0 and storage.pending_cache.decoded == 0
    cold = stores.open(pending_cache_mb=0)
    try:
        assert got == [cold.query(q) for q in queries]
    finally:
        cold.close()
    assert any(r.points for r in got[1])  # the catalogue's counter is there
    storage.close()


def test_a_batch_stored_without_a_projection_is_decoded_as_before(stores: Stores) -> None:
    storage = stores.open(compact_delay_ms=0)
    storage.pending_cache.read("load1")
    loop = asyncio.new_event_loop()
    with ThreadPoolExecutor(1) as writer:
        pipeline = _started_pipeline(storage, loop, IngestConfig(workers=0), writer)
        _run(pipeline, _message(*_inline("h-in", 1, [1000, 2000]), 1))
    loop.close()
    storage.pending_cache.clear()  # as when the cache was full
    q = RangeQuery(name="load1", start_ms=NOW - 60_000, end_ms=NOW + 60_000, step_ms=1,
                   aggregation="last", max_points=10**9)
    assert storage.query(q)[0].points
    assert storage.reader.decoded == 1 and storage.pending_cache.decoded == 1
    storage.close()


def test_every_accepted_corpus_batch_projects_to_what_its_stored_bytes_read_as() -> None:
    """The fuzz corpus (hostile and odd payloads of every shape ingest accepts or refuses): for
    each batch ingest accepts, the projection it hands over on all of the batch's metrics, and
    on a part of them, is what a reader projects from the bytes stored."""
    from edgemon.collector.ingest.examine import Examiner
    from tests.test_fuzz_ingest import CORPUS, CORPUS_WINDOW, _corpus

    def examiner() -> Examiner:
        return Examiner(300, CORPUS_WINDOW["past_tolerance_days"], whole_batches=True)

    accepted = 0
    for name, _reason in _corpus():
        topic_file = CORPUS / f"{name}.topic"
        topic = topic_file.read_bytes().decode("utf-8", "replace") if topic_file.exists() \
            else "edgemon/v1/fuzz-host/metrics"
        payload = (CORPUS / f"{name}.bin").read_bytes()
        first = examiner().examine(topic, payload, NOW, admit=lambda *a: {})
        if first.kind not in ("metrics", "backfill"):
            continue
        accepted += 1
        stored = first.payload if first.payload is not None else payload
        columns = read_batch(stored)
        every = frozenset(m.name for m in columns.metrics)
        for names in (every, frozenset(sorted(every)[::2]) or frozenset({"x"})):
            facts = examiner().examine(topic, payload, NOW, admit=lambda *a: {}, project=names)
            assert facts.projected is not None, name
            _same(facts.projected.columns, project(columns, names))
    assert accepted >= 5
