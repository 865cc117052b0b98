"""What ingest makes of each message (``Outcome``) and the counters it keeps for /metrics
(``IngestStats``): the records ``pipeline.py`` passes between its stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgemon.collector.ingest.examine import CatalogueHead
from edgemon.collector.ingest.mqtt import RawMessage
from edgemon.collector.storage.base import IngestItem, StoreResult

__all__ = ["IngestStats", "Outcome"]


@dataclass(slots=True)
class Outcome:
    """What became of one message."""

    msg: RawMessage
    host: str | None
    kind: str  # "metrics" | "backfill" | "status" | "catalogue" | "reject"
    reason: str | None = None
    detail: str = ""
    item: IngestItem | None = None
    result: StoreResult | None = None
    status: dict[str, Any] | None = None
    failed: bool = False  # storing it raised
    retry: bool = False  # storage unavailable: keep it, do not acknowledge, try again later
    batch_key: tuple[str, int] | None = None  # (instance, seq) of a decodable batch
    samples: int = 0  # decoded samples held by ``item``
    sent_ms: int | None = None  # the batch's ``sent`` (kept when ``item`` is let go)
    dropped: dict[str, tuple[int, str]] | None = None  # series left out: reason -> (n, example)
    catalogue: CatalogueHead | None = None  # a declared series catalogue (SPEC.md §9)

    def reject(self, reason: str, detail: str) -> Outcome:
        """Turn this outcome into a rejection (keeping ``batch_key`` so the agent can be told)."""
        self.kind, self.reason, self.detail, self.item = "reject", reason, detail, None
        return self


@dataclass
class IngestStats:
    """Counters for /metrics."""

    messages: int = 0
    batches_stored: int = 0
    samples_stored: int = 0
    duplicates: int = 0
    status_messages: int = 0
    transactions: int = 0
    transaction_seconds: float = 0.0
    storage_errors: int = 0
    storage_retries: int = 0
    acks_published: int = 0
    catalogues_stored: int = 0  # series catalogues stored and acknowledged (SPEC.md §9)
    referencing_batches: int = 0  # batches received naming a catalogue instead of inline
    worker_restarts: int = 0  # ingest worker processes started again after dying (workers.py)
    worker_crashes: int = 0  # messages that killed a worker twice (rejected "worker_crash")
    host_lag_ms: dict[str, int] = field(default_factory=dict)
    host_last_received_ms: dict[str, int] = field(default_factory=dict)
