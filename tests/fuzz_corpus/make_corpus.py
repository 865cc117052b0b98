"""Regenerate the hostile payloads of this directory, byte for byte the same each run.

    python tests/fuzz_corpus/make_corpus.py [DIR]

Each case is one MQTT message: ``<name>.bin`` is its payload, and ``<name>.topic`` its raw topic
bytes when the case attacks the topic (otherwise it is published on ``edgemon/v1/fuzz-host/
metrics``). ``expected.json`` maps each case to why it must be refused: a message reject reason,
or ``series:<reason>`` when the batch must be stored without one series, dropped for ``<reason>``
(its other series must be stored). ``README.md`` says what each case attacks.

Cases come from generator classes, one per class of problem (framing, structure, amplification,
poison values in every place, versions, limits, rules, clocks, topics, status messages, series no
real host sends). A class produces every variant it knows (the product of places and poisons,
each limit plus one, ...): grow the corpus by teaching a class a new variant or adding a class.
Everything is built from fixed inputs (no clock, no randomness), so the files only change when
this script or the zstd library does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zstandard

HOST = "fuzz-host"
T0 = 1_790_000_000_000  # a fixed time (2026); tests give the clock check a wide enough window
POISON = "\x00poison\x00"  # a placeholder string, replaced by raw msgpack bytes after packing


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    reason: str  # the reject reason, or "series:<reason>" (stored, one series dropped)
    payload: bytes
    topic: bytes | None = None


def frame(packed: bytes, **kw: Any) -> bytes:
    """One zstd frame (level 3, no dictionary) that declares its size unless told otherwise."""
    return zstandard.ZstdCompressor(level=3, **kw).compress(packed)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def good_metric(name: str = "m") -> list[Any]:
    return [name, "gauge", "", 0, [], [[[], 0, [1]]]]


def batch(**change: Any) -> dict[str, Any]:
    """A valid one-sample batch of ``HOST``, with fields replaced (``None`` removes a field)."""
    doc: dict[str, Any] = {"v": 1, "host": HOST, "instance": "corpus", "seq": 1, "sent": T0,
                           "t": [T0], "metrics": [good_metric()]}
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def with_raw(doc: Any, raw: bytes) -> bytes:
    """``doc`` packed, with the packed ``POISON`` placeholder replaced by ``raw`` msgpack bytes."""
    packed = pack(doc)
    marker = pack(POISON)
    assert packed.count(marker) == 1, "one placeholder per document"
    return packed.replace(marker, raw)


def map_with(raw_fields: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map written by hand: ``(packed key, packed value)`` pairs, in order."""
    n = len(raw_fields)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(k + v for k, v in raw_fields)


def fields(**raw: bytes) -> bytes:
    """The valid batch's map with some values (or new keys) given as packed bytes."""
    out = [(pack(k), raw.pop(k) if k in raw else pack(v)) for k, v in batch().items()]
    return map_with(out + [(pack(k), v) for k, v in raw.items()])


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return (b"\xdc" + n.to_bytes(2, "big")) if n < 65536 else b"\xdd" + n.to_bytes(4, "big")


def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return (b"\xde" + n.to_bytes(2, "big")) if n < 65536 else b"\xdf" + n.to_bytes(4, "big")


class Family:
    """One class of hostile messages."""

    title = ""

    def cases(self) -> Iterator[Case]:
        raise NotImplementedError


# --- the zstd frame ------------------------------------------------------------------------------

def _declared_huge() -> bytes:
    """A 20-byte frame whose header claims 1 TiB of content."""
    real = frame(b"\x00" * 300)
    blocks = real[zstandard.frame_header_size(real):]
    descriptor = 0b1110_0000  # FCS field 8 bytes, single segment
    return b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + (1 << 40).to_bytes(8, "little") + blocks


def _lying_small() -> bytes:
    """A frame of 64 KiB of zeros whose header says 100 bytes (the decoder must not trust it)."""
    real = bytearray(frame(b"\x00" * 65536))
    descriptor = real[4]
    single = (descriptor >> 5) & 1
    offset = 5 + (0 if single else 1)
    size = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[descriptor >> 6]
    value = 100 - 256 if size == 2 else 100  # 2-byte sizes are stored minus 256
    real[offset:offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(real)


def _unknown_dictionary() -> bytes:
    samples = [pack(batch(seq=i)) for i in range(400)]
    trained = zstandard.train_dictionary(1024, samples, dict_id=4242, level=3)
    return zstandard.ZstdCompressor(dict_data=trained, level=3).compress(pack(batch()))


def _skippable(content: bytes) -> bytes:
    return (0x184D2A50).to_bytes(4, "little") + len(content).to_bytes(4, "little") + content


class ZstdFraming(Family):
    """A payload is exactly one zstd frame that declares its size, and nothing else."""

    title = "zstd framing"

    def cases(self) -> Iterator[Case]:
        valid = frame(pack(batch()))
        yield Case("zstd_declares_1tib", "zstd header claiming 1 TiB of content (allocation "
                   "from a size field)", "decompressed_too_large", _declared_huge())
        yield Case("zstd_bomb_64mib", "a real 64 MiB frame of zeros in a few KB (decompression "
                   "bomb)", "decompressed_too_large", frame(b"\x00" * (64 << 20)))
        yield Case("zstd_no_content_size", "a frame that does not declare its size (streamed, "
                   "unbounded)", "decompressed_too_large",
                   frame(pack(batch()), write_content_size=False))
        yield Case("zstd_lies_small", "a 64 KiB frame whose header claims 100 bytes",
                   "not_zstd", _lying_small())
        yield Case("zstd_unknown_dictionary", "a frame needing a dictionary the collector does "
                   "not have", "unknown_dictionary", _unknown_dictionary())
        yield Case("zstd_truncated", "a valid frame cut in half", "not_zstd", valid[:20])
        yield Case("not_zstd", "plain text instead of a zstd frame", "not_zstd",
                   b"GET / HTTP/1.1\r\n\r\n")
        yield Case("zstd_empty_payload", "an empty payload", "not_zstd", b"")
        yield Case("zstd_raw_msgpack", "a valid batch as bare msgpack, not compressed",
                   "not_zstd", pack(batch()))
        for name, tail in (("1_byte", b"\x00"), ("garbage", b"garbage!" * 4),
                           ("second_frame", valid), ("other_batch_frame",
                                                     frame(pack(batch(seq=2)))),
                           ("skippable_frame", _skippable(b"hidden"))):
            about = f"a valid frame followed by {name.replace('_', ' ')}"
            yield Case(f"zstd_trailing_{name}", about + " (exactly one frame, nothing after it)",
                       "trailing_bytes", valid + tail)
        yield Case("zstd_skippable_first", "a skippable frame before the batch's frame",
                   "not_zstd", _skippable(b"x" * 16) + valid)


# --- msgpack structure -----------------------------------------------------------------------

class Structure(Family):
    """The batch is one msgpack map of the v1 layout, nothing before or after it."""

    title = "msgpack structure"

    def cases(self) -> Iterator[Case]:
        yield Case("msgpack_not_a_map", "a top-level array of a million empty arrays", "schema",
                   frame(array_header(1_000_000) + b"\x90" * 1_000_000))
        yield Case("msgpack_trailing_bytes", "a valid batch followed by extra bytes",
                   "not_msgpack", frame(pack(batch()) + b"\x00garbage"))
        yield Case("msgpack_truncated", "a batch map cut short inside the frame", "not_msgpack",
                   frame(pack(batch())[:-3]))
        yield Case("msgpack_duplicate_key", "the key seq twice (which one wins?)", "schema",
                   frame(map_with([(pack(k), pack(v)) for k, v in batch().items()]
                                  + [(pack("seq"), pack(2))])))
        yield Case("metrics_as_map", "metrics as a map instead of an array", "schema",
                   frame(pack(batch(metrics={"m": 1}))))
        yield Case("metric_arity_7", "a metric with 7 fields", "schema",
                   frame(pack(batch(metrics=[["m", "gauge", "", 0, [], [], 1]]))))
        yield Case("entry_arity_2", "a series entry with 2 fields", "schema",
                   frame(pack(batch(metrics=[["m", "gauge", "", 0, [], [[[], 0]]]]))))
        yield Case("msgpack_nested_values", "series values nested 500 arrays deep", "schema",
                   frame(fields(metrics=pack([["m", "gauge", "", 0, [], []]])[:-1]
                                + b"\x91\x93\x90\x00" + b"\x91" * 500 + b"\x01")))
        for key in ("t", "metrics", "host", "instance", "seq", "sent"):
            yield Case(f"missing_{key}", f"a batch without {key}", "schema",
                       frame(pack(batch(**{key: None}))))
        yield Case("missing_version", "a batch without v", "version",
                   frame(pack(batch(v=None))))
        for name, key in (("int", pack(7)), ("array", pack([1])), ("map", pack({"a": 1})),
                          ("nil", pack(None)), ("bin", pack(b"k"))):
            yield Case(f"batch_key_{name}", f"a batch map keyed by {name} (keys are strings)",
                       "schema", frame(map_with([(pack(k), pack(v)) for k, v in batch().items()]
                                                + [(key, pack(1))])))


# --- amplification: little bytes, many objects --------------------------------------------------

class Amplification(Family):
    """No payload builds much more than a valid batch of the same limits: huge declared lengths,
    many tiny elements and deep nesting are refused wherever they are, before being built."""

    title = "amplification"

    def cases(self) -> Iterator[Case]:
        empties = array_header(1_000_000) + b"\x90" * 1_000_000
        strings = array_header(1_000_000) + b"\xa2ab" * 1_000_000
        many_map = map_header(100_000) + b"".join(pack(f"k{i}") + b"\xc0" for i in range(100_000))
        bombs = {
            "empty_arrays": ("a million empty arrays", empties),
            "eight_empty_array_bombs": ("8 arrays of a million empty arrays each (8 M objects "
                                        "from a few KB)", b"\x98" + empties * 8),
            "small_strings": ("a million 2-byte strings", strings),
            "map_100k_keys": ("a map of 100,000 keys", many_map),
            "claims_4g": ("an array header claiming 4 billion elements", b"\xdd\xff\xff\xff\xff"),
            "nested_9": ("arrays nested 9 deep (the limit is 8)", b"\x91" * 9 + b"\x01"),
        }
        for name, (about, raw) in bombs.items():
            yield Case(f"bomb_unknown_key_{name}", f"an unknown top-level key holding {about}",
                       "too_many_extension_elements", frame(fields(extra=raw)))
        # (named as tests/test_hostile_flood.py and benchmarks/hostile.py know it)
        yield Case("msgpack_deep_unknown_key", "an unknown key holding 100,000 nested arrays "
                   "(stack bomb)", "too_many_extension_elements",
                   frame(fields(extra=b"\x91" * 100_000 + b"\x01")))
        yield Case("bomb_unknown_keys_share_budget", "two unknown keys of 600 elements each "
                   "(1024 in all may be held)", "too_many_extension_elements",
                   frame(pack(batch(extra_a=[0] * 600, extra_b=[0] * 600))))
        yield Case("msgpack_empty_array_bomb", "metrics holding 8 arrays of a million empty "
                   "arrays each (8 M objects, 450 MB built naively, from 400 bytes)", "schema",
                   frame(fields(metrics=b"\x98" + empties * 8)))
        yield Case("msgpack_claims_4g_metrics", "an array header claiming 4 billion metrics in "
                   "5 bytes", "too_many_metrics", frame(fields(metrics=b"\xdd\xff\xff\xff\xff")))
        yield Case("msgpack_claims_4g_string", "a str32 header claiming a 4 GiB host id",
                   "not_msgpack", frame(fields(host=b"\xdb\xff\xff\xff\xff")))
        yield Case("msgpack_65535_keys", "a batch map with 65,535 keys", "too_many_keys",
                   frame(b"\xde\xff\xff" + b"\xa1k\xc0" * 65535))
        head = pack([["m", "gauge", "", 0, ["k"], []]])[:-1]
        yield Case("msgpack_string_bomb", "label values: one array of a million 2-byte strings",
                   "too_many_label_values",
                   frame(fields(metrics=head + b"\x91\x93" + strings + b"\x00\x91\x01")))
        yield Case("bomb_values", "series values: one array of a million integers",
                   "too_many_values", frame(fields(metrics=pack([["m", "gauge", "", 0, [], []]])
                                                   [:-1] + b"\x91\x93\x90\x00"
                                                   + array_header(1_000_000)
                                                   + b"\x01" * 1_000_000)))
        yield Case("bomb_timestamps", "t: a million timestamps", "too_many_timestamps",
                   frame(fields(t=array_header(1_000_000) + b"\x01" * 1_000_000)))
        yield Case("bomb_label_keys", "label keys: a million 2-byte strings",
                   "too_many_label_keys",
                   frame(fields(metrics=b"\x91\x96" + pack("m") + pack("gauge") + pack("")
                                + pack(0) + strings + b"\x90")))
        yield Case("bomb_series_claims_4g", "series: a header claiming 4 billion entries",
                   "too_many_series",
                   frame(fields(metrics=b"\x91\x96" + pack("m") + pack("gauge") + pack("")
                                + pack(0) + b"\x90" + b"\xdd\xff\xff\xff\xff")))
        n = 4096
        entries = [[[str(i)], 0, [0] * n] for i in range(300)]
        yield Case("too_many_samples", "1.2 million zero samples in a few KB (over "
                   "MAX_SAMPLES)", "too_many_samples",
                   frame(pack(batch(t=[T0] + [1] * (n - 1),
                                    metrics=[["m", "gauge", "", 0, ["k"], entries]]))))
        keys = [f"k{i}" for i in range(16)]
        labelled = [[[f"{i}"] * 16, 0, [1]] for i in range(16_385)]
        yield Case("too_many_label_values_in_all", "16,385 entries of 16 label values (the "
                   "batch may hold 262,144)", "too_many_label_values",
                   frame(pack(batch(metrics=[["m", "gauge", "", 0, keys, labelled]]))))
        yield Case("overlap_cpu_bomb", "15 x 4096 entries of one series: a quadratic overlap "
                   "check", "schema", _overlap_cpu_bomb())


def _overlap_cpu_bomb() -> bytes:
    """15 metrics of 4096 entries of one series each, one timestamp per entry, the last metric
    repeating a timestamp: a pairwise overlap check costs 8 million comparisons per metric (tens
    of seconds in all); sorted, it is instant."""
    n = 4096
    entries = [[[], i, [1]] for i in range(n)]
    metrics = [[f"m{k}", "gauge", "", 0, [], entries] for k in range(14)]
    metrics.append(["last", "gauge", "", 0, [], [*entries, [[], 0, [1]]]])
    return frame(pack(batch(t=[T0] + [1] * (n - 1), metrics=metrics)))


# --- poison values, in every place ----------------------------------------------------------------

# Bytes no v1 batch holds anywhere (SPEC.md §2, §7).
POISONS: dict[str, tuple[str, bytes]] = {
    "bad_utf8": ("a string that is not UTF-8", b"\xa2\xff\xfe"),
    "overlong_utf8": ("an overlong UTF-8 encoding of '/'", b"\xa2\xc0\xaf"),
    "surrogate_utf8": ("a UTF-8-encoded surrogate", b"\xa3\xed\xa0\x80"),
    "bin": ("binary data", b"\xc4\x01x"),
    "empty_bin": ("empty binary data", b"\xc4\x00"),
    "timestamp32": ("a msgpack timestamp (ext -1, 4 bytes)", b"\xd6\xff\x00\x00\x00\x01"),
    "timestamp64": ("a msgpack timestamp (ext -1, 8 bytes)",
                    b"\xd7\xff" + (4).to_bytes(4, "big") + (1).to_bytes(4, "big")),
    "timestamp96": ("a msgpack timestamp (ext -1, 12 bytes)",
                    b"\xc7\x0c\xff" + (1).to_bytes(4, "big") + (2**40).to_bytes(8, "big")),
    "ext": ("an extension type", b"\xd5\x05ab"),
    "empty_ext": ("an empty extension type", b"\xc7\x00\x05"),
    "nan": ("NaN", b"\xcb" + bytes.fromhex("7ff8000000000000")),
    "inf": ("+infinity", b"\xcb" + bytes.fromhex("7ff0000000000000")),
    "float32_inf": ("-infinity as float32", b"\xca" + bytes.fromhex("ff800000")),
    "uint64_max": ("2^64 - 1 (beyond signed 64 bits)", b"\xcf" + b"\xff" * 8),
    "int_map_key": ("a map keyed by an integer", b"\x81\x01\x01"),
    "array_map_key": ("a map keyed by an array", b"\x81\x91\x01\x01"),
    "map_map_key": ("a map keyed by a map", b"\x81\x81\xa1a\x01\x01"),
    "nil_map_key": ("a map keyed by nil", b"\x81\xc0\x01"),
    "bin_map_key": ("a map keyed by binary data", b"\x81\xc4\x01k\x01"),
}

# Where a poison goes: (about, batch with POISON in that place).
PLACES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "unknown_key": ("an unknown top-level key", lambda: batch(extra=POISON)),
    "unknown_key_array": ("an array under an unknown key", lambda: batch(extra=[1, POISON])),
    "unknown_key_map": ("a map under an unknown key", lambda: batch(extra={"a": POISON})),
    "host": ("the host id", lambda: batch(host=POISON)),
    "instance": ("the instance id", lambda: batch(instance=POISON)),
    "seq": ("seq", lambda: batch(seq=POISON)),
    "sent": ("sent", lambda: batch(sent=POISON)),
    "t": ("a timestamp", lambda: batch(t=[POISON])),
    "metric_name": ("a metric name", lambda: batch(metrics=[[POISON, "gauge", "", 0, [], []]])),
    "unit": ("a unit", lambda: batch(metrics=[["m", "gauge", POISON, 0, [], []]])),
    "label_key": ("a label key", lambda: batch(metrics=[["m", "gauge", "", 0, [POISON], []]])),
    "label_value": ("a label value",
                    lambda: batch(metrics=[["m", "gauge", "", 0, ["k"], [[[POISON], 0, [1]]]]])),
    "value": ("a sample value",
              lambda: batch(metrics=[["m", "gauge", "", 0, [], [[[], 0, [1, POISON]]]]],
                            t=[T0, 1000])),
    "offset": ("a series offset",
               lambda: batch(metrics=[["m", "gauge", "", 0, [], [[[], POISON, [1]]]]])),
}


class PoisonValues(Family):
    """Every poison in every place: invalid UTF-8, binary, extension types (timestamps), NaN and
    infinities, integers beyond 64 bits, maps keyed by anything but strings. The issue's poison
    batches hid them under an unknown key, which storage then could not read."""

    title = "poison values in every place"

    def cases(self) -> Iterator[Case]:
        for place, (where, build) in PLACES.items():
            for poison, (what, raw) in POISONS.items():
                yield Case(f"poison_{place}_{poison}", f"{what} as {where}", "schema",
                           frame(with_raw(build(), raw)))


class TypeMismatch(Family):
    """A well-formed value of the wrong type where the layout wants another."""

    title = "wrong types"

    def cases(self) -> Iterator[Case]:
        wrong: dict[str, Any] = {"bool": True, "float": 1.5, "string": "1", "nil": None,
                                 "negative": -1}
        for place in ("seq", "sent", "t", "value", "offset"):
            where, build = PLACES[place]
            for name, value in wrong.items():
                if (place, name) == ("value", "negative"):
                    continue  # values may be negative
                yield Case(f"type_{place}_{name}", f"{name} {value!r} as {where}", "schema",
                           frame(with_raw(build(), pack(value))))
        for place in ("host", "instance", "metric_name", "unit", "label_value"):
            where, build = PLACES[place]
            yield Case(f"type_{place}_int", f"an integer as {where}", "schema",
                       frame(with_raw(build(), pack(42))))
        yield Case("type_kind_int", "an integer as the metric kind", "schema",
                   frame(pack(batch(metrics=[["m", 1, "", 0, [], []]]))))
        yield Case("type_scale_float", "a float as the scale", "schema",
                   frame(pack(batch(metrics=[["m", "gauge", "", 0.0, [], []]]))))


class Version(Family):
    """``v`` is the integer 1: not 1.0, not true, not a string, not another version."""

    title = "version"

    def cases(self) -> Iterator[Case]:
        variants: dict[str, bytes] = {
            "float64_1": pack(1.0), "float32_1": b"\xca" + bytes.fromhex("3f800000"),
            "true": pack(True), "string_1": pack("1"), "2": pack(2), "0": pack(0),
            "minus_1": pack(-1), "uint64_max": b"\xcf" + b"\xff" * 8, "nil": pack(None),
        }
        for name, raw in variants.items():
            yield Case(f"version_{name}", f"v = {name.replace('_', ' ')}", "version",
                       frame(fields(v=raw)))
        for name, raw in (("array", pack([1])), ("map", pack({"v": 1}))):
            yield Case(f"version_{name}", f"v as {'an' if name == 'array' else 'a'} {name}",
                       "schema", frame(fields(v=raw)))


# --- rules of the layout -------------------------------------------------------------------------

def _metrics(*metrics: list[Any], t: list[int] | None = None) -> bytes:
    return frame(pack(batch(metrics=list(metrics), **({"t": t} if t else {}))))


class Rules(Family):
    """Well-typed batches that break a rule of the layout (SPEC.md §2) or a length limit."""

    title = "layout rules and length limits"

    def cases(self) -> Iterator[Case]:
        g = "gauge"
        yield Case("value_nan", "NaN as a sample value", "schema",
                   _metrics(["m", g, "", 0, [], [[[], 0, [float("nan")]]]]))
        yield Case("value_sum_overflow", "two deltas whose sum overflows 64 bits", "schema",
                   _metrics(["m", g, "", 0, [], [[[], 0, [2**62, 2**62]]]], t=[T0, 1]))
        yield Case("timestamp_sum_overflow", "timestamps whose sum overflows 64 bits", "schema",
                   frame(pack(batch(t=[2**62, 2**62]))))
        yield Case("timestamp_not_increasing", "a zero timestamp delta", "schema",
                   frame(pack(batch(t=[T0, 0]))))
        yield Case("timestamp_negative_delta", "a negative timestamp delta", "schema",
                   frame(pack(batch(t=[T0, -5]))))
        yield Case("timestamp_zero", "a first timestamp of 0", "schema",
                   frame(pack(batch(t=[0]))))
        yield Case("timestamps_empty", "no timestamps", "schema", frame(pack(batch(t=[]))))
        yield Case("offset_past_end", "a series entry starting after the last timestamp",
                   "schema", _metrics(["m", g, "", 0, [], [[[], 1, [1]]]]))
        yield Case("values_past_end", "a series entry running past the last timestamp",
                   "schema", _metrics(["m", g, "", 0, [], [[[], 0, [1, 1]]]]))
        yield Case("entry_without_values", "a series entry with no values", "schema",
                   _metrics(["m", g, "", 0, [], [[[], 0, []]]]))
        yield Case("overlapping_entries", "two entries of one series covering one timestamp",
                   "schema", _metrics(["m", g, "", 0, [], [[[], 0, [1]], [[], 0, [2]]]]))
        yield Case("label_count_mismatch", "two label values for one key", "schema",
                   _metrics(["m", g, "", 0, ["k"], [[["a", "b"], 0, [1]]]]))
        yield Case("duplicate_metric", "the same metric name twice", "schema",
                   _metrics(good_metric(), good_metric()))
        yield Case("duplicate_label_key", "a label key twice", "schema",
                   _metrics(["m", g, "", 0, ["k", "k"], []]))
        yield Case("kind_histogram", "a kind that is not gauge or counter", "schema",
                   _metrics(["m", "histogram", "", 0, [], []]))
        yield Case("scale_10", "scale 10 (at most 9)", "schema", _metrics(["m", g, "", 10, [],
                                                                           []]))
        yield Case("scale_negative", "scale -1", "schema", _metrics(["m", g, "", -1, [], []]))
        for name, bad in (("digit_first", "1x"), ("dash", "a-b"), ("empty", ""),
                          ("non_ascii", "caf\u00e9"), ("space", "a b"), ("dot", "a.b"),
                          ("129_chars", "m" * 129)):
            yield Case(f"metric_name_{name}", f"metric name {bad[:20]!r}", "schema",
                       _metrics([bad, g, "", 0, [], []]))
            yield Case(f"label_key_{name}", f"label key {bad[:20]!r}", "schema",
                       _metrics(["m", g, "", 0, [bad], []]))
            if bad:
                yield Case(f"unknown_key_name_{name}", f"an unknown top-level key {bad[:20]!r}",
                           "schema", frame(pack({**batch(), bad: 1})))
        yield Case("unit_129_chars", "a unit of 129 characters", "schema",
                   _metrics(["m", g, "u" * 129, 0, [], []]))
        yield Case("label_value_257_bytes", "a label value one byte over the limit", "schema",
                   _metrics(["m", g, "", 0, ["k"], [[["x" * 257], 0, [1]]]]))
        yield Case("label_value_86_euro_signs", "a label value of 86 characters, 258 bytes",
                   "schema", _metrics(["m", g, "", 0, ["k"], [[["\u20ac" * 86], 0, [1]]]]))
        yield Case("unknown_key_string_257_bytes", "an unknown key holding a 257-byte string",
                   "schema", frame(pack(batch(extra="x" * 257))))
        yield Case("label_keys_17", "17 label keys (at most 16)", "too_many_label_keys",
                   _metrics(["m", g, "", 0, [f"k{i}" for i in range(17)], []]))
        yield Case("timestamps_4097", "4097 timestamps (at most 4096)", "too_many_timestamps",
                   frame(pack(batch(t=[T0] + [1] * 4096))))
        yield Case("metrics_4097", "4097 metrics (at most 4096)", "too_many_metrics",
                   frame(pack(batch(metrics=[good_metric(f"m{i}") for i in range(4097)]))))
        yield Case("batch_keys_65", "65 top-level keys (at most 64)", "too_many_keys",
                   frame(pack({**batch(), **{f"x{i}": 0 for i in range(58)}})))
        yield Case("host_with_slash", "a payload host id with '/' (topic injection)", "schema",
                   frame(pack(batch(host="a/../b"))))
        yield Case("host_65_chars", "a host id of 65 characters", "schema",
                   frame(pack(batch(host="h" * 65))))
        yield Case("instance_with_slash", "an instance id with '/'", "schema",
                   frame(pack(batch(instance="a/b"))))
        yield Case("instance_65_chars", "an instance id of 65 characters", "schema",
                   frame(pack(batch(instance="i" * 65))))
        yield Case("instance_empty", "an empty instance id", "schema",
                   frame(pack(batch(instance=""))))
        yield Case("host_mismatch", "a batch claiming another host than its topic",
                   "host_mismatch", frame(pack(batch(host="someone-else"))))


class Clock(Family):
    """Sample times outside the collector's clock tolerance."""

    title = "clock"

    def cases(self) -> Iterator[Case]:
        yield Case("timestamp_year_3000", "samples a thousand years ahead", "future_timestamp",
                   frame(pack(batch(t=[32_503_680_000_000]))))
        yield Case("timestamp_int64_max", "the last sample at 2^63 - 1 ms", "future_timestamp",
                   frame(pack(batch(t=[T0, 2**63 - 1 - T0]))))
        yield Case("timestamp_1970", "samples at 1 ms after the epoch", "past_timestamp",
                   frame(pack(batch(t=[1]))))


# --- topics and status messages -----------------------------------------------------------------

STATUS_TOPIC = f"edgemon/v1/{HOST}/status".encode()


class Topics(Family):
    """Topics that are not ``edgemon/v1/<valid host>/<kind>``."""

    title = "topics"

    def cases(self) -> Iterator[Case]:
        valid = frame(pack(batch()))
        for name, about, reason, topic in (
                ("topic_not_utf8", "a topic that is not UTF-8", "bad_topic",
                 b"edgemon/v1/\xff\xfe/m"),
                ("topic_too_long", "a 10,000-byte topic", "bad_topic",
                 b"edgemon/v1/" + b"h" * 10_000 + b"/metrics"),
                ("topic_host_plus", "a host level with '+' (a wildcard)", "bad_host",
                 b"edgemon/v1/a+b/metrics"),
                ("topic_host_nul", "a host level holding a NUL character", "bad_host",
                 b"edgemon/v1/a\x00b/metrics"),
                ("topic_empty_host", "an empty host level", "bad_host", b"edgemon/v1//metrics"),
                ("topic_extra_level", "one topic level too many", "bad_topic",
                 b"edgemon/v1/a/b/metrics"),
                ("topic_ack_kind", "a batch published on an ack topic", "unexpected_topic",
                 b"edgemon/v1/fuzz-host/ack")):
            yield Case(name, about, reason, valid, topic)


def _status(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _birth(**change: Any) -> dict[str, Any]:
    return {"v": 1, "state": "online", "instance": "i", "ts": T0, **change}


class Status(Family):
    """Status messages storage cannot record, or whose time no clock produces."""

    title = "status messages"

    def cases(self) -> Iterator[Case]:
        for name, about, reason, body in (
                ("status_json_nesting", "a status message of 50,000 nested JSON arrays",
                 "not_json", b"[" * 50_000),
                ("status_not_json", "a status that is not JSON", "not_json", b"\xff\xfe{"),
                ("status_ts_bool", "a status whose ts is true", "schema",
                 _status(_birth(ts=True))),
                ("status_ts_float", "a status whose ts is 1.5", "schema",
                 _status(_birth(ts=1.5))),
                ("status_ts_negative", "a status whose ts is negative", "schema",
                 _status(_birth(ts=-1))),
                ("status_ts_2e70", "a status whose ts does not fit 64 bits", "future_timestamp",
                 _status(_birth(ts=2**70))),
                ("status_ts_int64_max", "a status whose ts is 2^63 - 1 (last_status_ms "
                 "forever)", "future_timestamp", _status(_birth(ts=2**63 - 1))),
                ("status_birth_ts_1970", "a birth message from 1970", "past_timestamp",
                 _status(_birth(ts=1))),
                ("status_ts_infinity", "a status whose ts is JSON Infinity", "schema",
                 b'{"v":1,"state":"online","instance":"i","ts":Infinity}'),
                ("status_instance_slash", "a status whose instance id holds '/'", "schema",
                 _status(_birth(instance="a/b"))),
                ("status_instance_nul", "a status whose instance id holds a NUL", "schema",
                 _status(_birth(instance="a\x00b"))),
                ("status_state_bogus", "a status whose state is neither online nor offline",
                 "schema", _status(_birth(state="maybe"))),
                ("status_version_float", "a status whose v is 1.0", "schema",
                 _status(_birth(v=1.5)))):
            yield Case(name, about, reason, body, STATUS_TOPIC)


# --- series no real host sends (the batch is stored without them) ------------------------------

def _with_bad_series(metric: list[Any], t: list[int] | None = None) -> bytes:
    """A valid batch of a good series and ``metric`` (one series), at T0."""
    return frame(pack(batch(t=t or [T0],
                            metrics=[["fz_ok", "gauge", "", 0, [], [[[], 0, [7]]]], metric])))


class ImplausibleSeries(Family):
    """A series no real host produces: its batch is stored without it, the rest kept."""

    title = "implausible series"

    def cases(self) -> Iterator[Case]:
        for name, unit_scale_raw in (("150", ("percent", 0, 150)), ("minus_5", ("percent", 0, -5)),
                                     ("100_6", ("percent", 1, 1006)),
                                     ("minus_0_6", ("percent", 1, -6)),
                                     ("9e16", ("percent", 2, 9 * 10**16))):
            unit, scale, raw = unit_scale_raw
            yield Case(f"implausible_percent_{name}", f"cpu_usage_percent = {name}",
                       "series:percent_out_of_range",
                       _with_bad_series(["cpu_usage_percent", "gauge", unit, scale, ["cpu"],
                                         [[["total"], 0, [raw]]]]))
        for name, metric in (
                ("bytes_gauge", ["memory_used_bytes", "gauge", "bytes", 0, [], [[[], 0, [-1]]]]),
                ("counter", ["requests_total", "counter", "", 0, [], [[[], 0, [-1]]]]),
                ("counter_after_deltas", ["x_total", "counter", "", 0, [],
                                          [[[], 0, [10, -20]]]]),
                ("inodes", ["disk_inodes", "gauge", "inodes", 0, [], [[[], 0, [-3]]]]),
                ("packets_counter", ["p_total", "counter", "packets", 0, [], [[[], 0, [-9]]]])):
            yield Case(f"implausible_negative_{name}", f"a negative value of {metric[0]}",
                       "series:negative_value", _with_bad_series(metric, t=[T0, 1000]))
        for name, metric in (
                ("counter_2e62", ["c_total", "counter", "", 0, [], [[[], 0, [2**62 + 1]]]]),
                ("bytes_int64_max", ["b_bytes", "gauge", "bytes", 0, [], [[[], 0, [2**63 - 1]]]]),
                ("gauge_int64_min", ["g", "gauge", "", 0, [], [[[], 0, [-(2**63)]]]]),
                ("gauge_int64_max", ["g", "gauge", "seconds", 0, [], [[[], 0, [2**63 - 1]]]])):
            yield Case(f"implausible_large_{name}", f"{metric[0]} beyond 2^62",
                       "series:value_too_large", _with_bad_series(metric))
        for name, text in (("nul", "a\x00b"), ("escape", "\x1b[31mred"), ("del", "a\x7f"),
                           ("newline", "a\nb"), ("tab", "a\tb"), ("carriage_return", "a\rb"),
                           ("rtl_override", "txt\u202eexe.sh"), ("zero_width", "a\u200bb"),
                           ("line_separator", "a\u2028b"), ("private_use", "\ue000"),
                           ("nbsp", "a\u00a0b")):
            yield Case(f"unprintable_label_{name}", f"a label value with {name.replace('_', ' ')}",
                       "series:not_printable",
                       _with_bad_series(["iface_bytes", "gauge", "bytes", 0, ["iface"],
                                         [[[text], 0, [1]]]]))
        yield Case("unprintable_unit_newline", "a unit with a newline", "series:not_printable",
                   _with_bad_series(["m2", "gauge", "by\ntes", 0, [], [[[], 0, [1]]]]))
        for name, metric in (
                ("dunder_proto", ["__proto__", "gauge", "", 0, [], [[[], 0, [1]]]]),
                ("dunder_name_label", ["m3", "gauge", "", 0, ["__name__"],
                                       [[["x"], 0, [1]]]]),
                ("collector_self_metric", ["edgemon_collector_rejects_total", "counter", "", 0,
                                           [], [[[], 0, [1]]]]),
                ("agent_invented", ["agent_fake_total", "counter", "", 0, [], [[[], 0, [1]]]]),
                ("agent_wrong_kind", ["agent_memory_rss_bytes", "counter", "bytes", 0, [],
                                      [[[], 0, [1]]]]),
                ("agent_wrong_labels", ["agent_memory_rss_bytes", "gauge", "bytes", 0, ["k"],
                                        [[["x"], 0, [1]]]])):
            yield Case(f"reserved_{name}", f"metric {metric[0]} (a reserved name)",
                       "series:reserved_name", _with_bad_series(metric))


FAMILIES: list[Family] = [ZstdFraming(), Structure(), Amplification(), PoisonValues(),
                          TypeMismatch(), Version(), Rules(), Clock(), Topics(), Status(),
                          ImplausibleSeries()]


def cases() -> Iterator[tuple[Family, Case]]:
    seen: set[str] = set()
    for family in FAMILIES:
        for case in family.cases():
            assert case.name not in seen, f"two cases named {case.name}"
            seen.add(case.name)
            yield family, case


def write(directory: Path) -> None:
    """Write every case, ``expected.json`` and ``README.md`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    lines = ["# Hostile payloads for the collector", "",
             "Generated by `python tests/fuzz_corpus/make_corpus.py` (deterministic, one "
             "generator class per class of problem); used by `tests/test_fuzz_ingest.py`. Each "
             f"`<name>.bin` is a payload, published on `edgemon/v1/{HOST}/metrics` unless "
             "`<name>.topic` gives the raw topic bytes. `expected.json` names the reject reason "
             "each must be counted under; `series:<reason>` means the batch is stored without "
             "its implausible series, which is counted under `<reason>`.", ""]
    title = None
    for family, case in cases():
        if family.title != title:
            title = family.title
            lines += ["", f"## {title}", "", "| file | attacks | reason |", "|---|---|---|"]
        (directory / f"{case.name}.bin").write_bytes(case.payload)
        if case.topic is not None:
            (directory / f"{case.name}.topic").write_bytes(case.topic)
        expected[case.name] = case.reason
        lines.append(f"| `{case.name}.bin` | {case.about} | `{case.reason}` |")
    (directory / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    (directory / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
