"""Hard limits of protocol v1: both sides enforce them; decoders check before allocating."""

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
MAX_NAME_LENGTH: Final = 128  # metric names, label keys, units
MAX_LABEL_VALUE_LENGTH: Final = 256
MAX_HOST_LENGTH: Final = 64
MAX_INSTANCE_LENGTH: Final = 64
MAX_SCALE: Final = 9  # decimal digits after the point
MAX_INT: Final = (1 << 63) - 1  # values and deltas are signed 64-bit integers
MIN_INT: Final = -(1 << 63)
MAX_ACK_RANGES: Final = 1024
