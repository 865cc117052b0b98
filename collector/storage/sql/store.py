"""What the relational backends share: options, helpers, and the connection seam.

``SQLStore`` holds the options and the in-process state every SQL backend has (caches, the
write lock, the test kill hook) and the helpers the parts use. A backend subclass provides the
connection seam: ``_write()`` (one write transaction, serialised), ``_read()`` (one read
snapshot) and ``_open()`` (a connection for statements outside a transaction, SQLite only;
the shared parts use ``_read()`` instead). SQL in the shared parts is the dialect both SQLite
(>= 3.35) and PostgreSQL understand, with ``?`` placeholders; the PostgreSQL connection
translates the placeholders (``postgres/database.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np

from edgemon.collector.storage.batches import BatchColumns, BatchReader, UnreadableBatch
from edgemon.collector.storage.decoded import DecodedCache
from edgemon.collector.storage.encoding import decode_chunks, decode_times
from edgemon.collector.storage.pending_cache import PendingMetricCache
from edgemon.collector.storage.selection import HOUR, MINUTE, TIER_WIDTH_MS
from edgemon.collector.storage.sql.layouts import LayoutCache

__all__ = ["DAY", "HOUR", "MINUTE", "PENDING_IDENT", "PENDING_ORDER", "SERIES_DELETED", "TIERS",
           "SQLStore",
           "chunked", "floor", "placeholders"]

log = logging.getLogger("edgemon.collector.storage")

DAY = 24 * HOUR

# tier name -> (bucket width, width of the window one rollup row covers)
TIERS: dict[str, tuple[int, int]] = {"1m": (TIER_WIDTH_MS["1m"], DAY),
                                     "1h": (TIER_WIDTH_MS["1h"], 30 * DAY)}
# the columns that tell a pending batch row from any other, ever (``pending_cache.py``)
PENDING_IDENT = "id, host_id, instance, seq, received_ms"
PENDING_ORDER = 1 << 62  # pending samples win ties against compacted ones (arrived later)
# meta key: how many times retention deleted series from this store (any process)
SERIES_DELETED = "series_deleted"
_IN_CHUNK = 500  # host variables per IN (...) list
_MAX_NOTED = 10_000  # unreadable pending batches readers note between two maintenance steps
# Test hook: "<stage>:N" makes the process SIGKILL itself inside a compaction transaction, at
# the N-th chunk/rollup row written (stage l0 or l1) or at the N-th end of a transaction just
# before its COMMIT (l0end, l1end). With ``EDGEMON_STORAGE_TEST_KILL_ONCE=<path>`` it fires only
# if that file does not exist yet, and makes it first (a restarted process then runs through).
_LET_IN_S = 0.1  # how long ingest's writer leaves the lock to a waiting compaction, at most
_GIVE_WAY_S = 0.1  # how long compaction leaves the lock to ingest's waiting writer, at most
_WRITER_POLL_S = 0.0005  # how often compaction looks whether the writer has the lock yet
_KILL_ENV = "EDGEMON_STORAGE_TEST_KILL"
_KILL_ONCE_ENV = "EDGEMON_STORAGE_TEST_KILL_ONCE"


def floor(x: int, width: int) -> int:
    return x - x % width


def chunked(seq: list[Any], size: int = _IN_CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def placeholders(values: list[Any]) -> str:
    """``?,?,...`` for an ``IN (...)`` list of ``values``."""
    return ",".join("?" * len(values))


class SQLStore:
    """Options and shared state of a relational store; see the module docstring."""

    def _configure(
        self,
        *,
        raw_retention_ms: int = 7 * DAY,
        rollup_1m_retention_ms: int = 90 * DAY,
        rollup_1h_retention_ms: int = 730 * DAY,
        window_ms: int = 2 * HOUR,
        compact_delay_ms: int = 60_000,
        close_grace_ms: int = 10 * MINUTE,
        merge_blocks: int = 8,
        step_samples: int = 200_000,
        txn_samples: int = 20_000,
        retention_series: int = 2_000,
        retention_rows: int = 5_000,
        batch_cache_mb: int = 64,
        decoded_cache_mb: int = 64,
        pending_cache_mb: int = 128,
        maintain_budget_ms: int = 1_000,
    ) -> None:
        """The options every backend takes (its constructor passes them on)."""
        if DAY % window_ms or window_ms % HOUR:
            raise ValueError("window_ms must be a whole number of hours dividing a day")
        self.retention = {"raw": raw_retention_ms, "1m": rollup_1m_retention_ms,
                          "1h": rollup_1h_retention_ms}
        self.window_ms = window_ms  # the backend replaces it by the one the store was made with
        self.compact_delay_ms = compact_delay_ms
        self.close_grace_ms = close_grace_ms
        self.merge_blocks = max(2, merge_blocks)
        self.step_samples = max(1, step_samples)
        # samples per compaction write transaction: how long ingest's writer can wait for it
        self.txn_samples = max(1, txn_samples)
        self.retention_series = retention_series
        self.retention_rows = retention_rows
        self.maintain_budget_ms = maintain_budget_ms
        self.reader = BatchReader(batch_cache_mb << 20)  # decoded pending batches
        self.decoded = DecodedCache(decoded_cache_mb << 20)  # decoded chunks/rollups, readers
        # one metric's columns of each pending batch, by batch row (alert rules, dashboards)
        self.pending_cache = PendingMetricCache(pending_cache_mb << 20)
        self._write_lock = threading.RLock()
        self._maintain_lock = threading.RLock()  # one maintenance step at a time
        # whether a compaction transaction gives way after its commit (ingest waits): set by the
        # compaction process from the collector's ``busy`` (``_give_way``)
        self.give_way: Any = None
        self._free_until = 0.0  # monotonic time until which it leaves the write lock free
        # the other half, across processes: a shared flag the compaction process raises while
        # it waits for the write lock (``_compaction_write``), and the collector's writer reads
        # (``_let_compaction_in``); set by ``compaction_process.py``
        self.waiting_flag: Any = None  # in the compaction process
        self.compaction_waits: Any = None  # in the collector: the number of the wait, or 0
        self._wait_number = 0  # the compaction process's waits for the lock, counted
        self._outwaited = 0  # the wait ingest's writer gave up leaving the lock free for
        # and the other way round: a shared value ingest's writer raises while it waits for the
        # lock (``_ingest_write``), and the compaction process reads before each of its write
        # transactions (``_take_turn``): set by ``compaction_process.py`` (SQLite only)
        self.writer_flag: Any = None  # in the collector
        self.writer_waits: Any = None  # in the compaction process: the number of the wait, or 0
        self._writer_wait_number = 0
        # events and seconds (``StorageStats.compaction``, /metrics): L0 transactions by path
        # and fallback reason, give-ways, ingest's writer's waits for the lock; bumped by the
        # writer's and compaction's threads, read by another (``count``, ``counted``)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._host_ids: dict[str, int] = {}
        self._series_cache: dict[tuple[Any, ...], dict[tuple[str, ...], Any]] = {}
        self._layouts = LayoutCache(self._series_cache)  # series ids per host batch layout
        self._series_deletions: int | None = None  # the store's count the caches were kept under
        # ids of pending batches a reader found unreadable, quarantined by the next maintenance
        self._unreadable: set[int] = set()
        self._unreadable_lock = threading.Lock()
        self._kill_stage, self._kill_after = None, 0
        spec = os.environ.get(_KILL_ENV, "")
        if spec:
            stage, _, count = spec.partition(":")
            self._kill_stage, self._kill_after = stage, int(count or 1)

    # -- the connection seam (a backend provides these) ----------------------------------------

    def _write(self) -> AbstractContextManager[Any]:
        """One write transaction, with the store's write lock held."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        """One read transaction: every SELECT inside sees the same snapshot."""
        raise NotImplementedError

    def _partitions_for(self, db: Any, table: str, windows: Iterable[int],
                        tier: int | None = None) -> None:
        """Before rows of ``table`` (blocks, chunks, or rollups of bucket width ``tier``) are
        written for ``windows``: a backend with time partitions checks that they have one (or
        fails the transaction, to make them and try again: ``postgres/database.py``)."""

    def _give_way(self, held_s: float) -> None:
        """After a compaction transaction held the write lock ``held_s`` seconds, without the
        writer's flag (``writer_waits``: PostgreSQL, a store without a compaction process): while
        ``give_way()`` says ingest waits, the lock is left free as long (at least 5 ms) before
        compaction's next write transaction (``_take_turn``). Another process waiting in
        SQLite's busy handler polls with growing sleeps (1, 2, 5 ... 100 ms), never more than
        it has already waited: a gap as long as the hold is one it sees, where an immediate
        next ``BEGIN IMMEDIATE`` would starve it. The gap is counted from the commit, so the
        work compaction does without the lock meanwhile (preparing its next transaction) is
        part of it, not followed by it."""
        if self.writer_waits is None and self.give_way is not None and self.give_way():
            self._free_until = time.monotonic() + max(0.005, held_s)

    def _take_turn(self) -> None:
        """Before a compaction write transaction. With the writer's flag (SQLite and a
        compaction process): only while ingest's writer waits for the lock right now, leave it
        free until the writer has it, at most ``_GIVE_WAY_S`` for each of its waits; a writer
        that does not wait costs compaction nothing (a gap after every transaction while
        messages wait cost it a third of its time at a paced 250 k samples/s and more back-log
        than it cleared). Without the flag: wait out what is left of the gap ``_give_way`` asked
        for, if ingest still waits."""
        waits = self.writer_waits
        if waits is not None:
            number = waits()
            if not number:
                return
            began = time.monotonic()
            deadline = began + _GIVE_WAY_S
            while waits() == number and time.monotonic() < deadline:
                time.sleep(_WRITER_POLL_S)
            self.count({"gave_way": 1, "gave_way_seconds": time.monotonic() - began})
            return
        left = self._free_until - time.monotonic()
        if left > 0 and self.give_way is not None and self.give_way():
            time.sleep(left)

    @contextmanager
    def _compaction_write(self) -> Iterator[Any]:
        """A compaction write transaction: after its turn (``_take_turn``), with the shared flag
        raised while it waits for the lock (to the number of this wait, never 0)."""
        self._take_turn()
        with self._flagged_write(self.waiting_flag, "_wait_number", "compaction") as db:
            yield db

    @contextmanager
    def _ingest_write(self) -> Iterator[Any]:
        """Ingest's write transaction: after leaving a waiting compaction its turn
        (``_let_compaction_in``), with the writer's flag raised while it waits for the lock."""
        self._let_compaction_in()
        with self._flagged_write(self.writer_flag, "_writer_wait_number", "writer") as db:
            yield db

    @contextmanager
    def _flagged_write(self, flag: Any, number: str, who: str) -> Iterator[Any]:
        """A write transaction with the shared ``flag`` (if any) raised to the number of this
        wait (never 0, kept in attribute ``number``) until it has the lock; counted in
        ``counts`` as ``who``'s: transactions, seconds waiting for the lock (waits of 100 ms
        or more), seconds holding it (the commit included)."""
        began = time.monotonic()
        if flag is not None:
            setattr(self, number, getattr(self, number) % 2_000_000_000 + 1)
            flag.value = getattr(self, number)
        try:
            with self._write() as db:
                if flag is not None:
                    flag.value = 0
                got = time.monotonic()
                yield db
        finally:
            if flag is not None:
                flag.value = 0
        done = time.monotonic()
        self.count({f"{who}_transactions": 1, f"{who}_wait_seconds": got - began,
                    f"{who}_waits_over_100ms": got - began >= 0.1,
                    f"{who}_hold_seconds": done - got})

    def count(self, events: dict[str, float]) -> None:
        """Add to the counters of ``StorageStats.compaction`` (any thread)."""
        with self._counts_lock:
            self._counts.update(events)

    def counted(self) -> dict[str, float]:
        """The counters so far (any thread)."""
        with self._counts_lock:
            return dict(self._counts)

    def _let_compaction_in(self) -> None:
        """Before an ingest write transaction: while the compaction process waits for the
        write lock, leave it free until it has it, at most ``_LET_IN_S`` for each of its waits.
        A writer that starts its next transaction right after each commit would leave it only
        the moments that happen to fall between two transactions. A wait it did not end in that
        time (a compaction process stopped, or behind another writer) is not waited for again:
        ingest pays ``_LET_IN_S`` once, not per transaction."""
        waits = self.compaction_waits
        if waits is None:
            return
        number = waits()
        if not number or number == self._outwaited:
            return
        deadline = time.monotonic() + _LET_IN_S
        while True:
            if waits() != number:
                return
            if time.monotonic() >= deadline:
                self._outwaited = number
                return
            time.sleep(0.001)

    def _kill_point(self, stage: str) -> None:
        """Test hook: die like kill -9 after the N-th write of ``stage`` (inside a transaction)."""
        if self._kill_stage == stage:
            self._kill_after -= 1
            if self._kill_after <= 0:
                once = os.environ.get(_KILL_ONCE_ENV)
                if once:
                    try:
                        with open(once, "x"):
                            pass
                    except FileExistsError:
                        self._kill_stage = None
                        return
                os.kill(os.getpid(), signal.SIGKILL)

    # -- shared by the parts -------------------------------------------------------------------

    def _host_id(self, db: Any, name: str, fresh: dict[str, int]) -> int:
        """The host's id, creating the row; new ids go to ``fresh`` until the commit (a rolled
        back id may be given to another host later)."""
        hid = self._host_ids.get(name) or fresh.get(name)
        if hid is None:
            db.execute("INSERT INTO hosts (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
            hid = fresh[name] = db.execute("SELECT id FROM hosts WHERE name = ?",
                                           (name,)).fetchone()[0]
        return hid

    @staticmethod
    def _series_deletions_in(db: Any) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (SERIES_DELETED,)).fetchone()
        return 0 if row is None else int(row[0])

    def _drop_series_ids_deleted_elsewhere(self, db: Any) -> None:
        """In a write transaction, before cached series ids are used: when retention in
        another process on this store (another collector's compaction, a compaction process
        started since) deleted series since the caches were kept, they are dropped, so that no
        sample is written to a deleted series' id (where no query would find it)."""
        deletions = self._series_deletions_in(db)
        if deletions != self._series_deletions:
            self._series_cache.clear()
            self._layouts.clear()
            self._series_deletions = deletions

    def _cutoffs(self, db: Any) -> dict[str, int]:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN "
                               "('cutoff_raw', 'cutoff_1m', 'cutoff_1h')"))
        return {"raw": int(meta["cutoff_raw"]), "1m": int(meta["cutoff_1m"]),
                "1h": int(meta["cutoff_1h"])}

    def _pending_columns(self, batch_id: int, payload: bytes) -> BatchColumns | None:
        """The columns of a pending batch for a reader, or None when it is unreadable: then it
        is skipped (never decoded again) and left for maintenance to quarantine."""
        try:
            return self.reader.read(payload, batch_id=batch_id)
        except UnreadableBatch:
            with self._unreadable_lock:
                if len(self._unreadable) < _MAX_NOTED:
                    self._unreadable.add(batch_id)
            return None

    def forget_compacted(self) -> int:
        """Drop from the caches of decoded pending batches those no longer pending (compacted
        or quarantined by another process: ``compaction_process.py``); how many payloads."""
        cached = self.reader.cached_ids()
        projected = self.pending_cache.idents()
        if not cached and not projected:
            return 0
        rows: set[tuple[Any, ...]] = set()
        with self._read() as db:
            for some in chunked(sorted({*cached.values(), *(i[0] for i in projected)})):
                rows.update(db.execute(
                    f"SELECT {PENDING_IDENT} FROM batches WHERE id IN ({placeholders(some)})",
                    some))
        alive = {row[0] for row in rows}
        gone = [payload for payload, i in cached.items() if i not in alive]
        self.reader.forget(gone)
        self.pending_cache.forget(i for i in projected if i not in rows)  # also a reused id
        return len(gone)

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
