"""Regenerate the hand-made hostile payloads of this directory, byte for byte the same each run.

    python tests/fuzz_corpus/make_corpus.py [DIR]

Each case is one MQTT message: ``<name>.bin`` is its payload, and ``<name>.topic`` its raw topic
bytes when the case attacks the topic (otherwise it is published on ``edgemon/v1/fuzz-host/
metrics``). ``expected.json`` maps each case to the reject reason the collector must count, and
``README.md`` says what each one attacks. Everything is built from fixed inputs (no clock, no
randomness), so the files only change when this script or the zstd library does.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

HOST = "fuzz-host"
T0 = 1_790_000_000_000  # a fixed time (2026); tests run it through the collector's clock check


def frame(packed: bytes, **kw: Any) -> bytes:
    """One zstd frame (level 3, no dictionary) that declares its size unless told otherwise."""
    return zstandard.ZstdCompressor(level=3, **kw).compress(packed)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def batch(**change: Any) -> dict[str, Any]:
    """A valid one-sample batch of ``HOST``, with fields replaced (``None`` removes a field)."""
    doc: dict[str, Any] = {"v": 1, "host": HOST, "instance": "corpus", "seq": 1, "sent": T0,
                           "t": [T0], "metrics": [["m", "gauge", "", 0, [], [[[], 0, [1]]]]]}
    for key, value in change.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def map_with(raw_fields: list[tuple[str, bytes]]) -> bytes:
    """A msgpack map written by hand: ``(key, already packed value)`` pairs, in order."""
    head = bytes([0x80 | len(raw_fields)]) if len(raw_fields) < 16 else \
        b"\xde" + len(raw_fields).to_bytes(2, "big")
    return head + b"".join(pack(k) + v for k, v in raw_fields)


def base_fields(**raw: bytes) -> bytes:
    """The valid batch's fields, with some values replaced by hand-packed bytes."""
    fields = [(k, pack(v)) for k, v in batch().items()]
    fields = [(k, raw.pop(k)) if k in raw else (k, v) for k, v in fields]
    return map_with(fields + list(raw.items()))


def array32(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big")


def declared_huge() -> bytes:
    """A 20-byte frame whose header claims 1 TiB of content."""
    real = frame(b"\x00" * 300)
    blocks = real[zstandard.frame_header_size(real):]
    # Rebuild the header by hand: magic, descriptor with an 8-byte content size, no window.
    descriptor = 0b1110_0000  # FCS field 8 bytes, single segment
    return b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + (1 << 40).to_bytes(8, "little") + blocks


def lying_small() -> bytes:
    """A frame of 64 KiB of zeros whose header says 100 bytes (the decoder must not trust it)."""
    real = bytearray(frame(b"\x00" * 65536))
    params = zstandard.get_frame_parameters(bytes(real))
    assert params.content_size == 65536
    descriptor = real[4]
    fcs_flag = descriptor >> 6
    single = (descriptor >> 5) & 1
    offset = 5 + (0 if single else 1)
    size = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    value = 100 - 256 if size == 2 else 100  # 2-byte sizes are stored minus 256
    real[offset:offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    return bytes(real)


def unknown_dictionary() -> bytes:
    samples = [pack(batch(seq=i)) for i in range(400)]
    trained = zstandard.train_dictionary(1024, samples, dict_id=4242, level=3)
    return zstandard.ZstdCompressor(dict_data=trained, level=3).compress(pack(batch()))


def overlap_cpu_bomb() -> bytes:
    """15 metrics of 4096 entries of one series each, one timestamp per entry, the last metric
    repeating a timestamp: a pairwise overlap check costs 8 million comparisons per metric (tens
    of seconds in all); sorted, it is instant."""
    n = 4096
    entries = [[[], i, [1]] for i in range(n)]
    metrics = [[f"m{k}", "gauge", "", 0, [], entries] for k in range(14)]
    metrics.append(["last", "gauge", "", 0, [], [*entries, [[], 0, [1]]]])
    return frame(pack(batch(t=[T0] + [1] * (n - 1), metrics=metrics)))


def many_samples() -> bytes:
    """300 series x 4096 values: 1.2 million samples, over the limit, in a few KB."""
    n = 4096
    entries = [[[str(i)], 0, [0] * n] for i in range(300)]
    return frame(pack(batch(t=[T0] + [1] * (n - 1), metrics=[["m", "gauge", "", 0, ["k"],
                                                                entries]])))


def status(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# name -> (what it attacks, expected reason, payload builder, raw topic or None)
Case = tuple[str, str, Callable[[], bytes], bytes | None]
STATUS_TOPIC = f"edgemon/v1/{HOST}/status".encode()
VALID = lambda: frame(pack(batch()))  # noqa: E731 - a payload for the topic attacks

CASES: dict[str, Case] = {
    "zstd_declares_1tib": ("zstd header claiming 1 TiB of content (allocation from a size field)",
                           "decompressed_too_large", declared_huge, None),
    "zstd_bomb_64mib": ("a real 64 MiB frame of zeros in a few KB (decompression bomb)",
                        "decompressed_too_large", lambda: frame(b"\x00" * (64 << 20)), None),
    "zstd_no_content_size": ("a frame that does not declare its size (streamed, unbounded)",
                             "decompressed_too_large",
                             lambda: frame(pack(batch()), write_content_size=False), None),
    "zstd_lies_small": ("a 64 KiB frame whose header claims 100 bytes", "not_zstd",
                        lying_small, None),
    "zstd_unknown_dictionary": ("a frame needing a dictionary the collector does not have",
                                "unknown_dictionary", unknown_dictionary, None),
    "zstd_truncated": ("a valid frame cut in half", "not_zstd",
                       lambda: frame(pack(batch()))[:20], None),
    "not_zstd": ("plain text instead of a zstd frame", "not_zstd",
                 lambda: b"GET / HTTP/1.1\r\n\r\n", None),
    "msgpack_not_a_map": ("a top-level array of a million empty arrays", "schema",
                          lambda: frame(array32(1_000_000) + b"\x90" * 1_000_000), None),
    "msgpack_empty_array_bomb": (
        "metrics holding 8 arrays of a million empty arrays each (8 M objects, 450 MB built "
        "naively, from 400 bytes)", "schema",
        lambda: frame(base_fields(metrics=b"\x98" + (array32(1_000_000) + b"\x90" * 1_000_000)
                                  * 8)), None),
    "msgpack_string_bomb": (
        "label values: one array of a million 2-byte strings", "too_many_label_values",
        lambda: frame(base_fields(metrics=pack([["m", "gauge", "", 0, ["k"], []]])[:-1]
                                  + b"\x91\x93" + array32(1_000_000) + b"\xa2ab" * 1_000_000
                                  + b"\x00\x91\x01")), None),
    "msgpack_nested_values": ("series values nested 500 arrays deep", "schema",
                              lambda: frame(base_fields(metrics=pack(
                                  [["m", "gauge", "", 0, [], []]])[:-1] + b"\x91\x93\x90\x00"
                                  + b"\x91" * 500 + b"\x01")), None),
    "msgpack_deep_unknown_key": ("an unknown key holding 100,000 nested arrays (stack bomb)",
                                 "not_msgpack",
                                 lambda: frame(base_fields(extra=b"\x91" * 100_000 + b"\x01")),
                                 None),
    "msgpack_claims_4g_metrics": ("an array header claiming 4 billion metrics in 5 bytes",
                                  "too_many_metrics",
                                  lambda: frame(base_fields(metrics=array32(2**32 - 1))), None),
    "msgpack_claims_4g_string": ("a str32 header claiming a 4 GiB host id", "not_msgpack",
                                 lambda: frame(base_fields(host=b"\xdb\xff\xff\xff\xff")), None),
    "msgpack_65535_keys": ("a batch map with 65,535 keys", "too_many_keys",
                           lambda: frame(b"\xde\xff\xff" + b"\xa1k\xc0" * 65535), None),
    "msgpack_duplicate_key": ("the key seq twice (which one wins?)", "schema",
                              lambda: frame(map_with([(k, pack(v)) for k, v in batch().items()]
                                                     + [("seq", pack(2))])), None),
    "msgpack_trailing_bytes": ("a valid batch followed by extra bytes", "not_msgpack",
                               lambda: frame(pack(batch()) + b"\x00garbage"), None),
    "msgpack_bin_host": ("the host id as binary data instead of a string", "schema",
                         lambda: frame(base_fields(host=pack(HOST.encode()))), None),
    "msgpack_ext_value": ("an extension type (timestamp) as a sample value", "schema",
                          lambda: frame(base_fields(metrics=pack(
                              [["m", "gauge", "", 0, [], []]])[:-1]
                              + b"\x91\x93\x90\x00\x91\xd6\xff\x00\x00\x00\x01")), None),
    "msgpack_bad_utf8_label": ("a label value that is not UTF-8", "schema",
                               lambda: frame(base_fields(metrics=pack(
                                   [["m", "gauge", "", 0, ["k"], []]])[:-1]
                                   + b"\x91\x93\x91\xa2\xff\xfe\x00\x91\x01")), None),
    "too_many_samples": ("1.2 million zero samples in a few KB (over MAX_SAMPLES)",
                         "too_many_samples", many_samples, None),
    "overlap_cpu_bomb": ("15 x 4096 entries of one series: a quadratic overlap check",
                         "schema", overlap_cpu_bomb, None),
    "value_nan": ("NaN as a sample value", "schema",
                  lambda: frame(pack(batch(metrics=[["m", "gauge", "", 0, [],
                                                     [[[], 0, [math.nan]]]]]))), None),
    "value_inf": ("+inf as a sample value", "schema",
                  lambda: frame(pack(batch(metrics=[["m", "gauge", "", 0, [],
                                                     [[[], 0, [math.inf]]]]]))), None),
    "timestamp_minus_inf": ("-inf as the first timestamp", "schema",
                            lambda: frame(pack(batch(t=[-math.inf]))), None),
    "sent_nan": ("NaN as the send time", "schema",
                 lambda: frame(pack(batch(sent=math.nan))), None),
    "seq_uint64_max": ("seq = 2^64 - 1 (beyond signed 64 bits)", "schema",
                       lambda: frame(pack(batch(seq=2**64 - 1))), None),
    "value_sum_overflow": ("two deltas whose sum overflows 64 bits", "schema",
                           lambda: frame(pack(batch(t=[T0, 1], metrics=[
                               ["m", "gauge", "", 0, [], [[[], 0, [2**62, 2**62]]]]]))), None),
    "timestamp_year_3000": ("samples a thousand years ahead", "future_timestamp",
                            lambda: frame(pack(batch(t=[32_503_680_000_000]))), None),
    "timestamp_1970": ("samples at 1 ms after the epoch", "past_timestamp",
                       lambda: frame(pack(batch(t=[1]))), None),
    "timestamp_not_increasing": ("a zero timestamp delta", "schema",
                                 lambda: frame(pack(batch(t=[T0, 0]))), None),
    "missing_t": ("a batch without timestamps", "schema",
                  lambda: frame(pack(batch(t=None))), None),
    "missing_version": ("a batch without v", "version",
                        lambda: frame(pack(batch(v=None))), None),
    "version_2": ("a batch of protocol v2 on a v1 topic", "version",
                  lambda: frame(pack(batch(v=2))), None),
    "metrics_as_map": ("metrics as a map instead of an array", "schema",
                       lambda: frame(pack(batch(metrics={"m": 1}))), None),
    "metric_arity_7": ("a metric with 7 fields", "schema",
                       lambda: frame(pack(batch(metrics=[["m", "gauge", "", 0, [], [], 1]]))),
                       None),
    "host_is_int": ("the host id as an integer", "schema",
                    lambda: frame(pack(batch(host=42))), None),
    "host_with_slash": ("a payload host id with '/' (topic injection)", "schema",
                        lambda: frame(pack(batch(host="a/../b"))), None),
    "host_mismatch": ("a batch claiming another host than its topic", "host_mismatch",
                      lambda: frame(pack(batch(host="someone-else"))), None),
    "label_value_257_bytes": ("a label value one byte over the limit", "schema",
                              lambda: frame(pack(batch(metrics=[
                                  ["m", "gauge", "", 0, ["k"], [[["x" * 257], 0, [1]]]]]))),
                              None),
    "topic_not_utf8": ("a topic that is not UTF-8", "bad_topic", VALID, b"edgemon/v1/\xff\xfe/m"),
    "topic_too_long": ("a 10,000-byte topic", "bad_topic", VALID,
                       b"edgemon/v1/" + b"h" * 10_000 + b"/metrics"),
    "topic_host_plus": ("a host level with '+' (a wildcard)", "bad_host", VALID,
                        b"edgemon/v1/a+b/metrics"),
    "topic_host_nul": ("a host level holding a NUL character", "bad_host", VALID,
                       b"edgemon/v1/a\x00b/metrics"),
    "topic_empty_host": ("an empty host level", "bad_host", VALID, b"edgemon/v1//metrics"),
    "topic_extra_level": ("one topic level too many", "bad_topic", VALID,
                          b"edgemon/v1/a/b/metrics"),
    "topic_ack_kind": ("a batch published on an ack topic", "unexpected_topic", VALID,
                       b"edgemon/v1/fuzz-host/ack"),
    "status_json_nesting": ("a status message of 50,000 nested JSON arrays", "not_json",
                            lambda: b"[" * 50_000, STATUS_TOPIC),
    "status_ts_bool": ("a status whose ts is true", "schema",
                       lambda: status({"v": 1, "state": "online", "instance": "i", "ts": True}),
                       STATUS_TOPIC),
    "status_ts_2e70": ("a status whose ts does not fit SQLite's 64-bit integers", "schema",
                       lambda: status({"v": 1, "state": "online", "instance": "i",
                                       "ts": 2**70}), STATUS_TOPIC),
    "status_ts_infinity": ("a status whose ts is JSON Infinity", "schema",
                           lambda: b'{"v":1,"state":"online","instance":"i","ts":Infinity}',
                           STATUS_TOPIC),
    "status_instance_slash": ("a status whose instance id holds '/'", "schema",
                              lambda: status({"v": 1, "state": "online", "instance": "a/b",
                                              "ts": T0}), STATUS_TOPIC),
    "status_not_json": ("a status that is not JSON", "not_json", lambda: b"\xff\xfe{",
                        STATUS_TOPIC),
}


def write(directory: Path) -> None:
    """Write every case, ``expected.json`` and ``README.md`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    lines = ["# Hostile payloads for the collector", "",
             "Generated by `python tests/fuzz_corpus/make_corpus.py` (deterministic); used by "
             "`tests/test_fuzz_ingest.py`. Each `<name>.bin` is a payload, published on "
             f"`edgemon/v1/{HOST}/metrics` unless `<name>.topic` gives the raw topic bytes. "
             "`expected.json` names the reject reason each must be counted under.", "",
             "| file | attacks | reason |", "|---|---|---|"]
    for name, (about, reason, build, topic) in CASES.items():
        (directory / f"{name}.bin").write_bytes(build())
        if topic is not None:
            (directory / f"{name}.topic").write_bytes(topic)
        expected[name] = reason
        lines.append(f"| `{name}.bin` | {about} | `{reason}` |")
    (directory / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    (directory / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
