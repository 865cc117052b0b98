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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from edgemon.protocol.schema import ValidBatch

if TYPE_CHECKING:
    from edgemon.collector.storage.pending_cache import Projection

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
    # some metrics' columns of the batch, for the cache of pending batches once it is stored
    # (``pending_cache.py``); None: a reader decodes the payload when it needs them
    projected: Projection | None = None


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
class SeriesArrays:
    """A ``SeriesResult`` with its points as two numpy arrays (``Storage.query_arrays``)."""

    host: str | None
    name: str
    labels: dict[str, str]
    kind: str
    unit: str
    starts: np.ndarray  # int64 step starts (ms), ascending; steps without data are omitted
    values: np.ndarray  # float64, one per start
    tier: str = "raw"


@dataclass(frozen=True, slots=True)
class StorageStats:
    """What the storage reports about itself for ``/metrics``."""

    # stored batches the storage could not read, moved aside (never read again), by host
    quarantined: dict[str, int] = field(default_factory=dict)
    # compaction's and ingest's writer's counters by event (``SQLStore.counted``): L0
    # transactions by path and fallback reason, give-ways, seconds waited for the write lock
    compaction: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DueBacklog:
    """The compaction back-log by host as compaction sees it (``Storage.due_by_host``):
    compaction takes a host's batches once they are ``compact_delay_ms`` old, and the whole
    host at once when it has ``step_samples`` pending."""

    step_samples: int  # the storage's own setting
    hosts: dict[str, tuple[int, int]]  # host -> (pending samples, of them received
    # compact_delay_ms ago or earlier); hosts with nothing pending left out


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    """One stored batch in the forwarding log (``Storage.forward_read``)."""

    seq: int  # position in the log: increases with every stored batch, never reused
    host: str
    received_ms: int
    samples: int
    payload: bytes  # as stored (``batches.read_batch`` reads it)


@dataclass(frozen=True, slots=True)
class ForwardPosition:
    """Where one forward receiver stands (``Storage.forward_positions``); totals are kept
    with the cursor, so they survive restarts."""

    name: str
    seq: int  # last seq confirmed (2xx), rejected (4xx) or skipped
    head: int  # newest seq in the log
    pending_batches: int
    pending_samples: int
    oldest_pending_ms: int | None  # received_ms of the oldest batch not yet sent
    sent: int  # samples confirmed by the receiver
    rejected: int  # samples refused for good (4xx), skipped
    skipped: int  # samples dropped unsent: the receiver was max_pending_samples behind
    resent: int  # samples sent again after a restart (the at-least-once window)
    updated_ms: int


class QueryTooLarge(ValueError):
    """A query would return more series or points than allowed; the message says how to narrow."""


class StorageUnavailable(OSError):
    """The storage cannot be reached now (a database server down or restarting): a transient
    fault. Ingest keeps the messages unacknowledged and tries again later."""


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

    def query_arrays_many(self, queries: Sequence[RangeQuery],
                          ) -> list[list[SeriesArrays] | ValueError]:
        """``query_arrays`` of each query, or the ``ValueError`` (``QueryTooLarge`` among them)
        it raised, in order; a backend overrides it to answer them all from one snapshot with
        the reads they share done once (a host page asks for every metric of one host)."""
        out: list[list[SeriesArrays] | ValueError] = []
        for q in queries:
            try:
                out.append(self.query_arrays(q))
            except ValueError as exc:
                out.append(exc)
        return out

    def query_arrays(self, query: RangeQuery) -> list[SeriesArrays]:
        """``query`` with each series' points as numpy arrays instead of a list of tuples (the
        PromQL engine reads millions of points this way). Same series, points and errors as
        ``query``; a backend overrides it to skip building the lists. By default: ``query``,
        converted."""
        out = []
        for r in self.query(query):
            n = len(r.points)
            starts = np.fromiter((p[0] for p in r.points), dtype=np.int64, count=n)
            values = np.fromiter((p[1] for p in r.points), dtype=np.float64, count=n)
            out.append(SeriesArrays(r.host, r.name, r.labels, r.kind, r.unit, starts, values,
                                    r.tier))
        return out

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

    def stored_batch(self, host: str, instance: str, seq: int) -> bytes | None:
        """The stored payload of ``host``'s batch ``(instance, seq)`` while it is pending (not
        yet compacted), else None: what a based batch goes on from (SPEC.md §9.1)."""
        return None

    def stats(self) -> StorageStats:
        """Counters about the storage itself (cheap: read after every maintenance round)."""
        return StorageStats()

    # The three below feed /metrics (``http/metrics.py``). They may read whole tables, so the
    # maintenance thread calls them now and then (``MaintenanceRunner.gauges_interval``), never a
    # scrape. A backend that cannot tell returns {} / None and the metrics are left out.

    def tier_bytes(self) -> dict[str, int]:
        """Bytes of stored data by part: ``pending`` (batches as received, not yet compacted),
        ``raw`` (compacted raw samples), ``1m`` and ``1h`` (rollups), ``quarantine``."""
        return {}

    def disk_bytes(self) -> int | None:
        """Bytes the store takes on disk (files, or the database's size); None: unknown."""
        return None

    def backlog(self, now_ms: int | None = None) -> dict[str, int]:
        """What maintenance has yet to do: ``pending_batches``, ``pending_samples``,
        ``dirty_windows``, ``oldest_pending_received_ms`` (absent: nothing pending)."""
        return {}

    def due_by_host(self) -> DueBacklog | None:
        """Samples of stored batches not yet compacted by host, and of them those old enough
        for compaction (``DueBacklog``); None: this storage cannot tell (ingest then holds no
        acks, ``ingest/backpressure.py``)."""
        return None

    # -- forwarding (``[[forward]]``, collector/forward/): a log of stored batches, in order,
    # with one cursor per receiver. A backend without it raises NotImplementedError.

    def forward_open(self, starts: Mapping[str, str], now_ms: int) -> dict[str, int]:
        """Make the cursors exactly the names of ``starts`` (name -> "all" | "now": a new
        cursor starts at the oldest batch held or after the newest); remove other cursors.
        Returns, by name, the samples that will be sent again (in flight at the last stop)."""
        raise NotImplementedError("this storage backend cannot forward")

    def forward_read(self, name: str, after: int, max_samples: int,
                     max_batches: int = 1000) -> list[ForwardBatch]:
        """Logged batches with seq > ``after``, in order, up to ``max_samples`` samples (at
        least one batch) and ``max_batches``."""
        raise NotImplementedError("this storage backend cannot forward")

    def forward_mark(self, name: str, inflight: int) -> None:
        """Batches up to ``inflight`` are about to be sent (re-sent if the process dies)."""
        raise NotImplementedError("this storage backend cannot forward")

    def forward_advance(self, name: str, seq: int, *, sent: int = 0, rejected: int = 0,
                        inflight: int = 0, now_ms: int = 0) -> None:
        """The receiver answered for every batch up to ``seq``: move its cursor, add to its
        totals, mark the next request (up to ``inflight``) as being sent, in one commit."""
        raise NotImplementedError("this storage backend cannot forward")

    def forward_trim(self, max_pending: Mapping[str, int], now_ms: int) -> dict[str, int]:
        """Skip (and count) the oldest batches of receivers more than ``max_pending`` samples
        behind; delete what every cursor has passed. Returns samples skipped now, by name."""
        raise NotImplementedError("this storage backend cannot forward")

    def forward_positions(self) -> list[ForwardPosition]:
        raise NotImplementedError("this storage backend cannot forward")

    @abstractmethod
    def close(self) -> None: ...
