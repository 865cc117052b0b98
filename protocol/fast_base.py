"""The values of a based batch (SPEC.md §9.1) computed by numpy, when numpy is installed and no
number can leave signed 64 bits: an accelerator for ``base.unbase``, never a second opinion.

``base.unbase`` checks the based batch (base, bvalues' length, factors, the base's check) and
then asks ``unbased_values`` for the plain values. This answers only when it can prove, from
bounds taken in C over the whole batch, that every number of the pure loop (each bvalue times
its factor, each running sum of a counter, each first value moved by its base) is within signed
64 bits, so no range check of that loop can fail and int64 arithmetic is exact; it then returns
the same list of Python ints as that loop. For anything else (a bvalue that is not an int, a
bound that does not hold) it answers None and ``base.unbase`` runs the pure loop, which gives the
precise reason and message (``tests/test_fast_base.py`` compares both on generated batches, the
protocol vectors and the fuzz corpus).

Only readers call it (``base.unbase`` imports it on first use): the agent never loads numpy.
"""

from __future__ import annotations

from typing import Final

from edgemon.protocol.limits import MAX_INT

__all__ = ["available", "unbased_values"]

_INT_TYPE: Final = frozenset({int})

try:
    import numpy as np
except ImportError:  # a third party's reader without numpy: the pure loop alone
    np = None  # type: ignore[assignment]


def available() -> bool:
    return np is not None


def unbased_values(bvalues: list[object], dense: list[int], n: int, factor_of: dict[int, int],
                   counter: list[bool], bases: list[int]) -> list[int] | None:
    """The plain values of the dense series ``dense`` (catalogue indexes, in order) whose
    ``n`` bvalues each follow one another in ``bvalues``: times ``factor_of[index]``; a running
    sum where ``counter[index]``; the first one of each moved by its base (``bases``, one per
    dense series). None unless every number on the way provably fits in signed 64 bits."""
    if np is None:
        return None
    if not bvalues:
        return []
    if not set(map(type, bvalues)) <= _INT_TYPE:  # bools, floats, strings: the pure loop
        return None
    try:
        x = np.array(bvalues, dtype=np.int64).reshape(len(dense), n)
    except OverflowError:  # beyond int64 already
        return None
    biggest = max(int(x.max()), -int(x.min()))
    factor = max(factor_of.values(), default=1)
    base = max(map(abs, bases), default=0)
    # every |x * factor| <= biggest * factor, every |running sum| <= n times that, every first
    # value moved by its base <= that plus |base|: all within (MIN_INT, MAX_INT]
    if biggest * factor * n + base > MAX_INT:
        return None
    if factor_of:
        position = {index: p for p, index in enumerate(dense)}
        times = np.ones(len(dense), dtype=np.int64)
        times[[position[i] for i in factor_of]] = list(factor_of.values())
        x *= times[:, None]
    runs = np.array(counter, dtype=bool)
    if len(dense) != len(counter):  # sparse series left out
        runs = runs[dense]
    if runs.all():
        np.cumsum(x, axis=1, out=x)
    elif runs.any():
        x = np.where(runs[:, None], np.cumsum(x, axis=1), x)
    x[:, 0] += np.array(bases, dtype=np.int64)
    return x.ravel().tolist()  # type: ignore[no-any-return]
