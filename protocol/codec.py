"""Bytes <-> batch: msgpack inside exactly one zstd frame, with hard limits checked first.

``decode`` is the one function every reader of a batch uses: the collector's ingest (through
``decode_batch``) and its storage, for stored payloads. Whatever it accepted once, it accepts
again, completely: ingest accepts a batch only if ``decode`` returns it.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack
import zstandard

from edgemon.protocol.errors import LimitExceeded, MalformedPayload
from edgemon.protocol.limits import MAX_COMPRESSED_BYTES, MAX_DECOMPRESSED_BYTES

if TYPE_CHECKING:
    from edgemon.protocol.schema import ValidBatch

__all__ = ["BASED_DICTIONARY_ID", "DICTIONARY_ID", "FAST_LEVEL", "ZSTD_LEVEL", "decode",
           "decode_batch", "decode_packed", "decompress", "dictionary", "encode",
           "published_dictionaries"]

ZSTD_LEVEL: Final = 19  # batches are small and sent once a minute: spend CPU on bytes
FAST_LEVEL: Final = 3  # for re-encoding received batches (the collector): spend little CPU
DICTIONARY_ID: Final = 1  # the dictionary new batches are compressed with (0 = none)
BASED_DICTIONARY_ID: Final = 2  # the one of based batches (SPEC.md §9.1): numbers only
_FRAME_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_DICTIONARIES = Path(__file__).parent / "dictionaries"

_local = threading.local()  # zstd contexts are not thread-safe: one set per thread


def published_dictionaries() -> dict[int, bytes]:
    """Every published dictionary's bytes by ID (``dictionaries/<id>.zdict``), in ID order."""
    found = {int(p.stem): p for p in _DICTIONARIES.glob("*.zdict") if p.stem.isdigit()}
    return {i: found[i].read_bytes() for i in sorted(found) if i > 0}


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


def encode(batch: dict[str, Any], *, level: int = ZSTD_LEVEL,
           dict_id: int = DICTIONARY_ID) -> bytes:
    """msgpack the batch map, then compress it as one zstd frame that records its size."""
    compressors: dict[tuple[int, int], zstandard.ZstdCompressor] | None = getattr(
        _local, "compressors", None)
    if compressors is None:
        compressors = _local.compressors = {}
    compressor = compressors.get((level, dict_id))
    if compressor is None:
        compressor = compressors[(level, dict_id)] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_dict_id=True,
            dict_data=dictionary(dict_id) if dict_id else None)
    packed = msgpack.packb(batch, use_bin_type=True)
    if len(packed) > MAX_DECOMPRESSED_BYTES:
        raise LimitExceeded(f"batch packs to {len(packed)} bytes > {MAX_DECOMPRESSED_BYTES}",
                            reason="decompressed_too_large")
    payload = compressor.compress(packed)
    if len(payload) > MAX_COMPRESSED_BYTES:
        raise LimitExceeded(f"batch compresses to {len(payload)} bytes > {MAX_COMPRESSED_BYTES}",
                            reason="too_large")
    return payload


def decode(payload: bytes) -> dict[str, Any]:
    """The batch map of a payload, checked completely (``decode_batch``); ``ProtocolError`` if
    it is not a valid v1 batch. Storage reads stored payloads with this function."""
    return decode_batch(payload).to_map()


def decode_batch(payload: bytes) -> ValidBatch:
    """Decompress, read and check a payload, never trusting a size field.

    The payload must be exactly one zstd frame that declares its content size, with nothing
    after it; the compressed size, the declared size and the real decompressed size are checked
    against ``limits`` before anything is unpacked. Then ``reader`` builds the batch map within
    the limits (``fast_reader`` first, when msgspec is installed) and ``schema`` checks every
    rule (SPEC.md §2, §6, §7)."""
    return decode_packed(decompress(payload))


def decode_packed(packed: bytes) -> ValidBatch:
    """``decode_batch`` of a payload already decompressed (``decompress``)."""
    # Loaded on first use: the agent, which only encodes, never loads the reader and the rules.
    from edgemon.protocol.fast_reader import read_fast
    from edgemon.protocol.reader import read_batch_map
    from edgemon.protocol.schema import check_decoded

    # msgspec's typed decoder (C) takes the common shape when installed; anything else, and
    # every rejection's precise reason, is the pure reader's (fast_reader.py: same result).
    raw = read_fast(packed) if read_fast is not None else None
    if raw is None:
        raw = read_batch_map(packed)
    return check_decoded(raw)


def decompress(payload: bytes) -> bytes:
    """The msgpack bytes of a payload: one zstd frame that declares its size within the limits,
    nothing after it; ``ProtocolError`` if not. Every size is checked before anything is
    allocated (``decode_batch``'s first step; storage's ``stored_reader`` and catalogues)."""
    if len(payload) > MAX_COMPRESSED_BYTES:
        raise LimitExceeded(f"payload of {len(payload)} bytes > {MAX_COMPRESSED_BYTES}",
                            reason="too_large")
    if payload[:4] != _FRAME_MAGIC:
        raise MalformedPayload("not a zstd frame (a payload starts with the zstd frame magic)",
                               reason="not_zstd")
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
        # max_output_size bounds the allocation even if the frame lies about its size;
        # allow_extra_data=False: one frame, nothing after it (not a second frame either).
        packed = decompressor.decompress(payload, max_output_size=MAX_DECOMPRESSED_BYTES,
                                         allow_extra_data=False)
    except zstandard.ZstdError as exc:
        if "unused data" in str(exc):
            raise MalformedPayload("bytes after the zstd frame: a payload is exactly one frame",
                                   reason="trailing_bytes") from None
        raise MalformedPayload(f"zstd frame does not decompress: {exc}",
                               reason="not_zstd") from None
    if len(packed) != declared:
        raise MalformedPayload("zstd frame size does not match its header", reason="not_zstd")
    return packed
