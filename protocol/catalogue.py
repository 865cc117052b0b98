"""Series declared once: catalogues, and batches that refer to one by its content hash.

A **catalogue** lists a host's series (metric name, kind, unit, scale, label keys and the label
values of each series) once; it is published (retained) on ``edgemon/v1/<host>/catalogue`` and
the collector stores it and acknowledges it. A **referencing batch** then carries only the
catalogue's id and the values: every series of the catalogue that covers all of the batch's
timestamps (one entry, offset 0) sends its delta-coded values in one flat ``values`` list, in
catalogue order; the others (holes, late starts, absent) are listed in ``sparse``. SPEC.md §9.

Resolving a referencing batch with its catalogue gives exactly the inline v1 batch (``metrics``)
with the same samples; every rule of an inline batch is then checked on it (``check_decoded``),
so what a collector accepts in either form is the same. Catalogue ids are per host: a collector
looks them up under the host of the topic a batch arrived on.

Agent side (``compact``, ``encode_catalogue``) uses msgpack and hashlib only; the reader classes
are loaded by the decoding functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import msgpack

from edgemon.protocol.errors import LimitExceeded, MalformedPayload, ProtocolError
from edgemon.protocol.limits import (
    MAX_DECOMPRESSED_BYTES,
    MAX_LABEL_VALUES,
    MAX_SAMPLES,
    MAX_SERIES,
    VERSION,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgemon.protocol.schema import ValidBatch

# CPython's own SHA-256, not hashlib's OpenSSL one: loading libcrypto costs the agent ~3.6 MB
# of resident memory (the same digest either way).
try:
    from _sha2 import sha256  # type: ignore[import-not-found]  # Python >= 3.12
except ImportError:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found, no-redef]  # Python 3.11
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment]

__all__ = [
    "CATALOGUE_ID_LENGTH",
    "UNKNOWN_CATALOGUE",
    "Catalogue",
    "catalogue_id",
    "compact",
    "decode_catalogue",
    "decode_received",
    "encode_catalogue",
    "is_referencing",
    "resolve",
]

UNKNOWN_CATALOGUE: Final = "unknown_catalogue"  # the reject reason: re-send with it inline
CATALOGUE_ID_LENGTH: Final = 16  # lowercase hex characters: the first 8 bytes of a SHA-256
REFERENCING_KEYS: Final = ("catalogue", "values", "sparse")
_LABELS: Final = itemgetter(1)  # a catalogue series' label values
_HEX: Final = frozenset("0123456789abcdef")


def catalogue_id(metrics: list[list[Any]]) -> str:
    """The content hash of a catalogue's ``metrics``: SHA-256 of their msgpack encoding (every
    value in its shortest form, as msgpack libraries write it), first 16 hex digits."""
    packed = msgpack.packb(metrics, use_bin_type=True)
    return sha256(packed).hexdigest()[:CATALOGUE_ID_LENGTH]


def is_catalogue_id(value: object) -> bool:
    return (type(value) is str and len(value) == CATALOGUE_ID_LENGTH  # type: ignore[arg-type]
            and set(value) <= _HEX)  # type: ignore[arg-type]


# --- the agent's side: an inline batch map -> catalogue + referencing batch map ---------------

MAX_ABSENT_SHARE: Final = 0.25  # of an extended catalogue's series a batch may lack


def compact(batch: dict[str, Any], base: list[list[Any]] | None = None
            ) -> tuple[list[list[Any]], str, dict[str, Any]]:
    """(catalogue metrics, catalogue id, referencing batch map) of an inline batch map.

    Without ``base`` the catalogue holds exactly the batch's series, in the inline batch's
    order. With ``base`` (an earlier catalogue's metrics; the batch's metrics and label values
    sorted, as ``BatchBuilder`` makes them) it holds ``base``'s series and the batch's, sorted,
    as long as the batch lacks at most a quarter of them: a catalogue then changes only when a
    series appears, not when one misses a batch. Either way ``resolve`` gives back exactly
    ``batch``."""
    runs: dict[str, dict[tuple[str, ...], list[list[Any]]]] = {}
    heads: dict[str, list[Any]] = {}
    for name, kind, unit, scale, keys, entries in batch["metrics"]:
        heads[name] = [name, kind, unit, scale, list(keys)]
        by_labels = runs[name] = {}
        for labels, offset, deltas in entries:
            by_labels.setdefault(tuple(labels), []).append([offset, deltas])
    metrics = [[*heads[name], [list(k) for k in by_labels]] for name, by_labels in runs.items()]
    if base:
        extended = _extended(base, heads, runs)
        total = sum(len(m[5]) for m in extended)
        if total - sum(map(len, runs.values())) <= MAX_ABSENT_SHARE * total and \
                total <= MAX_SERIES:
            metrics = extended
    n_times = len(batch["t"])
    values: list[int] = []
    sparse: list[list[Any]] = []
    index = 0
    for name, *_head, label_lists in metrics:
        for labels in label_lists:
            found = runs.get(name, {}).get(tuple(labels), [])
            if len(found) == 1 and found[0][0] == 0 and len(found[0][1]) == n_times:
                values += found[0][1]
            else:
                sparse.append([index, found])
            index += 1
    ident = catalogue_id(metrics)
    referencing = {k: batch[k] for k in ("v", "host", "instance", "seq", "sent", "t")}
    referencing["catalogue"] = ident
    referencing["values"] = values
    if sparse:
        referencing["sparse"] = sparse
    referencing.update({k: v for k, v in batch.items()
                        if k not in referencing and k != "metrics"})
    return metrics, ident, referencing


def _extended(base: list[list[Any]], heads: dict[str, list[Any]],
              runs: dict[str, dict[tuple[str, ...], list[list[Any]]]]) -> list[list[Any]]:
    """``base``'s series and the batch's, metrics by name and label values sorted (a metric
    whose kind, unit, scale or label keys changed keeps only the batch's series)."""
    merged: dict[str, tuple[list[Any], set[tuple[str, ...]]]] = {}
    for name, kind, unit, scale, keys, label_lists in base:
        merged[name] = ([name, kind, unit, scale, list(keys)], {tuple(v) for v in label_lists})
    for name, head in heads.items():
        known = merged.get(name)
        series = set(runs[name]) if known is None or known[0] != head else known[1] | set(
            runs[name])
        merged[name] = (head, series)
    return [[*head, [list(v) for v in sorted(series)]]
            for _name, (head, series) in sorted(merged.items())]


def encode_catalogue(*, host: str, instance: str, metrics: list[list[Any]], ident: str,
                     level: int | None = None) -> bytes:
    """The catalogue message (zstd frame of a msgpack map, like a batch) for ``metrics``."""
    from edgemon.protocol.codec import ZSTD_LEVEL, encode

    doc = {"v": VERSION, "host": host, "instance": instance, "id": ident, "metrics": metrics}
    return encode(doc, level=ZSTD_LEVEL if level is None else level)


# --- the reader's side --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Catalogue:
    """A checked catalogue: ``series[i]`` is (metric index, label values) of series ``i``."""

    host: str
    instance: str
    id: str
    metrics: list[list[Any]]  # [name, kind, unit, scale, label_keys, [label_values, ...]]
    series: list[tuple[int, list[str]]]
    label_bytes: list[int]  # packed size of each series' label values (bounds a resolution)


def decode_catalogue(payload: bytes) -> Catalogue:
    """A catalogue message, read within the limits of a batch and checked: names, kinds, units,
    scales and label keys by the rules of an inline batch, one label value per key, no series
    twice, and ``id`` the content hash of ``metrics``. ``ProtocolError`` otherwise."""
    from edgemon.protocol.catalogue_reader import read_catalogue_map
    from edgemon.protocol.codec import decompress
    from edgemon.protocol.names import validate_instance_id
    from edgemon.protocol.schema import check_metric_head
    from edgemon.protocol.topics import validate_host_id

    raw = read_catalogue_map(decompress(payload))
    if type(raw.get("v")) is not int or raw["v"] != VERSION:
        raise MalformedPayload("catalogue v must be the integer 1", reason="version")
    for key in ("host", "instance", "id", "metrics"):
        if key not in raw:
            raise MalformedPayload(f"catalogue {key}: required", reason="schema")
    host = validate_host_id(raw["host"])
    instance = validate_instance_id(raw["instance"])
    if not is_catalogue_id(raw["id"]):
        raise MalformedPayload(f"catalogue id must be {CATALOGUE_ID_LENGTH} lowercase hex "
                               "digits", reason="schema")
    metrics = raw["metrics"]
    series: list[tuple[int, list[str]]] = []
    label_bytes: list[int] = []
    names: set[str] = set()
    for i, (name, kind, unit, scale, keys, label_lists) in enumerate(metrics):
        check_metric_head(f"catalogue metrics[{i}]", name, kind, unit, scale, keys)
        if name in names:
            raise MalformedPayload(f"catalogue metrics[{i}]: name {name!r} is repeated",
                                   reason="schema")
        names.add(name)
        seen: set[tuple[str, ...]] = set()
        for labels in label_lists:
            if len(labels) != len(keys):
                raise MalformedPayload(f"catalogue metrics[{i}] ({name}): {len(labels)} label "
                                       f"values for {len(keys)} keys", reason="schema")
            if tuple(labels) in seen:
                raise MalformedPayload(f"catalogue metrics[{i}] ({name}): a series is listed "
                                       "twice", reason="schema")
            seen.add(tuple(labels))
            series.append((i, labels))
            label_bytes.append(5 + sum(5 + len(v.encode()) for v in labels))
    if catalogue_id(metrics) != raw["id"]:
        raise MalformedPayload("catalogue id is not the content hash of its metrics",
                               reason="catalogue_hash")
    return Catalogue(host, instance, raw["id"], metrics, series, label_bytes)


def is_referencing(packed: bytes) -> bool:
    """Whether the msgpack batch map in ``packed`` names a catalogue (a top-level key
    ``catalogue``). Skips values without building them; False for anything unreadable (the
    inline decoder then says what is wrong)."""
    if b"catalogue" not in packed:  # the usual answer, without copying or walking anything
        return False
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(packed), 1),
                                max_str_len=256, max_bin_len=0, max_ext_len=0)
    unpacker.feed(packed)
    try:
        if not packed or not (0x80 <= packed[0] <= 0x8F or packed[0] in (0xDE, 0xDF)):
            return False
        for _ in range(min(unpacker.read_map_header(), 64)):
            if packed[unpacker.tell()] not in range(0xA0, 0xC0) and \
                    packed[unpacker.tell()] not in (0xD9, 0xDA, 0xDB):
                return False
            if unpacker.unpack() == "catalogue":
                return True
            unpacker.skip()
    except Exception:  # msgpack's errors: not ours to diagnose here
        return False
    return False


def decode_received(payload: bytes, lookup: Any, base_lookup: Any = None, *,
                    cost: Callable[[int], None] | None = None) -> tuple[ValidBatch, bool]:
    """A received batch in either form, checked: (the inline batch, whether it referred to a
    catalogue). ``lookup(id)`` returns the ``Catalogue`` of the topic's host or None; a batch
    naming a catalogue it does not find is refused with reason ``unknown_catalogue`` (and its
    ``batch_key``, so its agent re-sends it with the catalogue inline). A based batch (SPEC.md
    §9.1) needs ``base_lookup(instance, seq, catalogue)``: the last value of every series of
    ``catalogue`` in that batch (0 where it has none), or None; without it, or when it answers
    None, the batch is refused with reason ``unknown_base``. ``cost(n)`` is told the packed size
    ``n`` of the inline batch a referencing batch resolves into, before it is built (what reading
    it costs beyond its own bytes: a reader charges its sender for it)."""
    from edgemon.protocol.base import BASE_KEYS, unbase
    from edgemon.protocol.catalogue_reader import read_referencing_map
    from edgemon.protocol.codec import decompress
    from edgemon.protocol.fast_reader import read_fast
    from edgemon.protocol.reader import batch_key
    from edgemon.protocol.schema import check_decoded

    # One pass over the bytes for either form (no second decompression, no scan first): the
    # referencing reader reads an inline batch exactly as ``codec.decode_batch`` does, except
    # that ``values`` and ``sparse``, keys of this section, must have their shape here.
    packed = decompress(payload)
    # an inline batch of the common shape: msgspec's typed reader (C), as codec.decode_batch
    # does; it answers None for anything else, and the pure reader takes over
    fast = read_fast(packed) if read_fast is not None else None
    if fast is not None:
        return check_decoded(fast), False
    raw = read_referencing_map(packed)
    if "catalogue" not in raw:
        if "values" in raw or "sparse" in raw or any(k in raw for k in BASE_KEYS):
            exc = MalformedPayload("values, sparse, base, bvalues and factors belong to a batch "
                                   "naming a catalogue", reason="schema")
            exc.batch_key = batch_key(raw)
            raise exc
        return check_decoded(raw), False
    try:
        catalogue = lookup(raw["catalogue"]) if is_catalogue_id(raw.get("catalogue")) else None
        if catalogue is None:
            if not is_catalogue_id(raw.get("catalogue")):
                raise MalformedPayload(f"catalogue must be {CATALOGUE_ID_LENGTH} lowercase hex "
                                       "digits", reason="schema")
            raise ProtocolError(f"batch refers to catalogue {raw['catalogue']}, which this "
                                "collector does not hold for its host", reason=UNKNOWN_CATALOGUE)
        if any(k in raw for k in BASE_KEYS):
            instance = raw.get("instance")
            if type(raw.get("seq")) is not int or type(raw.get("t")) is not list:
                raise MalformedPayload("seq and t: required", reason="schema")
            raw = unbase(raw, catalogue, None if base_lookup is None else (
                lambda seq: base_lookup(instance, seq, catalogue)))
        return resolve(raw, catalogue, cost), True
    except ProtocolError as exc:
        exc.batch_key = batch_key(raw)
        raise


def resolve(raw: dict[str, Any], catalogue: Catalogue,
            cost: Callable[[int], None] | None = None) -> ValidBatch:
    """The inline batch of a referencing batch map (as ``read_referencing_map`` built it),
    checked by every rule of an inline batch. The resolved batch is bounded before it is built:
    its label values and its packed size stay within the limits of an inline batch (that size,
    an upper bound, goes to ``cost`` before the batch is built)."""
    from edgemon.protocol.schema import check_decoded

    if "metrics" in raw:
        raise MalformedPayload("a batch has either metrics or a catalogue, not both",
                               reason="schema")
    if "t" not in raw or "values" not in raw:
        raise MalformedPayload(f"{'t' if 't' not in raw else 'values'}: required",
                               reason="schema")
    n_times = len(raw["t"])
    n_series = len(catalogue.series)
    runs_of: dict[int, list[list[Any]]] = {}
    for item in raw.get("sparse", []):
        index, runs = item
        if type(index) is not int or not 0 <= index < n_series:
            raise MalformedPayload(f"sparse: series index {index!r} is not in catalogue "
                                   f"{catalogue.id} ({n_series} series)", reason="schema")
        if index in runs_of:
            raise MalformedPayload(f"sparse: series {index} is listed twice", reason="schema")
        runs_of[index] = runs
    values = raw["values"]
    dense = n_series - len(runs_of)
    if len(values) != dense * n_times:
        raise MalformedPayload(f"values: {len(values)} values for {dense} series x {n_times} "
                               "timestamps", reason="schema")
    entries_of: list[list[list[Any]]] = [[] for _ in catalogue.metrics]
    label_values = packed = entries = 0
    at = 0
    label_bytes = catalogue.label_bytes
    if not runs_of:  # every series dense (the usual batch): one entry of n_times values each
        for (metric, labels), at in zip(catalogue.series, count(0, n_times)):
            entries_of[metric].append([labels, 0, values[at:at + n_times]])
    for index, (metric, labels) in enumerate(catalogue.series if runs_of else ()):
        runs = runs_of.get(index)
        if runs is None:  # a dense series: one entry of n_times values (counted below)
            entries_of[metric].append([labels, 0, values[at:at + n_times]])
            at += n_times
            continue
        for offset, deltas in runs:
            entries_of[metric].append([labels, offset, deltas])
            entries += 1
            label_values += len(labels)
            packed += label_bytes[index] + 9 + 5 + 9 * len(deltas)
    # the dense series' share of the totals, summed at once
    if runs_of:
        dense_series = [catalogue.series[i] for i in range(n_series) if i not in runs_of]
        dense_bytes = sum(label_bytes[i] for i in range(n_series) if i not in runs_of)
    else:
        dense_series, dense_bytes = catalogue.series, sum(label_bytes)
    entries += dense
    label_values += sum(map(len, map(_LABELS, dense_series)))
    packed += dense_bytes + dense * (9 + 5 + 9 * n_times)
    if entries > MAX_SERIES or label_values > MAX_LABEL_VALUES:
        raise LimitExceeded(f"resolved batch holds {entries} series entries / {label_values} "
                            "label values: over the limit", reason="too_many_label_values")
    packed += 64 * len(catalogue.metrics)
    if packed > MAX_DECOMPRESSED_BYTES:
        raise LimitExceeded("resolved batch would pack to more than "
                            f"{MAX_DECOMPRESSED_BYTES} bytes", reason="decompressed_too_large")
    if cost is not None:
        cost(packed)
    metrics = [[*head[:5], found] for head, found in zip(catalogue.metrics, entries_of,
                                                         strict=True) if found]
    inline = {k: v for k, v in raw.items() if k not in REFERENCING_KEYS}
    inline["metrics"] = metrics
    batch = check_decoded(inline)
    if batch.sample_count > MAX_SAMPLES:  # check_decoded counts them; kept explicit
        raise LimitExceeded("too many samples", reason="too_many_samples")
    return batch
