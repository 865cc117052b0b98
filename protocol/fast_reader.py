"""The batch map of msgpack bytes read by msgspec's typed decoder (C), when msgspec is installed.

An accelerator for ``reader.read_batch_map``, never a second opinion: it takes only the common
shape of a batch (exactly the seven known keys in a fixmap, strings and integers where the layout
has them, every array within its limit) and returns ``None`` for anything else, and the caller
then runs the pure-Python reader, which gives the precise reason or accepts what this one did not
take (unknown top-level keys, strings longer than 256 characters, a map16 header, ...). Whatever
this function returns, ``reader.read_batch_map`` returns an equal map for the same bytes
(``tests/test_fast_reader.py`` checks both on the fuzz corpus and on generated input), so
``schema.check_decoded`` applies the same rules to it and ingest accepts and rejects exactly what
the pure path does, with the same reason.

Bounded cost: msgspec checks every array's length against its ``max_length`` from the header,
before it builds an element, and never allocates from a length it has not read bytes for; only
msgpack of at most ``MAX_FAST_BYTES`` is given to it (what it builds is at most a few objects per
byte, far below ``limits.MAX_DECODE_BYTES``; larger batches take the pure path). The batch's
running totals (samples, series, label values) and the 256-byte limit of a UTF-8 string are
checked here, after the decode, on what is now known to be small.

Batches naming a catalogue or going on from a base (SPEC.md §9, §9.1: ``catalogue``, ``values``
or ``bvalues``, no ``metrics``) are never of that shape: ``catalogue.decode_received`` reads them
with ``catalogue_reader`` (``tests/test_protocol_base.py`` checks that this one declines them).

The agent never imports this module (it only encodes); without msgspec ``read_fast`` is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Final

from edgemon.protocol import limits

__all__ = ["MAX_FAST_BYTES", "available", "read_fast", "read_typed"]

# Larger msgpack goes to the pure reader: 256 KiB hold a one-minute batch of a few thousand
# series many times over, and bound what msgspec may build to a few MiB.
MAX_FAST_BYTES: Final = 256 << 10
_FIXMAP_7: Final = 0x87  # a fixmap of exactly the seven known keys: none twice, none unknown
# A string of at most this many characters is at most MAX_LABEL_VALUE_LENGTH bytes of UTF-8.
_SURELY_SHORT: Final = limits.MAX_LABEL_VALUE_LENGTH // 4
_TEXTS: Final = itemgetter(0, 1, 2)  # a metric's name, kind and unit

try:
    import msgspec
except ImportError:  # the agent's and third parties' installs: the pure reader alone
    msgspec = None  # type: ignore[assignment]


def available() -> bool:
    return msgspec is not None


if msgspec is not None:
    _Str = Annotated[str, msgspec.Meta(max_length=limits.MAX_LABEL_VALUE_LENGTH)]
    _Entry = tuple[Annotated[list[_Str], msgspec.Meta(max_length=limits.MAX_LABELS)], int,
                   Annotated[list[int], msgspec.Meta(max_length=limits.MAX_TIMESTAMPS)]]
    _Metric = tuple[_Str, _Str, _Str, int,
                    Annotated[list[_Str], msgspec.Meta(max_length=limits.MAX_LABELS)],
                    Annotated[list[_Entry], msgspec.Meta(max_length=limits.MAX_SERIES)]]

    class _Batch(msgspec.Struct, forbid_unknown_fields=True):
        v: int
        host: _Str
        instance: _Str
        seq: int
        sent: int
        t: Annotated[list[int], msgspec.Meta(max_length=limits.MAX_TIMESTAMPS)]
        metrics: Annotated[list[_Metric], msgspec.Meta(max_length=limits.MAX_METRICS)]

    _decoder = msgspec.msgpack.Decoder(_Batch)


def _too_long(strings: Iterable[str]) -> bool:
    """Whether a string of ``strings`` is longer than MAX_LABEL_VALUE_LENGTH bytes of UTF-8
    (only one of more than ``_SURELY_SHORT`` characters can be: that is all this looks at
    first, in one C loop)."""
    strings = list(strings)
    if max(map(len, strings), default=0) <= _SURELY_SHORT:
        return False
    return any(len(s.encode()) > limits.MAX_LABEL_VALUE_LENGTH for s in strings
               if len(s) > _SURELY_SHORT)


def read_typed(packed: bytes) -> Any | None:
    """The batch of ``packed`` as msgspec's typed decoder builds it (fields ``v``, ``host``,
    ``instance``, ``seq``, ``sent``, ``t``, ``metrics``; metrics and series entries as tuples)
    if it has the common shape and every array and string is within its limit, else None.
    Not checked here: the UTF-8 length of strings, the batch's totals (``read_fast`` does)."""
    if msgspec is None or not packed or packed[0] != _FIXMAP_7 or len(packed) > MAX_FAST_BYTES:
        return None
    try:
        return _decoder.decode(packed)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None


def _read(packed: bytes) -> dict[str, Any] | None:
    """The batch map of ``packed`` if it has the common shape within every limit, else None."""
    b = read_typed(packed)
    if b is None:
        return None
    texts = chain.from_iterable(map(_TEXTS, b.metrics))  # name, kind, unit
    if _too_long(chain((b.host, b.instance), texts,
                       chain.from_iterable(map(itemgetter(4), b.metrics)))):
        return None
    entries = chain.from_iterable(m[5] for m in b.metrics)
    if _too_long(chain.from_iterable(map(itemgetter(0), entries))):
        return None
    # The batch's totals need no count: see _TOTALS_HOLD.
    metrics = [[name, kind, unit, scale, keys, list(map(list, entries))]
               for name, kind, unit, scale, keys, entries in b.metrics]
    return {"v": b.v, "host": b.host, "instance": b.instance, "seq": b.seq, "sent": b.sent,
            "t": b.t, "metrics": metrics}


# Every sample and every label value takes at least one byte of msgpack and every series entry
# at least four (fixarray, empty fixarray, offset, fixarray), besides the batch map's own
# header: msgpack of MAX_FAST_BYTES cannot exceed the batch's totals.
_SMALLEST_TOTAL: Final = min(limits.MAX_SAMPLES, 4 * limits.MAX_SERIES, limits.MAX_LABEL_VALUES)
_TOTALS_HOLD: Final = _SMALLEST_TOTAL >= MAX_FAST_BYTES
assert _TOTALS_HOLD, "MAX_FAST_BYTES too large: count the totals in _read"

read_fast = _read if msgspec is not None else None
