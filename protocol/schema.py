"""The rules of a v1 batch, checked once: types, ranges, names and cross-field rules.

``check_decoded`` runs on what ``reader.read_batch_map`` built (the shape is the reader's job);
``codec.decode`` runs both, and so does ``validate_batch`` for a batch map built in Python (it
packs the map and reads it back, so that exactly the same rules apply to it). Pure Python: the
agent may import this module (it does not load pydantic).

A batch that passes holds only: strings of strict UTF-8 (at most 256 bytes; names and label keys
of the name grammar), signed 64-bit integers (never booleans or floats, cumulated values included),
and, under unknown top-level keys, nil, booleans, finite floats, strings, arrays and maps keyed by
strings. Every later reader of a stored batch can rely on exactly that (SPEC.md §2, §7).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from operator import add, itemgetter
from typing import Any, Final

import msgpack

from edgemon.protocol.batch import KINDS, last_timestamp, undelta
from edgemon.protocol.errors import (
    LimitExceeded,
    MalformedPayload,
    ProtocolError,
    UnsupportedVersion,
)
from edgemon.protocol.limits import (
    MAX_DECOMPRESSED_BYTES,
    MAX_INT,
    MAX_METRICS,
    MAX_NAME_LENGTH,
    MAX_SAMPLES,
    MAX_SCALE,
    MAX_SERIES,
    MIN_INT,
    VERSION,
)
from edgemon.protocol.names import is_name, validate_instance_id
from edgemon.protocol.reader import batch_key, read_batch_map
from edgemon.protocol.topics import validate_host_id

__all__ = ["KNOWN_KEYS", "ValidBatch", "batch_key", "check_decoded", "check_metric_head",
           "good_heads", "validate_batch"]

KNOWN_KEYS: Final = ("v", "host", "instance", "seq", "sent", "t", "metrics")
_INT: Final = frozenset({int})
_STR: Final = frozenset({str})


@dataclass(frozen=True, slots=True)
class ValidBatch:
    """A v1 batch whose every field and cross-field rule has been checked."""

    v: int
    host: str
    instance: str
    seq: int
    sent: int
    t: list[int]  # delta-coded timestamps (ms)
    metrics: list[list[Any]]  # [name, kind, unit, scale, label_keys, entries]
    sample_count: int
    extensions: dict[str, Any]  # unknown top-level keys, checked (SPEC.md §7)

    @property
    def timestamps(self) -> list[int]:
        """Absolute timestamps in ms."""
        return undelta(self.t)

    @property
    def first_timestamp(self) -> int:
        return self.t[0]

    @property
    def last_timestamp(self) -> int:
        return last_timestamp(self.t)

    def to_map(self, metrics: list[list[Any]] | None = None) -> dict[str, Any]:
        """The batch map (with ``metrics`` replaced when given), unknown keys kept."""
        return {"v": self.v, "host": self.host, "instance": self.instance, "seq": self.seq,
                "sent": self.sent, "t": self.t,
                "metrics": self.metrics if metrics is None else metrics, **self.extensions}


def validate_batch(raw: dict[str, Any]) -> ValidBatch:
    """Check a batch map built in Python by the rules a decoder applies to received bytes."""
    try:
        packed = msgpack.packb(raw, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedPayload(f"not a v1 batch map: {exc}", reason="schema") from None
    if len(packed) > MAX_DECOMPRESSED_BYTES:
        raise LimitExceeded(f"batch packs to {len(packed)} bytes > {MAX_DECOMPRESSED_BYTES}",
                            reason="decompressed_too_large")
    return check_decoded(read_batch_map(packed))


def check_decoded(raw: dict[str, Any]) -> ValidBatch:
    """Check a map built by ``reader.read_batch_map``; raise ``ProtocolError`` naming the first
    problem, with ``batch_key`` set when the batch's instance and seq are valid."""
    try:
        return _check(raw)
    except ProtocolError as exc:
        exc.batch_key = batch_key(raw)
        raise


def _bad(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="schema")


def _int64(raw: dict[str, Any], key: str, low: int) -> int:
    value = raw[key]
    if type(value) is not int or not low <= value <= MAX_INT:
        raise _bad(f"{key}: must be an integer from {low} to {MAX_INT}")
    return value


def _check(raw: dict[str, Any]) -> ValidBatch:
    version = raw.get("v")
    if type(version) is not int or version != VERSION:
        raise UnsupportedVersion(f"v: unsupported batch version {version!r} (this reader "
                                 f"speaks the integer {VERSION})")
    missing = [k for k in KNOWN_KEYS if k not in raw]
    if missing:
        raise _bad(f"{missing[0]}: required")
    host = raw["host"]
    try:
        validate_host_id(host)
    except ProtocolError as exc:
        raise _bad(f"host: {exc}") from None
    instance = validate_instance_id(raw["instance"])
    seq = _int64(raw, "seq", 0)
    sent = _int64(raw, "sent", 0)
    t = _timestamps(raw["t"])
    metrics = raw["metrics"]
    samples = _metrics(metrics, len(t))
    extensions = {k: v for k, v in raw.items() if k not in KNOWN_KEYS}
    for key, value in extensions.items():
        if not is_name(key):
            raise _bad(f"unknown key {key[:40]!r}: keys are names ([a-zA-Z_][a-zA-Z0-9_]*, at "
                       f"most {MAX_NAME_LENGTH} characters)")
        _plain(value, key)
    return ValidBatch(version, host, instance, seq, sent, t, metrics, samples, extensions)


def _timestamps(t: list[Any]) -> list[int]:
    if not t:
        raise _bad("t: at least one timestamp is required")
    if set(map(type, t)) != _INT:
        raise _bad("t: timestamps must be integers")
    if t[0] <= 0 or t[0] > MAX_INT or (len(t) > 1 and min(t[1:]) <= 0):
        raise _bad("t: timestamps must be positive and strictly increasing")
    if last_timestamp(t) > MAX_INT:
        raise _bad("t: cumulated timestamps overflow 64 bits")
    return t


def _metrics(metrics: list[list[Any]], n_times: int) -> int:
    """Check every metric; the batch's sample count."""
    if len(metrics) > MAX_METRICS:  # the reader checks it too; cheap to keep the rule whole
        raise LimitExceeded(f"metrics: {len(metrics)} > {MAX_METRICS}", reason="too_many_metrics")
    counted = _metrics_at_once(metrics, n_times)
    if counted is not None:
        return counted
    names: set[str] = set()
    samples = series = 0
    for i, (name, kind, unit, scale, keys, entries) in enumerate(metrics):
        where = f"metrics[{i}]"
        if not is_name(name):
            raise _bad(f"{where}: metric name {_shown(name)} is not [a-zA-Z_][a-zA-Z0-9_]* of at "
                       f"most {MAX_NAME_LENGTH} characters")
        if name in names:
            raise _bad(f"{where}: metric name {name!r} is repeated")
        names.add(name)
        where = f"metrics[{i}] ({name})"
        check_metric_head(where, name, kind, unit, scale, keys)
        samples += _entries(where, entries, len(keys), n_times)
        series += len(entries)
    if series > MAX_SERIES or samples > MAX_SAMPLES:
        raise LimitExceeded(f"batch holds {series} series / {samples} samples: over the limit",
                            reason="too_many_samples")
    return samples


def check_metric_head(where: str, name: Any, kind: Any, unit: Any, scale: Any,
                      keys: list[Any]) -> None:
    """The rules of a metric's name, kind, unit, scale and label keys (inline batches and
    catalogues, ``catalogue.py``)."""
    if not is_name(name):
        raise _bad(f"{where}: metric name {_shown(name)} is not [a-zA-Z_][a-zA-Z0-9_]* of at "
                   f"most {MAX_NAME_LENGTH} characters")
    if type(kind) is not str or kind not in KINDS:
        raise _bad(f"{where}: kind must be one of {sorted(KINDS)}")
    if type(unit) is not str or len(unit) > MAX_NAME_LENGTH:
        raise _bad(f"{where}: unit must be a string of at most {MAX_NAME_LENGTH} characters")
    if type(scale) is not int or not 0 <= scale <= MAX_SCALE:
        raise _bad(f"{where}: scale must be an integer from 0 to {MAX_SCALE}")
    if len(set(keys)) != len(keys) or not all(is_name(k) for k in keys):
        raise _bad(f"{where}: label keys must be unique valid names")
# Metric heads (name, kind, unit, scale, label keys) that passed every rule of ``_metrics``: a
# fleet sends the same few hundred again and again. Bounded: emptied when full.
_GOOD_HEADS: dict[tuple[tuple[str, str, str, int], tuple[str, ...]], None] = {}
_GOOD_HEADS_MAX: Final = 16_384
_TEXTS: Final = itemgetter(0, 1, 2)  # name, kind, unit of a metric
_HEAD: Final = itemgetter(0, 1, 2, 3)  # name, kind, unit, scale


def good_heads(metrics: list[list[Any]]) -> bool:
    """Whether every metric head (name, kind, unit, scale, label keys) passes the rules of
    ``_metrics``: remembered answers, or the rules run and the answer remembered when it is yes.
    Only exact int scales are looked up (an equal bool or float is not the int it equals); a
    head equal to a remembered one holds strings where that one does (no other type the readers
    build equals a string)."""
    if set(map(type, map(itemgetter(3), metrics))) <= _INT:
        try:
            if all(map(_GOOD_HEADS.__contains__, zip(
                    map(_HEAD, metrics), map(tuple, map(itemgetter(4), metrics)), strict=True))):
                return True
        except TypeError:  # an unhashable label key: the rules below say no
            pass
    if not (set(map(type, chain.from_iterable(map(_TEXTS, metrics)))) <= _STR
            and set(map(type, map(itemgetter(3), metrics))) <= _INT
            and set(map(type, chain.from_iterable(map(itemgetter(4), metrics)))) <= _STR):
        return False
    heads = list(zip(map(_HEAD, metrics), map(tuple, map(itemgetter(4), metrics)), strict=True))
    if all(map(_GOOD_HEADS.__contains__, heads)):
        return True
    for head in heads:
        (name, kind, unit, scale), keys = head
        if not (is_name(name) and kind in KINDS and len(unit) <= MAX_NAME_LENGTH
                and 0 <= scale <= MAX_SCALE and len(set(keys)) == len(keys)
                and all(is_name(k) for k in keys)):
            return False
        if len(_GOOD_HEADS) >= _GOOD_HEADS_MAX:
            _GOOD_HEADS.clear()
        _GOOD_HEADS[head] = None
    return True


def _metrics_at_once(metrics: list[list[Any]], n_times: int) -> int | None:
    """The batch's sample count if its metrics pass every rule of ``_metrics`` and
    ``_entries``, each rule checked over all series entries of the batch at once in C loops
    (``map``, ``zip``, ``min``, ``max``, ``set``) rather than entry by entry; None when any
    fails or a rule needs a closer look (values large enough for the overflow check, one series
    in several entries). ``_metrics`` then runs the same rules one metric and one entry at a
    time, and names the first problem or passes the batch."""
    if not good_heads(metrics):
        return None
    names = list(map(itemgetter(0), metrics))
    if len(set(names)) != len(names):
        return None
    entries = list(chain.from_iterable(m[5] for m in metrics))
    if not entries:
        return 0
    labels, offsets, values = zip(*entries, strict=True)
    lengths = list(map(len, values))
    keys_wanted = chain.from_iterable(repeat(len(m[4]), len(m[5])) for m in metrics)
    if (min(lengths) == 0 or list(map(len, labels)) != list(keys_wanted) or min(offsets) < 0
            or max(map(add, offsets, lengths)) > n_times):
        return None
    # |every value| * the longest entry within 64 bits: no running sum can leave them (and no
    # value is outside MIN_INT..MAX_INT); larger ones get ``_entries``' exact check.
    flat = list(chain.from_iterable(values))
    if max(max(flat), -min(flat)) * max(lengths) > MAX_INT:
        return None
    owners = chain.from_iterable(repeat(m[0], len(m[5])) for m in metrics)
    if len(set(zip(owners, map(tuple, labels), strict=True))) != len(entries):
        return None  # one series in several entries: ``_no_overlap`` checks their spans
    samples = sum(lengths)
    if len(entries) > MAX_SERIES or samples > MAX_SAMPLES:
        return None
    return samples


def _entries(where: str, entries: list[list[Any]], n_keys: int, n_times: int) -> int:
    """Check the series entries of one metric (the reader checked their types); their sample
    count."""
    if not entries:
        return 0
    longest = samples = 0
    low = high = 0
    for labels, offset, values in entries:
        if len(labels) != n_keys:
            raise _bad(f"{where}: {len(labels)} label values for {n_keys} keys")
        n = len(values)
        if n == 0:
            raise _bad(f"{where}: a series entry holds at least one value")
        if offset < 0 or offset + n > n_times:
            raise _bad(f"{where}: a series entry runs past the batch's timestamps (offset "
                       f"{offset!r}, {n} values, {n_times} timestamps)")
        samples += n
        longest = max(longest, n)
        low = min(low, min(values))
        high = max(high, max(values))
    if low < MIN_INT or high > MAX_INT:
        raise _bad(f"{where}: values must be signed 64-bit integers")
    if max(high, -low) * longest > MAX_INT:  # only then can a running sum leave 64 bits
        for _, _, values in entries:
            running = list(accumulate(values))
            if max(running) > MAX_INT or min(running) < MIN_INT:
                raise _bad(f"{where}: cumulated values overflow 64 bits")
    labelled = [tuple(e[0]) for e in entries]
    if len(set(labelled)) != len(labelled):
        _no_overlap(where, entries, labelled)
    return samples


def _no_overlap(where: str, entries: list[list[Any]], labelled: list[tuple[str, ...]]) -> None:
    """Entries of one series never cover a timestamp twice. Sorted, spans overlap only if one
    starts before the previous one ends: n log n, where comparing every pair would let one batch
    cost seconds."""
    repeated = {k for k, n in Counter(labelled).items() if n > 1}
    spans: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for labels, (_, offset, values) in zip(labelled, entries, strict=True):
        if labels in repeated:
            spans.setdefault(labels, []).append((offset, offset + len(values)))
    for labels, taken in spans.items():
        taken.sort()
        if any(taken[i][0] < taken[i - 1][1] for i in range(1, len(taken))):
            raise _bad(f"{where}: series {list(labels[:4])} repeats a timestamp")


def _plain(value: Any, where: str) -> None:
    """The value of an unknown key: nil, booleans, 64-bit integers, finite floats, strings, and
    arrays and maps of them (the reader bounded their number and depth)."""
    kind = type(value)
    if kind is list:
        for item in value:
            _plain(item, where)
    elif kind is dict:
        for item in value.values():
            _plain(item, where)
    elif kind is int:
        if not MIN_INT <= value <= MAX_INT:
            raise _bad(f"{where}: integers must be signed 64-bit")
    elif kind is float:
        if not math.isfinite(value):
            raise _bad(f"{where}: floats must be finite")
    elif value is not None and kind is not bool and kind is not str:
        raise _bad(f"{where}: {kind.__name__} values are not allowed")


def _shown(value: Any) -> str:
    return repr(value[:40]) if isinstance(value, str) else f"of type {type(value).__name__}"
