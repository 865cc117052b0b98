"""Protocol v1: test vectors, codec round trips, limits, topics, status and ack messages."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemon import protocol
from edgemon.protocol import BatchBuilder, MalformedPayload, MetricDef, ProtocolError
from edgemon.protocol.limits import (
    MAX_COMPRESSED_BYTES,
    MAX_DECODE_BYTES,
    MAX_DECOMPRESSED_BYTES,
    MAX_EXTENSION_ELEMENTS,
    MAX_LABEL_VALUES,
    MAX_LABELS,
    MAX_METRICS,
    MAX_SAMPLES,
    MAX_SERIES,
    MAX_TIMESTAMPS,
)
from edgemon.protocol.reader import read_batch_map
from edgemon.protocol.schema import check_decoded, validate_batch

VECTORS = Path(protocol.__file__).parent / "vectors"


def test_spec_vector_decodes_to_documented_json() -> None:
    payload = bytes.fromhex((VECTORS / "v1-basic.hex").read_text().strip())
    batch = protocol.decode(payload)
    assert batch == json.loads((VECTORS / "v1-basic.json").read_text())
    samples = [s._asdict() for s in protocol.expand_samples(batch)]
    assert samples == json.loads((VECTORS / "v1-basic.samples.json").read_text())
    assert validate_batch(batch).sample_count == len(samples) == 10


def test_spec_vector_decodes_with_plain_libraries() -> None:
    """What a third party does: any zstd + any msgpack, no edgemon code."""
    payload = bytes.fromhex((VECTORS / "v1-basic.hex").read_text().strip())
    assert zstandard.get_frame_parameters(payload).dict_id == 1
    raw_dict = (VECTORS.parent / "dictionaries" / "1.zdict").read_bytes()
    zdict = zstandard.ZstdCompressionDict(raw_dict)
    doc = msgpack.unpackb(zstandard.ZstdDecompressor(dict_data=zdict).decompress(payload))
    assert doc == json.loads((VECTORS / "v1-basic.json").read_text())


def test_frames_without_dictionary_are_accepted_and_unknown_ones_rejected() -> None:
    plain = zstandard.ZstdCompressor().compress(msgpack.packb(_good()))
    assert protocol.decode(plain)["seq"] == 1
    trained = zstandard.train_dictionary(
        1024, [msgpack.packb({**_good(), "seq": i}) for i in range(500)], dict_id=77)
    frame = zstandard.ZstdCompressor(dict_data=trained).compress(msgpack.packb(_good()))
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    assert info.value.reason == "unknown_dictionary"


def test_spec_embeds_the_vector_and_states_the_limits_of_limits_py() -> None:
    spec = (Path(protocol.__file__).parent / "SPEC.md").read_text()
    assert (VECTORS / "v1-basic.hex").read_text().strip() in spec
    assert f"{MAX_DECODE_BYTES:,} bytes" in spec
    assert f"{MAX_DECODE_BYTES / 2**20:.1f} MiB" in spec
    assert f"| {MAX_EXTENSION_ELEMENTS} |" in spec


# --- round trips -------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)
_label = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_int64 = st.integers(min_value=-(2**53), max_value=2**53)


@st.composite
def _readings(draw: st.DrawFn) -> list[tuple[int, MetricDef, tuple[str, ...], int]]:
    metrics = draw(st.lists(
        st.builds(MetricDef, _names, st.sampled_from(["gauge", "counter"]),
                  st.sampled_from(["", "bytes", "percent"]), st.integers(0, 4),
                  st.lists(_names, max_size=3, unique=True).map(tuple)),
        min_size=1, max_size=4, unique_by=lambda m: m.name))
    times = sorted(draw(st.sets(st.integers(1, 2**41), min_size=1, max_size=8)))
    out = []
    for m in metrics:
        for labels in draw(st.lists(st.tuples(*[_label] * len(m.label_keys)), min_size=1,
                                    max_size=3, unique=True)):
            for t in draw(st.lists(st.sampled_from(times), min_size=1, unique=True)):
                out.append((t, m, labels, draw(_int64)))
    return out


@settings(max_examples=300, deadline=None)
@given(_readings(), st.integers(0, 2**40))
def test_encode_decode_round_trip(readings: list, seq: int) -> None:
    builder = BatchBuilder()
    for t, m, labels, v in readings:
        builder.add(t, m, labels, v)
    wire = builder.build(host="h-1", instance="abc123", seq=seq, sent_ms=123)
    decoded = protocol.decode(protocol.encode(wire))
    valid = validate_batch(decoded)
    assert valid.seq == seq
    got = {(s.name, tuple(s.labels.values()), s.timestamp_ms): s.value
           for s in protocol.expand_samples(decoded)}
    want = {(m.name, labels, t): (v if m.scale == 0 else v / 10**m.scale)
            for t, m, labels, v in readings}
    assert got == want
    assert len(builder) == len(want) == valid.sample_count


# --- hostile or broken payloads ----------------------------------------------------------------

def _frame(obj: object, **kw: object) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(msgpack.packb(obj))


def _good() -> dict:
    b = BatchBuilder()
    b.add(1000, MetricDef("x", "gauge", "", 0, ("k",)), ("a",), 5)
    return b.build(host="h", instance="i", seq=1, sent_ms=1000)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "not_zstd"),
    (b"garbage" * 10, "not_zstd"),
    (b"\x00" * (2 << 20), "too_large"),
    # a 4 KiB frame that expands to 64 MiB
    (zstandard.ZstdCompressor().compress(b"\x00" * (64 << 20)), "decompressed_too_large"),
    # a frame that does not declare its size
    (zstandard.ZstdCompressor(write_content_size=False).compress(b"\x91\x01"),
     "decompressed_too_large"),
    (_frame([1, 2, 3]), "schema"),
    (_frame({"v": 2}), "version"),
    (zstandard.ZstdCompressor().compress(b"\xc1\xc1"), "not_msgpack"),
    # an array header claiming 4 billion elements in a 6-byte body
    (zstandard.ZstdCompressor().compress(b"\xdd\xff\xff\xff\xff"), "not_msgpack"),
    # nesting bomb
    (zstandard.ZstdCompressor().compress(b"\x91" * 100_000 + b"\x01"), "not_msgpack"),
])
def test_decode_rejects_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(payload)
    assert info.value.reason == reason


def test_frame_lying_about_its_size_is_rejected() -> None:
    frame = bytearray(_frame(_good()))
    real = protocol.decode(bytes(frame))
    assert real["seq"] == 1
    # the size field sits after magic (4) + descriptor (1) [+ window (1)]: flip bits in it
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size > 0
    frame[5] ^= 0x01
    with pytest.raises(ProtocolError):
        protocol.decode(bytes(frame))


@pytest.mark.parametrize(("change", "field"), [
    ({"seq": True}, "seq"),
    ({"seq": "1"}, "seq"),
    ({"seq": -1}, "seq"),
    ({"host": "a/b"}, "host id"),
    ({"host": "+"}, "host id"),
    ({"instance": "x" * 65}, "instance"),
    ({"t": [0]}, "timestamps"),
    ({"t": [5, 3, 0]}, "timestamps"),
    ({"t": [2**62, 2**62]}, "overflow"),
    ({"metrics": [["x", "gauge", "", 0, ["k"], [[["a", "b"], 0, [1]]]]]}, "label values"),
    ({"metrics": [["x", "gauge", "", 0, ["k"], [[["a"], 1, [1]]]]]}, "past"),
    ({"metrics": [["x", "gauge", "", 0, [], [[[], 0, [1]], [[], 0, [2]]]]]}, "repeats"),
    ({"metrics": [["x", "weird", "", 0, [], []]]}, "metrics"),
    ({"metrics": [["x", "gauge", "", 0, [], [[[], 0, [1.5]]]]]}, "metrics"),
    ({"t": [1000, 1], "metrics": [["x", "gauge", "", 0, [], [[[], 0, [2**62, 2**62]]]]]},
     "overflow"),
    ({"metrics": [["1x", "gauge", "", 0, [], []]]}, "metric name"),
    ({"metrics": [["x", "gauge", "", 0, [], []], ["x", "gauge", "", 0, [], []]]}, "repeated"),
    ({"metrics": [["x", "gauge", "", 12, [], []]]}, "metrics"),
])
def test_schema_rejects_naming_the_problem(change: dict, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_batch({**_good(), **change})
    assert field in str(info.value)


def test_unknown_keys_are_kept_when_their_values_are_plain_data() -> None:
    extra = {"future_field": [1, 2], "boot": {"id": "x", "n": -(2**63), "f": 0.5, "ok": True,
                                              "none": None, "deep": [[[[[[[1]]]]]]]}}
    payload = _frame({**_good(), **extra})
    assert protocol.decode(payload) == {**_good(), **extra}  # returned completely
    assert protocol.decode_batch(payload).extensions == extra
    assert validate_batch({**_good(), **extra}).extensions == extra


@pytest.mark.parametrize(("value", "reason"), [
    (float("nan"), "schema"), (float("inf"), "schema"), (b"bytes", "schema"),
    (msgpack.ExtType(5, b"x"), "schema"), (msgpack.Timestamp(1, 0), "schema"),
    (2**63, "schema"), ({1: "int key"}, "schema"), ({b"k": 1}, "schema"),
    ([[[[[[[[[1]]]]]]]]], "too_many_extension_elements"),  # 9 levels (at most 8)
    (list(range(1024)), "too_many_extension_elements"),  # 1025 elements with the list itself
    ("x" * 257, "schema"),
])
def test_unknown_keys_holding_anything_else_are_rejected(value: object, reason: str) -> None:
    payload = zstandard.ZstdCompressor().compress(
        msgpack.packb({**_good(), "extra": value}, use_bin_type=True))
    with pytest.raises(ProtocolError) as info:
        protocol.decode(payload)
    assert info.value.reason == reason
    assert info.value.batch_key == ("i", 1)  # its agent can be told the batch is refused


def test_unknown_keys_share_one_element_budget() -> None:
    fits = {**_good(), "a": list(range(511)), "b": list(range(511))}  # 1024 with the lists
    assert protocol.decode(_frame(fits))["b"] == list(range(511))
    with pytest.raises(ProtocolError, match="more than 1024 elements"):
        protocol.decode(_frame({**fits, "c": 0}))


@pytest.mark.parametrize("version", [1.0, True, "1", 2, 0, -1, None])
def test_version_is_the_integer_1(version: object) -> None:
    with pytest.raises(ProtocolError, match="version") as info:
        protocol.decode(_frame({**_good(), "v": version}))
    assert info.value.reason == "version"


@pytest.mark.parametrize(("tail", "reason"), [
    (b"\x00", "trailing_bytes"),
    (b"junk" * 10, "trailing_bytes"),
    (zstandard.ZstdCompressor().compress(b"\x80"), "trailing_bytes"),  # a second frame
    ((0x184D2A50).to_bytes(4, "little") + (2).to_bytes(4, "little") + b"hi", "trailing_bytes"),
])
def test_a_payload_is_exactly_one_frame(tail: bytes, reason: str) -> None:
    frame = _frame(_good())
    assert protocol.decode(frame)["seq"] == 1
    with pytest.raises(ProtocolError, match="exactly one frame") as info:
        protocol.decode(frame + tail)
    assert info.value.reason == reason
    skippable = (0x184D2A50).to_bytes(4, "little") + (0).to_bytes(4, "little")
    with pytest.raises(ProtocolError, match="zstd frame magic"):
        protocol.decode(skippable + frame)


@pytest.mark.parametrize(("field", "value"), [
    ("host", b"\xa2\xff\xfe"), ("instance", b"\xc4\x01i"), ("seq", b"\xd6\xff\x00\x00\x00\x01"),
    ("t", b"\x91\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"), ("sent", b"\xcf" + b"\xff" * 8),
])
def test_known_fields_refuse_invalid_utf8_binary_extensions_nan_and_uint64(
        field: str, value: bytes) -> None:
    packed = msgpack.packb({**_good(), field: "\x00marker\x00"})
    payload = zstandard.ZstdCompressor().compress(
        packed.replace(msgpack.packb("\x00marker\x00"), value))
    with pytest.raises(ProtocolError) as info:
        protocol.decode(payload)
    assert info.value.reason == "schema"
    assert field in str(info.value)


def test_validate_batch_applies_the_decoders_rules_to_python_maps() -> None:
    with pytest.raises(ProtocolError, match="version"):
        validate_batch({**_good(), "v": True})
    with pytest.raises(ProtocolError, match="not a v1 batch map"):
        validate_batch({**_good(), "host": "\ud800"})  # a lone surrogate is no UTF-8
    with pytest.raises(ProtocolError, match="label values must be strings"):
        validate_batch({**_good(), "metrics": [["x", "gauge", "", 0, ["k"], [[[1], 0, [1]]]]]})


_anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=5) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["v", "host", "instance", "seq", "sent", "t", "metrics", "extra"]),
       _anything)
def test_validate_batch_and_decode_agree(field: str, value: object) -> None:
    raw = {**_good(), field: value}
    outcomes = []
    for check in (lambda: validate_batch(raw).seq,
                  lambda: protocol.decode(_frame(raw))["seq"]):
        try:
            outcomes.append(check())
        except ProtocolError as exc:
            outcomes.append(exc.reason)
    assert outcomes[0] == outcomes[1]


def test_decode_errors_name_the_batch_when_instance_and_seq_were_valid() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(_frame({**_good(), "t": [0]}))
    assert info.value.batch_key == ("i", 1)
    with pytest.raises(ProtocolError) as info:
        protocol.decode(_frame({**_good(), "seq": -1, "t": [0]}))
    assert info.value.batch_key is None


@pytest.mark.parametrize(("args", "message"), [
    (("x", "histogram", ""), "kind"),
    (("x", "Gauge", ""), "kind"),
    (("1x", "gauge", ""), "metric name"),
    (("x", "gauge", "", 10), "scale"),
    (("x", "gauge", "", 0, ("k", "k")), "label keys"),
    (("x", "gauge", "", 0, ("bad-key",)), "label keys"),
    (("x", "gauge", "", 0, tuple(f"k{i}" for i in range(17))), "label keys"),
])
def test_metric_definitions_are_checked_where_they_are_written(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricDef(*args)
    with pytest.raises(ValueError, match="kind"):
        MetricDef("x", "gauge", "")._replace(kind="summary")
    assert MetricDef("x", "counter", "bytes", 0, ["k"]).label_keys == ("k",)


# --- topics, status, ack -----------------------------------------------------------------------

@pytest.mark.parametrize("host", ["", "a/b", "a+b", "#", "a b", "-lead", "x" * 65, "é"])
def test_bad_host_ids(host: str) -> None:
    with pytest.raises(ProtocolError):
        protocol.metrics_topic(host)


def test_topics_round_trip() -> None:
    for make, kind in [(protocol.metrics_topic, "metrics"), (protocol.backfill_topic, "backfill"),
                       (protocol.status_topic, "status"), (protocol.ack_topic, "ack")]:
        assert protocol.parse_topic(make("web-01.eu_2")) == ("web-01.eu_2", kind)
    for bad in ["edgemon/v1/h", "edgemon/v2/h/metrics", "edgemon/v1/h/other", "x/v1/h/metrics",
                "edgemon/v1/a/b/metrics"]:
        with pytest.raises(ProtocolError):
            protocol.parse_topic(bad)


def test_acks_of_many_scattered_seqs_are_split_into_documents_an_agent_decodes() -> None:
    """A held ack can gather thousands of seqs (collector/ingest/backpressure.py): in one
    document its ranges would pass MAX_ACK_RANGES, and the agent would refuse the whole ack."""
    from edgemon.protocol.limits import MAX_ACK_RANGES, MAX_INT
    from edgemon.protocol.status import encode_acks

    big = MAX_INT - 10 * MAX_ACK_RANGES  # the longest numbers: the JSON size counts too
    seqs = list(range(big, big + 6 * MAX_ACK_RANGES, 2))  # 3 x the limit, each range one seq
    rejected = list(range(big + 1, big + 3 * MAX_ACK_RANGES, 2))  # 1.5 x
    with pytest.raises(ProtocolError):  # what one document would do
        protocol.decode_ack(protocol.encode_ack(instance="abc", seqs=seqs))
    payloads = encode_acks(instance="abc", seqs=seqs, rejected=rejected, reason="future",
                           catalogues=["c" * 16], bases=True)
    docs = [protocol.decode_ack(d) for d in payloads]
    assert len(docs) == 5 and {d.instance for d in docs} == {"abc"}
    assert [s for d in docs for a, b in d.acked for s in range(a, b + 1)] == seqs
    assert [s for d in docs for a, b in d.rejected for s in range(a, b + 1)] == rejected
    assert [d.catalogues for d in docs] == [("c" * 16,), (), (), (), ()]
    assert [d.bases for d in docs] == [bool(d.acked) for d in docs] == [True] * 3 + [False] * 2
    assert {d.reason for d in docs if d.rejected} == {"future"}
    few = encode_acks(instance="abc", seqs=[1, 2, 5], rejected=[9], reason="future", bases=True)
    assert few == [protocol.encode_ack(instance="abc", seqs=[1, 2, 5], rejected=[9],
                                       reason="future", bases=True)]


def test_ack_round_trip_and_ranges() -> None:
    payload = protocol.encode_ack(instance="abc", seqs=[5, 3, 4, 9, 9, 1])
    assert protocol.decode_ack(payload) == ("abc", [(1, 1), (3, 5), (9, 9)], [], "", (), False)
    payload = protocol.encode_ack(instance="abc", seqs=[1], rejected=[7, 8], reason="future")
    assert protocol.decode_ack(payload) == ("abc", [(1, 1)], [(7, 8)], "future", (), False)
    payload = protocol.encode_ack(instance="abc", seqs=[1], bases=True)  # SPEC.md §9.1
    assert json.loads(payload)["bases"] is True and protocol.decode_ack(payload).bases
    assert not protocol.decode_ack(b'{"v":1,"instance":"a","acked":[[1,1]],"bases":1}').bases
    payload = protocol.encode_ack(instance="abc", seqs=[], catalogues=["0123456789abcdef"])
    assert protocol.decode_ack(payload).catalogues == ("0123456789abcdef",)
    for bad in [b"{", b'{"v":1,"instance":"a","acked":[[3,1]]}',
                b'{"v":1,"instance":"a","acked":[[1,true]]}', b'{"v":1,"acked":[]}',
                b'{"v":1,"instance":"a","acked":[],"catalogues":"x"}']:
        with pytest.raises(ProtocolError):
            protocol.decode_ack(bad)


def test_status_round_trip() -> None:
    doc = protocol.decode_status(protocol.encode_status(online=False, instance="i", timestamp_ms=7))
    assert doc["state"] == "offline" and doc["ts"] == 7
    with pytest.raises(ProtocolError):
        protocol.decode_status(b'{"v":1,"state":"maybe","instance":"i","ts":1}')


def test_status_carries_the_last_sealed_seq_when_there_is_one() -> None:
    doc = protocol.decode_status(protocol.encode_status(online=True, instance="i",
                                                        timestamp_ms=7, last_seq=41))
    assert doc["last_seq"] == 41
    assert "last_seq" not in protocol.decode_status(
        protocol.encode_status(online=True, instance="i", timestamp_ms=7, last_seq=None))
    for bad in ("-1", "1.5", "true", '"7"', str(2**63)):
        with pytest.raises(ProtocolError, match="last_seq must be an integer"):
            protocol.decode_status(
                f'{{"v":1,"state":"offline","instance":"i","ts":1,"last_seq":{bad}}}'.encode())


def test_public_surface_is_deliberate() -> None:
    assert sorted(protocol.__all__) == sorted([
        "COUNTER", "GAUGE", "VERSION", "Ack", "BatchBuilder", "LimitExceeded", "MalformedPayload",
        "MetricDef", "ProtocolError", "Sample", "UnsupportedVersion", "ack_topic",
        "backfill_topic", "decode", "decode_ack", "decode_batch", "decode_status", "encode",
        "encode_ack", "encode_status", "expand_samples", "metrics_topic", "parse_topic",
        "status_topic", "subscriptions", "to_scaled", "validate_host_id",
    ])
    for name in protocol.__all__:
        assert hasattr(protocol, name)


def test_agent_side_protocol_does_not_import_pydantic() -> None:
    import subprocess
    import sys
    code = ("import sys, edgemon.protocol as p; p.encode(p.BatchBuilder().build(host='h', "
            "instance='i', seq=1, sent_ms=1)); print('pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_collector_presence_round_trips_and_refuses_garbage() -> None:
    from edgemon.protocol.presence import (
        COLLECTOR_STATE_FILTER,
        collector_state_topic,
        decode_collector_state,
        encode_collector_state,
        parse_collector_state_topic,
    )
    topic = collector_state_topic("collector-1")
    assert topic == "edgemon/v1/_collectors/collector-1/state"
    assert COLLECTOR_STATE_FILTER == "edgemon/v1/_collectors/+/state"
    assert parse_collector_state_topic(topic) == "collector-1"
    state = decode_collector_state(encode_collector_state("collector-1", online=False, ts_ms=5))
    assert (state.collector, state.online, state.ts_ms) == ("collector-1", False, 5)
    for bad in (b"", b"[]", b'{"v":1.0,"state":"online","collector":"c","ts":1}',
                b'{"v":1,"state":"up","collector":"c","ts":1}',
                b'{"v":1,"state":"online","collector":"a/b","ts":1}',
                b'{"v":1,"state":"online","collector":"c","ts":"1"}', b"\xff" * 10):
        with pytest.raises(MalformedPayload, match=r"collector state|collector id|not JSON|v1"):
            decode_collector_state(bad)
    with pytest.raises(ProtocolError, match="collector state topic"):
        parse_collector_state_topic("edgemon/v1/host/status")


# --- the memory one message can cost -------------------------------------------------------------

def _worst_ints() -> dict:
    """999,424 samples of -20: one byte each on the wire, a new int object each decoded."""
    n = MAX_TIMESTAMPS
    entries = [[[str(s)], 0, [-20] * n] for s in range(MAX_SAMPLES // n)]
    return {**_good(), "t": [10**12] + [1] * (n - 1),
            "metrics": [["m", "gauge", "", 0, ["s"], entries]]}


def _worst_strings() -> dict:
    """262,144 distinct 8-character label values, each with an astral character (4 bytes per
    character in memory), plus the most an unknown key may hold."""
    keys = [f"k{i}" for i in range(MAX_LABELS)]
    n = MAX_LABEL_VALUES // MAX_LABELS
    entries = [[[f"\U0001F600{i:07d}"[:8] + chr(0x1F600 + j) for j in range(MAX_LABELS)], 0,
                [1]] for i in range(n)]
    return {**_good(), "metrics": [["m", "gauge", "", 0, keys, entries]],
            "extra": [{"k": "\U0001F600" * 60} for _ in range(MAX_EXTENSION_ELEMENTS // 3)]}


def _worst_entries() -> dict:
    """65,536 series entries over 4,096 metrics, each entry its own lists."""
    per = MAX_SERIES // MAX_METRICS
    metrics = [[f"m{m}", "gauge", "", 0, ["a"], [[[str(e)], 0, [1000 + e]] for e in range(per)]]
               for m in range(MAX_METRICS)]
    return {**_good(), "metrics": metrics}


@pytest.mark.parametrize("build", [_worst_ints, _worst_strings, _worst_entries])
def test_decoding_the_largest_batches_stays_within_the_stated_bound(build) -> None:
    """MAX_DECODE_BYTES (SPEC.md §6) holds for the batches that cost the most of each kind."""
    packed = msgpack.packb(build(), use_bin_type=True)
    assert len(packed) <= MAX_DECOMPRESSED_BYTES
    tracemalloc.start()
    try:
        batch = check_decoded(read_batch_map(packed))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert batch.sample_count > 0
    # the payload and the decompressed bytes are held beside what the reader builds
    total = peak + MAX_COMPRESSED_BYTES + MAX_DECOMPRESSED_BYTES
    print(f"{build.__name__}: {peak / 2**20:.1f} MiB built, {total / 2**20:.1f} MiB in all "
          f"(bound {MAX_DECODE_BYTES / 2**20:.1f} MiB)")
    assert total <= MAX_DECODE_BYTES


def test_status_documents_refuse_lookalike_types_and_deep_nesting() -> None:
    from edgemon.protocol import decode_status

    good = b'{"v":1,"state":"online","instance":"abc","ts":5}'
    assert decode_status(good)["ts"] == 5
    for bad in (b'{"v":1.0,"state":"online","instance":"abc","ts":5}',
                b'{"v":true,"state":"online","instance":"abc","ts":5}',
                b'{"v":1,"state":"online","instance":"abc","ts":true}',
                b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(MalformedPayload, match=r"v1|integer ts|not JSON|too large"):
            decode_status(bad)
