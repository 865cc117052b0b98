"""The embedded default store: one SQLite file in WAL mode (see ``collector/STORAGE.md``).

Write path: ``store_batches`` keeps each received payload as-is in ``batches`` (the durable
write-ahead record) and records its sequence number in ``seq_ranges`` (de-duplication forever,
and gaps), in one transaction committed before returning. ``maintain`` then, in bounded
transactions:

1. compacts pending batches, host by host, into *blocks*: one row of timestamps per (host, 2 h
   window) shared by all its series, plus one compressed chunk of values per series (L0);
2. merges the blocks of a window into one when there are many, and once a window is closed
   (its end + ``close_grace_ms`` has passed) recomputes its 1m and 1h rollup buckets from the
   merged raw samples and writes them into per-series rollup blocks (1 day of 1m buckets, 30 days
   of 1h buckets per row);
3. applies retention per tier in small deletes.

Every step writes its results and removes its inputs (batches, dirty marks) in the same
transaction, so a crash at any point loses nothing and counts nothing twice. Queries run in one
read transaction (a consistent snapshot) and read pending batches, not-yet-rolled-up windows and
rollup blocks together, so they see every stored batch at once.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import itertools
import json
import os
import signal
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.base import (
    Gap,
    HostInfo,
    IngestItem,
    QueryTooLarge,
    RangeQuery,
    SeriesInfo,
    SeriesResult,
    Storage,
    StoreResult,
)
from edgemon.collector.storage.encoding import (
    decode_chunks,
    decode_rollups,
    decode_times,
    encode_chunks,
    encode_rollups,
    encode_times,
)
from edgemon.collector.storage.unpack import Table, flatten, unpack

__all__ = ["SQLiteStorage"]

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# tier name -> (bucket width, width of the window one rollup row covers)
TIERS: dict[str, tuple[int, int]] = {"1m": (MINUTE, DAY), "1h": (HOUR, 30 * DAY)}
_AGGREGATIONS = ("avg", "min", "max", "sum", "count", "last", "p95")
_PENDING_ORDER = 1 << 62  # pending samples win ties against compacted ones (arrived later)
_IN_CHUNK = 500  # host variables per IN (...) list
_SCHEMA_VERSION = 1
# Test hook: "<stage>:N" makes the process SIGKILL itself inside a compaction transaction, at
# the N-th chunk/rollup row written (stage l0 or l1) or at the N-th end of a transaction just
# before its COMMIT (l0end, l1end).
_KILL_ENV = "EDGEMON_STORAGE_TEST_KILL"

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


def _canonical(keys: Iterable[str], values: Iterable[str]) -> str:
    return json.dumps(dict(sorted(zip(keys, values, strict=True))), separators=(",", ":"),
                      ensure_ascii=False)


def _floor(x: int, width: int) -> int:
    return x - x % width


def _chunked(seq: list[Any], size: int = _IN_CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class _Selection:
    """The series a query or compaction step works on, by local index 0..n-1."""

    def __init__(self) -> None:
        self.sid: list[int | None] = []  # row id in `series`, None = only in pending batches
        self.host: list[int] = []
        self.labels: list[str] = []  # canonical JSON
        self.kind: list[str] = []
        self.unit: list[str] = []
        self.scale: list[int] = []
        self.index: dict[tuple[int, str], int] = {}

    def add(self, sid: int | None, host: int, labels: str, kind: str, unit: str,
            scale: int) -> int:
        i = len(self.sid)
        self.sid.append(sid)
        self.host.append(host)
        self.labels.append(labels)
        self.kind.append(kind)
        self.unit.append(unit)
        self.scale.append(scale)
        self.index[(host, labels)] = i
        return i

    def __len__(self) -> int:
        return len(self.sid)

    def counter(self) -> np.ndarray:
        return np.array([k == "counter" for k in self.kind], dtype=bool)

    def scales(self) -> np.ndarray:
        return np.array(self.scale, dtype=np.int64)


class SQLiteStorage(Storage):
    """``Storage`` on one SQLite file. Writes from any thread are serialised by a lock; every
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
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._closed = False
        self._host_ids: dict[str, int] = {}
        self._series_cache: dict[tuple[Any, ...], dict[tuple[str, ...], Any]] = {}
        self._ret_cursor = 0
        self._ret_round: tuple[int, ...] | None = None  # cutoffs of the last finished walk
        self._ret_walk: tuple[int, ...] | None = None  # cutoffs of the walk in progress
        self._kill_stage, self._kill_after = None, 0
        spec = os.environ.get(_KILL_ENV, "")
        if spec:
            stage, _, count = spec.partition(":")
            self._kill_stage, self._kill_after = stage, int(count or 1)
        db = self._conn()
        with self._write_lock:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
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

    def _kill_point(self, stage: str) -> None:
        """Test hook: die like kill -9 after the N-th write of ``stage`` (inside a transaction)."""
        if self._kill_stage == stage:
            self._kill_after -= 1
            if self._kill_after <= 0:
                os.kill(os.getpid(), signal.SIGKILL)

    # -- hosts ---------------------------------------------------------------------------------

    def _host_id(self, db: sqlite3.Connection, name: str, fresh: dict[str, int]) -> int:
        """The host's id, creating the row; new ids go to ``fresh`` until the commit (a rolled
        back id may be given to another host later)."""
        hid = self._host_ids.get(name) or fresh.get(name)
        if hid is None:
            db.execute("INSERT OR IGNORE INTO hosts (name) VALUES (?)", (name,))
            hid = fresh[name] = db.execute("SELECT id FROM hosts WHERE name = ?",
                                           (name,)).fetchone()[0]
        return hid

    # -- ingest --------------------------------------------------------------------------------

    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        if not items:
            return []
        fresh: dict[str, int] = {}
        with self._write() as db:
            hids = {name: self._host_id(db, name, fresh)
                    for name in {it.batch.host for it in items}}
            ranges: dict[tuple[int, str], list[list[int]]] = {}
            for it in items:
                key = (hids[it.batch.host], it.batch.instance)
                if key not in ranges:
                    ranges[key] = [list(r) for r in db.execute(
                        "SELECT lo, hi FROM seq_ranges WHERE host_id = ? AND instance = ? "
                        "ORDER BY lo", key)]
            before = {k: [tuple(r) for r in v] for k, v in ranges.items()}
            results: list[StoreResult] = []
            rows = []
            per_host: dict[int, dict[str, Any]] = {}
            for it in items:
                b = it.batch
                hid = hids[b.host]
                samples = b.sample_count
                stored = _add_seq(ranges[(hid, b.instance)], b.seq)
                results.append(StoreResult(b.host, b.instance, b.seq, stored, samples))
                h = per_host.setdefault(hid, {"seen": it.received_ms, "live": [],
                                              "instances": {}})
                h["seen"] = max(h["seen"], it.received_ms)
                h["instances"][b.instance] = max(h["instances"].get(b.instance, 0),
                                                 it.received_ms)
                if stored:
                    t_max = b.last_timestamp
                    rows.append((hid, b.instance, b.seq, it.received_ms, b.t[0], t_max, samples,
                                 int(it.historical), it.payload))
                    if not it.historical:
                        h["live"].append((b.sent, b.instance, it.received_ms - b.sent))
            db.executemany(
                "INSERT OR IGNORE INTO batches (host_id, instance, seq, received_ms, t_min, "
                "t_max, samples, historical, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            for key, new in ranges.items():
                old = set(before[key])
                new_set = {tuple(r) for r in new}
                gone = old - new_set
                if gone:
                    db.executemany("DELETE FROM seq_ranges WHERE host_id = ? AND instance = ? "
                                   "AND lo = ?", [(*key, lo) for lo, _ in gone])
                added = new_set - old
                if added:
                    db.executemany("INSERT INTO seq_ranges VALUES (?, ?, ?, ?)",
                                   [(*key, lo, hi) for lo, hi in added])
            for hid, h in per_host.items():
                self._update_host(db, hid, h)
        self._host_ids.update(fresh)
        return results

    def _update_host(self, db: sqlite3.Connection, hid: int, h: dict[str, Any]) -> None:
        for instance, seen in h["instances"].items():
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                       "last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
                       (hid, instance, seen, seen))
        row = db.execute("SELECT instance, instance_ts, status_seen, offsets FROM hosts "
                         "WHERE id = ?", (hid,)).fetchone()
        instance, instance_ts, status_seen, offsets_json = row
        online = None
        offsets: list[int] = json.loads(offsets_json) if offsets_json else []
        for sent, inst, offset in sorted(h["live"]):
            if instance_ts is None or sent >= instance_ts:
                instance, instance_ts = inst, sent
            offsets.append(offset)
            if not status_seen:
                online = 1  # no birth/death seen yet: a live batch is the best evidence
        offsets = offsets[-15:]
        offset = statistics.median_low(offsets) if offsets else None
        db.execute(
            "UPDATE hosts SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?), instance = ?, "
            "instance_ts = ?, offsets = ?, clock_offset_ms = ?, online = coalesce(?, online) "
            "WHERE id = ?",
            (h["seen"], instance, instance_ts, json.dumps(offsets) if offsets else None,
             offset, online, hid))

    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int) -> None:
        fresh: dict[str, int] = {}
        with self._write() as db:
            hid = self._host_id(db, host, fresh)
            db.execute("INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?)",
                       (hid, instance, received_ms, received_ms))
            current, current_ts = db.execute(
                "SELECT instance, instance_ts FROM hosts WHERE id = ?", (hid,)).fetchone()
            # A message of the current instance always applies; another instance's only if it
            # is newer (a previous instance's late Last Will must not mark the new one offline).
            if current is None or current == instance or timestamp_ms >= (current_ts or 0):
                db.execute(
                    "UPDATE hosts SET online = ?, instance = ?, instance_ts = max(?, "
                    "coalesce(instance_ts, ?)) WHERE id = ?",
                    (int(online), instance, timestamp_ms, timestamp_ms, hid))
            db.execute("UPDATE hosts SET status_seen = 1, last_status_ms = "
                       "max(coalesce(last_status_ms, ?), ?) WHERE id = ?",
                       (timestamp_ms, timestamp_ms, hid))
        self._host_ids.update(fresh)

    # -- reads: hosts, series, gaps ------------------------------------------------------------

    def hosts(self) -> list[HostInfo]:
        with self._read() as db:
            rows = db.execute(
                "SELECT h.name, h.online, h.instance, h.last_seen_ms, h.last_status_ms, "
                "(SELECT count(*) FROM instances i WHERE i.host_id = h.id), h.clock_offset_ms "
                "FROM hosts h ORDER BY h.name").fetchall()
        return [HostInfo(name, bool(online), instance, seen, status, n, offset)
                for name, online, instance, seen, status, n, offset in rows]

    def gaps(self, host: str | None = None) -> list[Gap]:
        sql = ("SELECT h.name, r.instance, r.lo, r.hi FROM seq_ranges r JOIN hosts h "
               "ON h.id = r.host_id")
        args: tuple[Any, ...] = ()
        if host is not None:
            sql += " WHERE h.name = ?"
            args = (host,)
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY h.name, r.instance, r.lo", args).fetchall()
        out = []
        for (h1, i1, _, hi1), (h2, i2, lo2, _) in itertools.pairwise(rows):
            if h1 == h2 and i1 == i2:
                out.append(Gap(h1, i1, hi1 + 1, lo2 - 1))
        return out

    def series(self, host: str | None = None, name: str | None = None) -> list[SeriesInfo]:
        sql = ("SELECT h.name, s.host_id, s.name, s.labels, s.kind, s.unit, s.first_ms, "
               "s.last_ms FROM series s JOIN hosts h ON h.id = s.host_id WHERE 1")
        args: list[Any] = []
        if host is not None:
            sql += " AND h.name = ?"
            args.append(host)
        if name is not None:
            sql += " AND s.name = ?"
            args.append(name)
        found: dict[tuple[int, str, str], list[Any]] = {}
        names: dict[int, str] = {}
        with self._read() as db:
            for hname, hid, sname, labels, kind, unit, first, last in db.execute(sql, args):
                names[hid] = hname
                found[(hid, sname, labels)] = [kind, unit, first, last]
            pending = "SELECT p.host_id, h.name, p.payload FROM batches p JOIN hosts h " \
                      "ON h.id = p.host_id"
            pargs: tuple[Any, ...] = ()
            if host is not None:
                pending += " WHERE h.name = ?"
                pargs = (host,)
            for hid, hname, payload in db.execute(pending, pargs):
                names[hid] = hname
                batch = unpack(payload)
                times = np.cumsum(np.array(batch["t"], dtype=np.int64))
                for mname, kind, unit, _scale, keys, entries in batch["metrics"]:
                    if name is not None and mname != name:
                        continue
                    for labels, offset, deltas in entries:
                        first = int(times[offset])
                        last = int(times[offset + len(deltas) - 1])
                        key = (hid, mname, _canonical(keys, labels))
                        cur = found.get(key)
                        if cur is None:
                            found[key] = [kind, unit, first, last]
                        else:
                            cur[2], cur[3] = min(cur[2], first), max(cur[3], last)
        out = [SeriesInfo(names[hid], sname, json.loads(labels), kind, unit, first, last)
               for (hid, sname, labels), (kind, unit, first, last) in found.items()]
        out.sort(key=lambda s: (s.host, s.name, sorted(s.labels.items())))
        return out

    # -- maintenance ---------------------------------------------------------------------------

    def maintain(self, now_ms: int) -> None:
        """Background work for at most about ``maintain_budget_ms``: bounded steps (each one
        transaction of at most ``step_samples`` samples) until nothing is left or the budget is
        spent. Call it every few seconds; ``backlog()`` tells whether it keeps up."""
        deadline = time.monotonic() + self.maintain_budget_ms / 1000
        while self.maintain_step(now_ms) and time.monotonic() < deadline:
            pass

    def maintain_step(self, now_ms: int) -> bool:
        """``maintain``, returning whether work is left (call again soon) or not."""
        with self._write_lock:
            more = self._compact_pending(now_ms)
            more = self._merge_windows(now_ms) or more
            return self._apply_retention(now_ms) or more

    def compact_all(self, now_ms: int, max_steps: int = 1_000_000) -> int:
        """Run ``maintain`` until nothing is left to do at ``now_ms``; the number of steps."""
        for step in range(1, max_steps + 1):
            if not self.maintain_step(now_ms):
                return step
        return max_steps

    def backlog(self, now_ms: int | None = None) -> dict[str, int]:
        """What ``maintain`` has yet to do: pending batches/samples, dirty windows."""
        with self._read() as db:
            nb, ns = db.execute("SELECT count(*), coalesce(sum(samples), 0) FROM batches"
                                ).fetchone()
            nd = db.execute("SELECT count(*) FROM dirty").fetchone()[0]
            closable = 0
            if now_ms is not None:
                closable = db.execute("SELECT count(*) FROM dirty WHERE window_ms <= ?", (
                    now_ms - self.window_ms - self.close_grace_ms,)).fetchone()[0]
        return {"pending_batches": nb, "pending_samples": ns, "dirty_windows": nd,
                "closable_windows": closable}

    def _cutoffs(self, db: sqlite3.Connection) -> dict[str, int]:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'cutoff_%'"))
        return {"raw": int(meta["cutoff_raw"]), "1m": int(meta["cutoff_1m"]),
                "1h": int(meta["cutoff_1h"])}

    def _resolver(self, db: sqlite3.Connection, sel: _Selection, local: dict[int, int]) -> Any:
        """Series lookup for compaction (``unpack.Resolve``); creates rows for new series in the
        transaction. New ids reach ``self._series_cache`` only after the commit
        (``resolve.fresh``)."""
        cache = self._series_cache
        fresh: dict[tuple[Any, ...], dict[tuple[str, ...], tuple[int, int, bool]]] = {}
        tables: dict[tuple[Any, ...], tuple[Table, Any]] = {}

        def resolve(hid: int, name: str, kind: str, unit: str, scale: int,
                    keys: list[str]) -> tuple[Table, Any]:
            mkey = (hid, name, tuple(keys))
            found = tables.get(mkey)
            if found is not None:
                return found
            table: Table = {}
            known = cache.get(mkey, {})

            def miss(labels: tuple[str, ...]) -> tuple[int, int]:
                hit = known.get(labels) or fresh.get(mkey, {}).get(labels)
                if hit is None:
                    canon = _canonical(keys, labels)
                    row = db.execute("SELECT id, scale, kind FROM series WHERE host_id = ? AND "
                                     "name = ? AND labels = ?", (hid, name, canon)).fetchone()
                    if row is None:
                        cur = db.execute(
                            "INSERT INTO series (host_id, name, labels, kind, unit, scale, "
                            "first_ms, last_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (hid, name, canon, kind, unit, scale, 1 << 62, 0))
                        row = (cur.lastrowid, scale, kind)
                    hit = (row[0], row[1], row[2] == "counter")
                    fresh.setdefault(mkey, {})[labels] = hit
                sid, sscale, is_counter = hit
                i = local.get(sid)
                if i is None:
                    i = local[sid] = sel.add(sid, hid, "", "counter" if is_counter else "gauge",
                                             unit, sscale)
                table[labels] = (i, sscale)
                return i, sscale

            found = tables[mkey] = (table, miss)
            return found

        resolve.fresh = fresh  # type: ignore[attr-defined]
        return resolve

    def _remember_series(self, fresh: dict[tuple[Any, ...], dict[Any, Any]]) -> None:
        for mkey, labels in fresh.items():
            self._series_cache.setdefault(mkey, {}).update(labels)

    def _compact_pending(self, now_ms: int) -> bool:
        """L0: the pending batches of some hosts -> one block per (host, window). Returns
        whether eligible batches are left."""
        db = self._conn()
        rows = db.execute("SELECT host_id, min(received_ms), sum(samples) FROM batches "
                          "GROUP BY host_id ORDER BY 2").fetchall()
        due = [(hid, n) for hid, oldest, n in rows
               if oldest <= now_ms - self.compact_delay_ms or n >= self.step_samples]
        if not due:
            return False
        budget = self.step_samples
        chosen: list[tuple[int, int]] = []  # (host, last batch id taken)
        more = False  # eligible batches left for the next step
        for hid, _ in due:
            if budget <= 0:
                more = True
                break
            last = None
            for bid, n in db.execute("SELECT id, samples FROM batches WHERE host_id = ? "
                                     "ORDER BY id", (hid,)):
                if last is not None and n > budget:
                    more = True
                    break
                last, budget = bid, budget - n
            chosen.append((hid, last))
        with self._write() as db:
            cut = self._cutoffs(db)
            sel = _Selection()
            local: dict[int, int] = {}
            resolve = self._resolver(db, sel, local)
            taken: list[int] = []

            def batches() -> Iterator[tuple[int, int, dict[str, Any]]]:
                for hid, last in chosen:
                    for bid, payload in db.execute(
                            "SELECT id, payload FROM batches WHERE host_id = ? AND id <= ? "
                            "ORDER BY id", (hid, last)):
                        taken.append(bid)
                        yield hid, bid, unpack(payload)

            sid, ts, val, order = flatten(batches(), resolve)
            sid, ts, val = agg.sort_dedupe(sid, ts, val, order)
            if sid.size:
                self._write_l0(db, sel, sid, ts, val, cut)
            db.executemany("DELETE FROM batches WHERE id = ?", [(b,) for b in taken])
            self._kill_point("l0end")
        self._remember_series(resolve.fresh)
        return more

    def _write_l0(self, db: sqlite3.Connection, sel: _Selection, sid: np.ndarray,
                  ts: np.ndarray, val: np.ndarray, cut: dict[str, int]) -> None:
        W = self.window_ms
        host = np.array(sel.host, dtype=np.int64)[sid]
        win = ts - ts % W
        idx = np.lexsort((ts, sid, win, host))
        sid, ts, val, host, win = sid[idx], ts[idx], val[idx], host[idx], win[idx]
        # series first/last
        first = np.full(len(sel), np.iinfo(np.int64).max)
        last = np.full(len(sel), np.iinfo(np.int64).min)
        np.minimum.at(first, sid, ts)
        np.maximum.at(last, sid, ts)
        db.executemany("UPDATE series SET first_ms = min(first_ms, ?), last_ms = "
                       "max(last_ms, ?) WHERE id = ?",
                       [(int(first[i]), int(last[i]), sel.sid[i]) for i in range(len(sel))
                        if first[i] <= last[i]])
        old: list[np.ndarray] = []  # samples of windows whose raw data retention removed
        bounds = np.flatnonzero(np.r_[True, (host[1:] != host[:-1]) | (win[1:] != win[:-1])])
        ends = np.r_[bounds[1:], sid.size]
        for s, e in zip(bounds.tolist(), ends.tolist(), strict=True):
            hid, w = int(host[s]), int(win[s])
            if w < cut["raw"] and db.execute("SELECT 1 FROM dirty WHERE host_id = ? AND "
                                             "window_ms = ?", (hid, w)).fetchone() is None:
                old.append(np.arange(s, e))
                continue
            self._write_block(db, sel, hid, w, sid[s:e], ts[s:e], val[s:e], "l0")
            db.execute("INSERT INTO dirty VALUES (?, ?, 1, ?) ON CONFLICT DO UPDATE SET "
                       "blocks = blocks + 1, samples = samples + excluded.samples",
                       (hid, w, e - s))
        if old:
            pick = np.concatenate(old)
            self._merge_rollups(db, sel, sid[pick], ts[pick], val[pick], cut)

    def _write_block(self, db: sqlite3.Connection, sel: _Selection, hid: int, w: int,
                     sid: np.ndarray, ts: np.ndarray, val: np.ndarray, stage: str) -> None:
        """One block: the window's timestamps once, then one chunk per series (sorted by sid,
        ts)."""
        times = np.unique(ts)
        cur = db.execute("INSERT INTO blocks (host_id, window_ms, n, times) VALUES (?, ?, ?, ?)",
                         (hid, w, int(times.size), encode_times(times)))
        block_id = cur.lastrowid
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        ends = np.r_[starts[1:], sid.size]
        masks: list[bytes | None] = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if e - s == times.size:
                masks.append(None)
            else:
                bits = np.zeros(times.size, dtype=bool)
                bits[np.searchsorted(times, ts[s:e])] = True
                masks.append(np.packbits(bits).tobytes())
        blobs = encode_chunks(val, starts, ends, masks)

        def rows() -> Iterator[tuple[int, int, int, bytes]]:
            for s, blob in zip(starts.tolist(), blobs, strict=True):
                yield sel.sid[int(sid[s])], w, block_id, blob  # type: ignore[misc]
                self._kill_point(stage)

        db.executemany("INSERT INTO chunks (series_id, window_ms, block_id, data) "
                       "VALUES (?, ?, ?, ?)", rows())

    def _merge_windows(self, now_ms: int) -> bool:
        """L1: merge the blocks of windows with many, and roll up closed windows."""
        closed_before = now_ms - self.window_ms - self.close_grace_ms
        db = self._conn()
        rows = db.execute("SELECT host_id, window_ms, blocks, samples FROM dirty WHERE "
                          "window_ms <= ? OR blocks >= ? ORDER BY window_ms LIMIT 10000",
                          (closed_before, self.merge_blocks)).fetchall()
        if not rows:
            return False
        budget = self.step_samples
        chosen = []
        for row in rows:
            if chosen and row[3] > budget:
                break
            chosen.append(row)
            budget -= row[3]
        with self._write() as db:
            cut = self._cutoffs(db)
            for hid, w, nblocks, _ in chosen:
                self._merge_window(db, hid, w, nblocks, w <= closed_before, cut)
            self._kill_point("l1end")
        return len(chosen) < len(rows)

    def _window_samples(self, db: sqlite3.Connection, hid: int, w: int
                        ) -> tuple[_Selection, np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """Every raw sample of a host's window, deduplicated, sorted by (series, ts)."""
        sel = _Selection()
        local: dict[int, int] = {}
        for sid, kind, scale in db.execute("SELECT id, kind, scale FROM series WHERE "
                                           "host_id = ?", (hid,)):
            local[sid] = sel.add(sid, hid, "", kind, "", scale)
        blocks = {bid: decode_times(times) for bid, times in db.execute(
            "SELECT id, times FROM blocks WHERE host_id = ? AND window_ms = ?", (hid, w))}
        rows = db.execute(
            "SELECT series_id, block_id, data FROM chunks WHERE window_ms = ? AND "
            "series_id IN (SELECT id FROM series WHERE host_id = ?)", (w, hid)).fetchall()
        ts, val, sizes = decode_chunks([r[2] for r in rows], [blocks[r[1]] for r in rows])
        sid = np.repeat(np.array([local[r[0]] for r in rows], dtype=np.int64), sizes)
        order = np.repeat(np.array([r[1] for r in rows], dtype=np.int64), sizes)
        sid, ts, val = agg.sort_dedupe(sid, ts, val, order)
        return sel, sid, ts, val, list(blocks)

    def _merge_window(self, db: sqlite3.Connection, hid: int, w: int, nblocks: int,
                      closed: bool, cut: dict[str, int]) -> None:
        sel, sid, ts, val, block_ids = self._window_samples(db, hid, w)
        if len(block_ids) > 1:
            db.execute("DELETE FROM chunks WHERE window_ms = ? AND series_id IN "
                       "(SELECT id FROM series WHERE host_id = ?)", (w, hid))
            db.executemany("DELETE FROM blocks WHERE id = ?", [(b,) for b in block_ids])
            if sid.size:
                self._write_block(db, sel, hid, w, sid, ts, val, "l1")
        if closed:
            if sid.size:
                self._replace_rollups(db, sel, sid, ts, val, w, cut)
            db.execute("DELETE FROM dirty WHERE host_id = ? AND window_ms = ?", (hid, w))
        else:
            db.execute("UPDATE dirty SET blocks = 1, samples = ? WHERE host_id = ? AND "
                       "window_ms = ?", (int(sid.size), hid, w))

    def _replace_rollups(self, db: sqlite3.Connection, sel: _Selection, sid: np.ndarray,
                         ts: np.ndarray, val: np.ndarray, w: int, cut: dict[str, int]) -> None:
        """Rollups of a closed window, recomputed from all its raw samples, replace what the
        rollup rows held for that window."""
        counter = sel.counter()
        for name, (width, tier_window) in TIERS.items():
            if w + self.window_ms <= cut[name]:
                continue
            b = agg.bucketize(sid, ts, val, counter, width)
            self._upsert_rollups(db, sel, b, width, tier_window, counter,
                                 replace=(w, w + self.window_ms))

    def _merge_rollups(self, db: sqlite3.Connection, sel: _Selection, sid: np.ndarray,
                       ts: np.ndarray, val: np.ndarray, cut: dict[str, int]) -> None:
        """Samples of windows whose raw data is gone: merged into the rollup buckets."""
        idx = np.lexsort((ts, sid))
        sid, ts, val = sid[idx], ts[idx], val[idx]
        counter = sel.counter()
        for name, (width, tier_window) in TIERS.items():
            keep = ts >= cut[name]
            if not keep.any():
                continue
            b = agg.bucketize(sid[keep], ts[keep], val[keep], counter, width)
            self._upsert_rollups(db, sel, b, width, tier_window, counter, replace=None)

    def _upsert_rollups(self, db: sqlite3.Connection, sel: _Selection, b: dict[str, np.ndarray],
                        width: int, tier_window: int, counter: np.ndarray,
                        replace: tuple[int, int] | None) -> None:
        """Write buckets ``b`` (sorted by (sid, start)) into the rollup rows of their series and
        tier windows: replacing what those rows held in [replace) or, without ``replace``,
        merging bucket by bucket."""
        tw = b["start"] - b["start"] % tier_window
        s = np.flatnonzero(np.r_[True, (b["sid"][1:] != b["sid"][:-1]) | (tw[1:] != tw[:-1])])
        keys = [(int(b["sid"][i]), int(tw[i])) for i in s]
        existing = []
        for i, window in keys:
            row = db.execute("SELECT data FROM rollups WHERE series_id = ? AND tier = ? AND "
                             "window_ms = ?", (sel.sid[i], width, window)).fetchone()
            if row is not None:
                existing.append((i, row[0]))
        if existing:
            old, sizes = decode_rollups([blob for _, blob in existing], width)
            old["sid"] = np.repeat(np.array([i for i, _ in existing], dtype=np.int64), sizes)
            if replace is not None:
                outside = (old["start"] < replace[0]) | (old["start"] >= replace[1])
                both = agg.concat_buckets([agg.take(old, np.flatnonzero(outside)), b])
                b = agg.take(both, np.lexsort((both["start"], both["sid"])))
            else:
                b = agg.merge_buckets(old, b, counter)
            tw = b["start"] - b["start"] % tier_window
            s = np.flatnonzero(np.r_[True, (b["sid"][1:] != b["sid"][:-1]) | (tw[1:] != tw[:-1])])
        blobs = encode_rollups(b, s, tw[s], width)

        def rows() -> Iterator[tuple[int | None, int, int, bytes]]:
            for i, blob in zip(s.tolist(), blobs, strict=True):
                yield sel.sid[int(b["sid"][i])], width, int(tw[i]), blob
                self._kill_point("l1")

        db.executemany("INSERT INTO rollups (series_id, tier, window_ms, data) VALUES "
                       "(?, ?, ?, ?) ON CONFLICT DO UPDATE SET data = excluded.data", rows())

    def _apply_retention(self, now_ms: int) -> bool:
        """Move the cutoffs forward and delete a bounded number of expired rows."""
        with self._write() as db:
            cut = self._cutoffs(db)
            want = {
                "raw": _floor(now_ms - self.retention["raw"], self.window_ms),
                "1m": _floor(now_ms - self.retention["1m"], TIERS["1m"][1]),
                "1h": _floor(now_ms - self.retention["1h"], TIERS["1h"][1]),
            }
            for name, value in want.items():
                if value > cut[name]:  # never backwards, even if retention grows
                    cut[name] = value
                    db.execute("UPDATE meta SET value = ? WHERE key = ?",
                               (value, f"cutoff_{name}"))
            # raw data of windows still waiting for their rollups stays until they are done
            oldest_dirty = db.execute("SELECT min(window_ms) FROM dirty").fetchone()[0]
            raw_cut = cut["raw"] if oldest_dirty is None else min(cut["raw"], oldest_dirty)
            more = db.execute(
                "DELETE FROM blocks WHERE id IN (SELECT id FROM blocks WHERE window_ms < ? "
                "LIMIT ?)", (raw_cut, self.retention_rows)).rowcount >= self.retention_rows
            key = (raw_cut, cut["1m"], cut["1h"])
            if self._ret_round == key:
                return more
            if self._ret_walk != key:
                self._ret_walk, self._ret_cursor = key, 0
            ids = [r[0] for r in db.execute(
                "SELECT id FROM series WHERE id > ? ORDER BY id LIMIT ?",
                (self._ret_cursor, self.retention_series))]
            if not ids:
                self._ret_round, self._ret_cursor = key, 0
                return more
            self._ret_cursor = ids[-1]
            db.executemany("DELETE FROM chunks WHERE series_id = ? AND window_ms < ?",
                           [(i, raw_cut) for i in ids])
            for name, (width, _) in TIERS.items():
                db.executemany("DELETE FROM rollups WHERE series_id = ? AND tier = ? AND "
                               "window_ms < ?", [(i, width, cut[name]) for i in ids])
            # series whose every sample has expired from every tier
            oldest_kept = min(cut.values())
            gone = db.execute(
                f"DELETE FROM series WHERE id IN ({','.join('?' * len(ids))}) AND last_ms < ? "
                "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.series_id = series.id) "
                "AND NOT EXISTS (SELECT 1 FROM rollups r WHERE r.series_id = series.id)",
                (*ids, oldest_kept)).rowcount
            if gone:
                self._series_cache.clear()
            # agent instances not heard of for longer than anything is kept
            horizon = now_ms - max(self.retention.values()) - DAY
            for hid, inst in db.execute(
                    "SELECT host_id, instance FROM instances WHERE last_seen_ms < ? LIMIT ?",
                    (horizon, self.retention_rows)).fetchall():
                db.execute("DELETE FROM seq_ranges WHERE host_id = ? AND instance = ?",
                           (hid, inst))
                db.execute("DELETE FROM instances WHERE host_id = ? AND instance = ?",
                           (hid, inst))
            return True

    # -- queries -------------------------------------------------------------------------------

    def query(self, query: RangeQuery) -> list[SeriesResult]:
        q = query
        if q.aggregation not in _AGGREGATIONS:
            raise ValueError(f"unknown aggregation {q.aggregation!r}; one of "
                             f"{', '.join(_AGGREGATIONS)}")
        if q.tier not in ("auto", "raw", *TIERS):
            raise ValueError(f"unknown tier {q.tier!r}; one of auto, raw, 1m, 1h")
        if q.step_ms <= 0:
            raise ValueError("step_ms must be > 0")
        if q.start_ms >= q.end_ms:
            raise ValueError("start_ms must be before end_ms")
        how = q.aggregation
        if q.rate and q.group_by is None:
            how = "sum"  # one rate per series: nothing to combine
        if how == "p95" and not q.rate and q.tier in TIERS:
            raise ValueError("p95 needs raw samples: use tier 'raw' or 'auto'")
        if q.rate and how in ("last", "p95"):
            raise ValueError("rates of a group combine by sum, avg, min, max or count")
        step = q.step_ms
        A = _floor(q.start_ms, step)
        B = -(-q.end_ms // step) * step
        lo = A - step if q.rate else A  # a rate needs the previous step's last sample
        with self._read() as db:
            cut = self._cutoffs(db)
            tier = self._pick_tier(q, cut, how)
            hosts = self._match_hosts(db, q.hosts)
            if not hosts:
                return []
            sel = _Selection()
            host_list = sorted(hosts)
            for chunk in _chunked(host_list):
                for sid, hid, labels, kind, unit, scale in db.execute(
                        "SELECT id, host_id, labels, kind, unit, scale FROM series WHERE "
                        f"name = ? AND host_id IN ({','.join('?' * len(chunk))}) AND "
                        "last_ms >= ? AND first_ms < ?", (q.name, *chunk, lo, B)):
                    if _labels_match(labels, q.labels):
                        sel.add(sid, hid, labels, kind, unit, scale)
            pending = self._pending(db, sel, host_list, q, lo, B)
            if len(sel) > q.max_series:
                raise QueryTooLarge(
                    f"query matches {len(sel)} series of {q.name!r}, more than the limit of "
                    f"{q.max_series}: select fewer hosts or add label filters (or group_by)")
            group, groups = _groups(sel, q.group_by, hosts)
            width = 1 if tier == "raw" else TIERS[tier][0]
            n_steps = (B - A) // step if step >= width else (B - A) // width + 1
            if len(groups) * n_steps > q.max_points:
                raise QueryTooLarge(
                    f"query would return up to {len(groups) * n_steps} points ({len(groups)} "
                    f"series x {n_steps} steps), more than the limit of {q.max_points}: use a "
                    "larger step, a shorter range, or fewer hosts/series")
            if not len(sel):
                return []
            counter, scale = sel.counter(), sel.scales()
            gscale = np.zeros(len(groups), dtype=np.int64)
            np.maximum.at(gscale, group, scale)
            if tier == "raw":
                sid, ts, val = self._raw_samples(db, sel, pending, lo, B, None)
                if how == "p95" and not q.rate:
                    g, start, v = agg.percentile_steps(sid, ts, val, group, gscale, scale, step)
                else:
                    p = agg.bucketize(sid, ts, val, counter, step)
                    g, start, v = agg.combine(p, group, gscale, scale, counter, how, q.rate)
            else:
                b = self._rollup_buckets(db, sel, pending, tier, lo, B, cut)
                p = agg.coarsen(b, step, counter)
                g, start, v = agg.combine(p, group, gscale, scale, counter, how, q.rate)
        ok = np.isfinite(v) & (start >= A)
        g, start, v = g[ok], start[ok], v[ok]  # sorted by (group, start)
        cuts = [*np.flatnonzero(np.r_[True, g[1:] != g[:-1]]).tolist(), g.size]
        ts_list, v_list = start.tolist(), v.tolist()
        points = {int(g[a]): list(zip(ts_list[a:b], v_list[a:b], strict=True))
                  for a, b in itertools.pairwise(cuts) if a < b}
        out = []
        for gi, meta in enumerate(groups):
            if gi in points:
                out.append(SeriesResult(meta["host"], q.name, meta["labels"], meta["kind"],
                                        meta["unit"], points[gi], tier))
        out.sort(key=lambda r: (r.host or "", sorted(r.labels.items())))
        return out

    def _pick_tier(self, q: RangeQuery, cut: dict[str, int], how: str) -> str:
        """Explicit tiers are honoured. Auto: of the tiers still holding ``start``, the
        coarsest whose bucket divides the step (exact), else the coarsest not wider than the
        step, else the finest. p95 (not of rates) reads raw samples."""
        if how == "p95" and not q.rate:
            return "raw"
        if q.tier != "auto":
            return q.tier
        widths = {"1h": HOUR, "1m": MINUTE, "raw": 1}
        covered = [t for t in ("1h", "1m", "raw") if q.start_ms >= cut[t]]
        if not covered:
            return "1h"
        for t in covered:
            if q.step_ms % widths[t] == 0:
                return t
        for t in covered:
            if widths[t] <= q.step_ms:
                return t
        return covered[-1]

    def _match_hosts(self, db: sqlite3.Connection, patterns: tuple[str, ...]) -> dict[int, str]:
        rows = db.execute("SELECT id, name FROM hosts").fetchall()
        if not patterns:
            return dict(rows)
        exact = {p for p in patterns if not _is_glob(p)}
        globs = [p for p in patterns if _is_glob(p)]
        return {hid: name for hid, name in rows
                if name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs)}

    def _pending(self, db: sqlite3.Connection, sel: _Selection, host_list: list[int],
                 q: RangeQuery, A: int, B: int) -> tuple[np.ndarray, ...]:
        """Samples of the query's metric in batches not compacted yet (they extend ``sel``)."""
        want = q.labels
        tables: dict[tuple[Any, ...], tuple[Table, Any]] = {}

        def resolve(hid: int, name: str, kind: str, unit: str, scale: int,
                    keys: list[str]) -> tuple[Table, Any]:
            mkey = (hid, tuple(keys))
            found = tables.get(mkey)
            if found is not None:
                return found
            table: Table = {}

            def miss(labels: tuple[str, ...]) -> tuple[int, int] | None:
                if want:
                    d = dict(zip(keys, labels, strict=True))
                    if any(d.get(k) != v for k, v in want.items()):
                        return None
                canon = _canonical(keys, labels)
                i = sel.index.get((hid, canon))
                if i is None:
                    i = sel.add(None, hid, canon, kind, unit, scale)
                table[labels] = (i, sel.scale[i])
                return table[labels]

            found = tables[mkey] = (table, miss)
            return found

        def batches() -> Iterator[tuple[int, int, dict[str, Any]]]:
            for chunk in _chunked(host_list):
                for bid, hid, payload in db.execute(
                        f"SELECT id, host_id, payload FROM batches WHERE host_id IN "
                        f"({','.join('?' * len(chunk))}) AND t_max >= ? AND t_min < ? "
                        "ORDER BY id", (*chunk, A, B)):
                    yield hid, _PENDING_ORDER + bid, unpack(payload)

        return flatten(batches(), resolve, {q.name})

    def _chunk_samples(self, db: sqlite3.Connection, wanted: list[tuple[int, int, int, int]]
                       ) -> tuple[np.ndarray, ...]:
        """Raw samples of (local index, series id, first window, end window) from chunks."""
        chunk_rows = []
        for i, sid, lo, hi in wanted:
            for bid, data in db.execute("SELECT block_id, data FROM chunks WHERE series_id = ? "
                                        "AND window_ms >= ? AND window_ms < ?", (sid, lo, hi)):
                chunk_rows.append((i, bid, data))
        block_ids = sorted({bid for _, bid, _ in chunk_rows})
        times: dict[int, np.ndarray] = {}
        for chunk in _chunked(block_ids):
            for bid, blob in db.execute(f"SELECT id, times FROM blocks WHERE id IN "
                                        f"({','.join('?' * len(chunk))})", chunk):
                times[bid] = decode_times(blob)
        chunk_rows = [r for r in chunk_rows if r[1] in times]  # blocks gone: retention
        ts, val, sizes = decode_chunks([r[2] for r in chunk_rows],
                                       [times[r[1]] for r in chunk_rows])
        sid = np.repeat(np.array([r[0] for r in chunk_rows], dtype=np.int64), sizes)
        order = np.repeat(np.array([r[1] for r in chunk_rows], dtype=np.int64), sizes)
        return sid, ts, val, order

    def _raw_samples(self, db: sqlite3.Connection, sel: _Selection,
                     pending: tuple[np.ndarray, ...], A: int, B: int,
                     windows: set[tuple[int, int]] | None) -> tuple[np.ndarray, ...]:
        """Deduplicated samples in [A, B) sorted by (series, ts): chunks + pending. With
        ``windows`` only those (host, window) pairs are read."""
        W = self.window_ms
        by_host: dict[int, list[int]] = {}
        for h, w in windows or ():
            by_host.setdefault(h, []).append(w)
        wanted = []
        for i, sid in enumerate(sel.sid):
            if sid is None:
                continue
            if windows is None:
                wanted.append((i, sid, _floor(A, W), B))
            else:
                wanted += [(i, sid, w, w + 1) for w in by_host.get(sel.host[i], ())]
        c_sid, c_ts, c_val, c_order = self._chunk_samples(db, wanted)
        p_sid, p_ts, p_val, p_order = pending
        if windows is not None and p_sid.size:
            host = np.array(sel.host, dtype=np.int64)
            keys = _window_keys(host[p_sid], p_ts, W)
            keep = np.isin(keys, _pair_keys(windows, W))
            p_sid, p_ts, p_val, p_order = p_sid[keep], p_ts[keep], p_val[keep], p_order[keep]
        sid = np.concatenate([c_sid, p_sid])
        ts = np.concatenate([c_ts, p_ts])
        val = np.concatenate([c_val, p_val])
        order = np.concatenate([c_order, p_order])
        inside = (ts >= A) & (ts < B)
        return agg.sort_dedupe(sid[inside], ts[inside], val[inside], order[inside])

    def _rollup_buckets(self, db: sqlite3.Connection, sel: _Selection,
                        pending: tuple[np.ndarray, ...], tier: str, A: int, B: int,
                        cut: dict[str, int]) -> dict[str, np.ndarray]:
        """Buckets of ``tier`` starting in [A, B), sorted by (series, start): rollup rows, with
        windows that are dirty or have pending samples recomputed from raw samples."""
        W = self.window_ms
        width, tier_window = TIERS[tier]
        counter = sel.counter()
        host = np.array(sel.host, dtype=np.int64)
        hosts = sorted(set(sel.host))
        dirty: set[tuple[int, int]] = set()
        for chunk in _chunked(hosts):
            dirty.update(db.execute(
                f"SELECT host_id, window_ms FROM dirty WHERE host_id IN "
                f"({','.join('?' * len(chunk))}) AND window_ms >= ? AND window_ms < ?",
                (*chunk, _floor(A, W), B)))
        p_sid, p_ts, p_val, p_order = pending
        inside = (p_ts >= _floor(A, width)) & (p_ts < B)
        p_sid, p_ts, p_val, p_order = p_sid[inside], p_ts[inside], p_val[inside], p_order[inside]
        p_win = p_ts - p_ts % W
        pending_windows = set(zip(host[p_sid].tolist(), p_win.tolist(), strict=True))
        # windows recomputed from raw samples, and windows whose raw samples expired, where
        # pending samples are merged into the rollup buckets (as compaction will do)
        fresh = dirty | {hw for hw in pending_windows if hw[1] >= cut["raw"]}
        stale = pending_windows - fresh
        owners, blobs = [], []
        for i, sid in enumerate(sel.sid):
            if sid is None:
                continue
            for (data,) in db.execute(
                    "SELECT data FROM rollups WHERE series_id = ? AND tier = ? AND "
                    "window_ms >= ? AND window_ms < ? ORDER BY window_ms",
                    (sid, width, _floor(A, tier_window), B)):
                owners.append(i)
                blobs.append(data)
        stored, sizes = decode_rollups(blobs, width)
        stored["sid"] = np.repeat(np.array(owners, dtype=np.int64), sizes)
        keep = (stored["start"] >= A) & (stored["start"] < B)
        if fresh and stored["sid"].size:
            keep &= ~np.isin(_window_keys(host[stored["sid"]], stored["start"], W),
                             _pair_keys(fresh, W))
        if not keep.all():
            stored = agg.take(stored, np.flatnonzero(keep))
        if stale:
            old = np.isin(_window_keys(host[p_sid], p_ts, W), _pair_keys(stale, W))
            s_sid, s_ts, s_val = agg.sort_dedupe(p_sid[old], p_ts[old], p_val[old],
                                                 p_order[old])
            extra = agg.bucketize(s_sid, s_ts, s_val, counter, width)
            extra = agg.take(extra, np.flatnonzero(extra["start"] >= A))
            stored = agg.merge_buckets(stored, extra, counter)
        recomputed = agg.empty_buckets()
        if fresh:
            r_sid, r_ts, r_val = self._raw_samples(db, sel, (p_sid, p_ts, p_val, p_order),
                                                   _floor(A, width), B, fresh)
            recomputed = agg.bucketize(r_sid, r_ts, r_val, counter, width)
            recomputed = agg.take(recomputed, np.flatnonzero(recomputed["start"] >= A))
        b = agg.concat_buckets([stored, recomputed])
        sid, start = b["sid"], b["start"]
        if ((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (start[1:] > start[:-1]))).all():
            return b  # rollup rows come back in order: nothing to sort
        return agg.take(b, agg.sort_index(sid, start))


def _add_seq(ranges: list[list[int]], seq: int) -> bool:
    """Add ``seq`` to sorted inclusive ranges; False if it was already there."""
    i = bisect.bisect_right(ranges, [seq, float("inf")]) - 1
    if i >= 0 and ranges[i][0] <= seq <= ranges[i][1]:
        return False
    joins_left = i >= 0 and ranges[i][1] == seq - 1
    joins_right = i + 1 < len(ranges) and ranges[i + 1][0] == seq + 1
    if joins_left and joins_right:
        ranges[i][1] = ranges[i + 1][1]
        del ranges[i + 1]
    elif joins_left:
        ranges[i][1] = seq
    elif joins_right:
        ranges[i + 1][0] = seq
    else:
        ranges.insert(i + 1, [seq, seq])
    return True


def _labels_match(labels_json: str, want: dict[str, str]) -> bool:
    if not want:
        return True
    have = json.loads(labels_json)
    return all(have.get(k) == v for k, v in want.items())


def _window_keys(host: np.ndarray, ts: np.ndarray, window_ms: int) -> np.ndarray:
    return host * (1 << 32) + ts // window_ms


def _pair_keys(pairs: set[tuple[int, int]], window_ms: int) -> np.ndarray:
    return np.array([h * (1 << 32) + w // window_ms for h, w in pairs], dtype=np.int64)


def _groups(sel: _Selection, group_by: tuple[str, ...] | None,
            hosts: dict[int, str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Group index of each selected series, and each group's host/labels/kind/unit."""
    group = np.zeros(len(sel), dtype=np.int64)
    groups: list[dict[str, Any]] = []
    index: dict[tuple[str, ...], int] = {}
    for i in range(len(sel)):
        labels = json.loads(sel.labels[i])
        if group_by is None:
            key: tuple[str, ...] = (str(i),)
            meta = {"host": hosts[sel.host[i]], "labels": labels}
        else:
            key = tuple(hosts[sel.host[i]] if k == "host" else labels.get(k, "")
                        for k in group_by)
            meta = {"host": hosts[sel.host[i]] if "host" in group_by else None,
                    "labels": {k: v for k, v in zip(group_by, key, strict=True) if k != "host"}}
        gi = index.get(key)
        if gi is None:
            gi = index[key] = len(groups)
            groups.append({**meta, "kind": sel.kind[i], "unit": sel.unit[i]})
        group[i] = gi
    return group, groups
