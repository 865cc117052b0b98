"""edgemon wire protocol v1: the only code the agent and the collector share.

Public surface (guarded by tests/test_protocol_exports.py). ``edgemon.protocol.schema`` (pydantic)
is deliberately not imported here: the agent must not pay for it.
"""

from edgemon.protocol.batch import (
    COUNTER,
    GAUGE,
    BatchBuilder,
    MetricDef,
    Sample,
    expand_samples,
    to_scaled,
)
from edgemon.protocol.codec import decode, encode
from edgemon.protocol.errors import (
    LimitExceeded,
    MalformedPayload,
    ProtocolError,
    UnsupportedVersion,
)
from edgemon.protocol.limits import VERSION
from edgemon.protocol.status import Ack, decode_ack, decode_status, encode_ack, encode_status
from edgemon.protocol.topics import (
    ack_topic,
    backfill_topic,
    metrics_topic,
    parse_topic,
    status_topic,
    subscriptions,
    validate_host_id,
)

__all__ = [
    "COUNTER",
    "GAUGE",
    "VERSION",
    "Ack",
    "BatchBuilder",
    "LimitExceeded",
    "MalformedPayload",
    "MetricDef",
    "ProtocolError",
    "Sample",
    "UnsupportedVersion",
    "ack_topic",
    "backfill_topic",
    "decode",
    "decode_ack",
    "decode_status",
    "encode",
    "encode_ack",
    "encode_status",
    "expand_samples",
    "metrics_topic",
    "parse_topic",
    "status_topic",
    "subscriptions",
    "to_scaled",
    "validate_host_id",
]
