"""Fuzzing the collector's ingest with hostile payloads, topics and groups.

Everything runs against the real code: ``protocol.decode`` (the one decoder, which storage also
reads stored payloads with), and the real ingest path from the MQTT callback
(``MqttIngest._handle``, with its rate limiter) through the bounded ``Inbox`` into
``IngestPipeline.process`` and a real SQLite storage in ``tmp_path``. Only the broker is left out
(so non-UTF-8 topics, which Mosquitto would refuse, can be sent).

What must hold for every input: no exception escapes; every bad message is rejected with a known
reason and counted under it; valid batches mixed in are stored exactly (values read back);
whatever ingest stores, ``protocol.decode`` returns completely and every value in it is readable
(strict UTF-8, string keys, 64-bit integers, finite numbers) and passes the per-series screen
again; a hostile payload is rejected before it allocates much (tracemalloc peak); one group of
maximal batches is not held in memory all at once. Hand-made payloads live in
``tests/fuzz_corpus`` (``make_corpus.py`` regenerates them from one generator class per class of
problem; its README says what each attacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import math
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgemon.collector.config import IngestConfig, MqttConfig
from edgemon.collector.ingest.mqtt import Inbox, MqttIngest
from edgemon.collector.ingest.pipeline import IngestPipeline, Outcome
from edgemon.collector.ingest.rate_limit import RateLimiter, message_cost
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.ingest.screen import screen
from edgemon.collector.storage.base import IngestItem, RangeQuery, StoreResult
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import (
    GAUGE,
    BatchBuilder,
    MetricDef,
    ProtocolError,
    decode,
    decode_batch,
    encode,
    expand_samples,
)
from edgemon.protocol.codec import DICTIONARY_ID, dictionary
from edgemon.protocol.limits import MAX_DECOMPRESSED_BYTES, MAX_INT, MIN_INT

CORPUS = Path(__file__).parent / "fuzz_corpus"
FIXED_MS = 1_790_000_000_000  # hostile batches' time (2026-09-21): clock-independent bytes

# Every reason a message may be rejected for. "decode_error" (an unexpected exception in the
# decoder) and "storage_error" are deliberately absent: no payload may cause either.
KNOWN_REASONS = {
    "bad_topic", "bad_host", "unexpected_topic", "too_large", "not_zstd",
    "decompressed_too_large", "unknown_dictionary", "not_msgpack", "schema", "version",
    "too_many_keys", "too_many_timestamps", "too_many_metrics", "too_many_series",
    "too_many_label_keys", "too_many_label_values", "too_many_values", "too_many_samples",
    "host_mismatch", "future_timestamp", "past_timestamp", "not_json", "trailing_bytes",
    "too_many_extension_elements",
}
# Why a series of a stored batch may be dropped (collector/ingest/screen.py, cardinality.py).
SERIES_REASONS = {"reserved_name", "not_printable", "percent_out_of_range", "negative_value",
                  "value_too_large", "series_limit", "new_series_limit"}

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the rig: the real ingest path, built in-process --------------------------------------------

class RecordingStorage(SQLiteStorage):
    """The real SQLite storage, remembering the payload of every batch it stored."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.payloads: dict[tuple[str, str, int], bytes] = {}

    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        results = super().store_batches(items)
        for item, result in zip(items, results, strict=True):
            if result.stored:
                b = item.batch
                self.payloads[(b.host, b.instance, b.seq)] = item.payload
        return results


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    storage: RecordingStorage
    inbox: Inbox
    front: MqttIngest
    pipeline: IngestPipeline
    rejects: Rejects
    seqs: Iterator[int]

    def ingest(self, messages: list[tuple[bytes, bytes]]) -> list[Outcome]:
        """Hand ``(raw topic, payload)`` messages to the MQTT callback as paho would, then run
        one pipeline turn over what was queued."""
        for mid, (topic, payload) in enumerate(messages, start=1):
            message = mqtt.MQTTMessage(mid=mid, topic=topic)
            message.payload, message.qos = payload, 1
            self.front._handle(message)
        return self.loop.run_until_complete(self._turn(len(messages)))

    async def _turn(self, count: int) -> list[Outcome]:
        msgs = await self.inbox.get_many(count, timeout=5)
        assert len(msgs) == count, "the front door dropped or refused a message"
        return await self.pipeline.process(msgs)


def make_rig(path: Path, **ingest: Any) -> Rig:
    loop = asyncio.new_event_loop()
    storage = RecordingStorage(path)
    inbox = Inbox(loop, max_messages=100_000, max_bytes=1 << 30)
    rejects = Rejects()
    front = MqttIngest(MqttConfig(client_id="fuzz-front"), inbox)  # never connects
    front.use_rate_limit(RateLimiter(messages_per_second=1e6, message_burst=10**6,
                                     bytes_per_second=1e12, byte_burst=1 << 40,
                                     max_hosts=100), rejects)
    pipeline = IngestPipeline(storage=storage, inbox=inbox, mqtt=None,
                              config=IngestConfig(**ingest),
                              writer=ThreadPoolExecutor(1, thread_name_prefix="fuzz-writer"),
                              rejects=rejects)
    return Rig(loop, storage, inbox, front, pipeline, rejects, itertools.count(1))


def close_rig(r: Rig) -> None:
    r.pipeline.writer.shutdown()
    r.storage.close()
    r.loop.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = make_rig(tmp_path_factory.mktemp("fuzz") / "edgemon.db")
    yield r
    close_rig(r)


# The corpus is dated (make_corpus.T0, 2026): a clock window of ten years takes it as recent.
CORPUS_WINDOW = {"past_tolerance_days": 3650}


@pytest.fixture(scope="module")
def corpus_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = make_rig(tmp_path_factory.mktemp("corpus") / "edgemon.db", **CORPUS_WINDOW)
    yield r
    close_rig(r)


def assert_readable(value: Any, where: str = "batch") -> None:
    """What every reader of a stored batch relies on: strict UTF-8 strings, string map keys,
    signed 64-bit integers, finite floats, nil, booleans, arrays and maps; nothing else."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str, f"{where}: map key {k!r}"
            k.encode("utf-8")
            assert_readable(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_readable(v, f"{where}[{i}]")
    elif isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert MIN_INT <= value <= MAX_INT, f"{where}: {value}"
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where}: {value}"
    else:
        raise AssertionError(f"{where}: {type(value).__name__} {value!r:.60}")


def assert_v1_shape(doc: dict[str, Any]) -> None:
    """SPEC.md §2 restated independently of the decoder: the types every reader relies on."""
    assert doc["v"] == 1 and type(doc["v"]) is int
    assert all(type(doc[k]) is str for k in ("host", "instance"))
    assert all(type(doc[k]) is int for k in ("seq", "sent"))
    assert doc["t"] and all(type(x) is int and x > 0 for x in doc["t"])
    for name, kind, unit, scale, keys, entries in doc["metrics"]:
        assert type(name) is str and kind in ("gauge", "counter") and type(unit) is str
        assert type(scale) is int and 0 <= scale <= 9
        assert all(type(k) is str for k in keys)
        for labels, offset, values in entries:
            assert len(labels) == len(keys) and all(type(v) is str for v in labels)
            assert type(offset) is int and offset >= 0
            assert values and all(type(v) is int for v in values)


def assert_storage_reads(payload: bytes) -> dict[str, Any]:
    """A stored payload, read back as storage reads it: completely, every value readable."""
    doc = decode(payload)
    assert_readable(doc)
    assert_v1_shape(doc)
    json.dumps(doc, allow_nan=False)
    for sample in expand_samples(doc):
        assert isinstance(sample.value, int) or math.isfinite(sample.value)
    assert not screen(decode_batch(payload)), "a stored series the screen refuses"
    return doc


# --- valid batches, to mix in and read back -----------------------------------------------------

@dataclass
class GoodBatch:
    host: str
    seq: int
    payload: bytes
    expected: dict[tuple[str, str], dict[int, int]]  # (metric, label b) -> {ts: value}
    samples: int


@st.composite
def good_batches(draw: st.DrawFn, seq: int) -> GoodBatch:
    host = f"good-{seq % 4}"
    metrics = [MetricDef(f"fz_{name}", GAUGE, "", 0, ("b", "k"))
               for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1,
                                         max_size=3, unique=True))]
    cycles = draw(st.integers(1, 6))
    # Each batch its own 10 s of the last day: its read-back sees its samples alone.
    t0 = (now_ms() // 1000 - 86_400 + (seq % 8000) * 10) * 1000
    builder = BatchBuilder()
    expected: dict[tuple[str, str], dict[int, int]] = {}
    for m in metrics:
        for k in draw(st.lists(st.sampled_from(["x", "y"]), min_size=1, max_size=2,
                               unique=True)):
            label = f"{seq}-{k}"
            for c in draw(st.sets(st.integers(0, cycles - 1), min_size=1)):
                value = draw(st.integers(-(2**40), 2**40))
                builder.add(t0 + c * 1000, m, (label, k), value)
                expected.setdefault((m.name, label), {})[t0 + c * 1000] = value
    payload = _agent_frame(builder.build(host=host, instance="fuzz", seq=seq, sent_ms=now_ms()))
    return GoodBatch(host, seq, payload, expected, len(builder))


def assert_stored_exactly(storage: SQLiteStorage, good: GoodBatch) -> None:
    for (name, label), points in good.expected.items():
        lo, hi = min(points), max(points)
        result = storage.query(RangeQuery(name, lo, hi + 1, 1000, aggregation="sum",
                                          hosts=(good.host,), tier="raw", max_series=100_000))
        got = {t: v for s in result if s.labels["b"] == label for t, v in s.points}
        assert got == points, f"{good.host} seq {good.seq} {name}{{b={label}}}"


# --- hostile messages ---------------------------------------------------------------------------

_json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=6),
    max_leaves=30)

_bad_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
    st.text(max_size=300), st.binary(max_size=10), st.integers(2**63, 2**64 - 1),
    st.integers(-(2**63), -1), st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**64 - 1), max_size=2))

_FIELD_PATHS = ["v", "host", "instance", "seq", "sent", "t", "t.0", "metrics", "metrics.0",
                "metrics.0.0", "metrics.0.1", "metrics.0.2", "metrics.0.3", "metrics.0.4",
                "metrics.0.5", "metrics.0.5.0", "metrics.0.5.0.0", "metrics.0.5.0.1",
                "metrics.0.5.0.2", "metrics.0.5.0.2.0"]


def _base_batch(host: str) -> dict[str, Any]:
    """A valid batch at a fixed time: its encoded length must not depend on the clock, or
    hypothesis would draw differently on a replay."""
    return {"v": 1, "host": host, "instance": "evil", "seq": 7, "sent": FIXED_MS,
            "t": [FIXED_MS - 60_000, 1000],
            "metrics": [["fz_a", "gauge", "", 0, ["k"], [[["x"], 0, [1, 2]]]]]}


def _frame(packed: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(packed)


_AGENT_ZSTD = zstandard.ZstdCompressor(level=3, dict_data=dictionary(DICTIONARY_ID))


def _agent_frame(batch: dict[str, Any]) -> bytes:
    """``protocol.encode`` (msgpack, the published dictionary) at a faster zstd level."""
    return _AGENT_ZSTD.compress(msgpack.packb(batch, use_bin_type=True))


def _set_path(doc: Any, path: str, value: Any, delete: bool) -> None:
    keys: list[Any] = [int(p) if p.isdigit() else p for p in path.split(".")]
    for k in keys[:-1]:
        doc = doc[k]
    if delete and isinstance(doc, dict):
        del doc[keys[-1]]
    else:
        doc[keys[-1]] = value


@st.composite
def hostile(draw: st.DrawFn, host: str) -> tuple[bytes, bytes, str]:
    """(topic, payload, kind): a message that must be rejected (kind "bad") or that may be
    anything, rejected or stored (kind "any": random mutations can stay valid)."""
    topic = f"edgemon/v1/{host}/metrics".encode()
    attack = draw(st.integers(0, 9))
    if attack == 0:  # random bytes
        return topic, draw(st.binary(max_size=300)), "bad"
    if attack == 1:  # a zstd frame of random msgpack
        return topic, _frame(msgpack.packb(draw(_json_like), use_bin_type=True)), "bad"
    if attack == 2:  # a zstd frame of random bytes
        return topic, _frame(draw(st.binary(max_size=300))), "bad"
    if attack in (3, 4):  # one field replaced by a wrong value, or removed
        doc = _base_batch(host)
        path = draw(st.sampled_from(_FIELD_PATHS))
        _set_path(doc, path, draw(_bad_values), delete=attack == 4)
        return topic, _frame(msgpack.packb(doc, use_bin_type=True)), "any"
    if attack == 5:  # timestamps far away, or the host of another topic
        doc = _base_batch(host)
        doc["t"][0] = draw(st.sampled_from([1, 10**9, now_ms() + 10**9, 2**62,
                                            now_ms() - 400 * 86_400_000]))
        if draw(st.booleans()):
            doc["host"] = "someone-else"
        return topic, _frame(msgpack.packb(doc, use_bin_type=True)), "bad"
    if attack == 6:  # bytes of a valid msgpack batch flipped, cut or extended
        packed = bytearray(msgpack.packb(_base_batch(host), use_bin_type=True))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(packed) - 1))
            packed[i] = draw(st.integers(0, 255))
        cut = draw(st.integers(1, len(packed)))
        tail = draw(st.binary(max_size=8))
        return topic, _frame(bytes(packed[:cut]) + tail), "any"
    if attack == 7:  # bytes of the compressed frame flipped
        payload = bytearray(_agent_frame(_base_batch(host)))
        i = draw(st.integers(0, len(payload) - 1))
        payload[i] ^= draw(st.integers(1, 255))
        return topic, bytes(payload), "any"
    if attack == 8:  # odd, over-long or non-UTF-8 topics
        bad_topic = draw(st.one_of(
            st.binary(max_size=80),
            st.sampled_from([b"edgemon/v1/\xff\xfe/metrics", b"edgemon/v1//metrics",
                             b"edgemon/v1/a+b/metrics", b"edgemon/v1/#/metrics",
                             b"edgemon/v1/" + b"h" * 70 + b"/metrics",
                             b"edgemon/v1/" + b"x" * 5000 + b"/metrics",
                             b"edgemon/v2/a/metrics", b"edgemon/v1/a/b/metrics",
                             b"edgemon/v1/-a/metrics", b"edgemon/v1/a\x00/metrics"]),
            st.text(max_size=40).map(lambda s: f"edgemon/v1/{s}/metrics".encode())))
        return bad_topic, _agent_frame(_base_batch(host)), "any"  # may name a valid host
    # a status message: random JSON or wrong fields
    status_topic = f"edgemon/v1/{host}/status".encode()
    doc = {"v": 1, "state": "online", "instance": "evil", "ts": now_ms()}
    key = draw(st.sampled_from(["v", "state", "instance", "ts"]))
    doc[key] = draw(_bad_values)
    body = draw(st.one_of(st.just(json.dumps(doc, default=repr).encode()), st.binary(max_size=50),
                          st.just(b"[" * 5000)))
    return status_topic, body, "any"


# --- the fuzz tests -----------------------------------------------------------------------------

@settings(FUZZ, max_examples=1000)
@given(st.lists(st.one_of(st.binary(max_size=400),
                          _json_like.map(lambda o: _frame(msgpack.packb(o, use_bin_type=True))),
                          hostile("h").map(lambda m: m[1])), min_size=1, max_size=10))
def test_decoder_never_raises_anything_but_a_protocol_error(payloads: list[bytes]) -> None:
    for payload in payloads:
        try:
            assert_readable(decode(payload))
        except ProtocolError as exc:
            assert exc.reason in KNOWN_REASONS, (exc.reason, str(exc))
            assert str(exc)  # every rejection says what is wrong


@settings(FUZZ, max_examples=600)
@given(st.data())
def test_hostile_groups_through_the_real_ingest_path(rig: Rig, data: st.DataObject) -> None:
    messages: list[tuple[bytes, bytes, str, GoodBatch | None]] = []
    for _ in range(data.draw(st.integers(1, 16), label="group size")):
        if data.draw(st.integers(0, 3), label="valid?") == 0:
            good = data.draw(good_batches(next(rig.seqs)), label="valid batch")
            topic = f"edgemon/v1/{good.host}/metrics".encode()
            messages.append((topic, good.payload, "good", good))
        else:
            host = f"evil-{data.draw(st.integers(0, 3))}"
            topic, payload, kind = data.draw(hostile(host), label="hostile")
            messages.append((topic, payload, kind, None))
    before = Counter(rig.rejects.by_reason())
    outcomes = rig.ingest([(t, p) for t, p, _, _ in messages])

    assert len(outcomes) == len(messages)
    rejected: Counter[str] = Counter()
    for (_, _, kind, good), o in zip(messages, outcomes, strict=True):
        if o.kind == "reject":
            assert o.reason in KNOWN_REASONS, (o.reason, o.detail)
            rejected[o.reason] += 1
        if kind == "bad":
            assert o.kind == "reject", o
        elif kind == "good":
            assert good is not None and o.kind == "metrics" and o.result is not None, o
            assert o.result.stored and o.result.samples == good.samples
            assert_stored_exactly(rig.storage, good)
        else:
            assert o.kind in ("reject", "metrics", "status"), o
    after = Counter(rig.rejects.by_reason())
    assert after - before == rejected  # every rejection counted under its reason, once


# --- ingest accepts => storage's decoder returns it completely ---------------------------------

# Everything msgpack can carry, including what no batch may hold (binary, extension types and
# timestamps, NaN, integers beyond 64 bits, maps keyed by non-strings).
_any_msgpack = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.floats(width=32)
    | st.text(max_size=12) | st.binary(max_size=6)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999)),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-5, 5), st.binary(max_size=3)),
                      inner, max_size=4),
    max_leaves=25)
_names = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
                   st.sampled_from(["__proto__", "constructor", "edgemon_collector_rejects_total",
                                    "agent_memory_rss_bytes", "agent_dropped_samples_total",
                                    "agent_fake", "__name__", "1bad", "a-b", ""]),
                   st.text(max_size=6))
_units = st.sampled_from(["", "", "bytes", "percent", "percent", "seconds", "packets", "inodes",
                          "operations", "errors", "\u00b0C", "by\ntes", "u" * 129])
_label_text = st.one_of(st.text(max_size=10), st.sampled_from(
    ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "<script>", "a\x00b", "\u202e",
     "x" * 257, "\u20ac" * 86]))
_values = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-200, 20_000),
                    st.sampled_from([2**62, 2**62 + 1, -(2**62) - 1, 10_050, 10_051, -50, -51]))
# First values on both sides of each plausibility bound (scale 0 and 2 percent, counters, 2^62).
_edge_values = st.one_of(st.integers(-3, 3), st.sampled_from(
    [100, 101, 10_050, 10_051, -50, -51, 2**62, 2**62 + 1, -(2**62), -(2**62) - 1]),
    st.sampled_from([101, 10_051, -51, 2**62 + 1, -(2**62) - 1]))
# Raw msgpack no encoder would write: poison the placeholder with one of these.
_raw_poisons = st.sampled_from([b"\xa2\xff\xfe", b"\xa3\xed\xa0\x80", b"\xc4\x00", b"\xc7\x00\x05",
                                b"\xd6\xff\x00\x00\x00\x01", b"\x81\x91\x01\x01", b"\x81\xc0\x01",
                                b"\xcf" + b"\xff" * 8, b"\x91" * 12 + b"\x01"])
_PLACEHOLDER = "\x00placeholder\x00"


# Values an unknown key may hold (SPEC.md §7).
_plain_msgpack = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=25)
_valid_names = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
                         st.sampled_from(["__proto__", "constructor", "agent_memory_rss_bytes",
                                          "edgemon_collector_rejects_total", "agent_fake",
                                          "__name__", "cpu_usage_percent"]))


_ASPECTS = ["names", "kinds", "scales", "units", "labels", "values", "unknown_keys", "raw",
            "trailing"]


@st.composite
def adversarial_batches(draw: st.DrawFn, host: str, seq: int) -> bytes:
    """A batch well-formed in every aspect but (perhaps) one, which is drawn from anything.

    Well-formed: valid names (reserved ones included), kinds and scales, any printable or
    unprintable label text, values on both sides of every plausibility bound, unknown keys holding
    allowed values; ingest stores such a batch, perhaps without some series. The hostile aspect,
    if any, draws from everything msgpack carries (names, kinds, scales, units, label text,
    values, unknown keys), or puts a raw poison somewhere, or bytes after the frame. With one
    aspect hostile at a time, a decoder that lets one kind of poison through stores it."""
    hostile = draw(st.sampled_from([None, None, "raw", *_ASPECTS]))
    n_times = draw(st.integers(1, 4))
    names = _names if hostile == "names" else _valid_names
    labels = _label_text if hostile == "labels" else st.text(max_size=10)
    units = _units if hostile == "units" else st.one_of(
        st.just("percent"), _units.filter(lambda u: len(u) <= 128))
    values = st.lists(_values, min_size=1, max_size=n_times) if hostile == "values" else \
        st.tuples(_edge_values, st.lists(st.integers(-100, 100), max_size=n_times - 1)).map(
            lambda v: [v[0], *v[1]])
    kinds = st.one_of(st.sampled_from(["gauge", "counter"]), _any_msgpack) \
        if hostile == "kinds" else st.sampled_from(["gauge", "counter"])
    scales = _any_msgpack if hostile == "scales" else st.sampled_from([0, 0, 0, 2, 9])
    metrics = []
    for name in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        keys = draw(st.lists(st.one_of(names, st.just("k")), max_size=2, unique=True))
        entries = [[draw(st.lists(labels, min_size=len(keys), max_size=len(keys))), 0,
                    draw(values)] for _ in range(draw(st.integers(1, 3)))]
        metrics.append([name, draw(kinds), draw(units), draw(scales), keys, entries])
    doc: dict[Any, Any] = {"v": 1, "host": host, "instance": "prop", "seq": seq,
                           "sent": FIXED_MS, "t": [FIXED_MS - 60_000] + [1000] * (n_times - 1),
                           "metrics": metrics}
    extension = _any_msgpack if hostile == "unknown_keys" else _plain_msgpack
    for key in draw(st.lists(st.one_of(_valid_names, st.sampled_from(["future_key", "boot_id"])),
                             max_size=3, unique=True)):
        if key not in doc:
            doc[key] = draw(extension)
    raw: bytes | None = None
    if hostile == "raw":  # in an unknown key, a name, a label value or a value
        place = draw(st.sampled_from(["extra", "nested", "name", "label", "value"]))
        if place in ("extra", "nested"):
            doc["extra_key"] = [1, {"a": _PLACEHOLDER}] if place == "nested" else _PLACEHOLDER
        else:
            metrics.append(["raw_m", "gauge", "", 0, ["k"], [[["x"], 0, [1]]]])
            spot = {"name": (metrics[-1], 0), "label": (metrics[-1][5][0][0], 0),
                    "value": (metrics[-1][5][0][2], 0)}[place]
            spot[0][spot[1]] = _PLACEHOLDER
        raw = draw(_raw_poisons)
    try:
        packed = msgpack.packb(doc, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):  # e.g. a surrogate in a string
        packed = msgpack.packb({"v": 1, "host": host, "broken": True}, use_bin_type=True)
    if raw is not None:
        packed = packed.replace(msgpack.packb(_PLACEHOLDER), raw, 1)
    payload = _agent_frame_bytes(packed)
    if hostile == "trailing":
        payload += draw(st.sampled_from([b"\x00", payload]))
    return payload


def _agent_frame_bytes(packed: bytes) -> bytes:
    return _AGENT_ZSTD.compress(packed)


@pytest.fixture(scope="module")
def property_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = make_rig(tmp_path_factory.mktemp("property") / "edgemon.db", **CORPUS_WINDOW)
    yield r
    close_rig(r)


@settings(FUZZ, max_examples=200)
@given(st.data())
def test_whatever_ingest_stores_storage_reads_completely(property_rig: Rig,
                                                         data: st.DataObject) -> None:
    """For any payload: ingest accepts => the decoder storage reads stored batches with returns
    it completely, every value readable, and nothing in it the screen would refuse."""
    rig = property_rig
    host = f"prop-{data.draw(st.integers(0, 2), label='host')}"
    messages = [(host, next(rig.seqs)) for _ in range(data.draw(st.integers(1, 4)))]
    payloads = [data.draw(adversarial_batches(h, seq), label="payload") for h, seq in messages]
    before = Counter(rig.rejects.series_by_reason())
    outcomes = rig.ingest([(f"edgemon/v1/{h}/metrics".encode(), p)
                           for (h, _), p in zip(messages, payloads, strict=True)])
    for (h, seq), payload, o in zip(messages, payloads, outcomes, strict=True):
        event(f"{o.kind} {o.reason or ''} {sorted(o.dropped or {})}")
        if o.kind == "reject":
            assert o.reason in KNOWN_REASONS, (o.reason, o.detail)
            with pytest.raises(ProtocolError):  # refused by the decoder, or by a later check
                if o.reason in ("future_timestamp", "past_timestamp", "host_mismatch"):
                    raise ProtocolError(o.reason)
                decode(payload)
            continue
        assert o.kind == "metrics" and o.result is not None and o.result.stored, o
        stored = rig.storage.payloads[(h, "prop", seq)]
        assert_storage_reads(stored)
        if stored != payload:  # series were dropped: the rest was encoded again
            assert o.dropped, "a payload changed without a dropped series"
        else:
            assert_storage_reads(payload)
    dropped = Counter(rig.rejects.series_by_reason()) - before
    assert set(dropped) <= SERIES_REASONS, dropped


def _corpus() -> list[tuple[str, str]]:
    return sorted(json.loads((CORPUS / "expected.json").read_text()).items())


def _good_companion(seq: int) -> GoodBatch:
    """A valid batch of the corpus host, to send beside a hostile one."""
    good = GoodBatch("fuzz-host", seq, b"", {}, 0)
    builder = BatchBuilder()
    t0 = (now_ms() // 1000 - 120) * 1000
    builder.add(t0, MetricDef("fz_corpus", GAUGE, "", 0, ("b",)), (str(seq),), seq)
    good.payload = encode(builder.build(host="fuzz-host", instance="corpus-ok", seq=seq,
                                        sent_ms=now_ms()))
    good.expected = {("fz_corpus", str(seq)): {t0: seq}}
    return good


@pytest.mark.parametrize(("name", "reason"),
                         [(n, r) for n, r in _corpus() if not r.startswith("series:")])
def test_corpus_payload_is_rejected_for_its_reason_and_counted(
        corpus_rig: Rig, name: str, reason: str) -> None:
    rig = corpus_rig
    topic_file = CORPUS / f"{name}.topic"
    topic = topic_file.read_bytes() if topic_file.exists() else b"edgemon/v1/fuzz-host/metrics"
    payload = (CORPUS / f"{name}.bin").read_bytes()
    good = _good_companion(next(rig.seqs))
    before = rig.rejects.by_reason().get(reason, 0)
    # mixed with a valid batch of the same host, which must get through untouched
    bad, ok = rig.ingest([(topic, payload), (b"edgemon/v1/fuzz-host/metrics", good.payload)])
    assert (bad.kind, bad.reason) == ("reject", reason), bad.detail
    assert bad.detail, "a rejection must say what is wrong"
    assert rig.rejects.by_reason()[reason] == before + 1
    assert ok.kind == "metrics" and ok.result is not None and ok.result.stored
    assert_stored_exactly(rig.storage, good)


@pytest.mark.parametrize(("name", "reason"),
                         [(n, r.split(":", 1)[1]) for n, r in _corpus() if r.startswith("series:")])
def test_corpus_series_is_dropped_and_counted_the_rest_stored(
        tmp_path: Path, name: str, reason: str) -> None:
    rig = make_rig(tmp_path / "edgemon.db", **CORPUS_WINDOW)
    try:
        payload = (CORPUS / f"{name}.bin").read_bytes()
        sent = decode(payload)
        [o] = rig.ingest([(b"edgemon/v1/fuzz-host/metrics", payload)])
        assert o.kind == "metrics" and o.result is not None and o.result.stored, o.detail
        assert rig.rejects.series_by_reason() == {reason: 1}
        assert rig.rejects.by_reason() == {}
        stored = assert_storage_reads(rig.storage.payloads[("fuzz-host", "corpus", 1)])
        assert [m[0] for m in stored["metrics"]] == ["fz_ok"]  # the good series, alone
        assert stored["metrics"][0] == sent["metrics"][0]
        assert {k: v for k, v in stored.items() if k != "metrics"} == \
            {k: v for k, v in sent.items() if k != "metrics"}
    finally:
        close_rig(rig)


@pytest.mark.parametrize(("name", "reason"), [
    (n, r) for n, r in _corpus()
    if not (CORPUS / f"{n}.topic").exists() and n != "overlap_cpu_bomb"])  # that one: CPU
def test_corpus_payload_is_rejected_in_bounded_memory(name: str, reason: str) -> None:
    """No payload makes the decoder allocate more than a few times the 8 MiB that one
    decompressed batch may take (before the bounded decoder, 400 bytes built 527 MB)."""
    payload = (CORPUS / f"{name}.bin").read_bytes()
    tracemalloc.start()
    try:
        # host, clock and topic checks come later, in the pipeline: those may decode fine
        with contextlib.suppress(ProtocolError):
            decode(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_DECOMPRESSED_BYTES, f"{name}: peak {peak / 2**20:.1f} MiB"


def test_corpus_is_what_the_script_generates(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    first, second = tmp_path / "a", tmp_path / "b"
    module.write(first)
    module.write(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    committed = sorted(p.name for p in CORPUS.iterdir()
                       if p.suffix in (".bin", ".topic", ".json", ".md"))
    assert committed == names
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{n}.bin`" in readme for n in json.loads((first / "expected.json").read_text()))


# --- memory of one group ------------------------------------------------------------------------

def _big_batch(host: str, instance: str, seq: int, series: int, cycles: int) -> bytes:
    """``series`` x ``cycles`` samples; deltas above 256, so each is an int object of its own."""
    entries = [[[str(s)], 0, [1_000_000 + s] + [1000 + s] * (cycles - 1)] for s in range(series)]
    return _frame(msgpack.packb({
        "v": 1, "host": host, "instance": instance, "seq": seq, "sent": now_ms(),
        "t": [now_ms() - 3_600_000] + [100] * (cycles - 1),
        "metrics": [["fz_big", "gauge", "", 0, ["s"], entries]]}))


def _group_peak(tmp_path: Path, cap: int, payloads: list[bytes]) -> tuple[int, list[Outcome]]:
    rig = make_rig(tmp_path / f"cap-{cap}.db", max_samples_per_txn=cap)
    try:
        topic = b"edgemon/v1/big-host/backfill"
        tracemalloc.start()
        try:
            outcomes = rig.ingest([(topic, p) for p in payloads])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak, outcomes
    finally:
        rig.pipeline.writer.shutdown()
        rig.storage.close()
        rig.loop.close()


def test_one_group_of_maximal_batches_is_not_held_all_at_once(tmp_path: Path) -> None:
    """Eight 20,000-sample batches in one group, the cap at one batch: the peak stays near one
    batch's, where without the cap (the same group, the same code) it grows with the group."""
    series, cycles = 20, 1000
    samples = series * cycles
    payloads = [_big_batch("big-host", "big", seq, series, cycles) for seq in range(8)]
    one, _ = _group_peak(tmp_path / "one", samples, payloads[:1])
    capped, outcomes = _group_peak(tmp_path / "capped", samples, payloads)
    uncapped, _ = _group_peak(tmp_path / "uncapped", 100 * samples, payloads)
    assert [o.kind for o in outcomes] == ["backfill"] * 8
    assert all(o.result is not None and o.result.stored and o.result.samples == samples
               for o in outcomes)
    print(f"peak: one batch {one >> 10} KiB, 8 capped {capped >> 10} KiB, "
          f"8 uncapped {uncapped >> 10} KiB")
    assert capped < 2 * one, (capped, one)
    assert uncapped > 3 * one, (uncapped, one)  # the measure sees what the cap prevents


def test_rate_limited_messages_are_acknowledged_dropped_and_counted(tmp_path: Path) -> None:
    rig = make_rig(tmp_path / "edgemon.db")
    clock = [0.0]
    rig.front.use_rate_limit(RateLimiter(messages_per_second=1, message_burst=2,
                                         bytes_per_second=0, byte_burst=1, max_hosts=1,
                                         clock=lambda: clock[0]), rig.rejects)
    try:
        for mid in range(5):
            message = mqtt.MQTTMessage(mid=mid + 1, topic=b"edgemon/v1/loud/metrics")
            message.payload, message.qos = b"x", 1
            rig.front._handle(message)
        assert rig.inbox.held == 2  # the burst; the rest never entered the inbox
        assert rig.front.rate_limited == 3
        assert rig.rejects.by_host_reason()[("loud", "rate_limited")] == 3
        clock[0] = 1.0  # one token back
        message = mqtt.MQTTMessage(mid=9, topic=b"edgemon/v1/loud/metrics")
        message.payload, message.qos = b"x", 1
        rig.front._handle(message)
        assert rig.inbox.held == 3
    finally:
        rig.pipeline.writer.shutdown()
        rig.storage.close()
        rig.loop.close()


def _share_front(loop: asyncio.AbstractEventLoop, host_share: int
                 ) -> tuple[Inbox, MqttIngest, Rejects]:
    """An MQTT front (never connected) over an inbox of ``host_share`` messages a host, with a
    rate limit that lets everything through."""
    inbox = Inbox(loop, max_messages=100, max_bytes=1 << 20, host_share=host_share)
    rejects = Rejects()
    front = MqttIngest(MqttConfig(client_id="share-front"), inbox)
    front.use_rate_limit(RateLimiter(messages_per_second=0, message_burst=1,
                                     bytes_per_second=0, byte_burst=1, max_hosts=10), rejects)
    return inbox, front, rejects


def test_a_host_holding_its_share_of_the_inbox_leaves_room_for_the_others() -> None:
    """A flooding host holds at most ``queue_max_per_host`` messages of the inbox: beyond that
    its messages are acknowledged, dropped and counted ``rate_limited`` (its agent sends them
    again), so the inbox never fills for everyone, and another host's message waits behind at
    most that many of the flooding host's."""
    loop = asyncio.new_event_loop()
    inbox, front, rejects = _share_front(loop, host_share=3)

    def publish(host: str, mid: int) -> None:
        message = mqtt.MQTTMessage(mid=mid, topic=f"edgemon/v1/{host}/metrics".encode())
        message.payload, message.qos = mid.to_bytes(2, "big"), 1
        front._handle(message)

    try:
        for mid in range(1, 6):
            publish("loud", mid)
        publish("quiet", 6)
        publish("quiet", 7)
        assert inbox.held == 5  # loud's share (3) and quiet's two
        assert front.rate_limited == 2
        assert rejects.by_host_reason()[("loud", "rate_limited")] == 2
        first = loop.run_until_complete(inbox.get_many(2, timeout=1))
        assert [m.mid for m in first] == [1, 2]
        rest = loop.run_until_complete(inbox.get_many(10, timeout=1))
        assert [m.mid for m in rest] == [3, 6, 7]  # in the order received
        inbox.release(first)  # loud holds one now: room for two more
        publish("loud", 10)
        publish("loud", 8)
        publish("loud", 9)
        assert front.rate_limited == 3 and inbox.held == 5
        assert [m.mid for m in loop.run_until_complete(inbox.get_many(10, timeout=1))] == [10, 8]
        assert inbox.queued == 0 and inbox.oldest_received_ms() is None
    finally:
        loop.close()


def test_a_bad_host_id_over_its_inbox_share_is_counted_without_its_text() -> None:
    """A topic whose host part is not a valid host id (markup, 4 KB) and that holds its share of
    the inbox is counted ``rate_limited`` under ``_unknown``, as the rate limit counts it: the text
    never reaches the rejects that /metrics and the dashboard show."""
    loop = asyncio.new_event_loop()
    _, front, rejects = _share_front(loop, host_share=1)
    hostile = "<img src=x onerror=alert(1)>" + "x" * 4000
    try:
        for mid in (1, 2):
            message = mqtt.MQTTMessage(mid=mid, topic=f"edgemon/v1/{hostile}/metrics".encode())
            message.payload, message.qos = b"x", 1
            front._handle(message)
        assert front.rate_limited == 1
        assert rejects.by_host_reason() == {("_unknown", "rate_limited"): 1}
    finally:
        loop.close()


def test_rate_limiter_table_is_bounded_and_idle_hosts_give_way() -> None:
    clock = [0.0]
    limiter = RateLimiter(messages_per_second=10, message_burst=1, bytes_per_second=0,
                          byte_burst=1, max_hosts=3, clock=lambda: clock[0])
    assert all(limiter.allow(f"h{i}", 1) for i in range(3))
    assert limiter.allow("invented-1", 1)  # no room, nobody idle: the shared bucket
    assert not limiter.allow("invented-2", 1)  # ... which one message emptied
    assert limiter.hosts_tracked == 3
    assert not limiter.allow("h0", 1)  # h0 keeps its own (empty) bucket
    clock[0] = 1.0  # every bucket refilled: the least recently seen host gives way
    assert limiter.allow("newcomer", 1) and limiter.hosts_tracked == 3
    for i in range(10_000):
        limiter.allow(f"flood-{i}", 1)
    assert limiter.hosts_tracked == 3


def test_bytes_are_charged_at_the_declared_decompressed_size() -> None:
    limiter = RateLimiter(messages_per_second=0, message_burst=1, bytes_per_second=1,
                          byte_burst=10 << 20, max_hosts=10, clock=lambda: 0.0)
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (6 << 20))
    assert len(bomb) < 1000 and message_cost(bomb, len(bomb)) == 6 << 20
    assert limiter.allow("h", message_cost(bomb, len(bomb)))
    assert not limiter.allow("h", message_cost(bomb, len(bomb)))  # 4 MiB left of 10
    assert message_cost(b"junk", 4) == 4  # not a frame: the wire size
