"""Bytes <-> batch map: msgpack inside one zstd frame, with hard limits checked first."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from .errors import LimitExceeded, MalformedPayload, UnsupportedVersion
from .limits import (
    MAX_COMPRESSED_BYTES,
    MAX_DECOMPRESSED_BYTES,
    MAX_LABEL_VALUE_LENGTH,
    MAX_SAMPLES,
    VERSION,
)

__all__ = ["DICTIONARY_ID", "ZSTD_LEVEL", "decode", "dictionary", "encode"]

ZSTD_LEVEL = 19  # batches are small and sent once a minute: spend CPU on bytes
DICTIONARY_ID = 1  # the dictionary new batches are compressed with (0 = none)
_DICTIONARIES = Path(__file__).parent / "dictionaries"

_compressor: zstandard.ZstdCompressor | None = None
_decompressors: dict[int, zstandard.ZstdDecompressor] = {0: zstandard.ZstdDecompressor()}


@cache
def dictionary(dict_id: int) -> zstandard.ZstdCompressionDict:
    """Published zstd dictionary ``dict_id`` (``dictionaries/<id>.zdict``); KeyError if none."""
    path = _DICTIONARIES / f"{dict_id}.zdict"
    if dict_id <= 0 or not path.is_file():
        raise KeyError(dict_id)
    return zstandard.ZstdCompressionDict(path.read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT)


def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    if dict_id not in _decompressors:
        _decompressors[dict_id] = zstandard.ZstdDecompressor(dict_data=dictionary(dict_id))
    return _decompressors[dict_id]


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
    ``limits`` before unpacking, and unpacks with msgpack's own length limits. Structure beyond
    "a map with v == 1" is the schema's job (``edgemon.protocol.schema``).
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
        batch = msgpack.unpackb(
            packed,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_LABEL_VALUE_LENGTH,
            max_bin_len=0,
            max_array_len=MAX_SAMPLES,
            max_map_len=64,
            max_ext_len=0,
        )
    except ValueError as exc:  # includes msgpack's ExtraData, StackError, FormatError
        raise MalformedPayload(f"not a msgpack batch: {exc}", reason="not_msgpack") from None
    except Exception as exc:
        raise MalformedPayload(f"not a msgpack batch: {exc}", reason="not_msgpack") from None
    if not isinstance(batch, dict):
        raise MalformedPayload("batch is not a map", reason="schema")
    version = batch.get("v")
    if version != VERSION:
        raise UnsupportedVersion(f"unsupported batch version {version!r}; this is v{VERSION}")
    return batch
