"""The SQLite file: schema, options, connections, transactions, and what every part shares.

``SQLiteFile`` opens (or creates) the file and gives each thread its own connection; writes take
a process-wide lock and ``BEGIN IMMEDIATE``; reads are one read transaction (a snapshot). The
write path (``writes.py``), compaction (``compaction.py``), retention (``retention.py``) and
queries (``queries.py``) are mixins over it, assembled into ``SQLiteStorage`` in
``__init__.py``. See ``collector/STORAGE.md`` for the tables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgemon.collector.storage import accounting
from edgemon.collector.storage.batches import BatchColumns, BatchReader, UnreadableBatch
from edgemon.collector.storage.decoded import DecodedCache
from edgemon.collector.storage.encoding import decode_chunks, decode_times
from edgemon.collector.storage.selection import HOUR, MINUTE, TIER_WIDTH_MS

__all__ = ["DAY", "HOUR", "MINUTE", "PENDING_ORDER", "TIERS", "SQLiteFile", "chunked", "floor"]

log = logging.getLogger("edgemon.collector.storage")

DAY = 24 * HOUR

# tier name -> (bucket width, width of the window one rollup row covers)
TIERS: dict[str, tuple[int, int]] = {"1m": (TIER_WIDTH_MS["1m"], DAY),
                                     "1h": (TIER_WIDTH_MS["1h"], 30 * DAY)}
PENDING_ORDER = 1 << 62  # pending samples win ties against compacted ones (arrived later)
_IN_CHUNK = 500  # host variables per IN (...) list
_SCHEMA_VERSION = 1
_MAX_NOTED = 10_000  # unreadable pending batches readers note between two maintenance steps
# Test hook: "<stage>:N" makes the process SIGKILL itself inside a compaction transaction, at
# the N-th chunk/rollup row written (stage l0 or l1) or at the N-th end of a transaction just
# before its COMMIT (l0end, l1end).
_KILL_ENV = "EDGEMON_STORAGE_TEST_KILL"

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


def floor(x: int, width: int) -> int:
    return x - x % width


def chunked(seq: list[Any], size: int = _IN_CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def placeholders(values: list[Any]) -> str:
    """``?,?,...`` for an ``IN (...)`` list of ``values``."""
    return ",".join("?" * len(values))


class SQLiteFile:
    """One SQLite file in WAL mode. Writes from any thread are serialised by a lock; every
    thread reads through its own connection (WAL: readers never block the writer)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        raw_retention_ms: int = 7 * DAY,
        rollup_1m_retention_ms: int = 90 * DAY,
        rollup_1h_retention_ms: int = 730 * DAY,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
        window_ms: int = 2 * HOUR,
        compact_delay_ms: int = 60_000,
        close_grace_ms: int = 10 * MINUTE,
        merge_blocks: int = 8,
        step_samples: int = 200_000,
        retention_series: int = 2_000,
        retention_rows: int = 5_000,
        cache_mb: int = 64,
        batch_cache_mb: int = 64,
        decoded_cache_mb: int = 64,
        maintain_budget_ms: int = 1_000,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        if DAY % window_ms or window_ms % HOUR:
            raise ValueError("window_ms must be a whole number of hours dividing a day")
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("SQLiteStorage needs a file path (every thread opens it)")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.retention = {"raw": raw_retention_ms, "1m": rollup_1m_retention_ms,
                          "1h": rollup_1h_retention_ms}
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self.compact_delay_ms = compact_delay_ms
        self.close_grace_ms = close_grace_ms
        self.merge_blocks = max(2, merge_blocks)
        self.step_samples = max(1, step_samples)
        self.retention_series = retention_series
        self.retention_rows = retention_rows
        self.cache_mb = cache_mb
        self.maintain_budget_ms = maintain_budget_ms
        self.reader = BatchReader(batch_cache_mb << 20)  # decoded pending batches
        self.decoded = DecodedCache(decoded_cache_mb << 20)  # decoded chunks/rollups, readers
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._closed = False
        self._host_ids: dict[str, int] = {}
        self._series_cache: dict[tuple[Any, ...], dict[tuple[str, ...], Any]] = {}
        # ids of pending batches a reader found unreadable, quarantined by the next maintenance
        self._unreadable: set[int] = set()
        self._unreadable_lock = threading.Lock()
        self._kill_stage, self._kill_after = None, 0
        spec = os.environ.get(_KILL_ENV, "")
        if spec:
            stage, _, count = spec.partition(":")
            self._kill_stage, self._kill_after = stage, int(count or 1)
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
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the process-wide write lock held."""
        with self._write_lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside sees the same snapshot."""
        db = self._conn()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def close(self) -> None:
        with self._conns_lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for db in conns:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()
        self.reader.clear()
        self.decoded.clear()

    def _kill_point(self, stage: str) -> None:
        """Test hook: die like kill -9 after the N-th write of ``stage`` (inside a transaction)."""
        if self._kill_stage == stage:
            self._kill_after -= 1
            if self._kill_after <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    # -- shared by the parts -------------------------------------------------------------------

    def _host_id(self, db: sqlite3.Connection, name: str, fresh: dict[str, int]) -> int:
        """The host's id, creating the row; new ids go to ``fresh`` until the commit (a rolled
        back id may be given to another host later)."""
        hid = self._host_ids.get(name) or fresh.get(name)
        if hid is None:
            db.execute("INSERT OR IGNORE INTO hosts (name) VALUES (?)", (name,))
            hid = fresh[name] = db.execute("SELECT id FROM hosts WHERE name = ?",
                                           (name,)).fetchone()[0]
        return hid

    def _cutoffs(self, db: sqlite3.Connection) -> dict[str, int]:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'cutoff_%'"))
        return {"raw": int(meta["cutoff_raw"]), "1m": int(meta["cutoff_1m"]),
                "1h": int(meta["cutoff_1h"])}

    def _pending_columns(self, batch_id: int, payload: bytes) -> BatchColumns | None:
        """The columns of a pending batch for a reader, or None when it is unreadable: then it
        is skipped (never decoded again) and left for maintenance to quarantine."""
        try:
            return self.reader.read(payload)
        except UnreadableBatch:
            with self._unreadable_lock:
                if len(self._unreadable) < _MAX_NOTED:
                    self._unreadable.add(batch_id)
            return None

    @staticmethod
    def _chunk_samples(rows: list[tuple[int, int, bytes]],
                       times: dict[int, np.ndarray]) -> tuple[np.ndarray, ...]:
        """(local series index, timestamp, value, block id) of chunk ``rows`` (local index,
        block id, data), given their blocks' timestamps; chunks of blocks missing from ``times``
        (removed by retention meanwhile) are left out."""
        rows = [r for r in rows if r[1] in times]
        ts, values, sizes = decode_chunks([r[2] for r in rows], [times[r[1]] for r in rows])
        sid = np.repeat(np.array([r[0] for r in rows], dtype=np.int64), sizes)
        order = np.repeat(np.array([r[1] for r in rows], dtype=np.int64), sizes)
        return sid, ts, values, order

    @staticmethod
    def _block_times(rows: Iterable[tuple[int, bytes]]) -> dict[int, np.ndarray]:
        """Decoded timestamps of (block id, times blob) rows."""
        return {block_id: decode_times(blob) for block_id, blob in rows}
