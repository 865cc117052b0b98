"""edgemon wire protocol v1: the wire contract the agent, the collector and third parties share.

Public surface (guarded by ``test_public_surface_is_deliberate`` in tests/test_protocol.py).
``decode`` is the one reader of a batch's bytes: the collector's ingest and its storage both use
it (``decode_batch`` returns the same batch as a checked ``schema.ValidBatch``). Nothing here
imports pydantic, numpy or aiohttp: the agent imports this package.
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
from edgemon.protocol.codec import decode, decode_batch, encode
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
    "decode_batch",
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
