"""Write the extra test vectors of SPEC.md §3: more valid payloads, and payloads every v1 decoder
must refuse.

    python protocol/vectors/make_vectors.py

Positive: ``positive/<name>.hex`` (the payload as hex, one line) and an entry of
``positive.json`` (name, what it exercises). Negative: ``negative/<name>.hex`` and an entry of
``negative.json``: its name, the ``reason`` the reference decoder gives
(``ProtocolError.reason``) and the rule of SPEC.md it breaks. Most negatives are ``v1-basic``
with one thing changed, compressed with dictionary 1 as agents do; a few are raw bytes.
``tests/test_protocol_vectors.py`` checks that the reference decoder accepts every positive and
refuses every negative with its reason, and that a decoder written in JavaScript from SPEC.md
alone (``tests/spec_decoder/``) agrees with it on all of them. The vectors are data: the
committed files are the reference, this script is how they were made.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

HERE = Path(__file__).parent
DICTIONARY = HERE.parent / "dictionaries" / "1.zdict"
BASIC: dict[str, Any] = json.loads((HERE / "v1-basic.json").read_text())
_DICT_MAGIC = b"\x37\xa4\x30\xec"


def _dictionary(dict_id: int = 1) -> zstandard.ZstdCompressionDict:
    data = DICTIONARY.read_bytes()
    assert data[:4] == _DICT_MAGIC
    if dict_id != 1:  # the same content under another ID: a dictionary no reader has
        data = data[:4] + struct.pack("<I", dict_id) + data[8:]
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)


def frame(packed: bytes, *, dict_id: int = 1, content_size: bool = True) -> bytes:
    """One zstd frame of ``packed`` as agents write it (level 19, dictionary, checksum off)."""
    return zstandard.ZstdCompressor(
        level=19, write_content_size=content_size, write_dict_id=True,
        dict_data=_dictionary(dict_id) if dict_id else None).compress(packed)


def pack(batch: dict[str, Any]) -> bytes:
    return msgpack.packb(batch, use_bin_type=True)


def changed(**fields: Any) -> bytes:
    """v1-basic with top-level ``fields`` replaced (a value None removes the key)."""
    batch = {k: v for k, v in {**BASIC, **fields}.items() if v is not None}
    return frame(pack(batch))


def with_metric(metric: list[Any]) -> bytes:
    """v1-basic with its metrics replaced by this one."""
    return changed(metrics=[metric])


def raw_replace(marker: str, raw: bytes, *, key: str = "host") -> bytes:
    """v1-basic with the msgpack bytes of field ``key`` (set to ``marker``) swapped for ``raw``:
    for encodings msgpack libraries will not write on purpose."""
    packed = pack({**BASIC, key: marker})
    return frame(packed.replace(pack(marker), raw, 1))


def _duplicate_key() -> bytes:
    # a map of 8 entries whose last key repeats "seq"
    packed = pack(BASIC)
    assert packed[0] == 0x87
    return frame(b"\x88" + packed[1:] + pack("seq") + pack(43))


def _second_frame() -> bytes:
    good = frame(pack(BASIC))
    return good + frame(pack(BASIC))


def _skippable_first() -> bytes:
    return struct.pack("<II", 0x184D2A50, 0) + frame(pack(BASIC))


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


VECTORS: list[tuple[str, str, str, Callable[[], bytes]]] = [
    # --- framing (§2) ---
    ("not-zstd", "not_zstd", "a payload starts with the zstd frame magic; this is bare msgpack",
     lambda: pack(BASIC)),
    ("skippable-frame-first", "not_zstd", "no skippable frame before the frame",
     _skippable_first),
    ("trailing-byte", "trailing_bytes", "nothing after the frame (one 0x00 byte here)",
     lambda: frame(pack(BASIC)) + b"\x00"),
    ("two-frames", "trailing_bytes", "exactly one zstd frame (two here)", _second_frame),
    ("no-content-size", "decompressed_too_large",
     "the frame must declare its content size (Frame_Content_Size)",
     lambda: frame(pack(BASIC), content_size=False)),
    ("unknown-dictionary", "unknown_dictionary",
     "a frame naming a dictionary the decoder does not have (ID 999) is refused, never guessed",
     lambda: frame(pack(BASIC), dict_id=999)),
    ("trailing-msgpack", "not_msgpack", "exactly one msgpack map, nothing after it",
     lambda: frame(pack(BASIC) + b"\xc0")),
    ("not-a-map", "schema", "the content is one msgpack map (an array here)",
     lambda: frame(pack([1, 2, 3]))),
    ("reserved-msgpack-byte", "not_msgpack", "0xc1 is never valid msgpack",
     lambda: frame(b"\xc1")),
    # --- types (§2 Types) ---
    ("version-2", "version", "v is the integer 1", lambda: changed(v=2)),
    ("version-float", "version", "v is the integer 1, not 1.0", lambda: changed(v=1.0)),
    ("version-true", "version", "v is the integer 1, not true", lambda: changed(v=True)),
    ("missing-seq", "schema", "seq is required", lambda: changed(seq=None)),
    ("negative-seq", "schema", "seq is an integer >= 0", lambda: changed(seq=-1)),
    ("duplicate-key", "schema", "map keys appear at most once (seq twice here)", _duplicate_key),
    ("invalid-utf8", "schema", "strings are strict UTF-8 (0xff 0xfe here)",
     lambda: raw_replace("\x00marker\x00", b"\xa2\xff\xfe")),
    ("utf8-surrogate", "schema", "strict UTF-8: no encoded surrogates (ED A0 80 is U+D800)",
     lambda: raw_replace("\x00marker\x00", b"\xa3\xed\xa0\x80")),
    ("utf8-overlong", "schema", "strict UTF-8: no overlong forms (C0 AF is an overlong '/')",
     lambda: raw_replace("\x00marker\x00", b"\xa2\xc0\xaf")),
    ("binary-host", "schema", "binary data never appears (bin8 as the host)",
     lambda: raw_replace("\x00marker\x00", b"\xc4\x06web-01")),
    ("uint64-seq", "schema", "integers are signed 64-bit: a uint64 above 2^63-1 is not one",
     lambda: raw_replace("\x00marker\x00", b"\xcf" + b"\xff" * 8, key="seq")),
    ("timestamp-ext", "schema", "extension types (msgpack timestamps too) never appear",
     lambda: raw_replace("\x00marker\x00", b"\xd6\xff\x00\x00\x00\x01", key="sent")),
    ("float-value", "schema", "series values are integers (1.5 here)",
     lambda: with_metric(["x", "gauge", "", 0, [], [[[], 0, [1.5]]]])),
    ("long-label-value", "schema", "any string is at most 256 bytes of UTF-8 (257 here)",
     lambda: with_metric(["x", "gauge", "", 0, ["k"], [[["a" * 257], 0, [1]]]])),
    # --- batch rules (§2) ---
    ("timestamps-not-increasing", "schema", "every timestamp delta is > 0 (a 0 here)",
     lambda: changed(t=[1795464000000, 10000, 0])),
    ("timestamp-overflow", "schema", "cumulated timestamps stay within signed 64 bits",
     lambda: changed(t=[2**62, 2**62, 1])),
    ("value-overflow", "schema", "cumulated values stay within signed 64 bits",
     lambda: with_metric(["x", "gauge", "", 0, [], [[[], 0, [2**62, 2**62]]]])),
    ("bad-metric-name", "schema", "names match [a-zA-Z_][a-zA-Z0-9_]* (1x here)",
     lambda: with_metric(["1x", "gauge", "", 0, [], []])),
    ("bad-kind", "schema", 'kind is "gauge" or "counter"',
     lambda: with_metric(["x", "histogram", "", 0, [], []])),
    ("scale-10", "schema", "scale is 0-9", lambda: with_metric(["x", "gauge", "", 10, [], []])),
    ("label-count-mismatch", "schema", "one label value per label key",
     lambda: with_metric(["x", "gauge", "", 0, ["k"], [[["a", "b"], 0, [1]]]])),
    ("values-past-timestamps", "schema", "offset + len(values) <= len(t)",
     lambda: with_metric(["x", "gauge", "", 0, [], [[[], 2, [1, 2]]]])),
    ("series-overlap", "schema", "entries of one series never cover a timestamp twice",
     lambda: with_metric(["x", "gauge", "", 0, [], [[[], 0, [1]], [[], 0, [2]]]])),
    ("repeated-metric", "schema", "metric names are unique within a batch",
     lambda: changed(metrics=[["x", "gauge", "", 0, [], []], ["x", "gauge", "", 0, [], []]])),
    ("bad-host", "schema", "host ids are 1-64 of [A-Za-z0-9._-] starting with a letter/digit",
     lambda: changed(host="web 01")),
    # --- unknown top-level keys (§7) ---
    ("extension-nan", "schema", "floats under unknown keys are finite",
     lambda: changed(future=float("nan"))),
    ("extension-too-deep", "too_many_extension_elements",
     "nesting under an unknown key is at most 8 levels (9 here)",
     lambda: changed(future=_nested(9))),
    ("extension-too-many", "too_many_extension_elements",
     "at most 1024 elements under unknown keys (1025 here)",
     lambda: changed(future=list(range(1024)))),
    ("extension-bad-name", "schema", "unknown keys are names too ([a-zA-Z_][a-zA-Z0-9_]*)",
     lambda: changed(**{"fut-ure": 1})),
]


POSITIVE: list[tuple[str, str, Callable[[], bytes]]] = [
    ("no-dictionary", "a frame with no dictionary (Dictionary_ID absent) is valid too",
     lambda: frame(pack(BASIC), dict_id=0)),
    ("int64-extremes", "values and deltas at the ends of signed 64 bits: readers need big "
     "integers (JavaScript: BigInt), not doubles",
     lambda: changed(metrics=[
         ["big_total", "counter", "", 0, [], [[[], 0, [2**63 - 2, 1, 0]]]],
         ["small", "gauge", "", 0, [], [[[], 0, [-(2**63), 2**63 - 1, -1]]]],
         ["precise_total", "counter", "bytes", 0, [], [[[], 0, [9007199254740993, 2, 2]]]]])),
    ("unicode-labels", "label values in any script, 4-byte UTF-8 included, up to 256 bytes",
     lambda: changed(metrics=[["temperature_celsius", "gauge", "celsius", 1, ["room", "note"],
                               [[["Küche", "\U0001f321 \u03c3"], 0, [215, -3, 8]],
                                [["\u5de5\u5834", "\u00e9" * 128], 1, [-50, 1]]]]])),
    ("unknown-keys", "unknown top-level keys with plain data: accepted and ignored",
     lambda: changed(future={"a": [1, 2.5, None, True, "x"], "deep": _nested(7)}, zz=-1)),
    ("scales-and-holes", "scale 0-9, entries starting late, a series split by a hole",
     lambda: changed(metrics=[
         ["ratio", "gauge", "", 9, [], [[[], 0, [1, 999999999]], [[], 2, [-5]]]],
         ["late_total", "counter", "", 0, ["k"], [[["a"], 2, [7]], [["b"], 0, [1, 1, 1]]]],
         ["empty", "gauge", "", 0, [], []]])),
]


# --- based batches (SPEC.md §9.1): read with v1-catalogue and the base v1-referencing -----------

BASED: dict[str, Any] = json.loads((HERE / "v1-based.json").read_text())
READ_WITH = {"catalogue": "v1-catalogue.hex", "base": "v1-referencing.hex"}
BASED_DICTIONARY = HERE.parent / "dictionaries" / "2.zdict"


def based_frame(batch: dict[str, Any]) -> bytes:
    """A based batch as agents compress it: dictionary 2."""
    zdict = zstandard.ZstdCompressionDict(BASED_DICTIONARY.read_bytes(),
                                          dict_type=zstandard.DICT_TYPE_FULLDICT)
    return zstandard.ZstdCompressor(level=19, write_content_size=True, write_dict_id=True,
                                    dict_data=zdict).compress(pack(batch))


def based(**fields: Any) -> bytes:
    """v1-based with top-level ``fields`` replaced (a value None removes the key)."""
    return based_frame({k: v for k, v in {**BASED, **fields}.items() if v is not None})


BASED_VECTORS: list[tuple[str, str, str, Callable[[], bytes]]] = [
    ("based-with-values", "schema", "a based batch has bvalues instead of values, not both",
     lambda: based(values=[1, 2, 3, 4, 5, 6])),
    ("based-without-base", "schema", "bvalues needs base",
     lambda: based(base=None)),
    ("based-base-not-before", "schema", "the base's seq is below the batch's seq",
     lambda: based(base=[43, BASED["base"][1]])),
    ("based-check-too-large", "schema", "check is below 2^60",
     lambda: based(base=[42, 2**60])),
    ("based-bvalues-count", "schema", "len(bvalues) = dense series x len(t) (5 for 6 here)",
     lambda: based(bvalues=BASED["bvalues"][:5])),
    ("based-factor-of-sparse", "schema", "factors name dense series (series 0 is in sparse)",
     lambda: based(factors=[[0, 1000]])),
    ("based-factor-one", "schema", "a factor is >= 2",
     lambda: based(factors=[[3, 1]])),
    ("based-factor-twice", "schema", "a series is listed in factors at most once",
     lambda: based(factors=[[3, 1000], [3, 1000]])),
    ("based-counter-overflow", "schema", "a counter's cumulated differences stay within "
     "signed 64 bits", lambda: based(bvalues=[75, -100, -50, 2**62, 2**62, 0], factors=None)),
    ("based-check-mismatch", "unknown_base", "the base values the reader holds are not the ones "
     "the check covers: the base is unknown to it", lambda: based(base=[42, 12345])),
]


def main() -> None:
    (HERE / "v1-based.hex").write_text(based_frame(BASED).hex() + "\n")
    for kind, vectors, extra in (("positive", [(n, None, r, m) for n, r, m in POSITIVE], []),
                                 ("negative", VECTORS, BASED_VECTORS)):
        out = HERE / kind
        out.mkdir(exist_ok=True)
        index = []
        if kind == "positive":
            index.append({"name": "v1-based", "file": "v1-based.hex", **READ_WITH,
                          "rule": "a based batch (SPEC.md §9.1), going on from v1-referencing"})
        for name, reason, rule, make in vectors + extra:
            (out / f"{name}.hex").write_text(make().hex() + "\n")
            entry = {"name": name, "file": f"{kind}/{name}.hex", "reason": reason, "rule": rule,
                     **(READ_WITH if name.startswith("based-") else {})}
            index.append({k: v for k, v in entry.items() if v is not None})
        (HERE / f"{kind}.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {len(index)} {kind} vectors to {out}")


if __name__ == "__main__":
    main()
