"""Storage reads stored payloads of the common shape without the protocol's rules run again
(``collector/storage/stored_reader.py``), and that changes nothing it reads: whatever the
complete way (ingest's decoder and every rule, then storage's checks) reads, ``read_batch``
reads to the same columns; whatever it cannot read is ``UnreadableBatch`` (quarantined), never
another error. Checked on the fuzz corpus, the hostile and adversarial generators of
``test_fuzz_ingest`` and one field of a valid batch replaced by anything msgpack carries. The
protocol's rules storage relies on (version, metric names and label keys) still hold; those it
does not (the host id, values whose running sum overflows) no longer stop it reading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemon.collector.storage import batches, stored_reader
from edgemon.collector.storage.batches import BatchColumns, UnreadableBatch, read_batch
from edgemon.protocol import ProtocolError, decode, encode
from edgemon.protocol.codec import decompress
from tests.test_fast_reader import _FIELD, _replace
from tests.test_fuzz_ingest import (
    CORPUS,
    FUZZ,
    _agent_frame_bytes,
    _any_msgpack,
    _base_batch,
    adversarial_batches,
    hostile,
)

pytestmark = pytest.mark.skipif(not stored_reader.available(), reason="msgspec not installed")


def complete(payload: bytes) -> BatchColumns | None:
    """The columns the complete way reads (None: it cannot)."""
    try:
        return batches._columns(decode(payload))
    except (ProtocolError, UnreadableBatch):
        return None


def stored(payload: bytes) -> BatchColumns | None:
    try:
        return read_batch(payload)
    except UnreadableBatch:
        return None


def same(a: BatchColumns, b: BatchColumns) -> bool:
    return (a.metrics == b.metrics and a.labels == b.labels
            and all(np.array_equal(x, y) for x, y in ((a.bounds, b.bounds), (a.ts, b.ts),
                                                        (a.values, b.values))))


def assert_agrees(payload: bytes) -> BatchColumns | None:
    read = stored(payload)  # nothing but UnreadableBatch escapes
    expected = complete(payload)
    if expected is not None:
        assert read is not None and same(read, expected)
    if read is not None:  # laid out consistently, whatever it is
        assert read.bounds[-1] == read.ts.size == read.values.size
        assert read.bounds.size == len(read.labels) + 1
    return read


def took_the_common_path(payload: bytes) -> bool:
    return stored_reader.read_common(decompress(payload)) is not None


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.stem)
def test_corpus_payloads_read_as_the_complete_way_reads_them(path: Path) -> None:
    assert_agrees(path.read_bytes())


@settings(FUZZ, max_examples=300)
@given(st.one_of(hostile("h").map(lambda m: m[1]), adversarial_batches("h", 5)))
def test_hostile_and_adversarial_payloads(payload: bytes) -> None:
    assert_agrees(payload)


@settings(FUZZ, max_examples=400)
@given(_FIELD, _any_msgpack, st.integers(0, 1))
def test_one_field_anything(field: str, value: Any, truncate: int) -> None:
    doc = _base_batch("h")
    _replace(doc, field, value)
    try:
        packed = msgpack.packb(doc, use_bin_type=True)
    except (ValueError, OverflowError, TypeError):
        return
    assert_agrees(_agent_frame_bytes(packed[:-1] if truncate else packed))


def test_valid_batches_take_the_common_path() -> None:
    payload = encode(_base_batch("h"))
    assert took_the_common_path(payload)
    assert assert_agrees(payload) is not None


def _changed(change: Any) -> bytes:
    doc = _base_batch("h")
    change(doc)
    return _agent_frame_bytes(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize("change", [
    lambda d: d.update(v=2),
    lambda d: d["metrics"][0].__setitem__(0, "not a name"),
    lambda d: d["metrics"].append(list(d["metrics"][0])),  # a metric named twice
    lambda d: d["metrics"][0].__setitem__(4, ["k", "k"]),
    lambda d: d["metrics"][0].__setitem__(4, ["bad key"]),
], ids=["version", "metric name", "repeated metric", "repeated label key", "label key"])
def test_rules_storage_relies_on_still_hold(change: Any) -> None:
    """What a series is named by (and the format's version) is checked as ingest checks it:
    a stored batch that breaks it is quarantined, whichever way it is read."""
    payload = _changed(change)
    assert not took_the_common_path(payload)
    with pytest.raises(UnreadableBatch):
        read_batch(payload)


def test_rules_storage_does_not_rely_on_are_not_run_again() -> None:
    """A host id the protocol refuses: storage files a batch under its row's host and reads it
    (ingest never stores such a batch)."""
    payload = _changed(lambda d: d.update(host="not a host id!"))
    assert complete(payload) is None
    read = stored(payload)
    assert read is not None and read.ts.size == sum(len(e[2]) for m in _base_batch("h")[
        "metrics"] for e in m[5])
