"""The SQLite forwarding log's tables and trigger, made on first use (the methods are the
shared ``sql/forward_log.py``; the design is described there)."""

from __future__ import annotations

import sqlite3

from edgemon.collector.storage.sqlite.schema import SQLiteFile

__all__ = ["ForwardTables"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forward_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS forward_cursors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    inflight INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    resent INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS forward_log_batch AFTER INSERT ON batches
WHEN EXISTS (SELECT 1 FROM forward_cursors) BEGIN
    INSERT INTO forward_log (host_id, received_ms, samples, payload)
    VALUES (NEW.host_id, NEW.received_ms, NEW.samples, NEW.payload);
END;
"""


class ForwardTables(SQLiteFile):
    _forward_ready = False

    def _forward_install(self) -> None:
        if not self._forward_ready:
            with self._write_lock, self._open() as db:
                db.executescript(_SCHEMA)
                self._forward_ready = True

    def _forward_head(self, db: sqlite3.Connection) -> int:
        """``sqlite_sequence`` remembers the newest seq even if the log is empty."""
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'forward_log'"
                         ).fetchone()
        return int(row[0]) if row else 0

    def _forward_sync(self) -> None:
        """Cursor writes (from the forwarder's own thread) need not wait for the disk: a
        cursor lost to a power cut only means re-sending (at least once); a process kill loses
        nothing (the WAL is written before COMMIT returns). The next ingest commit (FULL)
        syncs them anyway."""
        if not getattr(self._local, "forward_normal", False):
            with self._open() as db:
                db.execute("PRAGMA synchronous=NORMAL")
            self._local.forward_normal = True
