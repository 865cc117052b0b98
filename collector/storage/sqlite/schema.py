"""The SQLite file: schema, connections and transactions.

``SQLiteFile`` opens (or creates) the file and gives each thread its own connection; writes take
a process-wide lock and ``BEGIN IMMEDIATE``; reads are one read transaction (a snapshot). The
write path, compaction, retention and queries are the shared SQL parts (``storage/sql/``),
assembled over this file into ``SQLiteStorage`` in ``__init__.py``. See
``collector/STORAGE.md`` for the tables.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgemon.collector.storage import accounting
from edgemon.collector.storage.sql.store import HOUR, SQLStore

WRITE_LOCK_POLL_S = 0.001  # how often the compaction process tries the write lock

__all__ = ["SQLiteFile"]

_SCHEMA_VERSION = 1

# Tables added later are created with IF NOT EXISTS when an older file is opened (``quarantine``
# came after version 1 was released; it changes nothing else, so the version stays).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hosts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    online INTEGER NOT NULL DEFAULT 0,
    status_seen INTEGER NOT NULL DEFAULT 0,
    instance TEXT,
    instance_ts INTEGER,
    last_seen_ms INTEGER,
    last_status_ms INTEGER,
    clock_offset_ms INTEGER,
    offsets TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    host_id INTEGER NOT NULL,
    instance TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (host_id, instance)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_ranges (
    host_id INTEGER NOT NULL,
    instance TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (host_id, instance, lo)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    t_min INTEGER NOT NULL,
    t_max INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    historical INTEGER NOT NULL,
    payload BLOB NOT NULL,
    UNIQUE (host_id, instance, seq)
);
-- L0's choice of due hosts (compaction._choose_pending) without reading the table
CREATE INDEX IF NOT EXISTS batches_by_age ON batches (received_ms, host_id, samples);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    quarantined_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_by_host ON quarantine (host_id);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,
    scale INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    UNIQUE (host_id, name, labels)
);
CREATE INDEX IF NOT EXISTS series_by_name ON series (name, host_id);
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL,
    window_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    times BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_by_window ON blocks (host_id, window_ms);
CREATE INDEX IF NOT EXISTS blocks_by_age ON blocks (window_ms);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    window_ms INTEGER NOT NULL,
    block_id INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks (series_id, window_ms);
CREATE TABLE IF NOT EXISTS dirty (
    host_id INTEGER NOT NULL,
    window_ms INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    PRIMARY KEY (host_id, window_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    window_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (series_id, tier, window_ms)
);
"""


class SQLiteFile(SQLStore):
    """One SQLite file in WAL mode. Writes from any thread are serialised by a lock; every
    thread reads through its own connection (WAL: readers never block the writer)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
        cache_mb: int = 64,
        window_ms: int = 2 * HOUR,
        **options: Any,
    ) -> None:
        """``options``: ``SQLStore._configure`` (retention, compaction pacing)."""
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self._configure(window_ms=window_ms, **options)
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("SQLiteStorage needs a file path (every thread opens it)")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self.cache_mb = cache_mb
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        # transactions running now: close() waits for them, since closing a connection that
        # another thread is stepping a statement on frees that statement under it (a crash)
        self._busy = 0
        self._idle = threading.Condition(self._conns_lock)
        db = self._conn()
        with self._write_lock:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            accounting.install(db)
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if "schema" not in meta:
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", _SCHEMA_VERSION), ("window_ms", window_ms),
                    ("cutoff_raw", 0), ("cutoff_1m", 0), ("cutoff_1h", 0)])
                meta = dict(db.execute("SELECT key, value FROM meta"))
            if int(meta["schema"]) != _SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: storage schema {meta['schema']}, "
                                   f"this code reads {_SCHEMA_VERSION}")
        self.window_ms = int(meta["window_ms"])  # fixed when the file is created

    # -- connections and transactions ----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise RuntimeError("storage is closed")
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                 isolation_level=None, check_same_thread=False,
                                 cached_statements=256)
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute(f"PRAGMA cache_size=-{int(self.cache_mb) * 1024}")
            db.execute("PRAGMA temp_store=MEMORY")
            self._local.db = db
            with self._conns_lock:
                self._conns.append(db)
        return db

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held open: ``close()`` waits until it is given back."""
        with self._conns_lock:
            if self._closed:
                raise RuntimeError("storage is closed")
            self._busy += 1
        try:
            yield self._conn()
        finally:
            with self._conns_lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the process-wide write lock held."""
        with self._write_lock, self._open() as db:
            self._begin_immediate(db)
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _begin_immediate(self, db: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``. In the compaction process (``waiting_flag`` set: it says the
        collector's writer leaves the lock free while it waits, ``_let_compaction_in``) and in
        the collector running one (``writer_flag`` set: compaction leaves the lock free while
        the writer waits, ``_take_turn``) the lock is tried every millisecond up to the busy
        timeout, instead of in SQLite's busy handler, whose sleeps grow to 100 ms: the other's
        gap is then taken at once, not at a poll up to 100 ms later while it waits."""
        if self.waiting_flag is None and self.writer_flag is None:
            db.execute("BEGIN IMMEDIATE")
            return
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        db.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(WRITE_LOCK_POLL_S)
        finally:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside sees the same snapshot."""
        with self._open() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def close(self, wait_s: float = 30.0) -> None:
        """Close every connection once the transactions running now have ended (new ones are
        refused at once). A transaction still running after ``wait_s`` keeps its connection,
        which is then left to the garbage collector rather than closed under it."""
        with self._conns_lock:
            self._closed = True
            self._idle.wait_for(lambda: not self._busy, timeout=wait_s)
            if self._busy:
                return
            conns, self._conns = self._conns, []
        for db in conns:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()
        self.reader.clear()
        self.pending_cache.clear()
