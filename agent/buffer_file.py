"""The buffer's file: its schema, opening with the right pragmas, checking, moving a corrupt
file aside, keeping it private, and reading its statistics (the one place that counts what it
holds, for the running agent and for ``edgemon-agent status`` alike).

Layout and counters: ``BUFFER.md``. ``buffer.py`` holds the operations on an open buffer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from edgemon.common import clock
from edgemon.common.sqlite_files import connect_read_only

__all__ = [
    "EMPTY_STATS",
    "FORMAT",
    "BufferStats",
    "connect",
    "is_corruption",
    "problem_with",
    "quarantine",
    "read_stats",
    "stats_of",
]

FORMAT = "edgemon-agent-buffer/2"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

log = logging.getLogger("edgemon.agent.buffer")

# meta keys that count samples; each one only ever grows, in the transaction that moves the
# samples it counts (see BUFFER.md, "Accounting").
APPENDED = "appended_samples_total"
ACKNOWLEDGED = "acknowledged_samples_total"
DROPPED = "dropped_samples_total"
DELIVERED_AFTER_DROP = "delivered_after_drop_samples_total"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL, kind TEXT NOT NULL, unit TEXT NOT NULL, scale INTEGER NOT NULL,
    label_keys TEXT NOT NULL,      -- JSON list
    label_values TEXT NOT NULL     -- JSON list
);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    data BLOB NOT NULL             -- msgpack [[series_id, scaled_int], ...]
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- sealing order, never reused (the sender keeps ids)
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    sealed_ms INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,  -- 1 once handed to the broker at least once
    payload BLOB NOT NULL,         -- last, so reading the other columns skips its pages
    UNIQUE (instance, seq)
);
-- count(*) and sum(samples) read this small index, not the payload pages
CREATE INDEX IF NOT EXISTS batches_samples ON batches (samples);
-- Series catalogues (protocol SPEC.md §9) of sealed batches: kept while a batch refers to one
-- (and the newest always), acked once a collector acknowledged storing it.
CREATE TABLE IF NOT EXISTS catalogues (
    id TEXT PRIMARY KEY,           -- content hash (16 hex digits)
    metrics BLOB NOT NULL,         -- msgpack catalogue metrics
    created_ms INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- The referencing form of a sealed batch (values only, naming its catalogue): sent instead of
-- batches.payload while its catalogue is acked, unless the collector refused it once (inline).
CREATE TABLE IF NOT EXISTS referencing (
    batch_id INTEGER PRIMARY KEY,  -- batches.id
    catalogue TEXT NOT NULL,
    inline INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS referencing_gone AFTER DELETE ON batches BEGIN
    DELETE FROM referencing WHERE batch_id = old.id;
END;
-- Batches dropped from the budget after they had been published: the broker may still deliver
-- them. If the collector acknowledges one later, its samples were not lost after all.
CREATE TABLE IF NOT EXISTS dropped_published (
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    dropped_ms INTEGER NOT NULL,
    PRIMARY KEY (instance, seq)
) WITHOUT ROWID;
"""


class BufferStats(NamedTuple):
    """What a buffer holds and what left it, read in one transaction (one consistent view)."""

    batches: int
    samples: int  # in sealed batches
    pending_cycles: int
    pending_samples: int
    disk_bytes: int  # database pages + write-ahead log
    oldest_ms: int | None  # first sample of the oldest batch or pending cycle
    appended_samples_total: int  # every sample that entered the buffer (or was lost on the way)
    acknowledged_samples_total: int  # deleted because the collector acknowledged them
    dropped_samples_total: int  # deleted without an acknowledgement (budget, age, refusal, ...)
    # of the dropped: published before the drop and acknowledged afterwards (not lost after all)
    delivered_after_drop_total: int
    in_doubt_samples: int  # of the dropped: published before the drop, no answer yet
    last_ack_ms: int | None

    @property
    def buffered_samples(self) -> int:
        return self.samples + self.pending_samples

    @property
    def lost_samples(self) -> int:
        """Dropped, and neither delivered after all nor possibly still on its way."""
        return self.dropped_samples_total - self.delivered_after_drop_total - self.in_doubt_samples

    @property
    def identity_holds(self) -> bool:
        """appended = acknowledged + dropped + buffered (BUFFER.md, "Accounting")."""
        return self.appended_samples_total == (self.acknowledged_samples_total
                                               + self.dropped_samples_total
                                               + self.buffered_samples)


EMPTY_STATS = BufferStats(0, 0, 0, 0, 0, None, 0, 0, 0, 0, 0, None)


def file_bytes(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


_DISK_PAGES = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"

_STATS = (  # one statement: one consistent read, and one call instead of eight every cycle
    "SELECT (SELECT count(*) FROM batches), (SELECT coalesce(sum(samples), 0) FROM batches), "
    "(SELECT count(*) FROM cycles), (SELECT coalesce(sum(samples), 0) FROM cycles), "
    "(SELECT min(ts_ms) FROM cycles), (SELECT first_ms FROM batches ORDER BY id LIMIT 1), "
    "(SELECT coalesce(sum(samples), 0) FROM dropped_published), "
    f"({_DISK_PAGES}), "
    + ", ".join(f"(SELECT value FROM meta WHERE key = '{key}')"
                for key in (APPENDED, DROPPED, ACKNOWLEDGED, DELIVERED_AFTER_DROP, "last_ack_ms")))


def disk_bytes_of(db: sqlite3.Connection, path: Path) -> int:
    """Bytes the buffer takes on disk: database pages plus the write-ahead log."""
    return int(db.execute(_DISK_PAGES).fetchone()[0] + file_bytes(f"{path}-wal"))


def stats_of(db: sqlite3.Connection, path: Path) -> BufferStats:
    """The statistics of the open buffer ``db`` (at ``path``), read by one statement (one
    consistent view)."""
    (batches, samples, cycles, pending, first_cycle, oldest, in_doubt, pages, appended, dropped,
     acknowledged, delivered, last_ack_ms) = db.execute(_STATS).fetchone()
    appended, dropped = int(appended or 0), int(dropped or 0)
    # a buffer an older agent wrote (read-only here) counts acknowledged samples from its next start
    acknowledged = int(appended - dropped - samples - pending if acknowledged is None
                       else acknowledged)
    return BufferStats(batches, samples, cycles, pending, int(pages + file_bytes(f"{path}-wal")),
                       oldest if oldest is not None else first_cycle, appended, acknowledged,
                       dropped, int(delivered or 0), int(in_doubt), last_ack_ms)


def read_stats(path: Path | str) -> BufferStats:
    """Statistics of the buffer at ``path``, opened read-only (the agent may be running).

    ``FileNotFoundError`` when there is no buffer at ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no buffer at {path}")
    db = connect_read_only(path, busy_timeout_ms=2000)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_schema")}
        if not {"batches", "cycles", "meta", "dropped_published"} <= tables:
            return EMPTY_STATS._replace(disk_bytes=file_bytes(str(path)))  # schema not written
        return stats_of(db, path)
    finally:
        db.close()


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" and "file is not a database"."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and (
        code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB))


def quarantine(path: Path) -> Path:
    """Move ``path`` and its -wal/-shm aside to ``<path>.corrupt-<UTC time>``; never deletes."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{target}{suffix}")
    return target


def problem_with(path: Path) -> str | None:
    """Why the file at ``path`` cannot be used as a buffer, or None (also if it is absent)."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            return str(exc)
        raise
    try:
        result = [row[0] for row in db.execute("PRAGMA quick_check")]
        if result != ["ok"]:
            return "quick_check: " + "; ".join(map(str, result[:3]))
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_schema")}
        if tables and db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() != (
                FORMAT,):
            return "not an edgemon agent buffer"
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc) or "no such table" in str(exc):
            return str(exc)
        raise
    finally:
        db.close()
    return None


def make_private(path: Path) -> None:
    """Take group and other access away from the buffer and its -wal/-shm (it holds the host's
    metrics): SQLite gives the -wal and -shm files the database file's mode."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o077:
                file.chmod(mode & 0o700)
                log.warning("buffer file %s was accessible to other users (mode %04o): made it "
                            "private (%04o)", file, mode, mode & 0o700)
        except FileNotFoundError:
            continue


def connect(path: Path, max_bytes: int) -> sqlite3.Connection:
    """Open with the buffer's pragmas and schema; a new file is created with mode 0600."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    else:
        make_private(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 2000")  # `edgemon-agent status` may be reading
        db.execute("PRAGMA cache_size = -512")  # KiB; the default 2 MiB fills during backfill
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective on a new file only
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        # Keep the write-ahead log small next to the budget: it counts against it.
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        wal_pages = max(8, min(1000, max_bytes // page_size // 16))
        db.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        db.execute(f"PRAGMA journal_size_limit = {wal_pages * page_size}")
        db.executescript(SCHEMA)  # idempotent statements, each committed on its own
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (FORMAT,))
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_ms', ?)",
                   (clock.now_ms(),))
        _start_acknowledged_count(db)
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


def _start_acknowledged_count(db: sqlite3.Connection) -> None:
    """Buffers written before the acknowledged count existed: start it where the identity says
    (appended - dropped - buffered), once; a new buffer starts at 0 the same way."""
    if db.execute("SELECT 1 FROM meta WHERE key = ?", (ACKNOWLEDGED,)).fetchone() is not None:
        return
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    buffered = db.execute("SELECT (SELECT coalesce(sum(samples), 0) FROM batches) + "
                          "(SELECT coalesce(sum(samples), 0) FROM cycles)").fetchone()[0]
    acknowledged = int(meta.get(APPENDED, 0)) - int(meta.get(DROPPED, 0)) - buffered
    if acknowledged < 0:  # older agents counted memory drops as dropped, not as appended
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                   "SET value = value + excluded.value", (APPENDED, -acknowledged))
        acknowledged = 0
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (ACKNOWLEDGED, acknowledged))
