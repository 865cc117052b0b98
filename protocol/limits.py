"""Hard limits of protocol v1: both sides enforce them; decoders check before allocating.

``MAX_DECODE_BYTES`` is derived from the others: the most memory one message can make the
reference decoder (``codec.decode``) hold at once, whatever its bytes (SPEC.md §6).
"""

from __future__ import annotations

from typing import Final

VERSION: Final = 1

MAX_COMPRESSED_BYTES: Final = 1 << 20  # 1 MiB on the wire
MAX_DECOMPRESSED_BYTES: Final = 8 << 20  # 8 MiB of msgpack after zstd
MAX_TIMESTAMPS: Final = 4096  # sampling cycles in one batch
MAX_METRICS: Final = 4096  # metric names in one batch
MAX_SERIES: Final = 65536  # series (name + label values) in one batch
MAX_SAMPLES: Final = 1_000_000  # series x timestamps actually present
MAX_LABELS: Final = 16  # label keys per metric
MAX_LABEL_VALUES: Final = 262_144  # label values over all series entries of one batch
MAX_BATCH_KEYS: Final = 64  # keys of the top-level batch map (known and unknown)
MAX_NAME_LENGTH: Final = 128  # metric names, label keys, units, top-level keys
MAX_LABEL_VALUE_LENGTH: Final = 256  # bytes of UTF-8; also the limit of any msgpack string
MAX_HOST_LENGTH: Final = 64
MAX_INSTANCE_LENGTH: Final = 64
MAX_SCALE: Final = 9  # decimal digits after the point
MAX_INT: Final = (1 << 63) - 1  # values and deltas are signed 64-bit integers
MIN_INT: Final = -(1 << 63)
MAX_ACK_RANGES: Final = 1024
# Series catalogues (SPEC.md §9): a catalogue is bounded like a batch (series, label values,
# bytes); a collector keeps at most this many per host (the newest declared), so one host's
# catalogues never crowd out another's; an ack names at most this many catalogue ids.
MAX_CATALOGUES_PER_HOST: Final = 16
# Values of top-level keys this version does not know (SPEC.md §7): all of them together hold at
# most this many elements (scalars, arrays and maps each count one), nested at most this deep.
MAX_EXTENSION_ELEMENTS: Final = 1024
MAX_EXTENSION_DEPTH: Final = 8

# --- the memory one message can cost while it is decoded -------------------------------------
# Upper bounds of CPython 3.11 (64-bit) object sizes, rounded up to pymalloc's 16-byte classes,
# plus the 8-byte slot in the list or dict that holds the object.
_INT_COST: Final = 32 + 8  # an int outside the cached -5..256
_STR_COST: Final = 80 + 16 + 8  # a str's header (76 B for UCS-4) and rounding, plus its slot
_CHAR_COST: Final = 4  # a character of a UCS-4 str; a UTF-8 byte is at most one character
_LIST_COST: Final = 56 + 16  # a list's header and rounding (its slots are counted above)
_MAP_COST: Final = 232 + 16  # an extension map of a few keys, beyond its slots
_ZSTD_BLOCK: Final = 128 << 10  # a frame may overshoot its declared size by one block at most

_MAX_INTS: Final = (MAX_SAMPLES + MAX_TIMESTAMPS + MAX_SERIES  # values, timestamps, offsets
                    + MAX_METRICS + MAX_EXTENSION_ELEMENTS + MAX_BATCH_KEYS)  # scales, ...
_MAX_STRINGS: Final = (MAX_LABEL_VALUES + MAX_METRICS * (3 + MAX_LABELS)  # names, kinds, units
                       + 2 * MAX_EXTENSION_ELEMENTS + MAX_BATCH_KEYS)  # extension keys, values
_MAX_LISTS: Final = (3 * MAX_METRICS + 3 * MAX_SERIES + 1  # metric, keys, entries; entry, ...
                     + MAX_EXTENSION_ELEMENTS)

MAX_DECODE_BYTES: Final = (
    MAX_COMPRESSED_BYTES  # the payload
    + MAX_DECOMPRESSED_BYTES + _ZSTD_BLOCK  # the decompressed msgpack
    + _MAX_INTS * _INT_COST
    + _MAX_STRINGS * _STR_COST + _CHAR_COST * MAX_DECOMPRESSED_BYTES
    + _MAX_LISTS * _LIST_COST + MAX_EXTENSION_ELEMENTS * _MAP_COST
)
