"""Series catalogues and batches naming one (SPEC.md §9): vectors, round trips, hostile input,
and ingest keeping catalogues per host (real SQLite storage, no broker needed here; the end to
end flow through Mosquitto is tests/test_wire_catalogue.py)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from edgemon import protocol
from edgemon.collector.config import IngestConfig
from edgemon.collector.ingest.inbox import Inbox, RawMessage
from edgemon.collector.ingest.pipeline import IngestPipeline
from edgemon.protocol import ProtocolError, decode, encode, expand_samples
from edgemon.protocol.catalogue import (
    UNKNOWN_CATALOGUE,
    Catalogue,
    catalogue_id,
    compact,
    decode_catalogue,
    decode_received,
    encode_catalogue,
)
from edgemon.protocol.codec import decompress
from edgemon.protocol.limits import MAX_CATALOGUES_PER_HOST, MAX_LABEL_VALUES
from edgemon.protocol.topics import catalogue_topic, metrics_topic
from tests.support.storages import Stores

VECTORS = Path(protocol.__file__).parent / "vectors"
SPEC = Path(protocol.__file__).parent / "SPEC.md"
NOW = 1_795_464_030_000


def _hex(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def _basic() -> dict[str, Any]:
    return json.loads((VECTORS / "v1-basic.json").read_text())


def _declared(batch: dict[str, Any], instance: str | None = None
              ) -> tuple[Catalogue, bytes, bytes]:
    """(catalogue, catalogue message, referencing payload) of an inline batch map."""
    metrics, ident, referencing = compact(batch)
    message = encode_catalogue(host=batch["host"], instance=instance or batch["instance"],
                               metrics=metrics, ident=ident)
    return decode_catalogue(message), message, encode(referencing)


# --- vectors ------------------------------------------------------------------------------------

def test_catalogue_vectors_decode_to_the_basic_batch() -> None:
    catalogue_payload, referencing_payload = _hex("v1-catalogue.hex"), _hex("v1-referencing.hex")
    assert msgpack.unpackb(decompress(catalogue_payload)) == json.loads(
        (VECTORS / "v1-catalogue.json").read_text())
    assert msgpack.unpackb(decompress(referencing_payload)) == json.loads(
        (VECTORS / "v1-referencing.json").read_text())
    catalogue = decode_catalogue(catalogue_payload)
    assert catalogue.id == catalogue_id(catalogue.metrics) == "372ab9ec3fdc4e8f"
    batch, referencing = decode_received(referencing_payload, {catalogue.id: catalogue}.get)
    assert referencing
    assert batch.to_map() == decode(_hex("v1-basic.hex"))  # the very same batch as inline
    samples = [s._asdict() for s in expand_samples(batch.to_map())]
    assert samples == json.loads((VECTORS / "v1-basic.samples.json").read_text())


def test_the_spec_shows_the_catalogue_vectors() -> None:
    spec = SPEC.read_text()
    for name in ("v1-catalogue.hex", "v1-referencing.hex"):
        assert (VECTORS / name).read_text().strip() in spec


def test_a_reader_without_the_catalogue_refuses_the_batch_with_its_key() -> None:
    with pytest.raises(ProtocolError) as err:
        decode_received(_hex("v1-referencing.hex"), lambda ident: None)
    assert err.value.reason == UNKNOWN_CATALOGUE
    assert err.value.batch_key == ("3f9a1c7e52d0", 42)  # so the collector can tell the agent
    with pytest.raises(ProtocolError):  # an inline-only reader refuses it as a whole
        decode(_hex("v1-referencing.hex"))


# --- round trips --------------------------------------------------------------------------------

def _batch(metrics: list[list[Any]], n_times: int = 4) -> dict[str, Any]:
    return {"v": 1, "host": "h-1", "instance": "inst", "seq": 3, "sent": NOW,
            "t": [NOW - 40_000] + [10_000] * (n_times - 1), "metrics": metrics}


@pytest.mark.parametrize("metrics", [
    # dense series only
    [["a_bytes", "gauge", "bytes", 0, ["dev"],
      [[["x"], 0, [5, 1, 1, 1]], [["y"], 0, [7, 0, 0, 0]]]]],
    # a hole (two entries), a late start, a single value at the end, no labels
    [["b_total", "counter", "", 0, ["k"],
      [[["p"], 0, [1, 1]], [["p"], 3, [9]], [["q"], 2, [4, 4]]]],
     ["c", "gauge", "percent", 2, [], [[[], 0, [1, 2, 3, 4]]]]],
    # an extension key rides along
    [["d", "gauge", "", 0, [], [[[], 1, [1, 2, 3]]]]],
])
def test_resolving_gives_back_exactly_the_inline_batch(metrics: list[list[Any]]) -> None:
    batch = _batch(metrics)
    batch["note_key"] = "kept"
    catalogue, _, payload = _declared(batch)
    resolved, referencing = decode_received(payload, {catalogue.id: catalogue}.get)
    assert referencing and resolved.to_map() == protocol.schema.validate_batch(batch).to_map()


def test_a_catalogue_may_list_series_a_batch_does_not_carry() -> None:
    full = _batch([["m", "gauge", "", 0, ["k"], [[["a"], 0, [1, 0, 0, 0]],
                                                  [["b"], 0, [2, 0, 0, 0]]]]])
    catalogue, _, _ = _declared(full)
    raw = {"v": 1, "host": "h-1", "instance": "inst", "seq": 4, "sent": NOW, "t": full["t"],
           "catalogue": catalogue.id, "values": [2, 0, 0, 0], "sparse": [[0, []]]}
    resolved, _ = decode_received(encode(raw), {catalogue.id: catalogue}.get)
    assert [(s.labels, s.value) for s in expand_samples(resolved.to_map())] == [({"k": "b"}, 2)] * 4


# --- hostile input ------------------------------------------------------------------------------

def _catalogue_message(metrics: Any, ident: str | None = None, host: str = "h-1",
                       **extra: Any) -> bytes:
    doc = {"v": 1, "host": host, "instance": "inst",
           "id": ident if ident is not None else catalogue_id(metrics), "metrics": metrics,
           **extra}
    return encode(doc)


@pytest.mark.parametrize(("metrics", "ident", "reason"), [
    ([["m", "gauge", "", 0, [], [[]]]], "0" * 16, "catalogue_hash"),  # not its content hash
    ([["m", "gauge", "", 0, [], [[]]]], "XYZ", "schema"),
    ([["m", "gauge", "", 0, ["k"], [["a"], ["a"]]]], None, "schema"),  # a series twice
    ([["m", "gauge", "", 0, ["k"], [["a", "b"]]]], None, "schema"),  # values != keys
    ([["m", "gauge", "", 0, [], [[]]], ["m", "gauge", "", 0, [], [[]]]], None, "schema"),
    ([["9bad", "gauge", "", 0, [], [[]]]], None, "schema"),
    ([["m", "histogram", "", 0, [], [[]]]], None, "schema"),
    ([["m", "gauge", "", 0, [], [[[1]]]]], None, "schema"),  # nested where strings belong
    ([["m", "gauge", "", 0, ["k"], [["v"]] * 2 + [[1]]]], None, "schema"),
])
def test_bad_catalogues_are_refused(metrics: Any, ident: str | None, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_catalogue(_catalogue_message(metrics, ident))
    assert err.value.reason == reason


def test_a_catalogue_is_bounded_like_a_batch() -> None:
    keys = [f"k{i}" for i in range(16)]
    series = [[f"{j}-{i}" for i in range(16)] for j in range(MAX_LABEL_VALUES // 16 + 1)]
    with pytest.raises(ProtocolError) as err:
        decode_catalogue(_catalogue_message([["m", "gauge", "", 0, keys, series]], "0" * 16))
    assert err.value.reason == "too_many_label_values"  # refused before the hash is computed


@pytest.mark.parametrize(("change", "reason"), [
    ({"values": [1, 2, 3]}, "schema"),  # not dense series x timestamps
    ({"sparse": [[5, []]]}, "schema"),  # no series 5 in the catalogue
    ({"sparse": [[0, []], [0, []]]}, "schema"),  # listed twice
    ({"sparse": [[0, [[2, [1, 1, 1]]]]], "values": [2, 0, 0, 0]}, "schema"),  # past the end
    ({"sparse": [[0, [[0, [1, 1]], [1, [1]]]]], "values": [2, 0, 0, 0]}, "schema"),  # overlap
    ({"sparse": [[0, [["x", [1]]]]], "values": [2, 0, 0, 0]}, "schema"),
    ({"metrics": []}, "schema"),  # both forms at once
    ({"catalogue": "not-hex"}, "schema"),
    ({"values": [1 << 63, 0, 0, 0, 0, 0, 0, 0]}, "not_msgpack"),  # beyond int64 (uint64)
])
def test_bad_referencing_batches_are_refused(change: dict[str, Any], reason: str) -> None:
    batch = _batch([["m", "gauge", "", 0, ["k"], [[["a"], 0, [1, 0, 0, 0]],
                                                  [["b"], 0, [2, 0, 0, 0]]]]])
    catalogue, _, _ = _declared(batch)
    raw = {"v": 1, "host": "h-1", "instance": "inst", "seq": 4, "sent": NOW, "t": batch["t"],
           "catalogue": catalogue.id, "values": [1, 0, 0, 0, 2, 0, 0, 0], **change}
    payload = encode(raw) if "values" not in change or max(change["values"]) < 1 << 63 \
        else _raw_encode(raw)
    with pytest.raises(ProtocolError) as err:
        decode_received(payload, {catalogue.id: catalogue}.get)
    assert err.value.reason == reason or (reason == "not_msgpack"
                                          and err.value.reason == "schema")
    assert err.value.batch_key == ("inst", 4)  # refused for good: its agent is told


def _raw_encode(raw: dict[str, Any]) -> bytes:
    import zstandard

    from edgemon.protocol.codec import dictionary
    return zstandard.ZstdCompressor(dict_data=dictionary(1), write_content_size=True).compress(
        msgpack.packb(raw))


def test_a_small_referencing_batch_cannot_resolve_into_a_huge_one() -> None:
    keys = [f"k{i}" for i in range(16)]
    labels = [["x" * 200 + f"{j:03d}-{i}" for i in range(16)] for j in range(200)]
    metrics = [["m", "gauge", "", 0, keys, labels]]
    catalogue = decode_catalogue(_catalogue_message(metrics))
    n_times = 4096
    raw = {"v": 1, "host": "h-1", "instance": "inst", "seq": 1, "sent": NOW,
           "t": [NOW - n_times] + [1] * (n_times - 1), "catalogue": catalogue.id,
           "values": [0] * (200 * n_times // 2), "sparse": [
               [j, [[k, [0]] for k in range(0, n_times, 2)]] for j in range(100)]}
    with pytest.raises(ProtocolError) as err:
        decode_received(encode(raw), {catalogue.id: catalogue}.get)
    assert err.value.reason in ("too_many_label_values", "decompressed_too_large",
                                "too_many_series")


# --- ingest: catalogues are per host, bounded per host ------------------------------------------

class _Acks:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def ack(self, msg: RawMessage) -> bool:
        return True

    def publish_ack(self, host: str, instance: str, seqs: list[int], **kw: Any) -> bool:
        self.sent.append((host, {"instance": instance, "acked": seqs, **kw}))
        return True

    def after_release(self) -> None:
        pass

    def charge(self, host: str, size: int) -> None:  # resolving's cost: no rate limit here
        pass


def _message(topic: str, payload: bytes, mid: int) -> RawMessage:
    return RawMessage(topic=topic, payload=payload, mid=mid, qos=1, retain=False,
                      received_ms=NOW, generation=0, size=len(payload))


@pytest.fixture
def ingest(stores: Stores) -> Any:
    """The ingest pipeline over a store, on SQLite and on PostgreSQL."""
    storage = stores.open()
    acks = _Acks()
    loop = asyncio.new_event_loop()
    with ThreadPoolExecutor(1) as writer:
        inbox = Inbox(loop, max_messages=1000, max_bytes=1 << 24)
        pipeline = IngestPipeline(storage=storage, inbox=inbox, mqtt=acks,  # type: ignore[arg-type]
                                  config=IngestConfig(), writer=writer)
        pipeline.loop = loop  # type: ignore[attr-defined]
        yield pipeline, storage, acks
    loop.close()
    storage.close()


def _run(pipeline: IngestPipeline, *msgs: RawMessage) -> list[Any]:
    return pipeline.loop.run_until_complete(  # type: ignore[attr-defined, no-any-return]
        pipeline.process(list(msgs)))


def _live(host: str, seq: int) -> dict[str, Any]:
    return {"v": 1, "host": host, "instance": "inst", "seq": seq, "sent": NOW,
            "t": [NOW - 20_000, 10_000, 10_000],
            "metrics": [["load1", "gauge", "", 2, [], [[[], 0, [42, 1, 1]]]]]}


def test_ingest_acknowledges_a_catalogue_then_stores_batches_naming_it_resolved(
        ingest: Any) -> None:
    pipeline, storage, acks = ingest
    _, message, payload = _declared(_live("h-a", 1))
    _run(pipeline, _message(catalogue_topic("h-a"), message, 1))
    ident = decode_catalogue(message).id
    assert acks.sent == [("h-a", {"instance": "inst", "acked": [], "catalogues": [ident]})]
    assert storage.catalogue("h-a", ident) == message
    [outcome] = _run(pipeline, _message(metrics_topic("h-a"), payload, 2))
    assert outcome.kind == "metrics" and outcome.result.stored
    assert acks.sent[-1] == ("h-a", {"instance": "inst", "acked": [1], "bases": True})
    assert pipeline.stats.referencing_batches == 1


def test_a_host_cannot_use_or_overwrite_another_hosts_catalogue(ingest: Any) -> None:
    pipeline, storage, acks = ingest
    catalogue, message, _ = _declared(_live("h-a", 1))
    _run(pipeline, _message(catalogue_topic("h-a"), message, 1))
    # h-b names h-a's catalogue: unknown for h-b (ids are per host), refused with the reason
    _, _, payload_b = _declared(_live("h-b", 1))
    [outcome] = _run(pipeline, _message(metrics_topic("h-b"), payload_b, 2))
    assert (outcome.kind, outcome.reason) == ("reject", UNKNOWN_CATALOGUE)
    assert acks.sent[-1] == ("h-b", {"instance": "inst", "acked": [], "rejected": [1],
                                     "reason": UNKNOWN_CATALOGUE})
    # h-b publishes h-a's catalogue message on its own topic: refused (host mismatch)
    [outcome] = _run(pipeline, _message(catalogue_topic("h-b"), message, 3))
    assert (outcome.kind, outcome.reason) == ("reject", "host_mismatch")
    assert storage.catalogue("h-b", catalogue.id) is None
    assert storage.catalogue("h-a", catalogue.id) == message  # h-a's is untouched


def test_a_host_keeps_only_its_newest_catalogues(ingest: Any) -> None:
    pipeline, storage, _ = ingest
    other = _declared(_live("h-b", 1))[1]
    _run(pipeline, _message(catalogue_topic("h-b"), other, 1))
    idents = []
    for i in range(MAX_CATALOGUES_PER_HOST + 3):
        batch = _live("h-a", 1)
        batch["metrics"][0][0] = f"m{i}"
        _, message, _ = _declared(batch)
        idents.append(decode_catalogue(message).id)
        _run(pipeline, RawMessage(topic=catalogue_topic("h-a"), payload=message, mid=i, qos=1,
                                  retain=False, received_ms=NOW + i, generation=0,
                                  size=len(message)))
    kept = [i for i in idents if storage.catalogue("h-a", i) is not None]
    assert kept == idents[-MAX_CATALOGUES_PER_HOST:]
    assert storage.catalogue("h-b", decode_catalogue(other).id) == other  # not crowded out


def test_a_storage_without_catalogues_acknowledges_none_so_agents_stay_inline() -> None:
    from tests.support.fake_storage import MemoryStorage

    loop = asyncio.new_event_loop()
    acks = _Acks()
    with ThreadPoolExecutor(1) as writer:
        pipeline = IngestPipeline(
            storage=MemoryStorage(), inbox=Inbox(loop, max_messages=10, max_bytes=1 << 20),
            mqtt=acks, config=IngestConfig(), writer=writer)  # type: ignore[arg-type]
        message = _declared(_live("h-a", 1))[1]
        [outcome] = loop.run_until_complete(pipeline.process(
            [_message(catalogue_topic("h-a"), message, 1)]))
        assert (outcome.kind, outcome.reason) == ("reject", "catalogues_unsupported")
        assert acks.sent == []  # never acknowledged: the agent never names it
        inline = encode(_live("h-a", 1))
        [outcome] = loop.run_until_complete(pipeline.process(
            [_message(metrics_topic("h-a"), inline, 2)]))
        assert outcome.result.stored and acks.sent == [("h-a", {"instance": "inst",
                                                                "acked": [1], "bases": True})]
    loop.close()


def test_mutated_catalogues_and_referencing_batches_fail_only_with_protocol_errors() -> None:
    """Random byte changes to the unpacked vectors: every outcome is a checked result or a
    ``ProtocolError`` (never another exception, never a resolved batch breaking a rule)."""
    import random

    import zstandard

    from edgemon.protocol.codec import dictionary
    from edgemon.protocol.schema import validate_batch

    rng = random.Random(17)
    compressor = zstandard.ZstdCompressor(dict_data=dictionary(1), write_content_size=True)
    catalogue = decode_catalogue(_hex("v1-catalogue.hex"))
    originals = [decompress(_hex("v1-catalogue.hex")), decompress(_hex("v1-referencing.hex"))]
    outcomes = {"refused": 0, "accepted": 0}
    for i in range(3000):
        packed = bytearray(originals[i % 2])
        for _ in range(rng.randint(1, 4)):
            packed[rng.randrange(len(packed))] = rng.randrange(256)
        payload = compressor.compress(bytes(packed))
        try:
            if i % 2 == 0:
                decode_catalogue(payload)
            else:
                batch, _ = decode_received(payload, {catalogue.id: catalogue}.get)
                validate_batch(batch.to_map())  # what was accepted holds every inline rule
            outcomes["accepted"] += 1
        except ProtocolError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 2000 and outcomes["accepted"] > 0, outcomes


def test_a_host_declaring_many_catalogues_pushes_out_its_own_cached_ones() -> None:
    from edgemon.collector.ingest.catalogues import CatalogueCache
    from tests.support.fake_storage import MemoryStorage

    cache = CatalogueCache(MemoryStorage(), max_series=100, max_host_series=30)

    def catalogue(host: str, i: int, series: int) -> Catalogue:
        metrics = [[f"m{i}", "gauge", "", 0, ["k"], [[str(n)] for n in range(series)]]]
        return decode_catalogue(_catalogue_message(metrics, host=host))

    good = catalogue("h-good", 0, 20)
    cache.put(good)
    noisy = [catalogue("h-noisy", i, 10) for i in range(20)]
    for c in noisy:
        cache.put(c)
    assert cache.get("h-good", good.id) is good  # still cached, not read again
    assert cache.misses == 0
    kept = [c for c in noisy if ("h-noisy", c.id) in cache._cached]
    assert kept == noisy[-3:]  # its own share: 30 series


def test_values_and_sparse_are_keys_of_a_referencing_batch_only() -> None:
    batch = _live("h-a", 1)
    batch["values"] = [1, 2, 3]  # registered by §9: not an unknown key an inline batch may carry
    with pytest.raises(ProtocolError) as err:
        decode_received(encode(batch), lambda ident: None)
    assert (err.value.reason, err.value.batch_key) == ("schema", ("inst", 1))


def test_a_redeclared_catalogue_counts_as_the_newest(stores: Stores) -> None:
    """Storage level, both backends: declaring a kept catalogue again makes it the newest (an
    older received time never makes it older), so the host's oldest other one goes first."""
    storage = stores.open()
    try:
        idents = [f"{i:016x}" for i in range(MAX_CATALOGUES_PER_HOST)]
        for i, ident in enumerate(idents):
            storage.store_catalogue("h-a", ident, ident.encode(), NOW + i)
        storage.store_catalogue("h-a", idents[0], b"again", NOW + 100)  # payload kept as first
        storage.store_catalogue("h-a", idents[0], b"again", NOW - 100)  # not made older
        storage.store_catalogue("h-a", "f" * 16, b"new", NOW + 101)
        kept = [i for i in idents if storage.catalogue("h-a", i) is not None]
        assert kept == [idents[0], *idents[2:]]
        assert storage.catalogue("h-a", idents[0]) == idents[0].encode()
        assert storage.catalogue("h-a", "f" * 16) == b"new"
    finally:
        storage.close()


def test_a_referencing_batch_over_the_hosts_series_bound_is_stored_screened(
        ingest: Any) -> None:
    from edgemon.collector.ingest.cardinality import SeriesLimits

    pipeline, storage, _ = ingest
    pipeline.series_limits = SeriesLimits(1, 1000)  # room for one series of the host
    batch = _live("h-a", 1)
    batch["metrics"].append(["load5", "gauge", "", 2, [], [[[], 0, [40, 1, 1]]]])
    _, message, payload = _declared(batch)
    _run(pipeline, _message(catalogue_topic("h-a"), message, 1))
    [outcome] = _run(pipeline, _message(metrics_topic("h-a"), payload, 2))
    assert outcome.kind == "metrics" and outcome.result.stored
    assert outcome.result.samples == 3 and sum(n for n, _ in outcome.dropped.values()) == 1
    assert [s.name for s in storage.series(host="h-a")] == ["load1"]
