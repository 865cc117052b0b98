"""The numpy values of a based batch (``protocol.fast_base``) and the pure loop
(``base.plain_values``) give the same outcome: whatever the fast one answers, the pure one
answers too, and ``unbase`` (through ``catalogue.decode_received``) accepts and rejects exactly the
same based batches with numpy as without it, with the same batch or the same error (class,
reason, message, batch key).

Checked on generated values (every 64-bit edge, numbers past 64 bits, bools and floats, large
factors and bases), on real agent batches made based and then mutated, and on every payload of
the fuzz corpus; real agent batches must take the fast path (or this file would compare the
pure loop with itself).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgemon.protocol import ProtocolError, encode
from edgemon.protocol import fast_base as fb
from edgemon.protocol.base import base_check, base_values, last_values, plain_values, rebase
from edgemon.protocol.catalogue import compact, decode_received
from edgemon.protocol.codec import BASED_DICTIONARY_ID
from edgemon.protocol.limits import MAX_INT, MIN_INT
from tests.test_fuzz_ingest import CORPUS, FUZZ
from tests.test_protocol_base import _batch, _catalogue

pytestmark = pytest.mark.skipif(not fb.available(), reason="numpy not installed")

NOW = 1_790_000_000_000
EDGES = (0, 1, -1, 2, MAX_INT, MIN_INT, MAX_INT - 1, MIN_INT + 1, MAX_INT // 2, MIN_INT // 2,
         MAX_INT // 6, MIN_INT // 6, 2**62, -(2**62), 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
         2**70, -(2**70), 3037000499, -3037000500)
NUMBERS = st.one_of(st.integers(-1000, 1000), st.sampled_from(EDGES),
                    st.integers(MIN_INT, MAX_INT), st.integers(-(2**66), 2**66))
ODD = st.one_of(st.booleans(), st.floats(allow_nan=False), st.just(None), st.just("1"))
FACTORS = st.one_of(st.integers(2, 64), st.sampled_from((16, 4096, 2**31, 2**32, 2**62,
                                                         MAX_INT, MAX_INT - 1)))


def _outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("rejected", type(exc).__name__, exc.reason, str(exc))


@st.composite
def _shapes(draw: st.DrawFn) -> tuple[Any, ...]:
    n = draw(st.integers(0, 7))
    n_series = draw(st.integers(0, 9))
    dense = sorted(draw(st.sets(st.integers(0, max(n_series - 1, 0)), max_size=n_series))
                   if n_series else set())
    numbers = draw(st.sampled_from((st.integers(-1000, 1000), NUMBERS)))
    values = draw(st.lists(numbers, min_size=n * len(dense), max_size=n * len(dense)))
    if values and draw(st.integers(0, 9)) == 0:  # now and then something not an int
        values[draw(st.integers(0, len(values) - 1))] = draw(ODD)
    factor_of = draw(st.dictionaries(st.sampled_from(dense), FACTORS)) if dense else {}
    counter = draw(st.lists(st.booleans(), min_size=n_series, max_size=n_series))
    bases = draw(st.lists(numbers, min_size=len(dense), max_size=len(dense)))
    return values, dense, n, factor_of, counter, bases


@settings(FUZZ, max_examples=300)
@given(_shapes())
def test_fast_values_are_the_pure_loops(shape: tuple[Any, ...]) -> None:
    fast = fb.unbased_values(*shape)
    if fast is not None:
        assert ("ok", fast) == _outcome(plain_values, *shape)
        assert all(type(v) is int for v in fast)


def test_the_fast_path_answers_up_to_the_64_bit_edge_and_declines_past_it() -> None:
    # one counter series of 2 values: x * 1 and its running sum, moved by the base; the
    # bound (largest |x| times 2 values, plus the base) is just within 64 bits
    assert fb.unbased_values([MAX_INT // 2 - 2, MAX_INT // 2], [0], 2, {}, [True], [1]) \
        == [MAX_INT // 2 - 1, MAX_INT - 3]
    assert fb.unbased_values([MAX_INT // 2 + 1, 0], [0], 2, {}, [True], [0]) is None
    assert _outcome(plain_values, [MAX_INT, MAX_INT], [0], 2, {}, [True], [0])[2] == "schema"
    assert fb.unbased_values([True, 1], [0], 2, {}, [False], [0]) is None  # a bool: pure loop
    assert fb.unbased_values([2**64 - 1, 1], [0], 2, {}, [False], [0]) is None


def _agent_batches(seed: int, count: int) -> list[tuple[dict[str, Any], Any, list[int],
                                                       dict[str, Any]]]:
    """(based map, catalogue, base values, inline batch) of a host's consecutive batches."""
    rng = random.Random(seed)
    state: dict[Any, int] = {}
    previous = _batch(rng, 1, NOW - 120_000 * count, state)
    metrics = None
    out = []
    for seq in range(2, count + 2):
        inline = _batch(rng, seq, NOW - 120_000 * count + 60_000 * (seq - 1), state)
        metrics, ident, referencing = compact(inline, metrics)
        lasts = last_values(previous["metrics"])
        based = rebase(referencing, metrics, lasts, seq - 1)
        assert based is not None
        catalogue = _catalogue(metrics, ident)
        out.append((based, catalogue, base_values(lasts, catalogue), inline))
        previous = inline
    return out


def _decoded(payload: bytes, catalogue: Any, bases: list[int] | None) -> tuple[Any, ...]:
    try:
        batch, referencing = decode_received(payload, lambda ident: catalogue,
                                             lambda i, s, c: bases)
    except ProtocolError as exc:
        return ("rejected", type(exc).__name__, exc.reason, str(exc), exc.batch_key)
    return ("accepted", batch.to_map(), referencing)


def _both(payload: bytes, catalogue: Any, bases: list[int] | None,
          monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    with_numpy = _decoded(payload, catalogue, bases)
    with monkeypatch.context() as m:
        m.setattr(fb, "np", None)
        assert fb.unbased_values([1], [0], 1, {}, [False], [0]) is None
        assert with_numpy == _decoded(payload, catalogue, bases)
    return with_numpy


def test_real_agent_batches_take_the_fast_path_and_resolve_alike(
        monkeypatch: pytest.MonkeyPatch) -> None:
    taken = []
    fast = fb.unbased_values

    def counted(*args: Any) -> Any:
        taken.append(fast(*args) is not None)
        return fast(*args)

    for based, catalogue, bases, inline in _agent_batches(11, 12):
        payload = encode(based, dict_id=BASED_DICTIONARY_ID)
        with monkeypatch.context() as m:
            m.setattr(fb, "unbased_values", counted)
            got = _decoded(payload, catalogue, bases)
        assert got == ("accepted", inline, True)
        assert _both(payload, catalogue, bases, monkeypatch) == got
    assert taken and all(taken)
    assert any(b.get("factors") for b, *_ in _agent_batches(11, 12))


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_mutated_based_batches_have_the_same_outcome_with_and_without_numpy(
        data: st.DataObject) -> None:
    based, catalogue, bases, _inline = data.draw(st.sampled_from(AGENT))
    based = {**based, "bvalues": list(based["bvalues"])}
    bases = list(bases)
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.sampled_from(("bvalues", "bases", "factors")))
        if where == "bvalues":
            i = data.draw(st.integers(0, len(based["bvalues"]) - 1))
            based["bvalues"][i] = data.draw(st.one_of(NUMBERS, st.booleans(), st.floats(
                allow_nan=False, allow_infinity=False)))
        elif where == "bases":
            bases[data.draw(st.integers(0, len(bases) - 1))] = data.draw(NUMBERS)
        else:
            index = data.draw(st.integers(0, len(catalogue.series) - 1))
            factors = [f for f in based.get("factors", []) if f[0] != index]
            based["factors"] = [*factors, [index, data.draw(FACTORS)]]
    # the check the agent would send for these bases, so that unbase reaches the values
    try:
        based["base"] = [based["base"][0], base_check(bases)]
    except (OverflowError, ValueError):  # a base msgpack cannot hold: no such check
        return
    try:
        payload = encode(based, dict_id=BASED_DICTIONARY_ID)
    except (OverflowError, TypeError, ValueError):  # msgpack cannot hold a number
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        _both(payload, catalogue, bases, monkeypatch)


AGENT = _agent_batches(5, 6)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.stem)
def test_corpus_payload_same_outcome_with_and_without_numpy(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _based, catalogue, bases, _inline = AGENT[0]
    _both(path.read_bytes(), catalogue, bases, monkeypatch)


def test_the_mutations_reach_the_values() -> None:
    """The check of mutated bases is made right, so the mutations test reaches the values (a
    bvalue past 64 bits is refused there, not at the base's check)."""
    based, catalogue, bases, _inline = AGENT[0]
    bad = {**based, "bvalues": [MAX_INT, *based["bvalues"][1:]]}
    payload = encode(bad, dict_id=BASED_DICTIONARY_ID)
    got = _decoded(payload, catalogue, bases)
    assert got[2] == "schema" and "beyond signed 64 bits" in got[3], got
    assert msgpack.unpackb(msgpack.packb(bases)) == bases
