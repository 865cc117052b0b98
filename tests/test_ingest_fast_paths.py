"""The shortcuts of ingest's hot path give exactly what the plain definitions give.

* ``screen._running_within`` (the series screen's range check over running sums) against
  accumulating every list, on generated delta lists at and around every bound ``_bounds`` makes;
* ``examine.series_hashes`` (a hash per series, remembered) against a keyed blake2b per series,
  with the memory emptied when full and series too long to remember;
* ``schema.good_heads`` (remembered metric heads): a head equal to a remembered one but
  with a boolean or float scale, or an unhashable label key, is still refused by the rules;
* ``base.unbase`` (a based batch's values, checked in one pass when all are integers): the
  same values and the same refusals, in the same order, as series by series.
"""

from __future__ import annotations

from hashlib import blake2b
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgemon.collector.ingest import examine, screen
from edgemon.protocol import ProtocolError, schema
from edgemon.protocol.base import base_check, unbase
from edgemon.protocol.catalogue import Catalogue
from edgemon.protocol.limits import MAX_INT, MIN_INT
from tests.test_fuzz_ingest import FUZZ

BOUNDS = sorted({screen._bounds(kind, unit, scale)
                 for kind in ("gauge", "counter") for unit in ("", "bytes", "percent", "seconds")
                 for scale in (0, 1, 2, 9)})
EDGES = sorted({0, 1, -1, 50, 100, 101, MAX_INT, MIN_INT, MAX_INT - 1}
               | {b + d for bound in BOUNDS for b in bound for d in (-1, 0, 1)
                  if MIN_INT <= b + d <= MAX_INT})


def _running_ok(values: list[list[int]]) -> bool:
    """What ``schema`` guarantees of a checked batch: every running sum within 64 bits."""
    return all(MIN_INT <= r <= MAX_INT for v in values for r in accumulate(v))


@st.composite
def delta_lists(draw: st.DrawFn) -> list[list[int]]:
    number = st.one_of(st.sampled_from(EDGES), st.integers(-1000, 1000),
                       st.integers(MIN_INT, MAX_INT))
    values = draw(st.lists(st.lists(number, min_size=1, max_size=6), min_size=1, max_size=5))
    if not _running_ok(values):
        values = [[v[0]] for v in values]  # one value each: its own running sum
    return values


@FUZZ
@given(delta_lists(), st.sampled_from(BOUNDS))
def test_running_within_is_every_running_sum_within_the_bounds(
        values: list[list[int]], bounds: tuple[int, int]) -> None:
    low, high = bounds
    running = [r for v in values for r in accumulate(v)]
    assert screen._running_within(values, low, high) == (min(running) >= low
                                                         and max(running) <= high)


@pytest.mark.parametrize("low, high", BOUNDS)
def test_running_within_at_the_bounds(low: int, high: int) -> None:
    for first in (low - 1, low, high, high + 1):
        for later in ([], [0], [1], [-1], [-first, first]):
            values = [[first, *later]]
            if not _running_ok(values):
                continue
            running = list(accumulate(values[0]))
            assert screen._running_within(values, low, high) == (min(running) >= low
                                                                 and max(running) <= high)


def _blake(keys: list[tuple[str, tuple[str, ...]]], salt: bytes) -> bytes:
    return b"".join(blake2b("\x00".join((name, *labels)).encode("utf-8", "surrogatepass"),
                            digest_size=8, key=salt).digest() for name, labels in keys)


series_key = st.tuples(st.text(min_size=1, max_size=20),
                       st.lists(st.text(max_size=300), max_size=10).map(tuple))


@FUZZ
@given(st.lists(series_key, max_size=30), st.binary(min_size=1, max_size=16))
def test_series_hashes_are_keyed_blake2b_whether_remembered_or_not(
        keys: list[tuple[str, tuple[str, ...]]], salt: bytes) -> None:
    expected = _blake(keys, salt)
    assert examine.series_hashes(keys, salt) == expected
    assert examine.series_hashes(iter(keys), salt) == expected  # now from memory, any iterable
    assert examine.series_hashes(keys, salt + b"x") == _blake(keys, salt + b"x")


def test_series_hashes_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(examine, "_DIGESTS_MAX", 10)
    monkeypatch.setattr(examine, "_DIGESTS", {})
    salt = b"bounded"
    keys = [(f"m{i}", ("a", str(i))) for i in range(25)]
    for k in range(0, 25, 5):
        assert examine.series_hashes(keys[k:k + 5], salt) == _blake(keys[k:k + 5], salt)
        assert len(examine._DIGESTS[salt]) <= 10
    long_key = [("m", ("x" * 300,)), ("m", tuple("abcdefghi"))]  # too long, too many labels
    assert examine.series_hashes(long_key, salt) == _blake(long_key, salt)
    assert not set(long_key) & set(examine._DIGESTS[salt])
    for i in range(6):  # one salt per collector run: a few kept, the oldest dropped
        examine.series_hashes(keys[:1], bytes([i]))
    assert len(examine._DIGESTS) <= 4


def _batch(scale: Any, keys: list[Any]) -> dict[str, Any]:
    return {"v": 1, "host": "h", "instance": "i1", "seq": 1, "sent": 1_700_000_000_000,
            "t": [1_700_000_000_000], "metrics": [
                ["fast_path_m", "gauge", "", scale, keys, [[["x"] * len(keys), 0, [1]]]]]}


@pytest.mark.parametrize("scale", [True, 1.0])
def test_a_remembered_head_does_not_pass_a_bad_one(scale: Any) -> None:
    schema.check_decoded(_batch(1, ["k"]))  # remembered as good
    assert schema.good_heads(_batch(1, ["k"])["metrics"])
    assert not schema.good_heads(_batch(scale, ["k"])["metrics"])
    with pytest.raises(ProtocolError) as caught:
        schema.check_decoded(_batch(scale, ["k"]))
    assert caught.value.reason == "schema"


def test_an_unhashable_label_key_is_no_remembered_head() -> None:
    """(The readers never build one; the look-up must still answer, not raise.)"""
    schema.check_decoded(_batch(1, ["k"]))
    assert not schema.good_heads(_batch(1, [["k"]])["metrics"])


# --- based batches: bvalues checked in one pass when all are integers (protocol/base.py) -------

def _unbased(bvalues: list[Any], bases: list[int], factors: list[list[int]] | None = None
             ) -> list[int]:
    """``unbase`` of a based batch of two timestamps over a gauge and a counter series."""
    metrics = [["fp_gauge", "gauge", "", 0, [], [[]]],
               ["fp_total", "counter", "", 0, [], [[]]]]
    catalogue = Catalogue("h", "i1", "0123456789abcdef", metrics, [(0, []), (1, [])], [5, 5])
    raw: dict[str, Any] = {"seq": 2, "t": [1_700_000_000_000, 10_000], "bvalues": bvalues,
                           "base": [1, base_check(bases)], "catalogue": catalogue.id}
    if factors:
        raw["factors"] = factors
    return unbase(raw, catalogue, lambda _seq: bases)["values"]


def _refusal(bvalues: list[Any], bases: list[int]) -> str:
    with pytest.raises(ProtocolError) as caught:
        _unbased(bvalues, bases)
    assert caught.value.reason == "schema"
    return str(caught.value)


def test_unbase_values() -> None:
    # delta-coded values: the first moved by the base; a counter's deltas are running sums
    assert _unbased([5, -2, 3, 4], [100, 1000]) == [105, -2, 1003, 7]
    assert _unbased([1, 2, 3, 4], [0, 0], [[0, 16], [1, 20]]) == [16, 32, 60, 140]


@pytest.mark.parametrize("odd", [True, 1.5, None, "1"])
def test_unbase_refuses_what_is_not_an_integer(odd: Any) -> None:
    assert _refusal([1, 2, 3, odd], [0, 0]) == "bvalues must be integers"
    # series by series, in order: a number too large in the first series is found first
    assert _refusal([MAX_INT, 2, 3, odd], [1, 0]) == \
        "bvalues of series 0: a number beyond signed 64 bits"


@pytest.mark.parametrize("bvalues, bases, series", [
    ([MAX_INT, 0, 0, 0], [1, 0], 0),  # the gauge's first value moved past 64 bits by its base
    ([0, MIN_INT, 0, 0], [0, 0], None),  # at the bound: fine
    ([0, 0, MAX_INT, 1], [0, 0], 1),  # the counter's running sum
    ([0, 0, 1, MAX_INT], [0, 0], 1),
    ([0, 0, MIN_INT, -1], [0, 0], 1),
    ([0, 0, MAX_INT, 0], [0, -1], None),
    ([0, 0, MAX_INT + 1, 0], [0, -1], 1),  # beyond 64 bits before the base brings it back
])
def test_unbase_refuses_numbers_beyond_64_bits(bvalues: list[int], bases: list[int],
                                               series: int | None) -> None:
    if series is None:
        _unbased(bvalues, bases)
    else:
        assert _refusal(bvalues, bases) == \
            f"bvalues of series {series}: a number beyond signed 64 bits"
