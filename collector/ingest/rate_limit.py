"""Per-host token buckets for messages/s and bytes/s, with a bounded table of hosts.

The collector applies them on the MQTT thread before a message is queued (``MqttIngest``), so a
host flooding its topic costs a dict lookup per message, not a decode. A message over its host's
limit is acknowledged to the broker at once and dropped: the agent gets no acknowledgement for
that batch and sends it again after its ack timeout, so a well-behaved agent loses nothing.

Topics name any host a publisher likes, so the table is bounded: at most ``max_hosts`` hosts have
buckets of their own. A new host takes the place of the least recently seen one if that bucket
has refilled (an idle host is indistinguishable from a new one); otherwise it shares the one
overflow bucket with every other host left out, and invented host names cannot grow memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from edgemon.collector.config import IngestConfig
from edgemon.protocol.limits import MAX_DECOMPRESSED_BYTES

__all__ = ["OVERFLOW_HOST", "RateLimiter", "TokenBucket", "limiter_from_config", "message_cost"]

OVERFLOW_HOST = "_other"  # the shared bucket of hosts the table has no room for


@dataclass(slots=True)
class TokenBucket:
    """Tokens for messages and bytes, refilled continuously up to the bursts."""

    messages: float
    bytes: float
    updated: float  # clock reading of the last refill


class RateLimiter:
    """Admit or refuse one message of ``size`` bytes from ``host`` (thread-safe).

    ``messages_per_second`` / ``bytes_per_second`` of 0 disable that limit. A message larger than
    ``byte_burst`` is admitted only when the bucket is full, so nothing is refused forever.
    """

    def __init__(self, *, messages_per_second: float, message_burst: int,
                 bytes_per_second: float, byte_burst: int, max_hosts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if messages_per_second < 0 or bytes_per_second < 0:
            raise ValueError("rates must be >= 0 (0 disables the limit)")
        if message_burst < 1 or byte_burst < 1 or max_hosts < 1:
            raise ValueError("bursts and max_hosts must be >= 1")
        self.messages_per_second = float(messages_per_second)
        self.message_burst = float(message_burst)
        self.bytes_per_second = float(bytes_per_second)
        self.byte_burst = float(byte_burst)
        self.max_hosts = max_hosts
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._overflow = self._full_bucket(clock())
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.messages_per_second > 0 or self.bytes_per_second > 0

    @property
    def hosts_tracked(self) -> int:
        return len(self._buckets)

    def allow(self, host: str, size: int) -> bool:
        """Take one message and ``size`` bytes from ``host``'s bucket; False if it has not got
        them (nothing is taken then)."""
        if not self.enabled:
            return True
        now = self._clock()
        with self._lock:
            bucket = self._bucket(host, now)
            self._refill(bucket, now)
            need_bytes = min(float(size), self.byte_burst)  # an oversized one waits for a full
            if ((self.messages_per_second > 0 and bucket.messages < 1.0)
                    or (self.bytes_per_second > 0 and bucket.bytes < need_bytes)):
                self.refused += 1
                return False
            bucket.messages -= 1.0
            bucket.bytes -= need_bytes
            return True

    def available(self, host: str) -> float:
        """The bytes ``host``'s bucket holds now (below zero after a ``charge``)."""
        now = self._clock()
        with self._lock:
            bucket = self._bucket(host, now)
            self._refill(bucket, now)
            return bucket.bytes

    def charge(self, host: str, size: int) -> None:
        """Take ``size`` more bytes from ``host``'s bucket for a message ``allow`` admitted that
        turned out to cost more than its frame declared (a batch naming a catalogue, resolved:
        SPEC.md §9). The bucket may go below zero, at most one burst: the host's next messages
        wait until it has refilled (any thread)."""
        if self.bytes_per_second <= 0 or size <= 0:
            return
        now = self._clock()
        with self._lock:
            bucket = self._bucket(host, now)
            self._refill(bucket, now)
            bucket.bytes = max(-self.byte_burst, bucket.bytes - size)

    def _full_bucket(self, now: float) -> TokenBucket:
        return TokenBucket(self.message_burst, self.byte_burst, now)

    def _refill(self, bucket: TokenBucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.updated = now
        bucket.messages = min(self.message_burst,
                              bucket.messages + elapsed * self.messages_per_second)
        bucket.bytes = min(self.byte_burst, bucket.bytes + elapsed * self.bytes_per_second)

    def _is_full(self, bucket: TokenBucket, now: float) -> bool:
        elapsed = max(0.0, now - bucket.updated)
        return (bucket.messages + elapsed * self.messages_per_second >= self.message_burst
                and bucket.bytes + elapsed * self.bytes_per_second >= self.byte_burst)

    def _bucket(self, host: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(host)
        if bucket is not None:
            self._buckets.move_to_end(host)
            return bucket
        if len(self._buckets) >= self.max_hosts:
            oldest_host, oldest = next(iter(self._buckets.items()))
            if not self._is_full(oldest, now):
                return self._overflow
            del self._buckets[oldest_host]
        bucket = self._buckets[host] = self._full_bucket(now)
        return bucket


def message_cost(payload: bytes, size: int) -> int:
    """Bytes a message is charged: its zstd frame's declared (decompressed) size when the header
    declares one within the protocol's limit, else its wire ``size`` (cheap: reads the header)."""
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
    except zstandard.ZstdError:
        return size
    if declared > MAX_DECOMPRESSED_BYTES:  # includes "unknown": rejected without decompressing
        return size
    return max(size, declared)


def limiter_from_config(config: IngestConfig) -> RateLimiter:
    """The limiter the ``[ingest]`` section configures."""
    return RateLimiter(messages_per_second=config.rate_limit_messages_per_second,
                       message_burst=config.rate_limit_message_burst,
                       bytes_per_second=config.rate_limit_bytes_per_second,
                       byte_burst=config.rate_limit_byte_burst,
                       max_hosts=config.rate_limit_max_hosts)
