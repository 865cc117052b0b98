"""Values against a base batch (SPEC.md §9.1): a referencing batch that goes on from an earlier
batch of the same agent instance.

A one-minute referencing batch spends about a quarter of its bytes restarting every series from
an absolute value. A **based** batch names an earlier batch of its instance that the collector
acknowledged (``base``: its seq and a check of the values it builds on) and carries, for each
dense series, its values as differences from that batch's last value (``bvalues`` instead of
``values``): counters as differences of their differences, and a series whose numbers share a
common factor (pages, sectors) divided by it (``factors``). Resolving turns it back into the
plain referencing batch, then into the inline batch (``catalogue.resolve``).

A reader that lacks the base batch (a collector that lost its store, a compacted one, a
third-party reader that subscribed late) refuses the batch with reason ``unknown_base`` and the
agent sends it again inline. The check (a hash of the base values the agent used) makes any
mismatch an ``unknown_base``, never a wrong value.

Agent side (``last_values``, ``rebase``) uses msgpack and the SHA-256 of ``catalogue`` only.
"""

from __future__ import annotations

from itertools import accumulate
from math import gcd
from operator import sub
from typing import TYPE_CHECKING, Any, Final

import msgpack

from edgemon.protocol.batch import COUNTER
from edgemon.protocol.catalogue import sha256
from edgemon.protocol.errors import MalformedPayload, ProtocolError
from edgemon.protocol.limits import MAX_INT, MIN_INT

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgemon.protocol.catalogue import Catalogue

__all__ = [
    "BASE_KEYS",
    "CHECK_DIGITS",
    "MIN_FACTOR",
    "UNKNOWN_BASE",
    "base_check",
    "base_values",
    "last_values",
    "rebase",
    "unbase",
]

UNKNOWN_BASE: Final = "unknown_base"  # the reject reason: re-send the batch without its base
BASE_KEYS: Final = ("base", "bvalues", "factors")  # registered in SPEC.md §7 and §9.1
CHECK_DIGITS: Final = 15  # hex digits of SHA-256 in a check: 60 bits, a positive int64
MIN_FACTOR: Final = 16  # the agent divides a series by a common factor from this size on
MAX_FACTOR: Final = MAX_INT

SeriesKey = tuple[str, tuple[str, ...]]  # (metric name, label values)


def base_check(bases: list[int]) -> int:
    """The check of a based batch: the first 15 hex digits of the SHA-256 of the msgpack
    encoding (shortest forms) of its base values, as an integer."""
    return int(sha256(msgpack.packb(bases)).hexdigest()[:CHECK_DIGITS], 16)


def last_values(metrics: list[list[Any]]) -> dict[SeriesKey, int]:
    """The last value of every series of an inline batch's ``metrics`` (what a later batch
    builds on)."""
    out: dict[SeriesKey, int] = {}
    newest: dict[SeriesKey, int] = {}
    for name, _kind, _unit, _scale, _keys, entries in metrics:
        for labels, offset, deltas in entries:
            key = (name, tuple(labels))
            if deltas and offset >= newest.get(key, -1):
                newest[key] = offset
                out[key] = sum(deltas)
    return out


def base_values(lasts: dict[SeriesKey, int], catalogue: Catalogue) -> list[int]:
    """What a reader's ``unbase`` lookup answers for a base batch whose ``last_values`` are
    ``lasts``: the last value of every series of ``catalogue``, 0 where it has none."""
    names = [m[0] for m in catalogue.metrics]
    return [lasts.get((names[metric], tuple(labels)), 0) for metric, labels in catalogue.series]


def _dense(referencing: dict[str, Any], metrics: list[list[Any]]
           ) -> list[tuple[int, str, SeriesKey]]:
    """(catalogue index, kind, key) of each dense series of a referencing batch, in order."""
    listed = {item[0] for item in referencing.get("sparse", ())}
    out: list[tuple[int, str, SeriesKey]] = []
    index = 0
    for name, kind, _unit, _scale, _keys, label_lists in metrics:
        for labels in label_lists:
            if index not in listed:
                out.append((index, kind, (name, tuple(labels))))
            index += 1
    return out


def rebase(referencing: dict[str, Any], metrics: list[list[Any]], last: dict[SeriesKey, int],
           base_seq: int) -> dict[str, Any] | None:
    """The based form of a referencing batch map (``catalogue.compact``'s, naming catalogue
    ``metrics``) going on from batch ``base_seq``, whose last values are ``last``; None when a
    number would not fit in 64 bits."""
    n = len(referencing["t"])
    values = referencing["values"]
    bases: list[int] = []
    out: list[int] = []
    factors: list[list[int]] = []
    if n == 0:
        return None
    for position, (index, kind, key) in enumerate(_dense(referencing, metrics)):
        deltas = values[position * n:(position + 1) * n]
        base = last.get(key, 0)
        bases.append(base)
        first = deltas[0] - base
        if kind == COUNTER:
            x = [first, deltas[1] - first, *map(sub, deltas[2:], deltas[1:-1])] if n > 1 \
                else [first]
        else:
            x = [first, *deltas[1:]]
        if max(x) > MAX_INT or min(x) < MIN_INT or not MIN_INT <= first <= MAX_INT:
            return None
        common = gcd(*x)
        if common >= MIN_FACTOR:
            x = [v // common for v in x]
            factors.append([index, common])
        out += x
    based = {k: v for k, v in referencing.items() if k != "values" and k != "sparse"}
    based["base"] = [base_seq, base_check(bases)]
    based["bvalues"] = out
    if "sparse" in referencing:
        based["sparse"] = referencing["sparse"]
    if factors:
        based["factors"] = factors
    return based


_INT_TYPE: Final = frozenset({int})


def _int(value: Any) -> bool:
    return type(value) is int


def plain_values(bvalues: list[Any], dense: list[int], n: int, factor_of: dict[int, int],
                 counter: list[bool], bases: list[int]) -> list[int]:
    """The plain values of the dense series ``dense`` (catalogue indexes, in order) whose ``n``
    bvalues each follow one another in ``bvalues``: times ``factor_of[index]``, a running sum
    where ``counter[index]``, the first one of each moved by its base (``bases``, one per dense
    series); ``schema`` for a bvalue that is not an integer or a number beyond signed 64 bits,
    at the first series that has one. (``fast_base.unbased_values`` answers the same, faster,
    where no number can leave 64 bits.)"""
    values: list[int] = []
    # every value an integer (the usual answer, in one C loop): no look series by series
    all_int = set(map(type, bvalues)) <= _INT_TYPE
    for position, index in enumerate(dense):
        x = bvalues[position * n:(position + 1) * n]
        if not all_int and not all(map(_int, x)):
            raise MalformedPayload("bvalues must be integers", reason="schema")
        if not x:
            continue
        factor = factor_of.get(index, 1)
        if factor != 1:
            x = [v * factor for v in x]
        # a counter's values are running sums of x; a gauge's are x itself (its first one
        # moved by the base below, in x too)
        d = list(accumulate(x)) if counter[index] else x
        d[0] += bases[position]
        if max(x) > MAX_INT or min(x) < MIN_INT or max(d) > MAX_INT or min(d) < MIN_INT:
            raise MalformedPayload(f"bvalues of series {index}: a number beyond signed 64 bits",
                                   reason="schema")
        values += d
    return values


def unbase(raw: dict[str, Any], catalogue: Catalogue,
           lookup: Callable[[int], list[int] | None] | None) -> dict[str, Any]:
    """The plain referencing map (``values``) of a based batch map ``raw`` naming
    ``catalogue``. ``lookup(base_seq)`` gives the base batch's last value of every catalogue
    series (0 where it has none) or None. ``ProtocolError`` with reason ``unknown_base`` when
    the base is not known or its values are not the ones the batch was built on; ``schema``
    for a malformed based batch."""
    if "values" in raw:
        raise MalformedPayload("a batch has either values or bvalues, not both", reason="schema")
    base, bvalues = raw.get("base"), raw.get("bvalues")
    if base is None or bvalues is None:
        raise MalformedPayload(f"{'base' if base is None else 'bvalues'}: required with "
                               f"{'bvalues' if base is None else 'base'}", reason="schema")
    if type(base) is not list or len(base) != 2 or not all(map(_int, base)):
        raise MalformedPayload("base must be [seq, check], two integers", reason="schema")
    base_seq, check = base
    if not 0 <= base_seq < raw["seq"] or not 0 <= check < 16 ** CHECK_DIGITS:
        raise MalformedPayload("base: seq must be below the batch's seq, check a "
                               f"{4 * CHECK_DIGITS}-bit number", reason="schema")
    n = len(raw["t"])
    n_series = len(catalogue.series)
    listed: set[int] = set()
    for item in raw.get("sparse", []):  # shapes are checked again when resolved
        if type(item) is list and item and _int(item[0]):
            listed.add(item[0])
    dense = [i for i in range(n_series) if i not in listed]
    if type(bvalues) is not list or len(bvalues) != len(dense) * n:
        raise MalformedPayload(f"bvalues: {len(bvalues) if type(bvalues) is list else '?'} "
                               f"values for {len(dense)} series x {n} timestamps",
                               reason="schema")
    factor_of: dict[int, int] = {}
    factors = raw.get("factors", [])
    if type(factors) is not list:
        raise MalformedPayload("factors must be a list of [index, factor]", reason="schema")
    dense_set = set(dense)
    for item in factors:
        if type(item) is not list or len(item) != 2 or not all(map(_int, item)) or \
                item[0] not in dense_set or not 2 <= item[1] <= MAX_FACTOR or \
                item[0] in factor_of:
            raise MalformedPayload(f"factors: {str(item)[:60]} is not [index of a dense series "
                                   "listed once, factor >= 2]", reason="schema")
        factor_of[item[0]] = item[1]
    last = lookup(base_seq) if lookup is not None else None
    if last is None:
        raise ProtocolError(f"batch goes on from batch {base_seq} of its instance, which this "
                            "reader does not hold", reason=UNKNOWN_BASE)
    bases = [last[i] for i in dense]
    if base_check(bases) != check:
        raise ProtocolError(f"the values of batch {base_seq} held here are not the ones this "
                            "batch goes on from", reason=UNKNOWN_BASE)
    metrics = catalogue.metrics
    counter = [metrics[metric][1] == COUNTER for metric, _labels in catalogue.series]
    from edgemon.protocol.fast_base import unbased_values  # numpy: readers only, not the agent

    values = unbased_values(bvalues, dense, n, factor_of, counter, bases)
    if values is None:
        values = plain_values(bvalues, dense, n, factor_of, counter, bases)
    plain = {k: v for k, v in raw.items() if k not in BASE_KEYS}
    plain["values"] = values
    return plain
