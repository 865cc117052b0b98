"""The storage interface: what ingest, the API and alerting may ask of any backend.

Every method is blocking. The collector calls writes from one writer thread and reads from a
small thread pool, never on the event loop. SQLite (``sqlite.py``) is the embedded default; a
PostgreSQL backend implements the same class without touching ingest or the API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from edgemon.protocol.schema import ValidBatch

Aggregation = Literal["avg", "min", "max", "sum", "count", "last", "p95"]
Tier = Literal["auto", "raw", "1m", "1h"]


@dataclass(frozen=True, slots=True)
class IngestItem:
    """One validated batch as it arrived, ready to be stored once."""

    batch: ValidBatch
    payload: bytes  # the bytes as received, or the accepted series re-encoded (the durable record)
    received_ms: int
    historical: bool  # arrived on the backfill topic


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to one IngestItem: stored now, or already stored before."""

    host: str
    instance: str
    seq: int
    stored: bool  # False = duplicate, acknowledged again but not stored twice
    samples: int


@dataclass(frozen=True, slots=True)
class HostInfo:
    host: str
    online: bool
    instance: str | None  # current agent instance (changes on every agent restart)
    last_seen_ms: int | None  # newest batch received
    last_status_ms: int | None  # newest birth/death message
    instances: int  # how many agent instances this host has had
    clock_offset_ms: int | None = None  # receive time - send time, from live batches


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    host: str
    name: str
    labels: dict[str, str]
    kind: str
    unit: str
    first_ms: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers of one agent instance that never arrived (between ones that did)."""

    host: str
    instance: str
    first_missing: int
    last_missing: int


@dataclass(frozen=True, slots=True)
class RangeQuery:
    name: str
    start_ms: int
    end_ms: int
    step_ms: int
    aggregation: Aggregation = "avg"
    hosts: tuple[str, ...] = ()  # exact host ids or globs; empty = all hosts
    labels: dict[str, str] = field(default_factory=dict)  # exact label matches
    rate: bool = False  # per-second rate of a counter, resets handled
    group_by: tuple[str, ...] | None = None  # None = one result per series; "host" or label keys
    tier: Tier = "auto"
    max_series: int = 1000
    max_points: int = 100_000


@dataclass(frozen=True, slots=True)
class SeriesResult:
    host: str | None
    name: str
    labels: dict[str, str]
    kind: str
    unit: str
    points: list[tuple[int, float]]  # (step start ms, value); steps without data are omitted
    tier: str = "raw"


class QueryTooLarge(ValueError):
    """A query would return more series or points than allowed; the message says how to narrow."""


class Storage(ABC):
    """A place that keeps batches exactly once and answers queries over them."""

    @abstractmethod
    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        """Store new batches; recognise duplicates by (host, instance, seq). Durable on return."""

    @abstractmethod
    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int) -> None:
        """A birth (online) or death (offline) message from ``host``."""

    @abstractmethod
    def hosts(self) -> list[HostInfo]: ...

    @abstractmethod
    def series(self, host: str | None = None, name: str | None = None) -> list[SeriesInfo]: ...

    @abstractmethod
    def query(self, query: RangeQuery) -> list[SeriesResult]:
        """Aggregate each step of a range; raise QueryTooLarge or ValueError for bad queries."""

    @abstractmethod
    def gaps(self, host: str | None = None) -> list[Gap]: ...

    @abstractmethod
    def maintain(self, now_ms: int) -> None:
        """One bounded step of background work: compaction, rollups, retention."""

    @abstractmethod
    def close(self) -> None: ...
