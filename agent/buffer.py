"""The agent's local buffer: one SQLite file holding every sample until the collector acks it.

Layout (see ``BUFFER.md``): ``series`` maps a small id to (metric, label values); ``cycles`` holds
one row per sampling cycle (msgpack ``[[series_id, scaled_int], ...]``); every ``batch_cycles``
the pending cycles are sealed, in one transaction, into one ``batches`` row holding the encoded
protocol payload with its instance and sequence number, which never change afterwards (so a
resend is byte-identical). ``ack()`` deletes acknowledged batches; ``enforce_budget()`` drops the
oldest batches (then cycles) when the disk budget or the maximum age is exceeded and adds exactly
what it dropped to ``meta.dropped_samples_total``, which survives restarts.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. Every commit (one per cycle) fsyncs
the write-ahead log, so a committed cycle survives a process crash, ``kill -9`` *and* a power
cut; NORMAL would skip that fsync and could lose the last few cycles on power loss, which is the
common failure of edge devices. The cost is one fsync per cycle (every 10 s by default).

This module raises ``sqlite3.Error`` and ``OSError``; ``storage.Storage`` is the layer that keeps
the agent running through them. Every method runs on the thread that opened the buffer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from edgemon.common import clock
from edgemon.protocol import BatchBuilder, LimitExceeded, MetricDef, encode, to_scaled
from edgemon.protocol.limits import MAX_INT, MAX_LABEL_VALUE_LENGTH, MIN_INT

__all__ = [
    "FORMAT",
    "BatchRef",
    "Buffer",
    "BufferStats",
    "is_corruption",
    "quarantine",
    "read_stats",
]

FORMAT = "edgemon-agent-buffer/2"
MAX_DROPPED_PUBLISHED = 100_000  # records of batches dropped after publication (~40 B each)
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_ROW_OVERHEAD = 64  # bytes a deleted batch frees besides its payload (estimate, for eviction)

log = logging.getLogger("edgemon.agent.buffer")

_SCHEMA = """
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


class BatchRef(NamedTuple):
    """A sealed batch without its payload."""

    id: int
    instance: str
    seq: int
    first_ms: int
    last_ms: int
    samples: int


class BufferStats(NamedTuple):
    batches: int
    samples: int  # in sealed batches
    pending_cycles: int
    pending_samples: int
    disk_bytes: int  # database pages + write-ahead log
    oldest_ms: int | None  # first sample of the oldest batch or pending cycle
    dropped_samples_total: int
    last_ack_ms: int | None
    # dropped after publication, then acknowledged after all: never lost. Lost for good:
    # dropped_samples_total - delivered_after_drop_total.
    delivered_after_drop_total: int = 0


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


def _clean_label(value: str) -> str:
    """Label values longer than the protocol allows (in UTF-8 bytes) are cut, not refused."""
    raw = str(value).encode("utf-8", "replace")
    if len(raw) <= MAX_LABEL_VALUE_LENGTH:
        return str(value)
    return raw[:MAX_LABEL_VALUE_LENGTH].decode("utf-8", "ignore")


def _scaled(metric: MetricDef, value: float | int) -> int | None:
    """The wire integer of ``value``; None for NaN, infinities and values beyond 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    scaled = int(to_scaled(value, metric.scale))
    return scaled if MIN_INT <= scaled <= MAX_INT else None


def _file_bytes(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class Buffer:
    """The SQLite buffer of one agent instance. Open with ``Buffer.open()``."""

    def __init__(self, db: sqlite3.Connection, path: Path, *, host: str, instance: str,
                 max_bytes: int, max_age_seconds: float) -> None:
        self._db = db
        self.path = path
        self.host = host
        self.instance = instance
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_seconds * 1000)
        self.recovered_from: Path | None = None  # where a corrupt file was moved, if it was
        self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
        self._series: dict[tuple[MetricDef, tuple[str, ...]], int] = {}
        self._by_id: dict[int, tuple[MetricDef, tuple[str, ...]]] = {}
        for sid, name, kind, unit, scale, keys, values in db.execute("SELECT * FROM series"):
            key = (MetricDef(name, kind, unit, scale, tuple(json.loads(keys))),
                   tuple(json.loads(values)))
            self._series[key] = sid
            self._by_id[sid] = key
        self._batches, self._samples = db.execute(
            "SELECT count(*), coalesce(sum(samples), 0) FROM batches").fetchone()
        self._pending, self._pending_samples, self._last_pending_ms = db.execute(
            "SELECT count(*), coalesce(sum(samples), 0), max(ts_ms) FROM cycles").fetchone()
        self._next_seq = db.execute("SELECT coalesce(max(seq) + 1, 0) FROM batches "
                                    "WHERE instance = ?", (instance,)).fetchone()[0]
        self.dropped_samples_total = int(self._meta("dropped_samples_total", 0))
        self.delivered_after_drop_total = int(self._meta("delivered_after_drop_samples_total", 0))
        self._warned: set[str] = set()

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, host: str, instance: str, max_bytes: int,
             max_age_seconds: float) -> Buffer:
        """Open (or create) the buffer at ``path``; a corrupt file is moved aside, not reused.

        Runs ``PRAGMA quick_check`` first (reads the whole file once). Raises ``sqlite3.Error``
        or ``OSError`` when the file cannot be opened at all (permissions, full disk).
        """
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        recovered_from = None
        problem = _check(path)
        if problem is not None:
            recovered_from = quarantine(path)
            log.error("buffer is corrupt (%s): moved aside to %s; starting a fresh buffer",
                      problem, recovered_from,
                      extra={"path": str(path), "moved_to": str(recovered_from)})
        db = _connect(path, max_bytes)
        try:
            buffer = cls(db, path, host=host, instance=instance, max_bytes=max_bytes,
                         max_age_seconds=max_age_seconds)
        except BaseException:
            db.close()
            raise
        buffer.recovered_from = recovered_from
        return buffer

    def close(self) -> None:
        """Checkpoint the write-ahead log into the database and close."""
        with suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    # ---- writing ---------------------------------------------------------------------------

    def append(self, ts_ms: int, readings: Iterable[tuple[MetricDef, tuple[str, ...], Any]]
               ) -> int:
        """Store one cycle sampled at ``ts_ms``; return how many samples it holds.

        Readings with a non-finite or out-of-range value, or label values that do not match the
        metric's keys, are skipped (and logged once per metric). A timestamp not after the
        pending cycles' (the clock went back) seals them first, so a batch's times increase.
        """
        if self._last_pending_ms is not None and ts_ms <= self._last_pending_ms:
            self.seal(ts_ms)
        values: dict[int, int] = {}
        new: dict[tuple[MetricDef, tuple[str, ...]], int] = {}
        with self._transaction():
            for metric, labels, value in readings:
                key = (metric, labels)
                sid = self._series.get(key) or new.get(key)
                if sid is None:
                    if not self._valid_labels(metric, labels):
                        continue
                    sid = self._db.execute(
                        "INSERT INTO series (name, kind, unit, scale, label_keys, label_values)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (metric.name, metric.kind, metric.unit, metric.scale,
                         json.dumps(list(metric.label_keys)),
                         json.dumps([_clean_label(v) for v in labels]))).lastrowid
                    assert sid is not None
                    new[key] = sid
                scaled = _scaled(metric, value)
                if scaled is None:
                    self._warn_once(metric.name, f"value {value!r} is not a finite 64-bit number")
                    continue
                values[sid] = scaled
            if values:
                self._db.execute("INSERT INTO cycles (ts_ms, samples, data) VALUES (?, ?, ?)",
                                 (ts_ms, len(values), msgpack.packb(list(values.items()))))
                # Every sample ever buffered, for exact accounting: buffered = stored by the
                # collector + dropped_samples_total + still here.
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('appended_samples_total', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                    (len(values),))
        for key, sid in new.items():
            self._series[key] = sid
            self._by_id[sid] = (key[0], tuple(_clean_label(v) for v in key[1]))
        if values:
            self._pending += 1
            self._pending_samples += len(values)
            self._last_pending_ms = ts_ms
        return len(values)

    def seal(self, now_ms: int) -> list[BatchRef]:
        """Turn every pending cycle into sealed batches (one unless over a protocol limit).

        In one transaction: encode with this instance's next sequence numbers, insert the
        batches, delete the cycles and forget series no longer used.
        """
        rows = self._db.execute("SELECT id, ts_ms, samples, data FROM cycles ORDER BY id"
                                ).fetchall()
        if not rows:
            return []
        cycles = [(ts, msgpack.unpackb(data)) for _id, ts, _n, data in rows]
        sealed: list[tuple[int, int, int, int, bytes]] = []  # seq, first, last, samples, payload
        lost = self._encode(cycles, now_ms, sealed)
        refs: list[BatchRef] = []
        with self._transaction():
            for seq, first, last, samples, payload in sealed:
                cursor = self._db.execute(
                    "INSERT INTO batches (instance, seq, first_ms, last_ms, samples, sealed_ms, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self.instance, seq, first, last, samples, now_ms, payload))
                assert cursor.lastrowid is not None
                refs.append(BatchRef(cursor.lastrowid, self.instance, seq, first, last, samples))
            self._db.execute("DELETE FROM cycles WHERE id <= ?", (rows[-1][0],))
            if lost:
                self._add_dropped(lost)
            used = {sid for _ts, pairs in cycles for sid, _v in pairs}
            stale = len(self._by_id) > len(used)
            if stale:
                self._db.execute("DELETE FROM series WHERE id NOT IN "
                                 "(SELECT value FROM json_each(?))", (json.dumps(sorted(used)),))
        if stale:
            self._series = {k: sid for k, sid in self._series.items() if sid in used}
            self._by_id = {sid: k for sid, k in self._by_id.items() if sid in used}
        self._next_seq += len(sealed)
        self._batches += len(sealed)
        self._samples += sum(r.samples for r in refs)
        self._pending = self._pending_samples = 0
        self._last_pending_ms = None
        self.dropped_samples_total += lost
        return refs

    def _encode(self, cycles: Sequence[tuple[int, list[list[int]]]], now_ms: int,
                out: list[tuple[int, int, int, int, bytes]]) -> int:
        """Append encoded batches of ``cycles`` to ``out``; return samples that cannot be sent.

        A batch over a protocol limit is split in two halves by cycle; one cycle alone over a
        limit is dropped (logged, counted).
        """
        builder = BatchBuilder()
        for ts, pairs in cycles:
            for sid, value in pairs:
                metric, labels = self._by_id[sid]
                builder.add(ts, metric, labels, value)
        seq = self._next_seq + len(out)
        try:
            payload = encode(builder.build(host=self.host, instance=self.instance, seq=seq,
                                           sent_ms=now_ms))
        except LimitExceeded as exc:
            if len(cycles) > 1:
                half = len(cycles) // 2
                return (self._encode(cycles[:half], now_ms, out)
                        + self._encode(cycles[half:], now_ms, out))
            log.error("dropping a cycle of %d samples: %s", builder.samples, exc)
            return builder.samples
        out.append((seq, cycles[0][0], cycles[-1][0], builder.samples, payload))
        return 0

    def ack(self, instance: str, ranges: Iterable[tuple[int, int]], now_ms: int) -> list[int]:
        """Delete the batches of ``instance`` whose seq is in an inclusive range; return ids."""
        ranges = list(ranges)
        recovered = 0
        with self._transaction():
            deleted = self._delete_batches(instance, ranges)
            for first, last in ranges:
                recovered += sum(row[0] for row in self._db.execute(
                    "DELETE FROM dropped_published WHERE instance = ? AND seq BETWEEN ? AND ? "
                    "RETURNING samples", (instance, first, last)))
            if recovered:
                self._add_meta("delivered_after_drop_samples_total", recovered)
            self._set_meta("last_ack_ms", now_ms)
        self._forget(*deleted)
        self.delivered_after_drop_total += recovered
        return deleted[0]

    def reject(self, instance: str, ranges: Iterable[tuple[int, int]]) -> tuple[list[int], int]:
        """The collector refused these batches for good: delete them, count their samples dropped.

        Returns the deleted batch ids and the number of samples added to the dropped total.
        """
        with self._transaction():
            ids, dropped = self._delete_batches(instance, ranges)
            self._add_dropped(dropped)
        self._forget(ids, dropped)
        self.dropped_samples_total += dropped
        return ids, dropped

    def _delete_batches(self, instance: str, ranges: Iterable[tuple[int, int]]
                        ) -> tuple[list[int], int]:
        """Delete (inside the caller's transaction) ``instance``'s batches whose seq is in an
        inclusive range; the deleted ids and their samples (``_forget`` them after the commit)."""
        rows: list[tuple[int, int]] = []
        for first, last in ranges:
            rows += self._db.execute(
                "DELETE FROM batches WHERE instance = ? AND seq BETWEEN ? AND ? "
                "RETURNING id, samples", (instance, first, last)).fetchall()
        return [batch_id for batch_id, _n in rows], sum(n for _id, n in rows)

    def _forget(self, ids: list[int], samples: int) -> None:
        """Keep the in-memory depth in step once a deletion is committed."""
        self._batches -= len(ids)
        self._samples -= samples

    def mark_published(self, batch_id: int) -> None:
        """The batch was handed to the broker: if it is ever dropped, remember it (see ack)."""
        with self._transaction():
            self._db.execute("UPDATE batches SET published = 1 WHERE id = ? AND published = 0",
                             (batch_id,))

    def add_dropped(self, samples: int) -> None:
        """Count samples lost outside the database (e.g. held in memory while the disk was full)."""
        with self._transaction():
            self._add_dropped(samples)
        self.dropped_samples_total += samples

    # ---- budget ----------------------------------------------------------------------------

    def enforce_budget(self, now_ms: int) -> int:
        """Drop batches older than the maximum age, then the oldest until within the disk budget.

        Free pages are given back to the filesystem before anything is dropped. Returns the
        number of samples dropped (also added to ``dropped_samples_total`` in the same
        transactions).
        """
        dropped = 0
        cutoff = now_ms - self.max_age_ms
        while True:
            rows = self._db.execute("SELECT id, samples, last_ms FROM batches ORDER BY id "
                                    "LIMIT 16").fetchall()
            expired = []
            for row in rows:
                if row[2] >= cutoff:
                    break
                expired.append(row)
            if not expired:
                break
            dropped += self._drop_batches(expired)
        if self.disk_bytes() <= self.max_bytes:
            return dropped
        self._reclaim()
        stuck = 0  # rounds that freed nothing (a reader holding the log): give up after a few
        while (excess := self.disk_bytes() - self.max_bytes) > 0 and stuck < 3:
            rows = self._db.execute("SELECT id, samples, length(payload) FROM batches "
                                    "ORDER BY id LIMIT 256").fetchall()
            if rows:
                chosen, freed = [], 0
                for row in rows:
                    chosen.append(row)
                    freed += row[2] + _ROW_OVERHEAD
                    if freed >= excess:
                        break
                dropped += self._drop_batches(chosen)
            elif self._pending:
                dropped += self._drop_oldest_cycle()
            else:
                break  # only the catalog is left: nothing more to give
            self._reclaim()
            stuck = stuck + 1 if self.disk_bytes() - self.max_bytes >= excess else 0
        return dropped

    def _drop_batches(self, rows: Sequence[Sequence[int]]) -> int:
        samples = sum(row[1] for row in rows)
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO dropped_published (instance, seq, samples, dropped_ms) "
                "SELECT instance, seq, samples, ? FROM batches "
                "WHERE id BETWEEN ? AND ? AND published = 1",
                (clock.now_ms(), rows[0][0], rows[-1][0]))
            # bounded: the oldest records go first (their batches are the least likely to come)
            self._db.execute(
                "DELETE FROM dropped_published WHERE (instance, seq) IN (SELECT instance, seq "
                "FROM dropped_published ORDER BY dropped_ms LIMIT max(0, (SELECT count(*) FROM "
                "dropped_published) - ?))", (MAX_DROPPED_PUBLISHED,))
            self._db.execute("DELETE FROM batches WHERE id BETWEEN ? AND ?",
                             (rows[0][0], rows[-1][0]))
            self._add_dropped(samples)
        self._batches -= len(rows)
        self._samples -= samples
        self.dropped_samples_total += samples
        return samples

    def _drop_oldest_cycle(self) -> int:
        with self._transaction():
            cycle_id, samples = self._db.execute(
                "SELECT id, samples FROM cycles ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM cycles WHERE id = ?", (cycle_id,))
            self._add_dropped(samples)
        self._pending -= 1
        self._pending_samples -= samples
        if not self._pending:
            self._last_pending_ms = None
        self.dropped_samples_total += samples
        return int(samples)

    def _reclaim(self) -> None:
        """Give free pages back to the filesystem and empty the write-ahead log."""
        # executescript steps the pragma to the end; execute() would free a single page.
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def disk_bytes(self) -> int:
        """Bytes the buffer takes on disk: database pages plus the write-ahead log."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * self._page_size + _file_bytes(f"{self.path}-wal"))

    # ---- reading (for the sender) -------------------------------------------------------------

    def newest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]:
        """Up to ``limit`` sealed batches, newest first, skipping the ids in ``exclude``."""
        return self._refs("DESC", limit, exclude)

    def oldest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]:
        """Up to ``limit`` sealed batches, oldest first, skipping the ids in ``exclude``."""
        return self._refs("ASC", limit, exclude)

    def _refs(self, order: str, limit: int, exclude: Iterable[int]) -> list[BatchRef]:
        skip = json.dumps(sorted(exclude))
        rows = self._db.execute(
            "SELECT id, instance, seq, first_ms, last_ms, samples FROM batches "
            f"WHERE id NOT IN (SELECT value FROM json_each(?)) ORDER BY id {order} LIMIT ?",
            (skip, limit)).fetchall()
        return [BatchRef(*row) for row in rows]

    def get(self, batch_id: int) -> tuple[BatchRef, bytes] | None:
        """A sealed batch and its payload, or None once acknowledged or dropped."""
        row = self._db.execute("SELECT id, instance, seq, first_ms, last_ms, samples, payload "
                               "FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else (BatchRef(*row[:6]), row[6])

    def stats(self) -> BufferStats:
        oldest = self._db.execute("SELECT first_ms FROM batches ORDER BY id LIMIT 1").fetchone()
        if oldest is None:
            oldest = self._db.execute("SELECT min(ts_ms) FROM cycles").fetchone()
        return BufferStats(self._batches, self._samples, self._pending, self._pending_samples,
                           self.disk_bytes(), oldest[0], self.dropped_samples_total,
                           self._meta("last_ack_ms", None), self.delivered_after_drop_total)

    # ---- internals -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    def _meta(self, key: str, default: Any) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value", (key, value))

    def _add_meta(self, key: str, amount: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = value + excluded.value", (key, amount))

    def _add_dropped(self, samples: int) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES ('dropped_samples_total', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                         (samples,))

    def _valid_labels(self, metric: MetricDef, labels: tuple[str, ...]) -> bool:
        if len(labels) == len(metric.label_keys) and all(isinstance(v, str) for v in labels):
            return True
        self._warn_once(metric.name, f"label values {labels!r} do not match keys "
                                     f"{metric.label_keys!r}")
        return False

    def _warn_once(self, name: str, problem: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("skipping readings of %s: %s", name, problem, extra={"metric": name})


def _check(path: Path) -> str | None:
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


def _connect(path: Path, max_bytes: int) -> sqlite3.Connection:
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
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (FORMAT,))
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_ms', ?)",
                   (clock.now_ms(),))
    except BaseException:
        db.close()
        raise
    return db


def read_stats(path: Path | str) -> BufferStats:
    """Statistics of the buffer at ``path``, opened read-only (the agent may be running)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no buffer at {path}")
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 2000")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_schema")}
        if not {"batches", "cycles", "meta"} <= tables:  # just created, schema not yet written
            return BufferStats(0, 0, 0, 0, _file_bytes(str(path)), None, 0, None)
        batches, samples, oldest = db.execute(
            "SELECT count(*), coalesce(sum(samples), 0), min(first_ms) FROM batches").fetchone()
        cycles, pending, first_cycle = db.execute(
            "SELECT count(*), coalesce(sum(samples), 0), min(ts_ms) FROM cycles").fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        pages, page_size = (db.execute(f"PRAGMA {p}").fetchone()[0]
                            for p in ("page_count", "page_size"))
    finally:
        db.close()
    return BufferStats(batches, samples, cycles, pending,
                       pages * page_size + _file_bytes(f"{path}-wal"),
                       oldest if oldest is not None else first_cycle,
                       int(meta.get("dropped_samples_total", 0)), meta.get("last_ack_ms"),
                       int(meta.get("delivered_after_drop_samples_total", 0)))
