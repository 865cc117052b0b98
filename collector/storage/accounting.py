"""What the collector holds of each host and agent instance, for checking exactness from
outside: batches and samples stored, sequence ranges, gaps (the end of an instance included),
the last sequence number the agent declared, and samples stored in a time range.

``install`` (SQLite; PostgreSQL creates the same in ``postgres/migrations.py``) and
``record_declared`` work inside a store's transaction; ``Accounting`` reads any SQL store
(``SQLiteAccounting``: a SQLite file by path):

- ``instance_accounts`` has one row per (host, instance): ``samples`` and ``counted_batches``
  stored, kept by a trigger on ``batches`` (so they change in the very transaction that stores
  a batch, and a duplicate, which the insert skips, counts nothing), and the highest
  ``last_seq`` of the instance's status messages (``declared_last_seq``). A row goes when its
  instance goes (retention), by a second trigger.
- A file that held batches before this table existed starts it from the batches not yet
  compacted; ``samples_complete`` then says False for instances with batches stored earlier.
- Batches stored per instance are the de-duplicated sequence numbers in ``seq_ranges``.

``count_samples`` needs only the ``Storage`` interface (``series`` and ``query``), so it serves
any backend.

Gaps: numbers missing between an instance's first stored sequence number and the highest of
the stored and the declared ones (0 when nothing is stored; edgemon agents start every
instance at 0, but SPEC.md does not require it, so numbers before the first stored one are not
counted as missing).
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemon.collector.storage.base import Gap, RangeQuery, Storage
from edgemon.common.sqlite_files import connect_read_only

__all__ = [
    "Accounting",
    "HostAccount",
    "InstanceAccount",
    "RangeCount",
    "SQLiteAccounting",
    "accounting_of",
    "count_samples",
    "install",
    "record_declared",
]

MAX_LISTED = 100  # sequence ranges and gaps listed per instance (the totals count all of them)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instance_accounts (
    host_id INTEGER NOT NULL,
    instance TEXT NOT NULL,
    counted_batches INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0,
    declared_last_seq INTEGER,
    declared_ms INTEGER,
    PRIMARY KEY (host_id, instance)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS instance_accounts_stored AFTER INSERT ON batches BEGIN
    INSERT INTO instance_accounts (host_id, instance, counted_batches, samples)
    VALUES (NEW.host_id, NEW.instance, 1, NEW.samples)
    ON CONFLICT (host_id, instance) DO UPDATE SET
        counted_batches = counted_batches + 1, samples = samples + excluded.samples;
END;
CREATE TRIGGER IF NOT EXISTS instance_accounts_forgotten AFTER DELETE ON instances BEGIN
    DELETE FROM instance_accounts WHERE host_id = OLD.host_id AND instance = OLD.instance;
END;
"""


def install(db: sqlite3.Connection) -> None:
    """Create the accounting table and its triggers (idempotent; not inside a transaction).
    The first time, count the batches not yet compacted."""
    new = db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'instance_accounts'"
                     ).fetchone() is None
    db.executescript(_SCHEMA)
    if new:
        db.execute("INSERT OR IGNORE INTO instance_accounts (host_id, instance, counted_batches, "
                   "samples) SELECT host_id, instance, count(*), sum(samples) FROM batches "
                   "GROUP BY host_id, instance")


def record_declared(db: sqlite3.Connection, host_id: int, instance: str, last_seq: int | None,
                    ts_ms: int) -> None:
    """Inside the caller's transaction: an instance's status message said ``last_seq``."""
    if last_seq is None:
        return
    db.execute(
        "INSERT INTO instance_accounts (host_id, instance, declared_last_seq, declared_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (host_id, instance) DO UPDATE SET declared_ms = CASE "
        "WHEN excluded.declared_last_seq >= coalesce(instance_accounts.declared_last_seq, -1) "
        "THEN excluded.declared_ms ELSE instance_accounts.declared_ms END, declared_last_seq = "
        "max(coalesce(instance_accounts.declared_last_seq, -1), excluded.declared_last_seq)",
        (host_id, instance, last_seq, ts_ms))


@dataclass(frozen=True, slots=True)
class InstanceAccount:
    host: str
    instance: str
    first_seen_ms: int
    last_seen_ms: int
    batches: int  # distinct sequence numbers stored
    samples: int  # in the batches counted since accounting began
    samples_complete: bool  # every stored batch is in ``samples``
    first_seq: int | None  # lowest stored sequence number
    last_seq: int | None  # highest stored
    declared_last_seq: int | None  # highest the agent declared in a status message
    declared_ms: int | None
    missing_batches: int  # between the first stored and max(last stored, declared)
    seq_ranges: list[tuple[int, int]] = field(default_factory=list)  # at most MAX_LISTED
    gaps: list[Gap] = field(default_factory=list)  # at most MAX_LISTED


@dataclass(frozen=True, slots=True)
class HostAccount:
    host: str
    instances: list[InstanceAccount]

    @property
    def batches(self) -> int:
        return sum(i.batches for i in self.instances)

    @property
    def samples(self) -> int:
        return sum(i.samples for i in self.instances)

    @property
    def samples_complete(self) -> bool:
        return all(i.samples_complete for i in self.instances)

    @property
    def missing_batches(self) -> int:
        return sum(i.missing_batches for i in self.instances)


@dataclass(frozen=True, slots=True)
class RangeCount:
    """Samples of one host stored with ``start_ms <= t < end_ms``."""

    host: str
    start_ms: int
    end_ms: int
    samples: int
    by_metric: dict[str, int]
    tiers: list[str]  # storage tiers the counts came from ("raw" unless raw data has expired)
    exact: bool  # False when a rollup bucket straddles start or end


def _missing(first: int | None, last: int | None, stored: int, declared: int | None) -> int:
    if last is None:
        return 0 if declared is None else declared + 1
    return (last - (first or 0) + 1 - stored) + max(0, (declared if declared is not None
                                                         else last) - last)


class Accounting:
    """Reads the accounting of a SQL store, each call in one read transaction of ``read``
    (a context manager yielding a connection that takes ``?`` placeholders)."""

    _INSTANCES = """
        SELECT h.id, h.name, i.instance, i.first_seen_ms, i.last_seen_ms, r.lo, r.hi, r.stored,
               a.counted_batches, a.samples, a.declared_last_seq, a.declared_ms
        FROM instances i JOIN hosts h ON h.id = i.host_id
        LEFT JOIN (SELECT host_id, instance, min(lo) AS lo, max(hi) AS hi,
                          sum(hi - lo + 1) AS stored FROM seq_ranges GROUP BY host_id, instance
                  ) r ON r.host_id = i.host_id AND r.instance = i.instance
        LEFT JOIN instance_accounts a ON a.host_id = i.host_id AND a.instance = i.instance
        {where} ORDER BY h.name, i.first_seen_ms, i.instance"""

    def __init__(self, read: Callable[[], AbstractContextManager[Any]]) -> None:
        self._read = read

    def hosts(self, host: str | None = None, *, detail: bool = True) -> list[HostAccount]:
        """Every host (or ``host``), instance by instance; ``detail``: with ranges and gaps."""
        with self._read() as db:  # one snapshot for the summary and the ranges
            where, args = ("WHERE h.name = ?", (host,)) if host is not None else ("", ())
            rows = db.execute(self._INSTANCES.format(where=where), args).fetchall()
            ranges: dict[tuple[int, str], list[tuple[int, int]]] = {}
            if detail and rows:
                sql = "SELECT host_id, instance, lo, hi FROM seq_ranges"
                if host is not None:
                    sql += " WHERE host_id = ?"
                for hid, inst, lo, hi in db.execute(sql + " ORDER BY host_id, instance, lo",
                                                    (rows[0][0],) if host is not None else ()):
                    ranges.setdefault((hid, inst), []).append((lo, hi))
        out: dict[str, list[InstanceAccount]] = {}
        for (hid, name, inst, first_seen, last_seen, lo, hi, stored, counted, samples,
             declared, declared_ms) in rows:
            stored = stored or 0
            seqs = ranges.get((hid, inst), [])
            out.setdefault(name, []).append(InstanceAccount(
                host=name, instance=inst, first_seen_ms=first_seen, last_seen_ms=last_seen,
                batches=stored, samples=samples or 0, samples_complete=(counted or 0) == stored,
                first_seq=lo, last_seq=hi, declared_last_seq=declared, declared_ms=declared_ms,
                missing_batches=_missing(lo, hi, stored, declared),
                seq_ranges=seqs[:MAX_LISTED],
                gaps=_gaps(name, inst, seqs, declared)[:MAX_LISTED] if detail else []))
        return [HostAccount(name, instances) for name, instances in out.items()]

    def gaps(self, host: str | None = None) -> list[Gap]:
        """Missing sequence numbers, between stored ones and after the last stored one up to
        the declared last (all of them, not only ``MAX_LISTED``)."""
        with self._read() as db:
            sql = ("SELECT h.name, r.instance, r.lo, r.hi FROM seq_ranges r JOIN hosts h "
                   "ON h.id = r.host_id")
            declared_sql = ("SELECT h.name, a.instance, a.declared_last_seq FROM "
                            "instance_accounts a JOIN hosts h ON h.id = a.host_id "
                            "WHERE a.declared_last_seq IS NOT NULL")
            args: tuple[Any, ...] = ()
            if host is not None:
                sql += " WHERE h.name = ?"
                declared_sql += " AND h.name = ?"
                args = (host,)
            seqs: dict[tuple[str, str], list[tuple[int, int]]] = {}
            for name, inst, lo, hi in db.execute(sql + " ORDER BY h.name, r.instance, r.lo",
                                                 args):
                seqs.setdefault((name, inst), []).append((lo, hi))
            declared = {(name, inst): last for name, inst, last in db.execute(declared_sql,
                                                                                args)}
        out: list[Gap] = []
        for key in sorted(seqs.keys() | declared.keys()):
            out += _gaps(key[0], key[1], seqs.get(key, []), declared.get(key))
        return out


def _gaps(host: str, instance: str, ranges: list[tuple[int, int]],
          declared: int | None) -> list[Gap]:
    out = [Gap(host, instance, hi + 1, lo - 1)
           for (_lo, hi), (lo, _hi) in itertools.pairwise(ranges)]
    last = ranges[-1][1] if ranges else -1
    if declared is not None and declared > last:
        out.append(Gap(host, instance, last + 1, declared))
    return out


class SQLiteAccounting(Accounting):
    """The accounting of a SQLite storage file, through a read-only connection of its own
    (tools read it without opening the storage)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(self._snapshot)

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        db = connect_read_only(self.path, busy_timeout_ms=30_000)
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        finally:
            db.close()


def accounting_of(storage: Storage) -> Accounting | None:
    """The accounting reader of ``storage``, None for a backend without one."""
    from edgemon.collector.storage.sql.store import SQLStore
    from edgemon.collector.storage.sqlite import SQLiteStorage

    if isinstance(storage, SQLiteStorage):
        return SQLiteAccounting(storage.path)
    if isinstance(storage, SQLStore):
        return Accounting(storage._read)
    return None


_BUCKET_MS = {"raw": 1, "1m": 60_000, "1h": 3_600_000}


def count_samples(storage: Storage, host: str, start_ms: int, end_ms: int) -> RangeCount:
    """Samples of ``host`` stored with ``start_ms <= t < end_ms``, metric by metric.

    One count query per metric name, one step per ``gcd(start, end)`` ms, grouped by host, so
    that the steps tile exactly ``[start, end)``; the storage picks the finest tier still
    holding ``start`` that divides the step (raw samples within raw retention).
    """
    if start_ms >= end_ms:
        raise ValueError("start must be before end")
    step = math.gcd(start_ms, end_ms) or end_ms - start_ms
    steps = (end_ms - start_ms) // step
    by_metric: dict[str, int] = {}
    tiers: set[str] = set()
    for name in sorted({s.name for s in storage.series(host)}):
        results = storage.query(RangeQuery(
            name=name, start_ms=start_ms, end_ms=end_ms, step_ms=step, aggregation="count",
            hosts=(host,), group_by=("host",), max_series=1 << 30, max_points=steps + 1))
        count = sum(int(value) for r in results for ts, value in r.points
                    if start_ms <= ts < end_ms)
        tiers.update(r.tier for r in results)
        if count:
            by_metric[name] = count
    exact = all(step % _BUCKET_MS.get(tier, step + 1) == 0 for tier in tiers)
    return RangeCount(host, start_ms, end_ms, sum(by_metric.values()), by_metric,
                      sorted(tiers), exact)
