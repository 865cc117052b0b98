"""The PostgreSQL database under the shared SQL parts: pool, transactions, partitions.

``PostgresDatabase`` opens a ``psycopg_pool.ConnectionPool`` and applies the schema migrations
(``migrations.py``). Every transaction checks a connection out of the pool and gives it back:

* ``_write()`` holds the process's write lock and, inside the transaction, the store's advisory
  transaction lock (``LOCK_NAMESPACE, 2``): writers are serialised as in SQLite, across
  collector processes too, so the shared write path stays correct with several collectors on
  one database;
* ``_read()`` is one ``REPEATABLE READ READ ONLY`` transaction: every SELECT sees one snapshot.

Connections are autocommit (transactions are explicit), results are binary, and each statement
of the shared SQL has its ``?`` placeholders turned into psycopg's ``%s`` once (``PgConn``).
``numeric`` results (``sum`` of bigints) are read as Python ints: the schema has no numeric
column, so a numeric is always a sum of integers.

Partitions of ``blocks``/``chunks`` (one per compaction window) and ``rollups`` (per tier, one
per rollup row window) are made before first use and dropped whole by retention once every row
they can hold has expired, each in a short transaction of its own (``_ddl``); a compaction step
that meets a missing one is rolled back and run again once it is made (``MissingPartitions``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.numeric import NumericBinaryLoader, NumericLoader

from edgemon.collector.storage.postgres import migrations
from edgemon.collector.storage.postgres.pool import PooledDatabase
from edgemon.collector.storage.sql.store import HOUR, TIERS, SQLStore

__all__ = ["MissingPartitions", "PgConn", "PostgresDatabase"]

log = logging.getLogger("edgemon.collector.storage")

WRITE_LOCK = 2  # advisory lock (LOCK_NAMESPACE, 2): the store's writers, one at a time
_ROLLUP_TABLES = {width: f"rollups_{name}" for name, (width, _) in TIERS.items()}


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """Shared SQL (``?`` placeholders) as psycopg wants it (``%s``; a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _IntNumericLoader(NumericLoader):
    def load(self, data: Any) -> Any:
        return _integral(super().load(data))


class _IntNumericBinaryLoader(NumericBinaryLoader):
    def load(self, data: Any) -> Any:
        return _integral(super().load(data))


def _integral(value: Decimal) -> int | Decimal:
    return int(value) if value == value.to_integral_value() else value


class PgConn:
    """The face of a psycopg connection the shared SQL parts use (as sqlite3's): ``execute``
    and ``executemany`` with ``?`` placeholders, returning a cursor."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.cursor(binary=True).execute(_pg(sql), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.conn.cursor(binary=True)
        cur.executemany(_pg(sql), list(rows))
        return cur


class PostgresDatabase(PooledDatabase, SQLStore):
    """A PostgreSQL database holding the store (``url``: a libpq connection URL; a password
    may also come from ``PGPASSWORD`` or ``~/.pgpass``, as for any libpq client)."""

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 10.0,
                 lock_timeout_ms: int = 5_000, wait: bool = False, ingest_copy: bool = True,
                 window_ms: int = 2 * HOUR, **options: Any) -> None:
        """``wait``: if the server cannot be reached, retry (with a back-off up to 30 s) until
        it can, instead of raising (the collector's start: a database still starting, or down
        for a moment, is a transient fault). ``ingest_copy``: store batches with binary COPY
        (else INSERT). ``options``: ``SQLStore._configure``."""
        self._configure(window_ms=window_ms, **options)
        self.ingest_copy = ingest_copy
        self.lock_timeout_ms = lock_timeout_ms
        self._partitions: set[tuple[str, int]] = set()  # (parent, lower bound) known to exist
        self._partitions_lock = threading.Lock()
        self._open_pool(url, name="edgemon-storage", pool_size=pool_size,
                        connect_timeout_s=connect_timeout_s, wait=wait,
                        configure=self._configure_connection, first=lambda: self._open(window_ms))

    def _open(self, window_ms: int) -> None:
        """Apply the migrations, read the store's fixed settings."""
        with self.pool.connection() as conn:
            done = migrations.apply(conn)
            for m in done:
                log.info("storage schema migrated to version %d: %s", m.version, m.name,
                         extra={"schema_version": m.version})
            with conn.transaction():
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('window_ms', %s), "
                    "('cutoff_raw', 0), ('cutoff_1m', 0), ('cutoff_1h', 0) "
                    "ON CONFLICT DO NOTHING", (window_ms,))
                row = conn.execute("SELECT value FROM meta WHERE key = 'window_ms'").fetchone()
            self.window_ms = int(row[0]) if row else window_ms  # fixed at creation
        self._load_partitions()

    @staticmethod
    def _configure_connection(conn: psycopg.Connection[Any]) -> None:
        conn.adapters.register_loader("numeric", _IntNumericLoader)
        conn.adapters.register_loader("numeric", _IntNumericBinaryLoader)

    # -- connections and transactions ----------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[PgConn]:
        """One write transaction: the process's write lock, then the store's advisory lock."""
        with self._write_lock, self._connection() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                 (migrations.LOCK_NAMESPACE, WRITE_LOCK))
                    yield PgConn(conn)
            except psycopg.errors.CheckViolation:
                # "no partition of relation ... found for row": another collector dropped one
                self._load_partitions()
                raise

    @contextmanager
    def _read(self) -> Iterator[PgConn]:
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield PgConn(conn)

    def close(self) -> None:
        self.pool.close()
        self.reader.clear()
        self.pending_cache.clear()
        self.decoded.clear()

    # -- partitions ---------------------------------------------------------------------------

    def _partition_width(self, parent: str) -> int:
        """Time span of one partition of ``parent``: a compaction window (blocks, chunks) or
        a rollup row's window (rollups_1m, rollups_1h)."""
        if parent in ("blocks", "chunks"):
            return self.window_ms
        return next(tier_window for name, (_, tier_window) in TIERS.items()
                    if parent == f"rollups_{name}")

    def _partitions_for(self, db: PgConn, table: str, windows: Iterable[int],
                        tier: int | None = None) -> None:
        """Inside a write transaction: raise ``MissingPartitions`` if one is missing. A
        partition is never made inside a transaction that has written rows: making one locks
        the parent table exclusively, and a reader holding another table the transaction has
        locked could then wait for it while it waits for the reader (a deadlock)."""
        # blocks and chunks go together: one check for both
        parents = ("blocks", "chunks") if tier is None else (_ROLLUP_TABLES[tier],)
        width = self._partition_width(parents[0])
        lows = {w - w % width for w in windows}
        missing = {(parent, low) for parent in parents for low in lows} - self._partitions
        if missing:
            raise MissingPartitions(missing)

    def _load_partitions(self) -> None:
        found: set[tuple[str, int]] = set()
        with self._connection() as conn:
            for parent in ("blocks", "chunks", *_ROLLUP_TABLES.values()):
                for (child,) in conn.execute(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                        "c.oid = i.inhrelid WHERE i.inhparent = %s::regclass", (parent,)):
                    found.add((parent, int(child.rsplit("_", 1)[1])))
        with self._partitions_lock:
            self._partitions = found

    def _ddl(self, statement: str) -> None:
        """One partition made or dropped in a transaction of its own, holding the store's
        write lock (no writer between) and nothing else (no deadlock with readers); it waits
        at most ``lock_timeout_ms`` for readers of the parent table to finish."""
        with self._write_lock, self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                         (migrations.LOCK_NAMESPACE, WRITE_LOCK))
            conn.execute(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}".encode())
            conn.execute(statement.encode())

    def make_partitions(self, wanted: Iterable[tuple[str, int]]) -> None:
        """Make the (parent, lower bound) partitions that do not exist yet."""
        for parent, low in sorted(set(wanted)):
            if (parent, low) in self._partitions:
                continue
            high = low + self._partition_width(parent)
            self._ddl(f'CREATE TABLE IF NOT EXISTS "{parent}_{low}" PARTITION OF "{parent}" '
                      f"FOR VALUES FROM ({low}) TO ({high})")
            with self._partitions_lock:
                self._partitions.add((parent, low))

    def drop_expired_partitions(self) -> int:
        """Drop the partitions whose every row is older than its tier's cutoff (for blocks and
        chunks the cutoff retention uses: raw data of windows still to be rolled up stays);
        how many. Row deletes (``sql/retention.py``) then find nothing there."""
        with self._read() as db:
            cut = self._cutoffs(db)
            oldest_dirty = db.execute("SELECT min(window_ms) FROM dirty").fetchone()[0]
        raw_cut = cut["raw"] if oldest_dirty is None else min(cut["raw"], oldest_dirty)
        limits = {"blocks": raw_cut, "chunks": raw_cut}
        for name, (width, _) in TIERS.items():
            limits[_ROLLUP_TABLES[width]] = cut[name]
        dropped = 0
        for parent, low in sorted(self._partitions):
            if low + self._partition_width(parent) <= limits[parent]:
                self._ddl(f'DROP TABLE IF EXISTS "{parent}_{low}"')
                with self._partitions_lock:
                    self._partitions.discard((parent, low))
                dropped += 1
        return dropped


class MissingPartitions(Exception):
    """A write transaction needs partitions that do not exist yet: it is rolled back, they are
    made (``make_partitions``) and the step runs again."""

    def __init__(self, missing: set[tuple[str, int]]) -> None:
        super().__init__(f"partitions to make first: {sorted(missing)}")
        self.missing = missing
