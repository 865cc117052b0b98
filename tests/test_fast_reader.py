"""The msgspec reader (``protocol.fast_reader``) and the pure-Python reader accept and reject the
same payloads, with the same result: the same batch, or the same error (class, reason, message
and the batch key the agent is told about). The reference is the decoder as it was: the pure
reader and the schema's rules one entry at a time (not ``schema._metrics_at_once``, which checks
them over the whole batch at once and must agree).

Checked on every payload of the fuzz corpus (``tests/fuzz_corpus``), on the hostile and
adversarial generators of ``test_fuzz_ingest``, on mutations aimed at what msgspec does
differently from msgpack's reader (repeated keys, strings of 64-256 characters that are more than
256 bytes of UTF-8, map16 headers, integers past 64 bits, ...), and on real agent batches, which
must take the fast path (or this file would compare the pure reader with itself).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemon.protocol import ProtocolError, decode_batch, encode, fast_reader, schema
from edgemon.protocol.codec import decompress
from edgemon.protocol.reader import read_batch_map
from edgemon.protocol.schema import ValidBatch, check_decoded
from tests.test_fuzz_ingest import (
    CORPUS,
    FUZZ,
    _agent_frame_bytes,
    _any_msgpack,
    _base_batch,
    adversarial_batches,
    hostile,
)

pytestmark = pytest.mark.skipif(not fast_reader.available(), reason="msgspec not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def pure_decode_batch(payload: bytes) -> ValidBatch:
    """``codec.decode_batch`` as it was: the pure-Python reader, and the rules checked one
    metric and one series entry at a time (``schema._metrics_at_once`` left out)."""
    at_once = schema._metrics_at_once
    schema._metrics_at_once = lambda *_: None  # type: ignore[assignment]
    try:
        return check_decoded(read_batch_map(decompress(payload)))
    finally:
        schema._metrics_at_once = at_once  # type: ignore[assignment]


def outcome(decoder: Any, payload: bytes) -> tuple[Any, ...]:
    try:
        batch = decoder(payload)
    except ProtocolError as exc:
        return ("rejected", type(exc).__name__, exc.reason, str(exc), exc.batch_key)
    return ("accepted", batch.to_map(), batch.sample_count)


def assert_same(payload: bytes) -> tuple[Any, ...]:
    shipped = outcome(decode_batch, payload)
    assert shipped == outcome(pure_decode_batch, payload)
    return shipped


def assert_same_packed(packed: bytes) -> None:
    """The readers directly: whatever the fast one returns, the pure one returns too."""
    fast = fast_reader.read_fast(packed)  # type: ignore[misc]
    if fast is not None:
        assert fast == read_batch_map(packed)
    assert_same(_agent_frame_bytes(packed))


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.stem)
def test_corpus_payload_same_outcome_both_readers(path: Path) -> None:
    assert_same(path.read_bytes())


def test_agent_batches_take_the_fast_path_and_read_the_same() -> None:
    from fleet import SimHost  # benchmarks/fleet.py: the agent's families at fleet shapes

    host = SimHost("fast-host", 7, int(time.time() * 1000) - 3_600_000)
    for _ in range(5):
        payload = encode(host.next_batch())
        packed = decompress(payload)
        fast = fast_reader.read_fast(packed)  # type: ignore[misc]
        assert fast is not None, "an ordinary agent batch must not need the pure reader"
        assert fast == read_batch_map(packed)
        assert assert_same(payload)[0] == "accepted"


def _packed(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def test_what_msgspec_reads_differently_goes_to_the_pure_reader() -> None:
    base = _packed(_base_batch("h"))
    assert fast_reader.read_fast(base) is not None  # type: ignore[misc]
    # a repeated key (msgspec would keep the last one): 8 keys, not the fixmap of 7
    repeated = b"\x88" + base[1:] + _packed("seq")[0:] + _packed(8)
    # the same map behind a map16 header
    map16 = b"\xde\x00\x07" + base[1:]
    for packed in (repeated, map16):
        assert fast_reader.read_fast(packed) is None  # type: ignore[misc]
        assert_same_packed(packed)
    # strings near the byte limit: 256 bytes pass, 257 are refused, however many characters
    for text in ("x" * 256, "x" * 257, "\u20ac" * 85 + "x", "\u20ac" * 86, "\U0001f600" * 64,
                 "\U0001f600" * 65, "\u00e9" * 128, "\u00e9" * 129):
        for place in ("label", "host", "name", "unit", "key", "instance"):
            doc = _base_batch("h")
            metric = doc["metrics"][0]
            if place == "label":
                metric[5][0][0][0] = text
            elif place == "name":
                metric[0] = text
            elif place == "unit":
                metric[2] = text
            elif place == "key":
                metric[4][0] = text
            else:
                doc[place] = text
            assert_same_packed(_packed(doc))
    # integers at and past the 64-bit edges, in every integer place
    for number in (2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**63) + 1):
        for path in ("seq", "sent", "v", "t0", "offset", "value", "scale"):
            doc = _base_batch("h")
            metric = doc["metrics"][0]
            if path == "t0":
                doc["t"][0] = number
            elif path == "offset":
                metric[5][0][1] = number
            elif path == "value":
                metric[5][0][2][0] = number
            elif path == "scale":
                metric[3] = number
            else:
                doc[path] = number
            assert_same_packed(_packed(doc))


def test_large_batches_take_the_pure_path() -> None:
    doc = _base_batch("h")
    doc["metrics"][0][5] = [[[f"{i:07d}"], 0, [1, 2]] for i in range(30_000)]
    packed = _packed(doc)
    assert len(packed) > fast_reader.MAX_FAST_BYTES
    assert fast_reader.read_fast(packed) is None  # type: ignore[misc]
    assert_same_packed(packed)


@settings(FUZZ, max_examples=400)
@given(st.one_of(hostile("h").map(lambda m: m[1]), adversarial_batches("h", 5)))
def test_hostile_and_adversarial_payloads_same_outcome(payload: bytes) -> None:
    assert_same(payload)


_FIELD = st.sampled_from(["v", "host", "instance", "seq", "sent", "t", "metrics", "m.name",
                          "m.kind", "m.unit", "m.scale", "m.keys", "m.series", "e", "e.labels",
                          "e.offset", "e.values", "e.values.0", "t.0", "e.labels.0"])


def _replace(doc: dict[str, Any], field: str, value: Any) -> None:
    metric, entry = doc["metrics"][0], doc["metrics"][0][5][0]
    spots: dict[str, tuple[Any, Any]] = {
        "m.name": (metric, 0), "m.kind": (metric, 1), "m.unit": (metric, 2),
        "m.scale": (metric, 3), "m.keys": (metric, 4), "m.series": (metric, 5),
        "e": (metric[5], 0), "e.labels": (entry, 0), "e.offset": (entry, 1),
        "e.values": (entry, 2), "e.values.0": (entry[2], 0), "t.0": (doc["t"], 0),
        "e.labels.0": (entry[0], 0)}
    container, key = spots.get(field, (doc, field))
    container[key] = value


@settings(FUZZ, max_examples=600)
@given(_FIELD, _any_msgpack, st.binary(max_size=6), st.integers(0, 2))
def test_one_field_anything_same_outcome(field: str, value: Any, tail: bytes,
                                         where: int) -> None:
    """One field of a valid batch replaced by anything msgpack carries (binary, extension
    types, floats, nil, maps with non-string keys, ...), perhaps with bytes after it."""
    doc = _base_batch("h")
    _replace(doc, field, value)
    try:
        packed = _packed(doc)
    except (ValueError, OverflowError, TypeError):
        return
    assert_same_packed(packed + tail if where == 1 else packed[:-1] if where == 2 else packed)


def test_without_msgspec_decode_is_the_pure_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = encode(_base_batch("h"))
    with_fast = decode_batch(payload).to_map()
    monkeypatch.setattr(fast_reader, "read_fast", None)
    assert decode_batch(payload).to_map() == with_fast


def test_the_agent_never_loads_msgspec() -> None:
    probe = ("import sys, edgemon.agent.cli, edgemon.agent.runner, edgemon.protocol\n"
             "from edgemon.protocol import encode\n"
             "print('msgspec' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "False"


# --- the series screen's batch-at-once check (collector/ingest/screen.py) ----------------------

def _screen_both_ways(payload: bytes) -> None:
    from edgemon.collector.ingest import screen

    try:
        batch = decode_batch(payload)
    except ProtocolError:
        return
    at_once = screen._all_plausible
    screen._all_plausible = lambda *_: False  # type: ignore[assignment]
    try:
        one_by_one = screen.screen(batch)
    finally:
        screen._all_plausible = at_once  # type: ignore[assignment]
    assert screen._all_plausible(batch.metrics) == (not one_by_one)
    assert screen.screen(batch) == one_by_one


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.stem)
def test_screen_at_once_agrees_on_the_corpus(path: Path) -> None:
    _screen_both_ways(path.read_bytes())


@settings(FUZZ, max_examples=300)
@given(adversarial_batches("h", 5))
def test_screen_at_once_agrees_on_adversarial_batches(payload: bytes) -> None:
    _screen_both_ways(payload)
