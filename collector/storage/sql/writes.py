"""The ingest write path: batches kept as received, sequence numbers, hosts and statuses.

``store_batches`` keeps each received payload as-is in ``batches`` (the durable write-ahead
record) and records its sequence number in ``seq_ranges`` (de-duplication forever, and gaps), in
one transaction committed before returning. Nothing is decoded here: compaction and queries read
the payloads later (``batches.py``). A batch that comes with its ``projected`` columns (made by
ingest from the batch it decoded) has them put in the cache of pending batches under its new
row once the transaction is committed (``pending_cache.py``): its first reader decodes nothing.
"""

from __future__ import annotations

import bisect
import json
import statistics
from typing import Any

from edgemon.collector.storage import accounting
from edgemon.collector.storage.base import IngestItem, StoreResult
from edgemon.collector.storage.pending_cache import Projection
from edgemon.collector.storage.sql.store import PENDING_IDENT, SQLStore, chunked, placeholders

__all__ = ["Writes"]

_OFFSETS_KEPT = 15  # live batches whose receive - send times give the clock offset (median)


class Writes(SQLStore):
    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        if not items:
            return []
        fresh: dict[str, int] = {}
        cache = self.pending_cache
        # (host id, instance, seq) of a stored batch -> its columns for the cache
        projected: dict[tuple[int, str, int], Projection] = {}
        with self._ingest_write() as db:
            hids = {name: self._host_id(db, name, fresh)
                    for name in {it.batch.host for it in items}}
            ranges = self._seq_ranges(db, {(hids[it.batch.host], it.batch.instance)
                                           for it in items})
            before = {k: [tuple(r) for r in v] for k, v in ranges.items()}
            results: list[StoreResult] = []
            rows = []
            per_host: dict[int, dict[str, Any]] = {}
            for it in items:
                batch = it.batch
                hid = hids[batch.host]
                samples = batch.sample_count
                stored = _add_seq(ranges[(hid, batch.instance)], batch.seq)
                results.append(StoreResult(batch.host, batch.instance, batch.seq, stored,
                                           samples))
                seen = per_host.setdefault(hid, {"seen": it.received_ms, "live": [],
                                                 "instances": {}})
                seen["seen"] = max(seen["seen"], it.received_ms)
                seen["instances"][batch.instance] = max(
                    seen["instances"].get(batch.instance, 0), it.received_ms)
                if stored:
                    t_max = batch.last_timestamp
                    rows.append((hid, batch.instance, batch.seq, it.received_ms, batch.t[0],
                                 t_max, samples, int(it.historical), it.payload))
                    # live batches only: a back-fill's would crowd out what readers use now
                    if it.projected is not None and cache.enabled and not it.historical:
                        projected[(hid, batch.instance, batch.seq)] = it.projected
                    if not it.historical:
                        seen["live"].append((batch.sent, batch.instance,
                                             it.received_ms - batch.sent))
            self._insert_batches(db, rows)
            idents = self._pending_idents(db, list(projected)) if projected else []
            gone: list[tuple[Any, ...]] = []
            added: list[tuple[Any, ...]] = []
            for key, new in ranges.items():
                old = set(before[key])
                new_set = {tuple(r) for r in new}
                gone += [(*key, lo) for lo, _ in sorted(old - new_set)]
                added += [(*key, lo, hi) for lo, hi in sorted(new_set - old)]
            if gone:  # every delete before any insert: a range may keep its lo
                db.executemany("DELETE FROM seq_ranges WHERE host_id = ? AND instance = ? AND "
                               "lo = ?", gone)
            if added:
                db.executemany("INSERT INTO seq_ranges VALUES (?, ?, ?, ?)", added)
            self._update_hosts(db, per_host)
        self._host_ids.update(fresh)
        for ident in idents:  # committed: these rows are there for every reader from now on
            p = projected[ident[1:4]]
            cache.put(ident, p.columns, p.names)
        return results

    @staticmethod
    def _pending_idents(db: Any, keys: list[tuple[int, str, int]]) -> list[tuple[Any, ...]]:
        """The ident (``PENDING_IDENT``) of the batch rows of (host id, instance, seq) ``keys``:
        one query per 500 hosts and 500 sequence numbers, by the unique key's host and sequence
        numbers (a host back-filling thousands of batches in one transaction stays within the
        engines' limits on parameters)."""
        wanted = set(keys)
        out = []
        for chunk in chunked(sorted({hid for hid, _, _ in keys})):
            hosts = set(chunk)
            for seqs in chunked(sorted({seq for hid, _, seq in keys if hid in hosts})):
                out += [tuple(row) for row in db.execute(
                    f"SELECT {PENDING_IDENT} FROM batches WHERE host_id IN "
                    f"({placeholders(chunk)}) AND seq IN ({placeholders(seqs)})",
                    (*chunk, *seqs))
                    if (row[1], row[2], row[3]) in wanted]
        return out

    @staticmethod
    def _seq_ranges(db: Any, keys: set[tuple[int, str]]) -> dict[tuple[int, str],
                                                                  list[list[int]]]:
        """The stored sequence ranges of (host id, instance) ``keys``, sorted: one query per
        500 hosts (a round trip each on PostgreSQL), not one per instance."""
        ranges: dict[tuple[int, str], list[list[int]]] = {key: [] for key in keys}
        for chunk in chunked(sorted({hid for hid, _ in keys})):
            for hid, instance, lo, hi in db.execute(
                    f"SELECT host_id, instance, lo, hi FROM seq_ranges WHERE host_id IN "
                    f"({placeholders(chunk)}) ORDER BY host_id, instance, lo", chunk):
                found = ranges.get((hid, instance))
                if found is not None:
                    found.append([lo, hi])
        return ranges

    def _insert_batches(self, db: Any, rows: list[tuple[Any, ...]]) -> None:
        """Insert new ``batches`` rows (host_id, instance, seq, received_ms, t_min, t_max,
        samples, historical, payload): new by ``seq_ranges``, read under the write lock; the
        unique key is the backstop."""
        db.executemany(
            "INSERT INTO batches (host_id, instance, seq, received_ms, t_min, t_max, samples, "
            "historical, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows)

    def _update_hosts(self, db: Any, per_host: dict[int, dict[str, Any]]) -> None:
        """Instances seen, and each host's row: last seen, current instance, clock offset."""
        db.executemany("INSERT INTO instances VALUES (?, ?, ?, ?) ON CONFLICT (host_id, "
                       "instance) DO UPDATE SET last_seen_ms = max(instances.last_seen_ms, "
                       "excluded.last_seen_ms)",
                       [(hid, instance, last, last) for hid, seen in sorted(per_host.items())
                        for instance, last in sorted(seen["instances"].items())])
        rows: dict[int, tuple[Any, ...]] = {}
        for chunk in chunked(sorted(per_host)):
            for hid, *row in db.execute(
                    "SELECT id, instance, instance_ts, status_seen, offsets FROM hosts WHERE id "
                    f"IN ({placeholders(chunk)})", chunk):
                rows[hid] = tuple(row)
        db.executemany(
            "UPDATE hosts SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?), instance = ?, "
            "instance_ts = ?, offsets = ?, clock_offset_ms = ?, online = coalesce(?, online) "
            "WHERE id = ?",
            [self._host_update(hid, rows[hid], seen) for hid, seen in sorted(per_host.items())])

    @staticmethod
    def _host_update(hid: int, row: tuple[Any, ...], seen: dict[str, Any]) -> tuple[Any, ...]:
        """The parameters of one host's UPDATE, from its row and what this call saw."""
        instance, instance_ts, status_seen, offsets_json = row
        online = None
        offsets: list[int] = json.loads(offsets_json) if offsets_json else []
        for sent, inst, offset in sorted(seen["live"]):
            if instance_ts is None or sent >= instance_ts:
                instance, instance_ts = inst, sent
            offsets.append(offset)
            if not status_seen:
                online = 1  # no birth/death seen yet: a live batch is the best evidence
        offsets = offsets[-_OFFSETS_KEPT:]
        offset = statistics.median_low(offsets) if offsets else None
        return (seen["seen"], instance, instance_ts, json.dumps(offsets) if offsets else None,
                offset, online, hid)

    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int, last_seq: int | None = None) -> None:
        fresh: dict[str, int] = {}
        with self._write() as db:
            hid = self._host_id(db, host, fresh)
            accounting.record_declared(db, hid, instance, last_seq, timestamp_ms)
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
