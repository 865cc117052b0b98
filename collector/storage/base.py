"""The storage interface: what ingest, the API, alerting and maintenance may ask of any backend.

Every method is blocking. The collector calls writes from one writer thread, reads from a small
thread pool and ``maintain_step`` from the maintenance thread (``maintenance.py``), never on the
event loop. SQLite (``sqlite/``) is the embedded default; a PostgreSQL backend implements the
same class without touching ingest, the API or alerting.

The query vocabulary (``AGGREGATIONS``, ``TIERS``) is defined here once; the HTTP API and the
alert rules import it, and ``RangeQuery`` checks a query against it when it is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal, get_args

from edgemon.protocol.schema import ValidBatch

Aggregation = Literal["avg", "min", "max", "sum", "count", "last", "p95"]
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
RATE_AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "avg", "min", "max", "count")  # of rates
Tier = Literal["auto", "raw", "1m", "1h"]
TIERS: tuple[Tier, ...] = get_args(Tier)
ROLLUP_TIERS: tuple[Tier, ...] = ("1m", "1h")


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
    """One range query; the constructor raises ``ValueError`` for a query no backend can answer,
    so a backend receives only queries it can run."""

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

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; one of "
                             f"{', '.join(AGGREGATIONS)}")
        if self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r}; one of {', '.join(TIERS)}")
        if self.step_ms <= 0:
            raise ValueError("step_ms must be > 0")
        if self.start_ms >= self.end_ms:
            raise ValueError("start_ms must be before end_ms")
        if self.max_series <= 0 or self.max_points <= 0:
            raise ValueError("max_series and max_points must be > 0")
        if self.combine_by == "p95" and not self.rate and self.tier in ROLLUP_TIERS:
            raise ValueError("p95 needs raw samples: use tier 'raw' or 'auto'")
        if self.rate and self.combine_by not in RATE_AGGREGATIONS:
            raise ValueError(f"rates of a group combine by {', '.join(RATE_AGGREGATIONS[:-1])} "
                             f"or {RATE_AGGREGATIONS[-1]}")

    @property
    def combine_by(self) -> Aggregation:
        """The aggregation actually applied: one rate per series (``rate`` without
        ``group_by``) has nothing to combine, so it is a sum of one."""
        return "sum" if self.rate and self.group_by is None else self.aggregation


@dataclass(frozen=True, slots=True)
class SeriesResult:
    host: str | None
    name: str
    labels: dict[str, str]
    kind: str
    unit: str
    points: list[tuple[int, float]]  # (step start ms, value); steps without data are omitted
    tier: str = "raw"


@dataclass(frozen=True, slots=True)
class StorageStats:
    """What the storage reports about itself for ``/metrics``."""

    # stored batches the storage could not read, moved aside (never read again), by host
    quarantined: dict[str, int] = field(default_factory=dict)


class QueryTooLarge(ValueError):
    """A query would return more series or points than allowed; the message says how to narrow."""


class Storage(ABC):
    """A place that keeps batches exactly once and answers queries over them.

    Background work (compaction, rollups, retention, quarantine of unreadable batches) runs in
    bounded steps: ``maintenance.MaintenanceRunner`` calls ``maintain_step`` in its own thread,
    for at most ``maintain_budget_ms`` per round, while the backend reports work left."""

    maintain_budget_ms: int = 1_000  # how long one round of maintenance steps may take

    @abstractmethod
    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        """Store new batches; recognise duplicates by (host, instance, seq). Durable on return."""

    @abstractmethod
    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int, last_seq: int | None = None) -> None:
        """A birth (online) or death (offline) message from ``host``; ``last_seq``: the newest
        sequence number the instance says it has sealed (SPEC.md §4), if it says."""

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
        """Background work for about ``maintain_budget_ms`` at most (tools and tests)."""

    def maintain_step(self, now_ms: int) -> bool:
        """One bounded step of background work (a backend with some overrides it); whether
        work is left, i.e. whether to call again soon. By default: all of ``maintain``."""
        self.maintain(now_ms)
        return False

    def store_catalogue(self, host: str, ident: str, payload: bytes, received_ms: int) -> None:
        """Keep the series catalogue ``ident`` of ``host`` (its message as received, SPEC.md §9)
        durably, and only the ``MAX_CATALOGUES_PER_HOST`` newest declared of that host. Durable
        on return: the collector acknowledges the catalogue after this. A backend without
        catalogues raises ``NotImplementedError``: its collector then acknowledges none, and
        agents keep sending their batches inline."""
        raise NotImplementedError

    def catalogue(self, host: str, ident: str) -> bytes | None:
        """The catalogue message ``host`` declared as ``ident``, if kept (only ``host``'s own:
        ids are per host)."""
        return None

    def stats(self) -> StorageStats:
        """Counters about the storage itself (cheap: read after every maintenance round)."""
        return StorageStats()

    @abstractmethod
    def close(self) -> None: ...
