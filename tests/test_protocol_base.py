"""Batches that go on from an earlier batch (SPEC.md §9.1): round trips, what is refused, and
ingest resolving them from its memory or from the stored base (real storage, SQLite and
PostgreSQL; the end-to-end fallbacks through Mosquitto are in tests/test_wire_catalogue.py)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from edgemon.collector.ingest.workers import Task, _slot_of
from edgemon.protocol import ProtocolError, encode
from edgemon.protocol.base import (
    UNKNOWN_BASE,
    base_check,
    base_values,
    last_values,
    rebase,
)
from edgemon.protocol.batch import BatchBuilder, MetricDef
from edgemon.protocol.catalogue import (
    catalogue_id,
    compact,
    decode_catalogue,
    decode_received,
    encode_catalogue,
)
from edgemon.protocol.codec import BASED_DICTIONARY_ID
from edgemon.protocol.fast_reader import read_fast
from edgemon.protocol.limits import MAX_INT
from edgemon.protocol.topics import catalogue_topic, metrics_topic
from tests.test_protocol_catalogue import NOW, _message, _run, ingest  # noqa: F401

CPU = MetricDef("cpu_seconds_total", "counter", "seconds", 2, ("cpu",))
MEM = MetricDef("memory_free_bytes", "gauge", "bytes")
LOAD = MetricDef("load1", "gauge", "", 2)


def _batch(rng: random.Random, seq: int, start: int, state: dict[Any, int],
           holes: bool = True) -> dict[str, Any]:
    """Six cycles of a host whose counters climb, memory moves by pages, load wanders."""
    builder = BatchBuilder()
    for cycle in range(6):
        ts = start + cycle * 10_000
        for cpu in ("0", "1", "total"):
            state[cpu] = state.get(cpu, rng.randrange(10**9)) + rng.randrange(1000)
            builder.add(ts, CPU, (cpu,), state[cpu])
        state["mem"] = state.get("mem", 4096 * rng.randrange(10**6)) + 4096 * rng.randint(-99, 99)
        builder.add(ts, MEM, (), state["mem"])
        if not holes or rng.random() < 0.7:
            builder.add(ts, LOAD, (), rng.randrange(400))
    return builder.build(host="h-a", instance="inst", seq=seq, sent_ms=start + 60_000)


def _catalogue(metrics: list[list[Any]], ident: str) -> Any:
    return decode_catalogue(encode_catalogue(host="h-a", instance="inst", metrics=metrics,
                                             ident=ident))


def test_based_batches_resolve_to_exactly_the_inline_batch() -> None:
    rng = random.Random(7)
    state: dict[Any, int] = {}
    previous = _batch(rng, 1, NOW - 200_000, state)
    metrics = None
    for seq in range(2, 30):
        inline = _batch(rng, seq, NOW - 200_000 + 60_000 * (seq - 1), state)
        metrics, ident, referencing = compact(inline, metrics)
        based = rebase(referencing, metrics, last_values(previous["metrics"]), seq - 1)
        assert based is not None and "values" not in based and based["base"][0] == seq - 1
        catalogue = _catalogue(metrics, ident)
        lasts = last_values(previous["metrics"])
        got, referencing_form = decode_received(
            encode(based, dict_id=BASED_DICTIONARY_ID), {ident: catalogue}.get,
            lambda i, s, c, lasts=lasts, seq=seq: base_values(lasts, c)
            if (i, s) == ("inst", seq - 1) else None)
        assert referencing_form and got.to_map() == inline
        previous = inline
    assert based.get("factors"), "memory moves by pages: its numbers share a factor"


def test_counters_go_as_second_differences_and_a_steady_rate_costs_zeros() -> None:
    builder = BatchBuilder()
    for cycle in range(4):
        builder.add(NOW + cycle * 10_000, CPU, ("0",), 1000 + 30 * (cycle + 1))
    inline = builder.build(host="h-a", instance="inst", seq=2, sent_ms=NOW + 60_000)
    metrics, _ident, referencing = compact(inline)
    based = rebase(referencing, metrics, {("cpu_seconds_total", ("0",)): 1000}, 1)
    assert based is not None
    assert based["bvalues"] == [1, 0, 0, 0] and based["factors"] == [[0, 30]]
    assert based["base"] == [1, base_check([1000])]


def _pair(seed: int) -> tuple[dict[str, Any], dict[str, Any], Any, dict[str, Any],
                              dict[Any, int]]:
    """(inline batch 2, its referencing map, its catalogue, its based map on batch 1, batch 1's
    last values)."""
    rng = random.Random(seed)
    state: dict[Any, int] = {}
    previous = _batch(rng, 1, NOW - 120_000, state, holes=False)
    inline = _batch(rng, 2, NOW - 60_000, state, holes=False)
    metrics, ident, referencing = compact(inline)
    lasts = last_values(previous["metrics"])
    based = rebase(referencing, metrics, lasts, 1)
    assert based is not None
    return inline, referencing, _catalogue(metrics, ident), based, lasts


def test_a_base_that_is_not_held_or_not_the_one_checked_is_unknown_base() -> None:
    inline, referencing, catalogue, based, lasts = _pair(3)
    ident = catalogue.id
    payload = encode(based)
    wrong = {k: v + 1 for k, v in lasts.items()}  # e.g. a base stored with a series dropped
    for lookup in (None, lambda i, s, c: None, lambda i, s, c: base_values(wrong, c)):
        with pytest.raises(ProtocolError) as info:
            decode_received(payload, {ident: catalogue}.get, lookup)
        assert info.value.reason == UNKNOWN_BASE and info.value.batch_key == ("inst", 2)
    # the inline and the plain referencing forms of the same batch need no base
    assert decode_received(encode(referencing), {ident: catalogue}.get)[0].to_map() == inline


def test_malformed_based_batches_are_schema_errors() -> None:
    inline, _referencing, catalogue, based, lasts = _pair(5)
    ident = catalogue.id

    def lookup(i: str, s: int, c: Any) -> list[int]:
        return base_values(lasts, c)

    for change in ({"values": [1]}, {"base": None}, {"bvalues": None}, {"base": [2, 1]},
                   {"base": [1]}, {"base": [1, -1]}, {"bvalues": based["bvalues"][:-1]},
                   {"factors": [[0, 1]]}, {"factors": [[99, 2]]}, {"factors": [[0, 2], [0, 2]]},
                   {"factors": 3}, {"catalogue": None}):
        bad = {k: v for k, v in {**based, **change}.items() if v is not None}
        with pytest.raises(ProtocolError) as info:
            decode_received(encode(bad), {ident: catalogue}.get, lookup)
        assert info.value.reason == "schema", change
    # an inline batch holding based keys is not a based batch: refused too, never half-read
    with pytest.raises(ProtocolError) as info:
        decode_received(encode({**inline, "bvalues": [1]}), {ident: catalogue}.get, lookup)
    assert info.value.reason == "schema"


def test_numbers_beyond_64_bits_are_never_sent_based() -> None:
    builder = BatchBuilder()
    builder.add(NOW, CPU, ("0",), MAX_INT)
    builder.add(NOW + 10_000, CPU, ("0",), MAX_INT)
    inline = builder.build(host="h-a", instance="inst", seq=2, sent_ms=NOW + 60_000)
    metrics, _ident, referencing = compact(inline)
    assert rebase(referencing, metrics, {("cpu_seconds_total", ("0",)): -5}, 1) is None


def test_the_fast_reader_leaves_based_batches_to_the_pure_reader() -> None:
    based = _pair(1)[3]
    if read_fast is None:
        pytest.skip("msgspec is not installed")
    assert read_fast(msgpack.packb(based)) is None


# --- ingest: from memory, from the stored base, or unknown_base ----------------------------------

def _series(seq: int, value: int) -> dict[str, Any]:
    return {"v": 1, "host": "h-a", "instance": "inst", "seq": seq, "sent": NOW,
            "t": [NOW - 20_000 - 60_000 * (10 - seq), 10_000, 10_000],
            "metrics": [["load1", "gauge", "", 2, [], [[[], 0, [42, 1, 1]]]],
                        ["net_bytes_total", "counter", "bytes", 0, ["iface"],
                         [[["eth0"], 0, [value, 4000, 4000]]]]]}


def test_ingest_resolves_a_based_batch_from_memory_then_from_the_stored_base(
        ingest: Any) -> None:  # noqa: F811
    pipeline, storage, acks = ingest
    first = _series(1, 10**12)
    metrics, ident, referencing = compact(first)
    message = encode_catalogue(host="h-a", instance="inst", metrics=metrics, ident=ident)
    _run(pipeline, _message(catalogue_topic("h-a"), message, 1))
    [stored] = _run(pipeline, _message(metrics_topic("h-a"), encode(referencing), 2))
    assert stored.result.stored and acks.sent[-1][1].get("bases") is True
    lasts = last_values(first["metrics"])
    for seq, mid in ((2, 3), (3, 5)):
        inline = _series(seq, 10**12 + 8000 + 12000 * (seq - 2) + 4000)
        metrics, ident2, referencing = compact(inline, metrics)
        assert ident2 == ident
        based = encode(rebase(referencing, metrics, lasts, seq - 1),
                       dict_id=BASED_DICTIONARY_ID)
        [outcome] = _run(pipeline, _message(metrics_topic("h-a"), based, mid))
        assert outcome.kind == "metrics" and outcome.result.stored, outcome
        assert decode_received(storage.stored_batch("h-a", "inst", seq), {}.get)[0].to_map() \
            == inline  # stored resolved: it reads on its own
        lasts = last_values(inline["metrics"])
        pipeline.examiner.bases._cached.clear()  # as after a restart: the stored base is read
    assert pipeline.examiner.bases.storage_reads == 1
    # a base this collector never stored: unknown_base, and the agent is told which batch
    inline = _series(9, 10**13)
    _m, _i, referencing = compact(inline, metrics)
    based = encode(rebase(referencing, metrics, lasts, 7), dict_id=BASED_DICTIONARY_ID)
    [outcome] = _run(pipeline, _message(metrics_topic("h-a"), based, 9))
    assert (outcome.kind, outcome.reason) == ("reject", UNKNOWN_BASE)
    assert acks.sent[-1] == ("h-a", {"instance": "inst", "acked": [], "rejected": [9],
                                     "reason": UNKNOWN_BASE})


def test_ingest_workers_resolve_based_batches_from_their_own_cache_and_after_a_restart(
        ingest: Any) -> None:  # noqa: F811
    """With worker processes (``[ingest] workers``) each host's batches go to one worker, whose
    cache holds the base; a worker started again (its cache gone) is given the stored base; a
    base that was never stored is still ``unknown_base``. Two hosts on different workers."""
    import os
    import signal

    pipeline, storage, _acks = ingest
    pipeline.loop.run_until_complete(pipeline.start_pool())
    try:
        assert pipeline.pool is not None and len(pipeline.pool.pids()) == 2
        assert {_slot_of(Task(metrics_topic(h), b"", 0), 2) for h in ("h-a", "h-d")} == {0, 1}
        state: dict[str, Any] = {}
        mid = 1
        for host in ("h-a", "h-d"):
            first = dict(_series(1, 10**12), host=host)
            metrics, ident, referencing = compact(first)
            message = encode_catalogue(host=host, instance="inst", metrics=metrics, ident=ident)
            _run(pipeline, _message(catalogue_topic(host), message, mid))
            [stored] = _run(pipeline, _message(metrics_topic(host), encode(referencing), mid + 1))
            assert stored.result.stored, stored
            state[host] = (metrics, last_values(first["metrics"]))
            mid += 2
        for seq in (2, 3, 4):
            if seq == 4:  # every worker starts again with nothing cached
                for pid in pipeline.pool.pids():
                    os.kill(pid, signal.SIGKILL)
            for host in ("h-a", "h-d"):
                metrics, lasts = state[host]
                inline = dict(_series(seq, 10**12 + 12000 * seq), host=host)
                _m, _i, referencing = compact(inline, metrics)
                based = encode(rebase(referencing, metrics, lasts, seq - 1),
                               dict_id=BASED_DICTIONARY_ID)
                [outcome] = _run(pipeline, _message(metrics_topic(host), based, mid))
                mid += 1
                assert outcome.kind == "metrics" and outcome.result.stored, (seq, host, outcome)
                assert decode_received(storage.stored_batch(host, "inst", seq), {}.get
                                       )[0].to_map() == inline
                state[host] = (metrics, last_values(inline["metrics"]))
        metrics, lasts = state["h-d"]
        _m, _i, referencing = compact(dict(_series(9, 10**13), host="h-d"), metrics)
        based = encode(rebase(referencing, metrics, lasts, 7), dict_id=BASED_DICTIONARY_ID)
        [outcome] = _run(pipeline, _message(metrics_topic("h-d"), based, mid))
        assert (outcome.kind, outcome.reason) == ("reject", UNKNOWN_BASE)
        assert pipeline.pool.restarts >= 1
    finally:
        pipeline.loop.run_until_complete(pipeline.close_pool())


def test_resolving_the_costliest_based_batch_stays_within_the_stated_bound() -> None:
    """MAX_DECODE_BYTES (SPEC.md §6) holds for based batches too, though resolving builds a
    second list of numbers: counters (their running sums are new integers) of 3-digit CPython
    integers (beyond 2^60), as many as the resolved batch's packed-size bound lets through."""
    import tracemalloc

    from edgemon.protocol.limits import (
        MAX_COMPRESSED_BYTES,
        MAX_DECODE_BYTES,
        MAX_DECOMPRESSED_BYTES,
        MAX_TIMESTAMPS,
    )

    n, series = MAX_TIMESTAMPS, 226  # 925,696 numbers: the most that resolve within 8 MiB
    metrics = [["m_total", "counter", "", 0, ["s"], [[str(s)] for s in range(series)]]]
    catalogue = _catalogue(metrics, catalogue_id(metrics))
    big = 2**61
    x = [big] + [-2 * big if i % 2 else 2 * big for i in range(1, n)]  # sums: +-2^61
    based = {"v": 1, "host": "h-a", "instance": "inst", "seq": 2, "sent": NOW,
             "t": [NOW - n] + [1] * (n - 1), "catalogue": catalogue.id,
             "base": [1, base_check([0] * series)], "bvalues": x * series}
    assert len(msgpack.packb(based)) <= MAX_DECOMPRESSED_BYTES
    payload = encode(based, level=1)
    del based, x
    tracemalloc.start()
    try:
        batch, _ = decode_received(payload, {catalogue.id: catalogue}.get,
                                   lambda i, s, c: [0] * series)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert batch.sample_count == n * series
    total = peak + MAX_COMPRESSED_BYTES + MAX_DECOMPRESSED_BYTES
    print(f"based: {peak / 2**20:.1f} MiB built, {total / 2**20:.1f} MiB in all "
          f"(bound {MAX_DECODE_BYTES / 2**20:.1f} MiB)")
    assert total <= MAX_DECODE_BYTES
