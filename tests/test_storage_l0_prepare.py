"""L0 prepared outside the write lock (``Compaction._prepare_l0``) and applied in a short write
transaction (``_apply_l0``), on both backends: the same rows as the in-lock path on random data
(duplicates across batches, batches sent again by a restarted agent), exactly once when what a
plan was prepared from changes before it is applied (the in-lock path then does the part), and
no encoding inside the write transaction of a part that needs no new series. The same for L1's
merges of open windows (``_prepare_l1``, ``_apply_l1``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.storage.base import IngestItem
from edgemon.collector.storage.sql import SQLStorage, block_blobs, compaction
from edgemon.collector.storage.sql.compaction import BEHIND_TXN_FACTOR, L0Plan, L1Plan
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support.storages import Stores

T0 = 1_780_012_800_000
HOUR = 3_600_000
NOW = T0 + HOUR  # the window of T0 not closed yet: no rollups, and no merges (merge_blocks)
METRICS = (MetricDef("load1", GAUGE, "", 2), MetricDef("bytes", COUNTER, "B", 0, ("dev",)))


def batch(host: str, instance: str, seq: int, points: list[tuple[int, int, str, int]]
          ) -> IngestItem:
    """A batch of (timestamp, metric index, label value, value) points."""
    builder = BatchBuilder()
    for ts, m, label, value in points:
        builder.add(ts, METRICS[m], (label,) if METRICS[m].label_keys else (), value)
    payload = encode(builder.build(host=host, instance=instance, seq=seq,
                                   sent_ms=T0 + (seq + 1) * 60_000))
    return IngestItem(validate_batch(decode(payload)), payload, T0 + seq * 60_000, False)


def random_items(rng: random.Random, hosts: int, per_host: int) -> list[IngestItem]:
    """Batches of a minute each, host by host interleaved; some overlap the minute before
    (duplicates across batches, other values), some are sent again by a new instance."""
    items = []
    for seq in range(per_host):
        for h in range(hosts):
            start = T0 + seq * 60_000 - rng.choice((0, 0, 30_000))
            points = [(start + k * 10_000, m, label, rng.randint(0, 10_000))
                      for k in range(6) for m, label in ((0, ""), (1, "eth0"), (1, "eth1"))
                      if rng.random() < 0.9]
            if rng.random() < 0.1:  # a new series, now and then
                points.append((start, 1, f"tun{rng.randint(0, 3)}", rng.randint(0, 100)))
            items.append(batch(f"h{h}", "i1", seq, points))
            if rng.random() < 0.1:  # a restarted agent sends it again
                items.append(batch(f"h{h}", "i2", seq, points))
    return items


def stored(store: SQLStorage) -> dict[str, list[Any]]:
    """Every row compaction writes, blobs included, in id order; a series by (host id, name,
    labels), not by its id (which ids a backend's sequence gives depends on the transactions
    that made series, e.g. PostgreSQL's retried for a missing partition)."""
    queries = {
        "series": "SELECT id, host_id, name, labels, kind, scale, first_ms, last_ms FROM series",
        "blocks": "SELECT id, host_id, window_ms, n, times FROM blocks",
        "chunks": "SELECT series_id, window_ms, block_id, data FROM chunks",
        "dirty": "SELECT host_id, window_ms, blocks, samples FROM dirty",
        "batches": "SELECT id FROM batches",
        "rollups": "SELECT series_id, tier, window_ms, data FROM rollups",
    }
    with store._read() as db:
        key = {sid: (hid, name, labels) for sid, hid, name, labels in db.execute(
            "SELECT id, host_id, name, labels FROM series")}
        out = {name: [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                      for row in db.execute(sql)] for name, sql in queries.items()}
    for name in ("series", "chunks", "rollups"):
        out[name] = [(key[row[0]], *row[1:]) for row in out[name]]
    return {name: sorted(rows) for name, rows in out.items()}


def raw_samples(store: SQLStorage) -> list[tuple[str, str, str, int, float]]:
    """Every sample the blocks hold, not deduplicated: (host, name, labels, ts, value)."""
    with store._read() as db:
        key = {sid: (h, n, lab) for sid, h, n, lab in db.execute(
            "SELECT s.id, h.name, s.name, s.labels FROM series s JOIN hosts h ON "
            "h.id = s.host_id")}
        times = store._block_times(db.execute("SELECT id, times FROM blocks").fetchall())
        local = sorted(key)
        rows = [(local.index(sid), block_id, data) for sid, block_id, data in
                db.execute("SELECT series_id, block_id, data FROM chunks")]
    sid, ts, val, _ = store._chunk_samples(rows, times)
    return sorted((*key[local[i]], t, v) for i, t, v in
                  zip(sid.tolist(), ts.tolist(), val.tolist(), strict=True))


class Spying:
    """In front of the real store: counts the parts applied from a plan, runs ``between``
    between a part's prepare and its apply, and can turn the prepared path off."""

    def __init__(self, location: str, **opts: Any) -> None:
        super().__init__(location, **opts)  # type: ignore[call-arg]
        self.applied = self.fallbacks = self.applied_l1 = self.fallbacks_l1 = 0
        self.between_l1: Callable[[Any], None] | None = None
        self.prepare = True
        self.between: Callable[[Any], None] | None = None

    def _prepare_l0(self, *args: Any) -> L0Plan | str:
        plan = super()._prepare_l0(*args) if self.prepare else "off"  # type: ignore[misc]
        if isinstance(plan, L0Plan) and self.between is not None:
            between, self.between = self.between, None
            between(self)
        return plan

    def _apply_l0(self, db: Any, plan: L0Plan) -> str | None:
        why: str | None = super()._apply_l0(db, plan)  # type: ignore[misc]
        self.applied += why is None
        self.fallbacks += why is not None
        return why

    def _prepare_l1(self, windows: list[tuple[int, int]]) -> L1Plan | None:
        plan = super()._prepare_l1(windows) if self.prepare else None  # type: ignore[misc]
        if plan is not None and self.between_l1 is not None:
            between, self.between_l1 = self.between_l1, None
            between(self)
        return plan

    def _apply_l1(self, db: Any, plan: L1Plan, cut: dict[str, int]) -> bool:
        done: bool = super()._apply_l1(db, plan, cut)  # type: ignore[misc]
        self.applied_l1 += done
        self.fallbacks_l1 += not done
        return done


def open_spying(stores: Stores, **opts: Any) -> Any:
    opts = {"merge_blocks": 1_000, **opts}
    return stores.open(mixin=Spying, compact_delay_ms=0, txn_samples=400, step_samples=2_000,
                       **opts)


@pytest.mark.parametrize("seed", range(2))
def test_the_prepared_path_stores_what_the_in_lock_path_stores(stores: Stores,
                                                                tmp_path: Any,
                                                                seed: int) -> None:
    rng = random.Random(seed)
    warm = random_items(rng, 6, 2)
    rest = random_items(random.Random(seed + 100), 6, 12)
    results = []
    for prepare in (True, False):
        other = Stores(stores.backend, tmp_path / f"p{prepare}", stores._postgres)
        (tmp_path / f"p{prepare}").mkdir()
        st = open_spying(other, merge_blocks=3)
        st.prepare = prepare
        try:
            for part in (warm, rest[:20], rest[20:40], rest[40:60], rest[60:]):
                st.store_batches(part)
                st.compact_all(NOW)
            results.append((stored(st), raw_samples(st), st.applied, st.applied_l1))
            st.compact_all(NOW + 3 * HOUR)  # the windows close: merged and rolled up
            results[-1] = (*results[-1], stored(st))
        finally:
            st.close()
    (fast, fast_samples, applied, applied_l1, fast_closed), (slow, slow_samples, *_, slow_closed
                                                             ) = results
    assert applied > 0  # the prepared path did parts (the in-lock one made the new series)
    assert applied_l1 > 0  # and merges
    assert fast == slow
    assert fast_samples == slow_samples
    assert fast["batches"] == []
    assert fast_closed == slow_closed and fast_closed["rollups"] and not fast_closed["dirty"]


Sent = list[tuple[str, list[tuple[int, int, str, int]]]]  # (host, points) of each batch


def exactly_once_setup(stores: Stores, **opts: Any) -> tuple[Any, list[IngestItem], Sent]:
    """A store whose series exist, and the batches of its next step (none overlapping)."""
    st = open_spying(stores, **opts)
    sent = [(f"h{h}", [(T0 + seq * 60_000 + k * 10_000, m, "eth0", seq * 10 + k)
                       for k in range(6) for m in (0, 1)])
            for seq in range(8) for h in range(3)]
    items = [batch(host, "i1", i // 3, points) for i, (host, points) in enumerate(sent)]
    st.store_batches(items[:3])
    st.compact_all(NOW)
    st.store_batches(items[3:])
    return st, items, sent


def expected(sent: Sent) -> list[tuple[str, str, int, float]]:
    return sorted((host, METRICS[m].name, ts, float(value))  # stored at the metric's scale
                  for host, points in sent for ts, m, _, value in points)


def samples(store: SQLStorage) -> list[tuple[str, str, int, float]]:
    return sorted((host, name, ts, value) for host, name, _, ts, value in raw_samples(store))


@contextmanager
def other_process(stores: Stores) -> Iterator[SQLStorage]:
    """The same store opened again: another process on it (another collector's compaction)."""
    other = stores.open()
    try:
        yield other
    finally:
        other.close()


def test_batches_compacted_elsewhere_meanwhile_are_stored_once(stores: Stores) -> None:
    st, _, sent = exactly_once_setup(stores)

    def elsewhere(_: Any) -> None:
        with other_process(stores) as other:
            other.compact_all(NOW)

    st.between = elsewhere
    st.compact_all(NOW)
    assert st.fallbacks >= 1
    # counted by the reason the plan was rejected under the lock
    assert st.stats().compaction["l0_in_lock_batches_changed"] == st.fallbacks
    assert samples(st) == expected(sent)
    st.close()


def test_a_batch_changed_meanwhile_is_stored_as_it_is_then(stores: Stores) -> None:
    st, _, sent = exactly_once_setup(stores)
    changed = ("h0", [(T0 + 99 * 60_000, 0, "", 7)])
    replacement = batch(changed[0], "i1", 99, changed[1])

    def change(store: Any) -> None:  # the first pending batch's id now holds another batch
        with store._write() as db:
            first = db.execute("SELECT min(id) FROM batches").fetchone()[0]
            db.execute("UPDATE batches SET payload = ? WHERE id = ?",
                       (replacement.payload, first))

    st.between = change
    st.compact_all(NOW)
    assert st.fallbacks >= 1
    assert samples(st) == expected([*sent[:3], changed, *sent[4:]])
    st.close()


def test_series_deleted_elsewhere_meanwhile_are_made_again(stores: Stores) -> None:
    st, _, sent = exactly_once_setup(stores)

    def retention_elsewhere(store: Any) -> None:  # h0's series lose their samples and rows
        with store._write() as db:
            ids = [i for (i,) in db.execute("SELECT s.id FROM series s JOIN hosts h ON "
                                            "h.id = s.host_id WHERE h.name = 'h0'")]
            for i in ids:
                db.execute("DELETE FROM chunks WHERE series_id = ?", (i,))
                db.execute("DELETE FROM series WHERE id = ?", (i,))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'series_deleted'")
            if db.execute("SELECT 1 FROM meta WHERE key = 'series_deleted'").fetchone() is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('series_deleted', 1)")

    st.between = retention_elsewhere
    st.compact_all(NOW)
    assert st.fallbacks >= 1
    assert samples(st) == expected(sent[1:])  # h0's first batch: its samples deleted
    st.close()


def test_a_cutoff_moved_meanwhile_is_seen(stores: Stores) -> None:
    st, _, sent = exactly_once_setup(stores)

    def retention_moved(store: Any) -> None:
        with store._write() as db:
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'cutoff_raw'")

    st.between = retention_moved
    st.compact_all(NOW)
    assert st.fallbacks >= 1
    assert samples(st) == expected(sent)
    st.close()


def test_blocks_added_to_a_window_while_its_merge_was_prepared_are_merged_once(
        stores: Stores) -> None:
    st, _, sent = exactly_once_setup(stores, merge_blocks=2)
    late = ("h0", [(T0 + 30 * 60_000, 0, "", 5)])

    def l0_elsewhere(_: Any) -> None:  # another block of h0's window, and its dirty count
        with other_process(stores) as other:
            other.store_batches([batch(late[0], "i1", 30, late[1])])
            other._compact_pending(NOW)

    st.between_l1 = l0_elsewhere
    st.compact_all(NOW)
    assert st.fallbacks_l1 >= 1 and st.applied >= 1
    assert samples(st) == expected([*sent, late])
    with st._read() as db:
        assert db.execute("SELECT max(blocks) FROM dirty").fetchone()[0] == 1
    st.close()


def test_no_encoding_in_the_write_transaction_once_the_series_exist(
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    st, items, _ = exactly_once_setup(stores, merge_blocks=2)
    st.txn_samples = 50  # several parts
    for item in items[3:]:  # read by a query: kept until compacted
        st.reader.read(item.payload)
    assert st.reader.used > 0
    in_write = [False]
    calls = {True: 0, False: 0}
    write = st._write

    @contextmanager
    def watched() -> Iterator[Any]:
        with write() as db:
            in_write[0] = True
            try:
                yield db
            finally:
                in_write[0] = False

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def encode_counted(*args: Any) -> Any:
            calls[in_write[0]] += 1
            return real(*args)
        return encode_counted

    st._write = watched
    monkeypatch.setattr(block_blobs, "encode_chunks", counted(block_blobs.encode_chunks))
    monkeypatch.setattr(block_blobs, "encode_times_many",
                        counted(block_blobs.encode_times_many))
    st.compact_all(NOW)
    assert st.backlog()["pending_batches"] == 0
    assert calls[True] == 0
    assert calls[False] > 2 * st.applied and st.applied >= 2 and st.applied_l1 >= 1
    assert st.fallbacks == st.fallbacks_l1 == 0
    assert st.reader.used == 0  # the compacted batches' columns are dropped from the cache
    st.close()


def test_new_hosts_are_compacted_from_a_plan_once_their_series_are_made(stores: Stores) -> None:
    """A host's first batches: their series are made in a short transaction of their own,
    then the part is written from its plan like any other (no in-lock fallback, counted by
    reason in the storage's stats), every sample once."""
    st = open_spying(stores)
    sent = [(f"h{h}", [(T0 + seq * 60_000 + k * 10_000, m, f"eth{seq % 2}", seq * 10 + k)
                       for k in range(6) for m in (0, 1)])
            for seq in range(3) for h in range(4)]
    st.store_batches([batch(host, "i1", i // 4, points) for i, (host, points) in enumerate(sent)])
    st.compact_all(NOW)
    counts = st.stats().compaction
    assert st.fallbacks == 0 and st.applied >= 1
    assert counts["l0_prepared"] == st.applied and counts["l0_series_transactions"] >= 1
    assert not [k for k in counts if k.startswith("l0_in_lock")]
    assert samples(st) == expected(sent)
    assert st.backlog()["pending_batches"] == 0
    st.close()


def test_a_restarted_compaction_finds_the_series_made_before(stores: Stores) -> None:
    """Caches empty, series in the store: the series transaction finds them (one read of the
    hosts' rows), makes none again, and the parts are written from their plans."""
    st, _, sent = exactly_once_setup(stores)
    with st._read() as db:
        before = db.execute("SELECT id, host_id, name, labels FROM series ORDER BY id").fetchall()
    st.close()
    again = open_spying(stores)
    again.compact_all(NOW)
    with again._read() as db:
        after = db.execute("SELECT id, host_id, name, labels FROM series ORDER BY id").fetchall()
    assert after == before and len(before) == 6  # 3 hosts x 2 series
    assert again.fallbacks == 0 and again.applied >= 1
    assert again.stats().compaction["l0_series_transactions"] >= 1
    assert samples(again) == expected(sent)
    again.close()


def test_l0_transactions_grow_only_while_compaction_is_behind(stores: Stores) -> None:
    """At most ``txn_samples`` per L0 transaction while a step takes all that is due; up to
    ``BEHIND_TXN_FACTOR`` times that while more is due than a step takes."""
    st = open_spying(stores)
    st.txn_samples, st.step_samples = 30, 120
    sent = [(f"h{h}", [(T0 + seq * 60_000 + k * 10_000, 0, "", seq * 10 + k)
                       for k in range(6)]) for seq in range(2) for h in range(30)]
    st.store_batches([batch(host, "i1", i // 30, points) for i, (host, points) in enumerate(sent)])
    sizes: list[tuple[bool, int]] = []  # (behind, samples) of each L0 transaction
    step, part = st._compact_pending, st._compact_part
    behind = [False]

    def watched_step(now_ms: int) -> bool:
        behind[0] = st.backlog(now_ms)["pending_samples"] > st.step_samples
        return bool(step(now_ms))

    def watched_part(chosen: list[tuple[int, int, int]], *args: Any) -> None:
        sizes.append((behind[0], sum(n for *_, n in chosen)))
        part(chosen, *args)

    st._compact_pending, st._compact_part = watched_step, watched_part
    st.compact_all(NOW)
    assert samples(st) == expected(sent)
    assert max(n for late, n in sizes if not late) <= st.txn_samples
    assert max(n for late, n in sizes if late) == BEHIND_TXN_FACTOR * st.txn_samples
    st.close()


class Flag:
    """A stand-in for the shared ``multiprocessing.Value``: every value it was set to."""

    def __init__(self) -> None:
        self.history: list[int] = []

    @property
    def value(self) -> int:
        return self.history[-1] if self.history else 0

    @value.setter
    def value(self, v: int) -> None:
        self.history.append(v)


def flag_at_each_write(st: Any, flag: Flag) -> list[int]:
    """The value of ``flag`` as each of the store's write transactions asks for the lock."""
    inside: list[int] = []
    write = st._write

    @contextmanager
    def watched() -> Iterator[Any]:
        inside.append(flag.value)  # waiting for the lock now
        with write() as db:
            yield db

    st._write = watched
    return inside


def test_compaction_raises_the_waiting_flag_only_until_it_has_the_lock(stores: Stores) -> None:
    st, _, _ = exactly_once_setup(stores)
    flag = st.waiting_flag = Flag()
    inside = flag_at_each_write(st, flag)
    st.compact_all(NOW)
    assert inside and all(inside)  # raised (to the wait's number) while it waited
    assert flag.value == 0 and flag.history[:2] == [1, 0]
    numbers = [v for v in flag.history if v]
    assert numbers == list(range(1, len(numbers) + 1))  # each wait has a number of its own
    st.close()


def test_compaction_gives_way_only_while_the_writer_waits(stores: Stores) -> None:
    """With the writer's flag (SQLite, a compaction process), compaction leaves the lock free
    before a write transaction only while ingest's writer waits for it, until the writer has
    it (its wait's number changes); a writer that does not wait costs it no pause."""
    st, _, sent = exactly_once_setup(stores)
    st.give_way = lambda: True  # messages wait: without the flag, a gap after every commit
    looks: list[int] = []

    def waits() -> int:  # the writer waits (wait 5) for the first two looks at each turn
        looks.append(1)
        return 5 if len(looks) % 4 in (1, 2) else 0

    st.writer_waits = waits
    turns = [0]  # compaction write transactions
    write = st._write

    @contextmanager
    def counted() -> Iterator[Any]:
        turns[0] += 1
        with write() as db:
            yield db

    st._write = counted
    st.compact_all(NOW)
    gave_way = st.stats().compaction["gave_way"]
    assert 1 <= gave_way < turns[0]
    # a turn the writer waited at: looked until its wait ended (3 looks), else once
    assert len(looks) == turns[0] + 2 * gave_way
    assert samples(st) == expected(sent)
    st.close()


def test_the_writer_raises_its_flag_only_until_it_has_the_lock(stores: Stores) -> None:
    st = open_spying(stores)
    flag = st.writer_flag = Flag()
    inside = flag_at_each_write(st, flag)
    for seq in range(3):
        st.store_batches([batch("h9", "i1", seq, [(T0 + seq * 1000, 0, "", 1)])])
    assert inside == [1, 2, 3] and flag.value == 0
    assert st.stats().compaction["writer_transactions"] == 3
    st.close()


def test_the_writer_lets_a_waiting_compaction_in_first(stores: Stores) -> None:
    st = open_spying(stores)
    asked = []

    def waits() -> bool:  # compaction waits until the writer has looked twice
        asked.append(1)
        return len(asked) < 3

    st.compaction_waits = waits
    st.store_batches([batch("h9", "i1", 0, [(T0, 0, "", 1)])])
    assert len(asked) == 3
    st.close()


def test_a_wait_the_writer_outwaited_is_not_waited_for_again(stores: Stores) -> None:
    """A compaction process that does not take the lock within ``_LET_IN_S`` (stopped, or
    behind another writer) costs ingest that once, not on every transaction; its next wait
    is waited for again."""
    st = open_spying(stores)
    number = [7]
    asked: list[int] = []

    def waits() -> int:
        asked.append(number[0])
        return number[0]

    st.compaction_waits = waits
    st.store_batches([batch("h9", "i1", 0, [(T0, 0, "", 1)])])
    first = len(asked)
    assert first > 3  # it waited, polling, until the deadline
    st.store_batches([batch("h9", "i1", 1, [(T0 + 1000, 0, "", 1)])])
    assert len(asked) == first + 1  # looked once: the same wait
    number[0] = 8
    st.store_batches([batch("h9", "i1", 2, [(T0 + 2000, 0, "", 1)])])
    assert len(asked) > first + 3  # a new wait: waited for
    st.close()


def test_the_compaction_process_tries_the_sqlite_write_lock_itself_until_its_busy_timeout(
        tmp_path: Path) -> None:
    """With ``waiting_flag`` set (the compaction process), ``BEGIN IMMEDIATE`` is retried every
    millisecond rather than in SQLite's busy handler: it takes the lock once another connection
    leaves it free, fails as before at the busy timeout, and leaves the busy timeout as it was."""
    import sqlite3
    import threading

    from edgemon.collector.storage.sqlite.schema import SQLiteFile

    holder = SQLiteFile(tmp_path / "s.db", busy_timeout_ms=5_000)
    poller = SQLiteFile(tmp_path / "s.db", busy_timeout_ms=300)
    poller.waiting_flag = Flag()
    begun: list[str] = []  # the statements the poller's connection ran
    poller._conn().set_trace_callback(begun.append)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder._write():
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    with pytest.raises(sqlite3.OperationalError, match="locked"), poller._write():
        pass  # the timeout: 300 ms
    # tried again and again (SQLite's busy handler would run the statement once)
    assert begun.count("BEGIN IMMEDIATE") > 10
    timer = threading.Timer(0.05, release.set)
    timer.start()
    with poller._write() as db:  # taken once the holder commits
        assert release.is_set()
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 300
    thread.join(10)
    holder.close()
    poller.close()


OLD_WIDEN = ("UPDATE series SET first_ms = min(first_ms, ?), last_ms = max(last_ms, ?) "
             "WHERE id = ?")  # what L0 ran on every series before rows were skipped


def first_last(st: Any) -> dict[int, tuple[int, int]]:
    with st._read() as db:
        return {sid: (first, last) for sid, first, last in db.execute(
            "SELECT id, first_ms, last_ms FROM series")}


def test_first_last_are_written_only_where_they_widen_and_end_as_min_max(stores: Stores
                                                                         ) -> None:
    st = open_spying(stores)
    try:
        st.store_batches(random_items(random.Random(5), 4, 2))
        st.compact_all(NOW)
        with st._write() as db:  # and series without samples yet (made ahead of their plan)
            db.execute("UPDATE series SET first_ms = ?, last_ms = 0 WHERE id IN (SELECT "
                       "min(id) FROM series GROUP BY host_id)", (1 << 62,))
        before = first_last(st)
        rng = random.Random(7)
        for _ in range(20):
            updates = []
            for sid, (first, last) in before.items():  # inside, before, after, around, ...
                lo = min(first, T0) - rng.choice((0, 0, 1, 60_000))
                hi = max(last, T0) + rng.choice((0, 0, 1, 60_000))
                a, b = sorted(rng.randint(lo, hi) for _ in range(2))
                updates.append((a, b, sid))
            rng.shuffle(updates)
            results = []
            for old in (True, False):
                with st._write() as db:  # from the same rows each time
                    db.executemany("UPDATE series SET first_ms = ?, last_ms = ? WHERE id = ?",
                                   [(f, la, sid) for sid, (f, la) in before.items()])
                    if old:
                        db.executemany(OLD_WIDEN, updates)
                    else:
                        compaction._widen_first_last(db, updates)
                results.append(first_last(st))
            assert results[0] == results[1]
            assert results[0] != before  # something widened
            assert any(results[0][sid] == before[sid] for _, _, sid in updates)  # not all
    finally:
        st.close()


@pytest.mark.parametrize("seed", range(2))
def test_l0_stores_the_same_first_last_as_before_rows_were_skipped(
        stores: Stores, tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    items = random_items(random.Random(seed), 5, 10)
    random.Random(seed + 1).shuffle(items)  # late and early batches: some widen nothing
    results = []
    for old in (True, False):
        with monkeypatch.context() as patch:
            if old:
                patch.setattr(compaction, "_widen_first_last",
                              lambda db, rows: db.executemany(OLD_WIDEN, rows))
            (tmp_path / f"o{old}").mkdir()
            st = open_spying(Stores(stores.backend, tmp_path / f"o{old}", stores._postgres))
            try:
                for k in range(0, len(items), 9):
                    st.store_batches(items[k:k + 9])
                    st.compact_all(NOW)
                results.append((stored(st), st.applied))
            finally:
                st.close()
    assert results[0][0] == results[1][0]
    assert results[1][1] > 0  # the prepared path (``_apply_l0``) did parts
