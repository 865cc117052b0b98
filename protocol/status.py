"""Status (birth/death) and acknowledgement messages: small JSON documents (see SPEC.md)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from edgemon.protocol.errors import MalformedPayload
from edgemon.protocol.limits import (
    MAX_ACK_RANGES,
    MAX_CATALOGUES_PER_HOST,
    MAX_INSTANCE_LENGTH,
    MAX_INT,
    VERSION,
)

__all__ = ["Ack", "decode_ack", "decode_status", "encode_ack", "encode_acks", "encode_status",
           "seqs_to_ranges"]

_MAX_JSON = 64 * 1024


def encode_status(*, online: bool, instance: str, timestamp_ms: int,
                  last_seq: int | None = None, **extra: Any) -> bytes:
    """Birth (online) or Last-Will (offline) message, published retained.

    ``last_seq``: the sequence number of the newest batch this instance has sealed so far
    (omitted before its first), so a reader can tell batches lost at the end of an instance.
    """
    doc = {"v": VERSION, "state": "online" if online else "offline", "instance": instance,
           "ts": timestamp_ms, **extra}
    if last_seq is not None:
        doc["last_seq"] = last_seq
    return json.dumps(doc, separators=(",", ":")).encode()


def json_document(payload: bytes, *, max_bytes: int = _MAX_JSON) -> dict[str, Any]:
    """A v1 JSON message (status, ack, collector presence): an object whose ``v`` is the
    integer 1; ``MalformedPayload`` for anything else."""
    if len(payload) > max_bytes:
        raise MalformedPayload("JSON message too large", reason="too_large")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedPayload(f"not JSON: {str(exc)[:200]}", reason="not_json") from None
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != VERSION:
        raise MalformedPayload("not a v1 JSON message", reason="schema")
    return doc


def _load(payload: bytes) -> dict[str, Any]:
    doc = json_document(payload)
    inst = doc.get("instance")
    if not isinstance(inst, str) or not 0 < len(inst) <= MAX_INSTANCE_LENGTH:
        raise MalformedPayload("instance missing or invalid", reason="schema")
    return doc


def decode_status(payload: bytes) -> dict[str, Any]:
    """A status document; ``MalformedPayload`` if it is not one. ``last_seq``, when present, is
    an integer from 0 to 2**63-1."""
    doc = _load(payload)
    if doc.get("state") not in ("online", "offline") or type(doc.get("ts")) is not int:
        raise MalformedPayload("status needs state online|offline and integer ts",
                               reason="schema")
    last_seq = doc.get("last_seq")
    if last_seq is not None and (type(last_seq) is not int or not 0 <= last_seq <= MAX_INT):
        raise MalformedPayload(f"status last_seq must be an integer from 0 to {MAX_INT}",
                               reason="schema")
    return doc


def seqs_to_ranges(seqs: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7, 9, 10] -> [[1, 3], [7, 7], [9, 10]]."""
    ranges: list[list[int]] = []
    for s in sorted(set(seqs)):
        if ranges and s == ranges[-1][1] + 1:
            ranges[-1][1] = s
        else:
            ranges.append([s, s])
    return ranges


class Ack(NamedTuple):
    """A decoded acknowledgement: inclusive ``(first, last)`` sequence ranges of ``instance``."""

    instance: str
    acked: list[tuple[int, int]]  # durably stored (now or before): delete them
    rejected: list[tuple[int, int]]  # will never be stored: delete them and count them dropped
    reason: str  # why the rejected ones were rejected ("" when none were)
    catalogues: tuple[str, ...] = ()  # series catalogues now durably stored (SPEC.md §9)
    bases: bool = False  # the acked batches may be named as a base (SPEC.md §9.1)


def encode_ack(*, instance: str, seqs: list[int], rejected: list[int] | None = None,
               reason: str = "", catalogues: list[str] | None = None,
               bases: bool = False) -> bytes:
    """Collector -> agent: these sequence numbers of ``instance`` are durably stored.

    ``rejected`` lists batches the collector decoded but refuses for good (e.g. samples from a
    clock far in the future): the agent drops them and counts them instead of re-sending forever.
    ``bases``: the collector resolves batches that go on from the acked ones (SPEC.md §9.1).
    One document, whatever its number of ranges: ``encode_acks`` keeps each within what an
    agent decodes.
    """
    return _ack_document(instance, seqs_to_ranges(seqs), seqs_to_ranges(rejected or []),
                         reason, catalogues, bases)


def encode_acks(*, instance: str, seqs: list[int], rejected: list[int] | None = None,
                reason: str = "", catalogues: list[str] | None = None,
                bases: bool = False) -> list[bytes]:
    """``encode_ack`` for any number of sequence numbers: the acked, then the rejected ranges,
    at most ``MAX_ACK_RANGES`` of them in all per document (an agent refuses a document with
    more in either list; the total also keeps each within the JSON size it reads, whatever the
    numbers); the catalogues go in the first. Few enough ranges: ``[encode_ack(...)]``."""
    acked, refused = seqs_to_ranges(seqs), seqs_to_ranges(rejected or [])
    docs: list[bytes] = []
    while True:
        some_acked = acked[:MAX_ACK_RANGES]
        some_refused = refused[:MAX_ACK_RANGES - len(some_acked)]
        acked, refused = acked[len(some_acked):], refused[len(some_refused):]
        docs.append(_ack_document(instance, some_acked, some_refused, reason,
                                  None if docs else catalogues, bases))
        if not acked and not refused:
            return docs


def _ack_document(instance: str, acked: list[list[int]], rejected: list[list[int]], reason: str,
                  catalogues: list[str] | None, bases: bool) -> bytes:
    doc: dict[str, Any] = {"v": VERSION, "instance": instance, "acked": acked}
    if rejected:
        doc["rejected"] = rejected
        doc["reason"] = reason
    if catalogues:
        doc["catalogues"] = catalogues
    if bases and acked:
        doc["bases"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


def _ranges(doc: dict[str, Any], key: str) -> list[tuple[int, int]]:
    ranges = doc.get(key, [])
    if not isinstance(ranges, list) or len(ranges) > MAX_ACK_RANGES:
        raise MalformedPayload(f"{key} must be a list of [first, last] ranges", reason="schema")
    out: list[tuple[int, int]] = []
    for r in ranges:
        if (not isinstance(r, list) or len(r) != 2 or not all(type(x) is int for x in r)
                or r[0] > r[1] or r[0] < 0):
            raise MalformedPayload(f"{key} ranges must be [first, last] integers",
                                   reason="schema")
        out.append((r[0], r[1]))
    return out


def decode_ack(payload: bytes) -> Ack:
    """The acknowledgement in ``payload``; ``MalformedPayload`` if it is not one."""
    doc = _load(payload)
    if "acked" not in doc:
        raise MalformedPayload("acked missing", reason="schema")
    reason = doc.get("reason", "")
    catalogues = doc.get("catalogues", [])
    if not isinstance(catalogues, list) or len(catalogues) > MAX_CATALOGUES_PER_HOST or \
            not all(isinstance(c, str) and len(c) <= 64 for c in catalogues):
        raise MalformedPayload("catalogues must be a list of catalogue ids", reason="schema")
    return Ack(doc["instance"], _ranges(doc, "acked"), _ranges(doc, "rejected"),
               reason[:200] if isinstance(reason, str) else "", tuple(catalogues),
               doc.get("bases") is True)
