"""Status (birth/death) and acknowledgement messages: small JSON documents (see SPEC.md)."""

from __future__ import annotations

import json
from typing import Any

from .errors import MalformedPayload
from .limits import MAX_ACK_RANGES, MAX_INSTANCE_LENGTH, VERSION

__all__ = ["decode_ack", "decode_status", "encode_ack", "encode_status", "seqs_to_ranges"]

_MAX_JSON = 64 * 1024


def encode_status(*, online: bool, instance: str, timestamp_ms: int, **extra: Any) -> bytes:
    """Birth (online) or Last-Will (offline) message, published retained."""
    doc = {"v": VERSION, "state": "online" if online else "offline", "instance": instance,
           "ts": timestamp_ms, **extra}
    return json.dumps(doc, separators=(",", ":")).encode()


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > _MAX_JSON:
        raise MalformedPayload("JSON message too large", reason="too_large")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"not JSON: {exc}", reason="not_json") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise MalformedPayload("not a v1 JSON message", reason="schema")
    inst = doc.get("instance")
    if not isinstance(inst, str) or not 0 < len(inst) <= MAX_INSTANCE_LENGTH:
        raise MalformedPayload("instance missing or invalid", reason="schema")
    return doc


def decode_status(payload: bytes) -> dict[str, Any]:
    doc = _load(payload)
    if doc.get("state") not in ("online", "offline") or not isinstance(doc.get("ts"), int):
        raise MalformedPayload("status needs state online|offline and integer ts",
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


def encode_ack(*, instance: str, seqs: list[int]) -> bytes:
    """Collector -> agent: these sequence numbers of ``instance`` are durably stored."""
    doc = {"v": VERSION, "instance": instance, "acked": seqs_to_ranges(seqs)}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_ack(payload: bytes) -> tuple[str, list[tuple[int, int]]]:
    """(instance, inclusive sequence ranges) of an acknowledgement."""
    doc = _load(payload)
    ranges = doc.get("acked")
    if not isinstance(ranges, list) or len(ranges) > MAX_ACK_RANGES:
        raise MalformedPayload("acked must be a list of [first, last] ranges", reason="schema")
    out: list[tuple[int, int]] = []
    for r in ranges:
        if (not isinstance(r, list) or len(r) != 2 or not all(type(x) is int for x in r)
                or r[0] > r[1] or r[0] < 0):
            raise MalformedPayload("acked ranges must be [first, last] integers",
                                   reason="schema")
        out.append((r[0], r[1]))
    return doc["instance"], out
