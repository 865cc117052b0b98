"""Stored payloads of the common shape, read without the protocol's rules run a second time.

Every stored payload passed ingest's complete check (``protocol.decode``: the reader and every
rule of SPEC.md) before it was stored. Reading it back for compaction, queries and forwarding
that check cost a third of the decode (``schema.check_decoded``), for rules storage does not
rely on. ``read_common`` takes the msgpack of a payload of the common shape (exactly the seven
known keys in a fixmap, strings and integers where the layout has them, at most
``fast_reader.MAX_FAST_BYTES``) with ingest's own msgspec typed decoder
(``fast_reader.read_typed``: types, array and string lengths within the limits, in C, never an
allocation from a length it has not read bytes for), and keeps of the protocol's rules those
storage relies on:

- the version (a later format is not read as this one);
- the metric heads (names, kinds, units, scales, unique valid label keys: what a series is
  named by in the store, in queries and in exports), through the protocol's own cache of heads
  that passed (``schema.good_heads``), and no metric named twice.

Storage's own checks follow in ``batches._columns`` (counts, offsets, 64-bit increasing
timestamps, non-empty values). Not run again: the host and instance ids (storage files a batch
under the host its row names), ``seq`` and ``sent`` (kept in the row), the UTF-8 byte length
of strings (their length in characters is bounded), the overflow of cumulated values
(storage's sums wrap), one series in two entries (the later sample wins, as across batches),
the batch's totals (bounded by the msgpack's size).
Anything else (another shape, a decode error, a head or version that fails) is ``None``: the
caller reads the payload the complete way, which reads or names precisely why not.
"""

from __future__ import annotations

from typing import Any

from edgemon.protocol import limits
from edgemon.protocol.fast_reader import available, read_typed
from edgemon.protocol.schema import good_heads

__all__ = ["available", "read_common"]


def read_common(packed: bytes) -> tuple[list[int], list[Any]] | None:
    """(timestamp deltas, metrics as tuples) of the msgpack of a stored payload of the common
    shape whose version and metric heads pass, else None."""
    b = read_typed(packed)
    if b is None or b.v != limits.VERSION or not good_heads(b.metrics) \
            or len({m[0] for m in b.metrics}) != len(b.metrics):
        return None
    return b.t, b.metrics
