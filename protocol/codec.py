"""Bytes <-> batch map: msgpack inside one zstd frame, with hard limits checked first."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any, Final

import msgpack
import zstandard

from edgemon.protocol.errors import (
    LimitExceeded,
    MalformedPayload,
    ProtocolError,
    UnsupportedVersion,
)
from edgemon.protocol.limits import (
    MAX_BATCH_KEYS,
    MAX_COMPRESSED_BYTES,
    MAX_DECOMPRESSED_BYTES,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABEL_VALUES,
    MAX_LABELS,
    MAX_METRICS,
    MAX_SAMPLES,
    MAX_SERIES,
    MAX_TIMESTAMPS,
    VERSION,
)

__all__ = ["DICTIONARY_ID", "ZSTD_LEVEL", "decode", "dictionary", "encode"]

ZSTD_LEVEL = 19  # batches are small and sent once a minute: spend CPU on bytes
DICTIONARY_ID = 1  # the dictionary new batches are compressed with (0 = none)
_DICTIONARIES = Path(__file__).parent / "dictionaries"

_compressor: zstandard.ZstdCompressor | None = None
_local = threading.local()  # zstd contexts are not thread-safe: decompressors are per thread


@cache
def dictionary(dict_id: int) -> zstandard.ZstdCompressionDict:
    """Published zstd dictionary ``dict_id`` (``dictionaries/<id>.zdict``); KeyError if none."""
    path = _DICTIONARIES / f"{dict_id}.zdict"
    if dict_id <= 0 or not path.is_file():
        raise KeyError(dict_id)
    return zstandard.ZstdCompressionDict(path.read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT)


def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    decompressors: dict[int, zstandard.ZstdDecompressor] | None = getattr(
        _local, "decompressors", None)
    if decompressors is None:
        decompressors = _local.decompressors = {}
    if dict_id not in decompressors:
        decompressors[dict_id] = (zstandard.ZstdDecompressor(dict_data=dictionary(dict_id))
                                  if dict_id else zstandard.ZstdDecompressor())
    return decompressors[dict_id]


def encode(batch: dict[str, Any]) -> bytes:
    """msgpack the batch map, then compress it as one zstd frame that records its size."""
    global _compressor
    if _compressor is None:
        _compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_content_size=True, write_dict_id=True,
            dict_data=dictionary(DICTIONARY_ID) if DICTIONARY_ID else None)
    packed = msgpack.packb(batch, use_bin_type=True)
    if len(packed) > MAX_DECOMPRESSED_BYTES:
        raise LimitExceeded(f"batch packs to {len(packed)} bytes > {MAX_DECOMPRESSED_BYTES}")
    payload = _compressor.compress(packed)
    if len(payload) > MAX_COMPRESSED_BYTES:
        raise LimitExceeded(f"batch compresses to {len(payload)} bytes > {MAX_COMPRESSED_BYTES}")
    return payload


def decode(payload: bytes) -> dict[str, Any]:
    """Decompress and unpack a payload into the raw batch map, never trusting a size field.

    Checks the compressed size, the frame's declared size and the real decompressed size against
    ``limits`` before unpacking. Unpacking follows the v1 layout and checks every array length
    against its limit (and the batch's running totals) before the array is built, so no payload
    makes the decoder allocate more than a valid batch of the same limits would. Value types and
    cross-field rules are the schema's job (``edgemon.protocol.schema``).
    """
    if len(payload) > MAX_COMPRESSED_BYTES:
        raise LimitExceeded(f"payload of {len(payload)} bytes > {MAX_COMPRESSED_BYTES}",
                            reason="too_large")
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise MalformedPayload(f"not a zstd frame: {exc}", reason="not_zstd") from None
    declared = params.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > MAX_DECOMPRESSED_BYTES:
        raise LimitExceeded("zstd frame must declare a content size within "
                            f"{MAX_DECOMPRESSED_BYTES} bytes", reason="decompressed_too_large")
    try:
        decompressor = _decompressor(params.dict_id)
    except KeyError:
        raise MalformedPayload(f"zstd frame needs unknown dictionary {params.dict_id}",
                               reason="unknown_dictionary") from None
    try:
        # max_output_size bounds the allocation even if the frame lies about its size.
        packed = decompressor.decompress(payload, max_output_size=MAX_DECOMPRESSED_BYTES)
    except zstandard.ZstdError as exc:
        raise MalformedPayload(f"zstd frame does not decompress: {exc}",
                               reason="not_zstd") from None
    if len(packed) != declared:
        raise MalformedPayload("zstd frame size does not match its header", reason="not_zstd")
    try:
        batch = _BatchReader(packed).read()
    except ProtocolError:
        raise
    except msgpack.OutOfData:
        raise MalformedPayload("not a msgpack batch: the data ends inside a value",
                               reason="not_msgpack") from None
    except msgpack.StackError:
        raise MalformedPayload("not a msgpack batch: arrays or maps nested too deeply",
                               reason="not_msgpack") from None
    except Exception as exc:  # msgpack's other ValueErrors (FormatError, bad UTF-8, ...)
        raise MalformedPayload(f"not a msgpack batch: {exc}", reason="not_msgpack") from None
    version = batch.get("v")
    if version != VERSION:
        raise UnsupportedVersion(f"unsupported batch version {version!r}; this is v{VERSION}")
    return batch


# --- bounded unpacking of the v1 layout ----------------------------------------------------------

_SCALAR_KEYS: Final = frozenset({"v", "host", "instance", "seq", "sent"})
_MAX_INT_BYTES: Final = 9  # the longest msgpack integer (0xcf/0xd3 + 8 bytes)
_MAX_STR_BYTES: Final = 5 + MAX_LABEL_VALUE_LENGTH  # str32 header + the longest string


def _type_name(first: int) -> str:
    """What the msgpack value starting with byte ``first`` is."""
    if first <= 0x7F or first >= 0xE0 or 0xCC <= first <= 0xD3:
        return "an integer"
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "an array"
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "a map"
    if 0xA0 <= first <= 0xBF or first in (0xD9, 0xDA, 0xDB):
        return "a string"
    return {0xC0: "nil", 0xC2: "a boolean", 0xC3: "a boolean", 0xCA: "a float",
            0xCB: "a float"}.get(first, "binary or extension data")


def _array_length(buf: bytes, pos: int) -> tuple[int, int]:
    """(element count, header size) of the msgpack array header at ``pos``."""
    first = buf[pos]
    if first == 0xDC:
        return int.from_bytes(buf[pos + 1:pos + 3], "big"), 3
    if first == 0xDD:
        return int.from_bytes(buf[pos + 1:pos + 5], "big"), 5
    return first & 0x0F, 1


class _Nested(Exception):
    """A flat list held an array or a map."""


def _schema(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="schema")


class _BatchReader:
    """Reads one v1 batch map from msgpack bytes, sizing every array before building it.

    Arrays are walked level by level with msgpack's streaming ``Unpacker``; only flat lists of
    scalars (timestamps, label keys and values, series values) are built in one call, after their
    header was checked against the limits and their byte span against what that many scalars can
    take. Unknown top-level keys are skipped without being built (SPEC §7).
    """

    def __init__(self, packed: bytes) -> None:
        self.buf = packed
        self.view = memoryview(packed)
        # Limits of 0 for containers: a scalar position holding an array or map is caught by
        # ``_scalar`` before this unpacker would ever build one.
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=True, max_buffer_size=max(len(packed), 1),
            max_str_len=MAX_LABEL_VALUE_LENGTH, max_bin_len=0, max_array_len=0, max_map_len=0,
            max_ext_len=0)
        self.unpacker.feed(packed)
        self.totals = {"samples": 0, "series": 0, "label values": 0}
        self._lists = 0

    def read(self) -> dict[str, Any]:
        first = self._peek()
        if _type_name(first) != "a map":
            self.unpacker.skip()  # is it msgpack at all? (raises if not; builds nothing)
            self._end()
            raise _schema(f"batch must be a map, not {_type_name(first)}")
        keys = self.unpacker.read_map_header()
        if keys > MAX_BATCH_KEYS:
            raise LimitExceeded(f"batch map has {keys} keys > {MAX_BATCH_KEYS}",
                                reason="too_many_keys")
        out: dict[str, Any] = {}
        seen: set[str] = set()
        for _ in range(keys):
            if _type_name(self._peek()) != "a string":
                raise _schema(f"batch keys must be strings, not {_type_name(self._peek())}")
            key = self.unpacker.unpack()
            if key in seen:
                raise _schema(f"batch key {key[:40]!r} appears twice")
            seen.add(key)
            if key == "t":
                out[key] = self._flat("", "t", MAX_TIMESTAMPS, "timestamps", strings=False)
            elif key == "metrics":
                out[key] = self._metrics()
            elif key in _SCALAR_KEYS:
                out[key] = self._scalar(key)
                if key == "v" and out[key] != VERSION:
                    raise UnsupportedVersion(
                        f"unsupported batch version {out[key]!r}; this is v{VERSION}")
            else:
                self.unpacker.skip()
        self._end()
        return out

    def _metrics(self) -> list[list[Any]]:
        count = self._array("metrics", MAX_METRICS, "metrics")
        metrics: list[list[Any]] = []
        for i in range(count):
            where = f"metrics[{i}]"
            if self._array(where, 6, "") != 6:
                raise _schema(f"{where}: a metric is [name, kind, unit, scale, label_keys, "
                              "series]")
            head = [self._scalar(f"{where}.{part}") for part in ("name", "kind", "unit", "scale")]
            keys = self._flat(where, ".label_keys", MAX_LABELS, "label keys", strings=True)
            n_entries = self._array(f"{where}.series", MAX_SERIES, "series")
            self._spend("series", n_entries, MAX_SERIES, f"{where}.series")
            metrics.append([*head, keys, [self._entry(where, j) for j in range(n_entries)]])
        return metrics

    def _entry(self, metric: str, index: int) -> list[Any]:
        """One series entry ``[label_values, offset, values]`` (the hot loop: no f-strings)."""
        if self._peek() != 0x93:  # not a 3-element fixarray
            at = f"{metric}.series[{index}]"
            if self._array(at, 3, "") != 3:
                raise _schema(f"{at}: a series entry is [label_values, offset, values]")
        else:
            self.unpacker.read_array_header()
        labels = self._flat(metric, index, MAX_LABELS, "label values", strings=True,
                            total=("label values", MAX_LABEL_VALUES))
        first = self._peek()
        if 0x80 <= first <= 0x9F or 0xDC <= first <= 0xDF:  # an array or a map
            self._scalar(f"{metric}.series[{index}].offset")  # raises, naming the place
        offset = self.unpacker.unpack()
        values = self._flat(metric, index, MAX_TIMESTAMPS, "values", strings=False,
                            total=("samples", MAX_SAMPLES))
        return [labels, offset, values]

    def _peek(self) -> int:
        pos = self.unpacker.tell()
        if pos >= len(self.buf):
            raise msgpack.OutOfData
        return self.buf[pos]

    def _end(self) -> None:
        if self.unpacker.tell() != len(self.buf):
            raise MalformedPayload("not a msgpack batch: extra bytes after the batch map",
                                   reason="not_msgpack")

    def _scalar(self, where: str) -> Any:
        kind = _type_name(self._peek())
        if kind in ("an array", "a map"):
            raise _schema(f"{where}: expected a single value, not {kind}")
        try:
            return self.unpacker.unpack()
        except ValueError as exc:
            raise _schema(f"{where}: {exc}") from None

    def _array(self, where: str, limit: int, what: str) -> int:
        """Read an array header at ``where``; raise if it is not an array or exceeds ``limit``."""
        kind = _type_name(self._peek())
        if kind != "an array":
            raise _schema(f"{where}: expected an array, not {kind}")
        count = self.unpacker.read_array_header()
        if what and count > limit:
            raise LimitExceeded(f"{where}: {count} {what} > {limit}",
                                reason="too_many_" + what.replace(" ", "_"))
        return count

    def _spend(self, total: str, count: int, limit: int, where: str) -> None:
        self.totals[total] += count
        if self.totals[total] > limit:
            raise LimitExceeded(f"{where}: the batch holds more than {limit} {total}",
                                reason="too_many_" + total.replace(" ", "_"))

    def _flat_only(self, items: list[Any]) -> list[Any]:
        """msgpack ``list_hook`` of ``_flat``: inner lists complete before the outer one."""
        self._lists += 1
        if self._lists > 1:
            raise _Nested
        return items

    def _flat(self, metric: str, part: int | str, limit: int, what: str, *, strings: bool,
              total: tuple[str, int] | None = None) -> list[Any]:
        """A flat list of scalars (strings or integers), checked before it is built.

        ``part`` is the series entry's index, or the key path after ``metric`` (the place named
        in errors, formatted only on error). ``total`` limits the batch's running total of
        ``what``."""
        start = self.unpacker.tell()
        first = self._peek()
        if not (0x90 <= first <= 0x9F or first == 0xDC or first == 0xDD):
            raise _schema(f"{_where(metric, part, what)}: expected an array of {what}, not "
                          f"{_type_name(first)}")
        count, header = _array_length(self.buf, start)
        if count > limit:
            raise LimitExceeded(f"{_where(metric, part, what)}: {count} {what} > {limit}",
                                reason="too_many_" + what.replace(" ", "_"))
        if total is not None:
            name, most = total
            spent = self.totals[name] = self.totals[name] + count
            if spent > most:
                raise LimitExceeded(f"{_where(metric, part, what)}: the batch holds more than "
                                    f"{most} {name}", reason="too_many_" + name.replace(" ", "_"))
        self.unpacker.skip()  # builds nothing; raises on malformed or too deep data
        end = self.unpacker.tell()
        if end - start > header + count * (_MAX_STR_BYTES if strings else _MAX_INT_BYTES):
            raise _schema(f"{_where(metric, part, what)}: must hold only {what}, found nested "
                          "arrays or maps")
        self._lists = 0
        try:
            return msgpack.unpackb(  # type: ignore[no-any-return]
                self.view[start:end], raw=False, max_array_len=count, max_map_len=0,
                max_str_len=MAX_LABEL_VALUE_LENGTH if strings else 0, max_bin_len=0,
                max_ext_len=0, list_hook=self._flat_only, object_hook=_no_maps)
        except _Nested:
            raise _schema(f"{_where(metric, part, what)}: must hold only {what}, found nested "
                          "arrays or maps") from None
        except ValueError as exc:
            if strings:
                raise _schema(f"{_where(metric, part, what)}: {what} must be UTF-8 strings of "
                              f"at most {MAX_LABEL_VALUE_LENGTH} bytes ({exc})") from None
            raise _schema(f"{_where(metric, part, what)}: must hold only integers "
                          f"({exc})") from None


def _no_maps(_pairs: Any) -> Any:
    """msgpack ``object_hook`` of ``_flat``: a flat list holds no map."""
    raise _Nested


def _where(metric: str, part: int | str, what: str) -> str:
    """The place of a flat list in error messages, e.g. ``metrics[2].series[7].values``."""
    if isinstance(part, str):
        return metric + part
    return f"{metric}.series[{part}].{'labels' if what == 'label values' else what}"
