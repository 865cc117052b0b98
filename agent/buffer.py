"""The agent's local buffer: one SQLite file holding every sample until the collector acks it.

Layout (see ``BUFFER.md``): ``series`` maps a small id to (metric, label values); ``cycles`` holds
one row per sampling cycle (msgpack ``[[series_id, scaled_int], ...]``); every ``batch_cycles``
the pending cycles are sealed, in one transaction, into one ``batches`` row holding the encoded
protocol payload with its instance and sequence number, which never change afterwards (so a
resend is byte-identical). ``ack()`` deletes acknowledged batches; ``enforce_budget()`` drops the
oldest batches (then cycles) when the disk budget or the maximum age is exceeded. Every change
of what the buffer holds updates the sample counters in ``meta`` in the same transaction, so
appended = acknowledged + dropped + buffered holds after every commit (``BUFFER.md``,
"Accounting"); what the buffer holds is counted by ``buffer_file.stats_of`` alone.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. Every commit (one per cycle) fsyncs
the write-ahead log, so a committed cycle survives a process crash, ``kill -9`` *and* a power
cut; NORMAL would skip that fsync and could lose the last few cycles on power loss, which is the
common failure of edge devices. The cost is one fsync per cycle (every 10 s by default).

This module raises ``sqlite3.Error`` and ``OSError``; ``buffer_store.BufferStore`` is the layer
that keeps the agent running through them. Every method runs on the thread that opened the
buffer. The file itself (schema, checks, statistics) is ``buffer_file.py``; what the next batch
may go on from (SPEC.md §9.1) is ``base_chain.py``.

Why one module of ~600 lines: every method changes what the buffer holds and its counters in
the same transaction; the file layer (``buffer_file.py``) and the base chain
(``base_chain.py``) are already apart.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from edgemon.agent.base_chain import BaseChain
from edgemon.agent.buffer_file import (
    ACKNOWLEDGED,
    APPENDED,
    DELIVERED_AFTER_DROP,
    DROPPED,
    FORMAT,
    BufferStats,
    connect,
    disk_bytes_of,
    is_corruption,
    problem_with,
    quarantine,
    read_stats,
    stats_of,
)
from edgemon.protocol import BatchBuilder, LimitExceeded, MetricDef, encode, to_scaled
from edgemon.protocol.base import UNKNOWN_BASE
from edgemon.protocol.catalogue import UNKNOWN_CATALOGUE, compact
from edgemon.protocol.codec import BASED_DICTIONARY_ID, DICTIONARY_ID
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

MAX_DROPPED_PUBLISHED = 100_000  # records of batches dropped after publication (~40 B each)
_ROW_OVERHEAD = 64  # bytes a deleted batch frees besides its payload (estimate, for eviction)

log = logging.getLogger("edgemon.agent.buffer")


class Sealed(NamedTuple):
    """A batch encoded for the buffer: both its forms (SPEC.md §9)."""

    seq: int
    first_ms: int
    last_ms: int
    samples: int
    payload: bytes  # inline
    catalogue: str  # id of the series catalogue the referencing form names
    catalogue_metrics: bytes  # msgpack of that catalogue's metrics; b"" without a referencing form
    referencing: bytes  # the referencing form; b"" when it would not be smaller


class BatchRef(NamedTuple):
    """A sealed batch without its payload."""

    id: int
    instance: str
    seq: int
    first_ms: int
    last_ms: int
    samples: int


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



class Buffer:
    """The SQLite buffer of one agent instance. Open with ``Buffer.open()``."""

    def __init__(self, db: sqlite3.Connection, path: Path, *, host: str, instance: str,
                 max_bytes: int, max_age_seconds: float, first_seq: int = 0) -> None:
        self._db = db
        self.path = path
        self.host = host
        self.instance = instance
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_seconds * 1000)
        self.recovered_from: Path | None = None  # where a corrupt file was moved, if it was
        self._series: dict[tuple[MetricDef, tuple[str, ...]], int] = {}
        self._by_id: dict[int, tuple[MetricDef, tuple[str, ...]]] = {}
        for sid, name, kind, unit, scale, keys, values in db.execute("SELECT * FROM series"):
            key = (MetricDef(name, kind, unit, scale, tuple(json.loads(keys))),
                   tuple(json.loads(values)))
            self._series[key] = sid
            self._by_id[sid] = key
        # the sequence number the next sealed batch gets: never one this instance used before
        self._next_seq = max(first_seq, db.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM batches WHERE instance = ?",
            (instance,)).fetchone()[0])
        self._warned: set[str] = set()
        self._bases = BaseChain()  # what the next batch may go on from (SPEC.md §9.1)
        # the newest pending cycle's time, or more (an upper bound: only used to spot a clock
        # that went back, which seals first; sealing with nothing pending does nothing)
        self._last_pending_ms: int | None = db.execute(
            "SELECT max(ts_ms) FROM cycles").fetchone()[0]

    @property
    def last_sealed_seq(self) -> int | None:
        """The sequence number of this instance's newest sealed batch (None before the first)."""
        return self._next_seq - 1 if self._next_seq > 0 else None

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, host: str, instance: str, max_bytes: int,
             max_age_seconds: float, first_seq: int = 0) -> Buffer:
        """Open (or create) the buffer at ``path``; a corrupt file is moved aside, not reused.

        ``first_seq``: the lowest sequence number this instance may seal next (after a corrupt
        buffer was replaced, the numbers it had used must not come again). Runs ``PRAGMA
        quick_check`` first (reads the whole file once). Raises ``sqlite3.Error`` or ``OSError``
        when the file cannot be opened at all (permissions, full disk).
        """
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        recovered_from = None
        problem = problem_with(path)
        if problem is not None:
            recovered_from = quarantine(path)
            log.error("buffer is corrupt (%s): moved aside to %s; starting a fresh buffer",
                      problem, recovered_from,
                      extra={"path": str(path), "moved_to": str(recovered_from)})
        db = connect(path, max_bytes)
        try:
            buffer = cls(db, path, host=host, instance=instance, max_bytes=max_bytes,
                         max_age_seconds=max_age_seconds, first_seq=first_seq)
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
                if type(value) is int and not metric.scale:  # most readings: no arithmetic
                    scaled = value if MIN_INT <= value <= MAX_INT else None
                else:
                    scaled = _scaled(metric, value)
                if scaled is None:
                    self._warn_once(metric.name, f"value {value!r} is not a finite 64-bit number")
                    continue
                values[sid] = scaled
            if values:
                self._db.execute("INSERT INTO cycles (ts_ms, samples, data) VALUES (?, ?, ?)",
                                 (ts_ms, len(values), msgpack.packb(list(values.items()))))
                self._add_meta(APPENDED, len(values))
        if values:
            self._last_pending_ms = ts_ms
        for key, sid in new.items():
            self._series[key] = sid
            self._by_id[sid] = (key[0], tuple(_clean_label(v) for v in key[1]))
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
        sealed: list[Sealed] = []
        # the newest catalogue: its id and stored msgpack (reused as is while a batch names it
        # unchanged) and its metrics (what a new one extends)
        row = self._db.execute("SELECT id, metrics FROM catalogues "
                               "ORDER BY created_ms DESC, id LIMIT 1").fetchone()
        base = None if row is None else (row[0], row[1], msgpack.unpackb(row[1]))
        lost = self._encode(cycles, now_ms, sealed, base)
        refs: list[BatchRef] = []
        with self._transaction():
            for seq, first, last, samples, payload, ident, metrics, referencing in sealed:
                cursor = self._db.execute(
                    "INSERT INTO batches (instance, seq, first_ms, last_ms, samples, sealed_ms, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self.instance, seq, first, last, samples, now_ms, payload))
                assert cursor.lastrowid is not None
                refs.append(BatchRef(cursor.lastrowid, self.instance, seq, first, last, samples))
                if not referencing:  # naming a catalogue would not be smaller (tiny batches)
                    continue
                self._db.execute("INSERT INTO catalogues (id, metrics, created_ms) VALUES "
                                 "(?, ?, ?) ON CONFLICT (id) DO UPDATE SET created_ms = "
                                 "excluded.created_ms", (ident, metrics, now_ms))
                self._db.execute("INSERT INTO referencing (batch_id, catalogue, payload) "
                                 "VALUES (?, ?, ?)", (cursor.lastrowid, ident, referencing))
            self._forget_catalogues()
            self._db.execute("DELETE FROM cycles WHERE id <= ?", (rows[-1][0],))
            self._add_meta(DROPPED, lost)
            used = {sid for _ts, pairs in cycles for sid, _v in pairs}
            stale = len(self._by_id) > len(used)
            if stale:
                self._db.execute("DELETE FROM series WHERE id NOT IN "
                                 "(SELECT value FROM json_each(?))", (json.dumps(sorted(used)),))
        self._last_pending_ms = None
        if stale:
            self._series = {k: sid for k, sid in self._series.items() if sid in used}
            self._by_id = {sid: k for sid, k in self._by_id.items() if sid in used}
        self._next_seq += len(sealed)
        return refs

    def _encode(self, cycles: Sequence[tuple[int, list[list[int]]]], now_ms: int,
                out: list[Sealed], base: tuple[str, bytes, list[list[Any]]] | None = None
                ) -> int:
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
            inline = builder.build(host=self.host, instance=self.instance, seq=seq,
                                   sent_ms=now_ms)
            payload = encode(inline)
            # the newest catalogue, extended if series appeared (SPEC.md §9)
            metrics, ident, referencing = compact(inline, base[2] if base else None)
            based = self._bases.based(referencing, metrics, seq)
            referencing_payload = encode(based, dict_id=BASED_DICTIONARY_ID
                                         if based is not referencing else DICTIONARY_ID)
            self._bases.sealed(seq, inline["metrics"])
        except LimitExceeded as exc:
            if len(cycles) > 1:
                half = len(cycles) // 2
                return (self._encode(cycles[:half], now_ms, out, base)
                        + self._encode(cycles[half:], now_ms, out, base))
            log.error("dropping a cycle of %d samples: %s", builder.samples, exc)
            return builder.samples
        if len(referencing_payload) >= len(payload):
            referencing_payload = packed = b""  # not stored: no catalogue to keep either
        elif base is not None and ident == base[0]:
            packed = base[1]  # the same catalogue: its stored msgpack, not packed again
        else:
            packed = msgpack.packb(metrics)
        out.append(Sealed(seq, cycles[0][0], cycles[-1][0], builder.samples, payload, ident,
                          packed, referencing_payload))
        return 0

    def bases_acked(self, instance: str, ranges: Iterable[tuple[int, int]]) -> None:
        """A collector that resolves bases stored these batches: the next batch may go on from
        the newest sealed one if it is among them."""
        if instance == self.instance:
            self._bases.acked(ranges)

    def ack(self, instance: str, ranges: Iterable[tuple[int, int]], now_ms: int) -> list[int]:
        """Delete the batches of ``instance`` whose seq is in an inclusive range; return ids.

        Their samples count as acknowledged. A range naming a batch dropped after publication
        credits its samples as delivered after all (they stay counted as dropped)."""
        ranges = list(ranges)
        with self._transaction():
            ids, samples = self._delete_batches(instance, ranges)
            self._add_meta(ACKNOWLEDGED, samples)
            recovered = 0
            for first, last in ranges:
                recovered += sum(row[0] for row in self._db.execute(
                    "DELETE FROM dropped_published WHERE instance = ? AND seq BETWEEN ? AND ? "
                    "RETURNING samples", (instance, first, last)))
            self._add_meta(DELIVERED_AFTER_DROP, recovered)
            self._set_meta("last_ack_ms", now_ms)
        return ids

    def reject(self, instance: str, ranges: Iterable[tuple[int, int]], reason: str = ""
               ) -> tuple[list[int], int, list[int]]:
        """The collector refused these batches for good: delete them, count their samples dropped.

        Except a batch that may have been refused in its referencing form (SPEC.md §9): it is
        kept and sent inline from now on (once; refused inline for another reason, it goes;
        ``unknown_catalogue`` never drops a batch that has a referencing form). For the reason
        ``unknown_catalogue`` its catalogue counts as not acknowledged any more, so every batch
        naming it goes inline until the collector acknowledges it again.

        Returns the deleted batch ids, the samples added to the dropped total and the ids of
        the batches kept to be sent again inline.
        """
        ranges = list(ranges)
        retry: list[int] = []
        if reason == UNKNOWN_BASE:  # the collector lacks bases: none for a while (1, 2, 4 ...)
            self._bases.refused(ranges)
        # Only a referencing publish can be refused as unknown_catalogue or unknown_base: a
        # batch already switched to inline gets that answer when an earlier referencing publish
        # of it was still on its way. It is never a reason to drop a batch.
        only_referencing = "" if reason in (UNKNOWN_CATALOGUE, UNKNOWN_BASE) else \
            " AND r.inline = 0"
        with self._transaction():
            for first, last in ranges:
                rows = self._db.execute(
                    "SELECT r.batch_id, r.catalogue FROM referencing r JOIN batches b ON "
                    "b.id = r.batch_id WHERE b.instance = ? AND b.seq BETWEEN ? AND ?"
                    + only_referencing, (instance, first, last)).fetchall()
                for batch_id, ident in rows:
                    self._db.execute("UPDATE referencing SET inline = 1 WHERE batch_id = ?",
                                     (batch_id,))
                    if reason == UNKNOWN_CATALOGUE:
                        self._db.execute("UPDATE catalogues SET acked = 0 WHERE id = ?", (ident,))
                    retry.append(batch_id)
            kept = json.dumps(retry)
            rows = []
            for first, last in ranges:
                rows += self._db.execute(
                    "DELETE FROM batches WHERE instance = ? AND seq BETWEEN ? AND ? AND id NOT IN "
                    "(SELECT value FROM json_each(?)) RETURNING id, samples",
                    (instance, first, last, kept)).fetchall()
            dropped = sum(n for _id, n in rows)
            self._add_meta(DROPPED, dropped)
            self._forget_catalogues()
        return [batch_id for batch_id, _n in rows], dropped, retry

    def catalogues_acked(self, idents: Iterable[str]) -> None:
        """A collector stored these catalogues: batches naming them go in the referencing form."""
        with self._transaction():
            self._db.executemany("UPDATE catalogues SET acked = 1 WHERE id = ?",
                                 [(ident,) for ident in idents])

    def newest_catalogue(self) -> tuple[str, bool] | None:
        """(id, acknowledged) of the catalogue of the newest sealed batch, if any."""
        row = self._db.execute("SELECT id, acked FROM catalogues "
                               "ORDER BY created_ms DESC, id LIMIT 1").fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def catalogue_metrics(self, ident: str) -> list[list[Any]] | None:
        """The metrics of catalogue ``ident`` (SPEC.md §9), if the buffer has it."""
        row = self._db.execute("SELECT metrics FROM catalogues WHERE id = ?",
                               (ident,)).fetchone()
        return None if row is None else msgpack.unpackb(row[0])

    def _forget_catalogues(self) -> None:
        """Catalogues no batch names any more go (inside the caller's transaction), except the
        newest: the runner declares it."""
        self._db.execute("DELETE FROM catalogues WHERE id NOT IN (SELECT catalogue FROM "
                         "referencing) AND id NOT IN (SELECT id FROM catalogues ORDER BY "
                         "created_ms DESC, id LIMIT 1)")

    def _delete_batches(self, instance: str, ranges: Iterable[tuple[int, int]]
                        ) -> tuple[list[int], int]:
        """Delete (inside the caller's transaction) ``instance``'s batches whose seq is in an
        inclusive range; the deleted ids and their samples."""
        rows: list[tuple[int, int]] = []
        for first, last in ranges:
            rows += self._db.execute(
                "DELETE FROM batches WHERE instance = ? AND seq BETWEEN ? AND ? "
                "RETURNING id, samples", (instance, first, last)).fetchall()
        return [batch_id for batch_id, _n in rows], sum(n for _id, n in rows)

    def mark_published(self, batch_id: int) -> None:
        """The batch was handed to the broker: if it is ever dropped, remember it (see ack)."""
        with self._transaction():
            self._db.execute("UPDATE batches SET published = 1 WHERE id = ? AND published = 0",
                             (batch_id,))

    def count_lost_before_buffering(self, samples: int) -> None:
        """Samples sampled but lost before they reached the file (held in memory while the disk
        was full): counted as appended and dropped, so the identity still holds."""
        with self._transaction():
            self._add_meta(APPENDED, samples)
            self._add_meta(DROPPED, samples)

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
            dropped += self._drop_batches(expired, now_ms)
        if self.disk_bytes() <= self.max_bytes:
            return dropped
        self._reclaim()
        stuck = 0  # rounds that freed nothing (a reader holding the log): give up after a few
        while (excess := self.disk_bytes() - self.max_bytes) > 0 and stuck < 3:
            rows = self._db.execute(
                "SELECT id, samples, length(payload) + coalesce((SELECT length(r.payload) FROM "
                "referencing r WHERE r.batch_id = batches.id), 0) FROM batches "
                "ORDER BY id LIMIT 256").fetchall()
            if rows:
                chosen, freed = [], 0
                for row in rows:
                    chosen.append(row)
                    freed += row[2] + _ROW_OVERHEAD
                    if freed >= excess:
                        break
                dropped += self._drop_batches(chosen, now_ms)
            elif self._db.execute("SELECT 1 FROM cycles LIMIT 1").fetchone() is not None:
                dropped += self._drop_oldest_cycle()
            else:
                break  # only the catalog is left: nothing more to give
            self._reclaim()
            stuck = stuck + 1 if self.disk_bytes() - self.max_bytes >= excess else 0
        return dropped

    def _drop_batches(self, rows: Sequence[Sequence[int]], now_ms: int) -> int:
        """Drop the batches with ids from ``rows[0][0]`` to ``rows[-1][0]`` (oldest first);
        those already published are remembered as in doubt (``dropped_published``)."""
        samples = sum(row[1] for row in rows)
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO dropped_published (instance, seq, samples, dropped_ms) "
                "SELECT instance, seq, samples, ? FROM batches "
                "WHERE id BETWEEN ? AND ? AND published = 1",
                (now_ms, rows[0][0], rows[-1][0]))
            # bounded: the oldest records go first (their batches are the least likely to come)
            self._db.execute(
                "DELETE FROM dropped_published WHERE (instance, seq) IN (SELECT instance, seq "
                "FROM dropped_published ORDER BY dropped_ms LIMIT max(0, (SELECT count(*) FROM "
                "dropped_published) - ?))", (MAX_DROPPED_PUBLISHED,))
            self._db.execute("DELETE FROM batches WHERE id BETWEEN ? AND ?",
                             (rows[0][0], rows[-1][0]))
            self._add_meta(DROPPED, samples)
            self._forget_catalogues()
        return samples

    def _drop_oldest_cycle(self) -> int:
        with self._transaction():
            cycle_id, samples = self._db.execute(
                "SELECT id, samples FROM cycles ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM cycles WHERE id = ?", (cycle_id,))
            self._add_meta(DROPPED, samples)
        return int(samples)

    def _reclaim(self) -> None:
        """Give free pages back to the filesystem and empty the write-ahead log."""
        # executescript steps the pragma to the end; execute() would free a single page.
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def disk_bytes(self) -> int:
        """Bytes the buffer takes on disk: database pages plus the write-ahead log."""
        return disk_bytes_of(self._db, self.path)

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
        """A sealed batch and the payload to send, or None once acknowledged or dropped: its
        referencing form while its catalogue is acknowledged (and the collector did not refuse
        it), else the inline form."""
        row = self._db.execute(
            "SELECT b.id, b.instance, b.seq, b.first_ms, b.last_ms, b.samples, "
            "coalesce((SELECT r.payload FROM referencing r JOIN catalogues c ON c.id = "
            "r.catalogue WHERE r.batch_id = b.id AND r.inline = 0 AND c.acked = 1), b.payload) "
            "FROM batches b WHERE b.id = ?", (batch_id,)).fetchone()
        return None if row is None else (BatchRef(*row[:6]), row[6])

    def stats(self) -> BufferStats:
        return stats_of(self._db, self.path)

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


