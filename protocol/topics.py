"""MQTT topic names of protocol v1 and the host-id rule that keeps them unambiguous."""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from edgemon.protocol.errors import ProtocolError
from edgemon.protocol.limits import MAX_HOST_LENGTH

__all__ = [
    "PREFIX",
    "TopicParts",
    "ack_topic",
    "backfill_topic",
    "catalogue_topic",
    "metrics_topic",
    "parse_topic",
    "status_topic",
    "subscriptions",
    "validate_host_id",
]

PREFIX: Final = "edgemon/v1"
KINDS: Final = ("metrics", "backfill", "status", "ack", "catalogue")

# Letters, digits, dot, dash, underscore; starts with a letter or digit. No '/', '+', '#', no
# spaces, no control characters: one host id is exactly one topic level.
_HOST_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_host_id(host: str) -> str:
    """Return ``host`` unchanged if it is a valid host id, else raise ``ProtocolError``."""
    if not isinstance(host, str) or not host:
        raise ProtocolError("host id must be a non-empty string", reason="bad_host")
    if len(host) > MAX_HOST_LENGTH:
        raise ProtocolError(f"host id longer than {MAX_HOST_LENGTH} characters", reason="bad_host")
    if not _HOST_RE.fullmatch(host):
        raise ProtocolError(
            f"invalid host id {host[:80]!r}: use letters, digits, '.', '-', '_'",
            reason="bad_host",
        )
    return host


def metrics_topic(host: str) -> str:
    """Live batches (QoS 1) from ``host``."""
    return f"{PREFIX}/{validate_host_id(host)}/metrics"


def backfill_topic(host: str) -> str:
    """Historical batches (QoS 1): the same payload format, sent after an outage."""
    return f"{PREFIX}/{validate_host_id(host)}/backfill"


def status_topic(host: str) -> str:
    """Retained birth message and Last-Will death message (JSON)."""
    return f"{PREFIX}/{validate_host_id(host)}/status"


def ack_topic(host: str) -> str:
    """Collector-to-agent acknowledgement of durably stored batches (JSON)."""
    return f"{PREFIX}/{validate_host_id(host)}/ack"


def catalogue_topic(host: str) -> str:
    """The host's series catalogues (retained: the current one), SPEC.md §9."""
    return f"{PREFIX}/{validate_host_id(host)}/catalogue"


def subscriptions() -> list[str]:
    """What a collector (or any third-party reader) subscribes to."""
    return [f"{PREFIX}/+/metrics", f"{PREFIX}/+/backfill", f"{PREFIX}/+/status",
            f"{PREFIX}/+/catalogue"]


class TopicParts(NamedTuple):
    host: str
    kind: str


def parse_topic(topic: str) -> TopicParts:
    """Split ``edgemon/v1/<host>/<kind>``; raise ``ProtocolError`` for anything else."""
    if len(topic) > len(PREFIX) + MAX_HOST_LENGTH + 16:
        raise ProtocolError("topic too long", reason="bad_topic")
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] not in KINDS:
        raise ProtocolError(f"not an edgemon v1 topic: {topic[:120]!r}", reason="bad_topic")
    return TopicParts(validate_host_id(parts[2]), parts[3])
