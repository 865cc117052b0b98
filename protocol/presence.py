"""Collector presence: a retained online/offline state per collector, so agents know whether
anyone is listening (the idea of Sparkplug B's primary-host STATE; see SPEC.md).

Topic ``edgemon/v1/_collectors/<collector_id>/state``, QoS 1, retained, a small JSON document::

    {"v": 1, "state": "online", "collector": "<collector_id>", "ts": <ms>, "role": "leader"}

``role`` (optional, only while online): ``leader`` or ``follower`` among several collectors
sharing one store (the leader alone runs the singleton work: retention, alert evaluation and
notification), ``leader`` for a collector on its own. Readers that do not know it ignore it.

A collector publishes ``online`` once connected and subscribed, sets the same topic to
``offline`` as its Last Will and publishes ``offline`` itself on a clean stop. A reader treats
the fleet's collectors as present while at least one of them says ``online``.
"""

from __future__ import annotations

import json
import re
from typing import Final, NamedTuple

from edgemon.protocol.errors import MalformedPayload, ProtocolError
from edgemon.protocol.limits import VERSION
from edgemon.protocol.status import json_document
from edgemon.protocol.topics import PREFIX

__all__ = [
    "COLLECTOR_STATE_FILTER",
    "CollectorState",
    "collector_state_topic",
    "decode_collector_state",
    "encode_collector_state",
    "parse_collector_state_topic",
]

COLLECTORS_LEVEL: Final = "_collectors"
COLLECTOR_STATE_FILTER: Final = f"{PREFIX}/{COLLECTORS_LEVEL}/+/state"
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_JSON: Final = 4096


ROLES: Final = ("leader", "follower")


class CollectorState(NamedTuple):
    collector: str
    online: bool
    ts_ms: int
    role: str | None = None


def _checked_id(collector_id: str) -> str:
    if not isinstance(collector_id, str) or not _ID_RE.fullmatch(collector_id):
        raise ProtocolError(f"invalid collector id {str(collector_id)[:80]!r}: use letters, "
                            "digits, '.', '-', '_' (at most 128)", reason="bad_collector_id")
    return collector_id


def collector_state_topic(collector_id: str) -> str:
    """The retained presence topic of one collector."""
    return f"{PREFIX}/{COLLECTORS_LEVEL}/{_checked_id(collector_id)}/state"


def parse_collector_state_topic(topic: str) -> str:
    """The collector id in a presence topic; ``ProtocolError`` for any other topic."""
    parts = topic.split("/")
    if (len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != COLLECTORS_LEVEL
            or parts[4] != "state"):
        raise ProtocolError(f"not a collector state topic: {topic[:120]!r}", reason="bad_topic")
    return _checked_id(parts[3])


def encode_collector_state(collector_id: str, *, online: bool, ts_ms: int,
                           role: str | None = None) -> bytes:
    doc: dict[str, object] = {"v": VERSION, "state": "online" if online else "offline",
                              "collector": _checked_id(collector_id), "ts": int(ts_ms)}
    if role is not None:
        if role not in ROLES:
            raise ValueError(f"collector role must be one of {', '.join(ROLES)}")
        doc["role"] = role
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_collector_state(payload: bytes) -> CollectorState:
    """Parse a presence document; ``MalformedPayload`` for anything else."""
    doc = json_document(payload, max_bytes=_MAX_JSON)
    state, ts = doc.get("state"), doc.get("ts")
    if state not in ("online", "offline") or type(ts) is not int or ts < 0:
        raise MalformedPayload("collector state needs state online|offline and an integer ts",
                               reason="schema")
    try:
        collector = _checked_id(doc.get("collector"))  # type: ignore[arg-type]
    except ProtocolError as exc:
        raise MalformedPayload(str(exc), reason="schema") from None
    role = doc.get("role")
    return CollectorState(collector, state == "online", ts,
                          role if isinstance(role, str) and role in ROLES else None)
