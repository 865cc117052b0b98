"""The agent's SQLite buffer, and the buffer store that survives disk trouble for the agent."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edgemon.agent.buffer import FORMAT, Buffer, is_corruption, read_stats
from edgemon.agent.buffer_store import BufferStore
from edgemon.protocol import COUNTER, GAUGE, MetricDef, ProtocolError, decode, expand_samples
from edgemon.protocol.base import UNKNOWN_BASE
from edgemon.protocol.catalogue import (
    UNKNOWN_CATALOGUE,
    decode_catalogue,
    decode_received,
    encode_catalogue,
)
from edgemon.protocol.schema import validate_batch

TEMP = MetricDef("test_temperature_celsius", GAUGE, "celsius", 2, ("sensor",))
BYTES = MetricDef("test_received_bytes_total", COUNTER, "bytes", 0, ("iface",))
NOISE = MetricDef("test_noise", GAUGE, "", 0, ("n",))
T0 = 1_800_000_000_000


def open_buffer(path: Path, instance: str = "inst-a", **kw: Any) -> Buffer:
    options: dict[str, Any] = {"max_bytes": 64 << 20, "max_age_seconds": 30 * 86400}
    options.update(kw)
    return Buffer.open(path, host="test-host", instance=instance, **options)


def cycle(i: int) -> list[Any]:
    return [(TEMP, ("inlet",), 20 + i / 4), (TEMP, ("outlet",), 30.5),
            (BYTES, ("eth0",), 1000 * i)]


def noisy_cycle(series: int = 200) -> list[Any]:
    """Readings that do not compress: batches of known, sizeable bytes."""
    return [(NOISE, (str(n),), random.getrandbits(62)) for n in range(series)]


def batch_rows(path: Path) -> list[tuple[int, str, int, int]]:
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, instance, seq, samples FROM batches ORDER BY id").fetchall()
    finally:
        db.close()


def test_seal_turns_pending_cycles_into_one_valid_batch(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    for i in range(6):
        assert buf.append(T0 + i * 10_000, cycle(i)) == 3
    [ref] = buf.seal(T0 + 60_000)
    assert (ref.instance, ref.seq, ref.first_ms, ref.last_ms, ref.samples) == (
        "inst-a", 0, T0, T0 + 50_000, 18)
    _ref, payload = buf.get(ref.id)  # type: ignore[misc]
    batch = decode(payload)
    validate_batch(batch)  # the collector's own check
    assert (batch["host"], batch["instance"], batch["seq"], batch["sent"]) == (
        "test-host", "inst-a", 0, T0 + 60_000)
    samples = {(s.name, tuple(s.labels.values()), s.timestamp_ms): s.value
               for s in expand_samples(batch)}
    assert len(samples) == 18
    assert samples[("test_temperature_celsius", ("inlet",), T0 + 30_000)] == 20.75
    assert samples[("test_received_bytes_total", ("eth0",), T0 + 50_000)] == 5000
    stats = buf.stats()
    assert (stats.batches, stats.samples, stats.pending_cycles, stats.oldest_ms) == (1, 18, 0, T0)
    assert buf.seal(T0 + 70_000) == []  # nothing pending, nothing sealed


def test_ack_deletes_exactly_the_acknowledged_batches(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    refs = []
    for b in range(5):
        buf.append(T0 + b * 1000, cycle(b))
        refs += buf.seal(T0 + b * 1000)
    assert [r.seq for r in refs] == [0, 1, 2, 3, 4]
    assert buf.ack("other-instance", [(0, 4)], T0) == []  # another instance's seqs
    deleted = buf.ack("inst-a", [(0, 1), (3, 3)], T0 + 9000)
    assert sorted(deleted) == [refs[0].id, refs[1].id, refs[3].id]
    assert [row[2] for row in batch_rows(tmp_path / "b.db")] == [2, 4]
    stats = buf.stats()
    assert (stats.batches, stats.samples, stats.last_ack_ms) == (2, 6, T0 + 9000)
    assert buf.ack("inst-a", [(3, 3)], T0) == []  # a repeated ack is harmless


def test_refused_batches_are_deleted_and_counted_as_dropped_for_good(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    refs = []
    for b in range(3):
        buf.append(T0 + b * 1000, cycle(b))
        refs += buf.seal(T0 + b * 1000)
    # The first refusal may be of the referencing form (SPEC.md §9): kept, to go inline once.
    assert buf.reject("inst-a", [(1, 1)]) == ([], 0, [refs[1].id])
    ids, dropped, inline = buf.reject("inst-a", [(1, 1)])
    assert ids == [refs[1].id] and dropped == refs[1].samples > 0 and inline == []
    assert [row[2] for row in batch_rows(tmp_path / "b.db")] == [0, 2]
    assert buf.reject("inst-a", [(1, 1)]) == ([], 0, [])  # a repeated refusal counts nothing
    buf.close()
    again = open_buffer(tmp_path / "b.db", instance="inst-b")
    assert again.stats().dropped_samples_total == refs[1].samples


def wide_cycle(i: int, series: int = 40) -> list[Any]:
    """A host-like cycle: many series, slowly moving values."""
    return [(TEMP, (f"s{n}",), 20 + n + i / 4) for n in range(series)]


def test_a_batch_names_its_catalogue_only_while_a_collector_holds_it(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    for i in range(6):
        buf.append(T0 + i * 1000, wide_cycle(i))
    [ref] = buf.seal(T0 + 6000)
    inline = buf.get(ref.id)[1]  # type: ignore[index]
    ident, acked = buf.newest_catalogue()  # type: ignore[misc]
    assert not acked and decode(inline)["seq"] == ref.seq  # inline until acknowledged
    buf.catalogues_acked([ident])
    referencing = buf.get(ref.id)[1]  # type: ignore[index]
    assert len(referencing) < len(inline)
    metrics = buf.catalogue_metrics(ident)
    assert metrics is not None
    catalogue = decode_catalogue(encode_catalogue(host="test-host", instance="inst-a",
                                                  metrics=metrics, ident=ident))
    batch, named = decode_received(referencing, {ident: catalogue}.get)
    assert named and batch.to_map() == decode(inline)  # the same samples
    # The collector lost the catalogue: the batch is kept and goes inline; so do all batches
    # naming it, until it is acknowledged again.
    assert buf.reject("inst-a", [(ref.seq, ref.seq)], UNKNOWN_CATALOGUE) == ([], 0, [ref.id])
    assert buf.newest_catalogue() == (ident, False)
    assert buf.get(ref.id)[1] == inline  # type: ignore[index]
    # A second unknown_catalogue answer is for a referencing publish still on its way when
    # the first came: the batch stays (an inline batch cannot be refused for that reason).
    assert buf.reject("inst-a", [(ref.seq, ref.seq)], UNKNOWN_CATALOGUE) == ([], 0, [ref.id])
    assert buf.stats().dropped_samples_total == 0
    buf.catalogues_acked([ident])
    assert buf.get(ref.id)[1] == inline  # type: ignore[index]  # refused once: inline for good
    ids, dropped, again = buf.reject("inst-a", [(ref.seq, ref.seq)], "future_timestamp")
    assert ids == [ref.id] and dropped == ref.samples and again == []  # refused inline: gone
    assert buf.stats().identity_holds
    # no batch names the catalogue any more, but it is the newest: kept to be declared
    assert buf.newest_catalogue() == (ident, True)


def test_a_batch_goes_on_from_the_one_before_only_once_a_base_aware_collector_acked_it(
        tmp_path: Path) -> None:
    """SPEC.md §9.1: the referencing form is based on batch s - 1 when that one was acked with
    ``"bases": true`` before s was sealed; refused as unknown_base it goes inline, not dropped,
    and bases pause."""
    buf = open_buffer(tmp_path / "b.db")

    def seal(n: int) -> Any:
        for i in range(6):
            buf.append(T0 + (n * 6 + i) * 1000, wide_cycle(n * 6 + i))
        [ref] = buf.seal(T0 + (n * 6 + 6) * 1000)
        return ref

    first = seal(0)
    ident, _ = buf.newest_catalogue()  # type: ignore[misc]
    buf.catalogues_acked([ident])
    buf.ack("inst-a", [(first.seq, first.seq)], T0)  # a collector that does not say bases
    second = seal(1)
    assert b"bvalues" not in _packed(buf.get(second.id)[1])  # type: ignore[index]
    buf.bases_acked("inst-a", [(second.seq, second.seq)])
    buf.ack("inst-a", [(second.seq, second.seq)], T0)
    third = seal(2)
    based = buf.get(third.id)[1]  # type: ignore[index]
    assert b"bvalues" in _packed(based)
    metrics = buf.catalogue_metrics(ident)
    assert metrics is not None
    catalogue = decode_catalogue(encode_catalogue(host="test-host", instance="inst-a",
                                                  metrics=metrics, ident=ident))
    with pytest.raises(ProtocolError) as info:  # a reader without the base
        decode_received(based, {ident: catalogue}.get)
    assert info.value.reason == UNKNOWN_BASE
    # refused as unknown_base (twice: a based publish still on its way): kept, goes inline
    for _ in range(2):
        assert buf.reject("inst-a", [(third.seq, third.seq)], UNKNOWN_BASE) == ([], 0, [third.id])
    assert decode(buf.get(third.id)[1])["seq"] == third.seq  # type: ignore[index]
    assert buf.newest_catalogue() == (ident, True)  # the catalogue is still held
    buf.bases_acked("inst-a", [(third.seq, third.seq)])

    # two unknown_base answers: the next two go without a base (1, then 2 for the second)
    assert [b"bvalues" in _packed(buf.get(r.id)[1])  # type: ignore[index]
            for r in (seal(3), seal(4))] == [False, False]
    buf.bases_acked("inst-a", [(third.seq + 2, third.seq + 2)])
    sixth = seal(5)
    assert b"bvalues" in _packed(buf.get(sixth.id)[1])  # type: ignore[index]
    # the collector resolved it: the next unknown_base pauses for one batch only, not four
    buf.bases_acked("inst-a", [(sixth.seq, sixth.seq)])
    seventh = seal(6)
    assert buf.reject("inst-a", [(seventh.seq, seventh.seq)], UNKNOWN_BASE)[2] == [seventh.id]
    buf.bases_acked("inst-a", [(seventh.seq, seventh.seq)])
    eighth = seal(7)
    buf.bases_acked("inst-a", [(eighth.seq, eighth.seq)])
    ninth = seal(8)
    assert [b"bvalues" in _packed(buf.get(r.id)[1])  # type: ignore[index]
            for r in (eighth, ninth)] == [False, True]
    assert buf.stats().dropped_samples_total == 0 and buf.stats().identity_holds


def _packed(payload: bytes) -> bytes:
    from edgemon.protocol.codec import decompress
    return decompress(payload)


def test_a_series_missing_from_a_batch_does_not_change_its_catalogue(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    for i in range(6):
        buf.append(T0 + i * 1000, wide_cycle(i))
    buf.seal(T0 + 6000)
    ident, _ = buf.newest_catalogue()  # type: ignore[misc]
    buf.catalogues_acked([ident])
    for i in range(6, 12):  # one series gone: the catalogue stays, the batch names it
        buf.append(T0 + i * 1000, wide_cycle(i)[1:])
    [ref] = buf.seal(T0 + 12_000)
    assert buf.newest_catalogue() == (ident, True)
    metrics = buf.catalogue_metrics(ident)
    assert metrics is not None
    catalogue = decode_catalogue(encode_catalogue(host="test-host", instance="inst-a",
                                                  metrics=metrics, ident=ident))
    batch, named = decode_received(buf.get(ref.id)[1], {ident: catalogue}.get)  # type: ignore[index]
    assert named and len({s.labels["sensor"] for s in expand_samples(batch.to_map())}) == 39
    for i in range(12, 18):  # a new series: a new catalogue, declared before it is named
        buf.append(T0 + i * 1000, [*wide_cycle(i), (TEMP, ("new",), 1.0)])
    [ref] = buf.seal(T0 + 18_000)
    new_ident, acked = buf.newest_catalogue()  # type: ignore[misc]
    assert new_ident != ident and not acked
    assert decode(buf.get(ref.id)[1])["seq"] == ref.seq  # type: ignore[index]  # inline


def test_sealed_batches_keep_instance_seq_and_bytes_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    first = open_buffer(path, "inst-a")
    first.append(T0, cycle(0))
    [ref] = first.seal(T0)
    payload = first.get(ref.id)[1]  # type: ignore[index]
    first.append(T0 + 1000, cycle(1))  # pending when the process dies
    first._db.close()  # no clean close: as after kill -9

    second = open_buffer(path, "inst-b")
    assert second.get(ref.id) == (ref, payload)  # the resend is byte-identical
    assert second.stats().pending_cycles == 1
    [new] = second.seal(T0 + 2000)  # the orphaned cycle goes out under the new instance
    assert (new.instance, new.seq, new.first_ms) == ("inst-b", 0, T0 + 1000)
    assert [(r[1], r[2]) for r in batch_rows(path)] == [("inst-a", 0), ("inst-b", 0)]


def test_a_clock_going_back_seals_first_so_batch_times_increase(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    buf.append(T0 + 5000, cycle(0))
    buf.append(T0 + 6000, cycle(1))
    buf.append(T0 + 1000, cycle(2))  # NTP stepped back
    [ref] = buf.seal(T0 + 7000)
    assert (ref.seq, ref.first_ms, ref.last_ms) == (1, T0 + 1000, T0 + 1000)
    for batch_ref in buf.oldest(10):
        validate_batch(decode(buf.get(batch_ref.id)[1]))  # type: ignore[index]


def test_unusable_readings_are_skipped_not_fatal(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db")
    stored = buf.append(T0, [(TEMP, ("ok",), 1.5), (TEMP, ("nan",), float("nan")),
                             (TEMP, ("inf",), float("inf")), (TEMP, (), 2.0),
                             (BYTES, ("big",), 1 << 70), (TEMP, ("x" * 300,), 3.0)])
    assert stored == 2
    [ref] = buf.seal(T0)
    batch = decode(buf.get(ref.id)[1])  # type: ignore[index]
    validate_batch(batch)
    assert sorted(s.labels["sensor"] for s in expand_samples(batch)) == ["ok", "x" * 256]


def test_budget_eviction_drops_exactly_the_oldest_and_counts_them(tmp_path: Path) -> None:
    random.seed(1)
    path = tmp_path / "b.db"
    buf = open_buffer(path, max_bytes=64 << 20)
    for b in range(80):
        for c in range(3):
            buf.append(T0 + b * 3000 + c * 1000, noisy_cycle())
        buf.seal(T0 + b * 3000)
    before = batch_rows(path)
    buf._reclaim()  # the write-ahead log counts too, but this is about dropping batches
    assert buf.disk_bytes() > 500_000
    buf.max_bytes = 300_000

    dropped = buf.enforce_budget(T0 + 200_000)

    after = batch_rows(path)
    assert 0 < len(after) < len(before)
    assert after == before[len(before) - len(after):]  # the newest survive, oldest go
    evicted = before[:len(before) - len(after)]
    assert dropped == sum(row[3] for row in evicted) == 600 * len(evicted)
    assert buf.stats().dropped_samples_total == dropped
    assert buf.disk_bytes() <= 300_000
    assert os.path.getsize(path) + os.path.getsize(f"{path}-wal") <= 300_000  # really on disk
    assert buf.stats().batches == len(after)
    buf.close()

    reopened = open_buffer(path, "inst-b", max_bytes=300_000)
    assert reopened.stats().dropped_samples_total == dropped  # survives restarts
    assert read_stats(path).dropped_samples_total == dropped


def test_a_batch_dropped_after_publication_and_acknowledged_later_is_not_lost(
        tmp_path: Path) -> None:
    random.seed(2)
    path = tmp_path / "b.db"
    buf = open_buffer(path, max_bytes=64 << 20)
    refs = []
    for b in range(40):
        for c in range(3):
            buf.append(T0 + b * 3000 + c * 1000, noisy_cycle())
        refs += buf.seal(T0 + b * 3000)
    for ref in refs[:3]:  # the three oldest went to the broker; the rest never left
        buf.mark_published(ref.id)
    buf._reclaim()
    buf.max_bytes = buf.disk_bytes() // 2
    dropped = buf.enforce_budget(T0 + 200_000)
    assert dropped > 3 * 600
    # The broker delivers the first two after all: their acknowledgement credits them back.
    buf.ack("inst-a", [(refs[0].seq, refs[1].seq)], T0)
    buf.ack("inst-a", [(refs[5].seq, refs[5].seq)], T0)  # dropped unpublished: nothing to credit
    assert buf.stats().delivered_after_drop_total == 2 * 600
    buf.ack("inst-a", [(refs[0].seq, refs[0].seq)], T0)  # a repeated ack credits nothing more
    assert buf.stats().delivered_after_drop_total == 2 * 600
    buf.close()
    stats = read_stats(path)
    assert (stats.dropped_samples_total, stats.delivered_after_drop_total) == (dropped, 1200)


def test_budget_gives_free_pages_back_before_dropping_anything(tmp_path: Path) -> None:
    random.seed(2)
    path = tmp_path / "b.db"
    buf = open_buffer(path)
    for b in range(40):
        buf.append(T0 + b, noisy_cycle())
        buf.seal(T0 + b)
    buf.ack("inst-a", [(0, 34)], T0)  # most of it acknowledged: free pages, big file
    high_water = buf.disk_bytes()
    buf.max_bytes = high_water // 2
    assert buf.enforce_budget(T0 + 100) == 0
    assert buf.stats().batches == 5
    assert buf.disk_bytes() <= high_water // 2


def test_batches_older_than_max_age_are_dropped_and_counted(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db", max_age_seconds=3600)
    for b in range(4):
        buf.append(T0 + b * 1_800_000, cycle(b))  # every half hour
        buf.seal(T0 + b * 1_800_000)
    dropped = buf.enforce_budget(T0 + 3 * 1_800_000 + 1)  # now: 1.5 h after the first
    assert dropped == 3 * 2  # the batches at 0 h and 0.5 h (3 samples each)
    assert [r.seq for r in buf.oldest(10)] == [2, 3]
    assert buf.stats().dropped_samples_total == 6


def test_files_are_private(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "state" / "b.db")
    buf.append(T0, cycle(0))
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    for name in ("b.db", "b.db-wal", "b.db-shm"):
        assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600, name


@pytest.mark.parametrize("damage", ["garbage", "torn_page", "foreign_database"])
def test_an_unusable_file_is_moved_aside_and_a_fresh_buffer_works(tmp_path: Path,
                                                                    damage: str) -> None:
    path = tmp_path / "b.db"
    if damage == "garbage":
        path.write_bytes(os.urandom(20_000))
    elif damage == "foreign_database":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE precious (x)")
        db.commit()
        db.close()
    else:
        buf = open_buffer(path)
        for b in range(30):
            buf.append(T0 + b, noisy_cycle())
            buf.seal(T0 + b)
        buf.close()
        with open(path, "r+b") as f:  # scribble over a b-tree page, keep the header valid
            f.seek(4096 * 3)
            f.write(os.urandom(4096 * 3))
    original = path.read_bytes()

    buf = open_buffer(path)

    assert buf.recovered_from is not None
    assert buf.recovered_from.name.startswith("b.db.corrupt-")
    assert buf.recovered_from.read_bytes() == original  # kept, never deleted
    buf.append(T0, cycle(0))
    assert [r.seq for r in buf.seal(T0)] == [0]
    assert read_stats(path).batches == 1


def test_a_healthy_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    open_buffer(path).close()
    buf = open_buffer(path)
    assert buf.recovered_from is None
    assert buf._meta("format", None) == FORMAT


# ---- buffer store: the runner's view, which never raises on disk trouble ----------------------


class FlakyBuffer(Buffer):
    """A buffer whose writes fail like a full disk while ``full`` is set."""

    full = False
    corrupt = False

    def _check_disk(self) -> None:
        if FlakyBuffer.corrupt:
            exc = sqlite3.DatabaseError("database disk image is malformed")
            exc.sqlite_errorcode = 11  # type: ignore[attr-defined]
            raise exc
        if FlakyBuffer.full:
            raise sqlite3.OperationalError("database or disk is full")

    def append(self, ts_ms: int, readings: Any) -> int:
        self._check_disk()
        return super().append(ts_ms, readings)

    def seal(self, now_ms: int) -> Any:
        self._check_disk()
        return super().seal(now_ms)


@pytest.fixture
def flaky() -> Any:
    FlakyBuffer.full = FlakyBuffer.corrupt = False
    yield FlakyBuffer
    FlakyBuffer.full = FlakyBuffer.corrupt = False


def flaky_storage(path: Path, memory_cycles: int = 60) -> BufferStore:
    return BufferStore(lambda first_seq: FlakyBuffer.open(
        path, host="test-host", instance="inst-a", max_bytes=64 << 20, max_age_seconds=86400,
        first_seq=first_seq), memory_cycles=memory_cycles)


def test_a_full_disk_keeps_cycles_in_memory_then_writes_them_in_order(tmp_path: Path,
                                                                      flaky: Any) -> None:
    storage = flaky_storage(tmp_path / "b.db")
    storage.append(T0, cycle(0))
    flaky.full = True
    for i in range(1, 5):
        storage.append(T0 + i * 1000, cycle(i))  # must not raise
    assert storage.seal(T0 + 5000) == []
    assert storage.memory_depth == 4
    assert storage.errors_total == 5

    flaky.full = False
    storage.append(T0 + 5000, cycle(5))
    assert storage.memory_depth == 0
    [ref] = storage.seal(T0 + 6000)
    batch = decode(storage.get(ref.id)[1])  # type: ignore[index]
    times = sorted({s.timestamp_ms for s in expand_samples(batch)})
    assert times == [T0 + i * 1000 for i in range(6)]  # nothing lost, in order
    assert storage.stats().dropped_samples_total == 0


def test_memory_is_bounded_and_its_drops_are_counted_and_persisted(tmp_path: Path,
                                                                   flaky: Any) -> None:
    path = tmp_path / "b.db"
    storage = flaky_storage(path, memory_cycles=3)
    storage.append(T0, cycle(0))
    flaky.full = True
    for i in range(1, 6):
        storage.append(T0 + i * 1000, cycle(i))
    assert storage.memory_depth == 3
    assert storage.stats().dropped_samples_total == 2 * 3  # cycles 1 and 2, 3 readings each
    flaky.full = False
    storage.append(T0 + 6000, cycle(6))
    [ref] = storage.seal(T0 + 7000)
    assert ref.first_ms == T0 and ref.samples == 5 * 3  # cycles 0, 3, 4, 5, 6
    storage.close()
    assert read_stats(path).dropped_samples_total == 6


def test_an_unopenable_buffer_is_retried_until_it_opens(tmp_path: Path, flaky: Any) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    clock = [0.0]
    storage = BufferStore(lambda first_seq: Buffer.open(blocker / "b.db", host="h", instance="i",
                                                        max_bytes=1 << 20, max_age_seconds=60),
                          clock=lambda: clock[0])
    storage.append(T0, cycle(0))
    storage.append(T0 + 1000, cycle(1))
    assert storage.buffer is None and storage.memory_depth == 2
    blocker.unlink()
    storage.append(T0 + 2000, cycle(2))
    assert storage.buffer is None  # back-off: not retried yet
    clock[0] += 61
    storage.append(T0 + 3000, cycle(3))
    assert storage.buffer is not None and storage.memory_depth == 0
    assert storage.seal(T0 + 4000)[0].samples == 4 * 3


def test_corruption_while_running_moves_the_file_aside_and_starts_fresh(tmp_path: Path,
                                                                        flaky: Any) -> None:
    path = tmp_path / "b.db"
    storage = flaky_storage(path)
    storage.append(T0, cycle(0))
    storage.seal(T0)
    generation = storage.generation
    flaky.corrupt = True
    storage.append(T0 + 1000, cycle(1))
    flaky.corrupt = False
    assert storage.recoveries_total == 1
    [moved] = storage.recovered_from
    assert moved.exists() and not is_corruption(ValueError())
    storage.append(T0 + 2000, cycle(2))
    assert storage.generation == generation + 1
    [ref] = storage.seal(T0 + 3000)
    assert (ref.first_ms, ref.samples) == (T0 + 1000, 6)  # the cycle held in memory survived
    # The fresh buffer goes on from seq 1: seq 0 may already be stored at the collector, and a
    # new batch under that number would be acknowledged as a duplicate without being stored.
    assert (ref.instance, ref.seq) == ("inst-a", 1) and storage.last_sealed_seq == 1
    assert read_stats(moved).batches == 1  # the old file is kept as it was


def test_a_real_write_limit_never_raises_and_recovers(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 200 kB fail in the kernel, as a full disk would."""
    script = textwrap.dedent(f"""
        import random, resource, signal
        from edgemon.agent.buffer import Buffer
        from edgemon.agent.buffer_store import BufferStore
        from edgemon.protocol import GAUGE, MetricDef
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        m = MetricDef("noise", GAUGE, "", 0, ("n",))
        storage = BufferStore(lambda first_seq: Buffer.open({str(tmp_path / "b.db")!r},
                              host="h", instance="i", max_bytes=1 << 30, max_age_seconds=1e6),
                              memory_cycles=1000)
        storage.append(1, [(m, ("0",), 1)])
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        for ts in range(2, 100):
            storage.append(ts, [(m, (str(j),), random.getrandbits(60)) for j in range(300)])
            if ts % 6 == 0:
                storage.seal(ts)
        assert storage.errors_total > 0 and storage.memory_depth > 0, storage.errors_total
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        storage.append(100, [(m, ("0",), 1)])
        assert storage.memory_depth == 0
        storage.seal(101)
        stats = storage.stats()
        assert stats.samples == 1 + 98 * 300 + 1 and stats.dropped_samples_total == 0, stats
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---- accounting: appended = acknowledged + dropped + buffered, after every commit -------------


def assert_identity(buf: Buffer) -> None:
    """The identity in the open buffer and as a separate read-only reader sees it."""
    for stats in (buf.stats(), read_stats(buf.path)):
        assert stats.identity_holds, stats
        assert stats.lost_samples >= 0 and stats.in_doubt_samples >= 0, stats


def test_the_accounting_identity_holds_on_every_path(tmp_path: Path) -> None:
    """Random mixes of every operation that moves samples: append, seal (with a cycle over a
    protocol limit), publish, ack (also of batches dropped after publication), refusal, budget
    and age eviction of batches and of unsealed cycles, samples lost before buffering."""
    rng = random.Random(14)
    random.seed(14)
    wide = [(MetricDef(f"m{i}", GAUGE, "", 0, ()), (), i) for i in range(4100)]  # > MAX_METRICS
    buf = open_buffer(tmp_path / "b.db", max_age_seconds=40)
    now = T0
    sealed: list[Any] = []
    for _ in range(400):
        now += 1000
        op = rng.random()
        if op < 0.45:
            buf.append(now, noisy_cycle(rng.randint(1, 60)))
        elif op < 0.47:
            buf.append(now, wide)  # sealed alone it is over a limit: dropped and counted
        elif op < 0.6:
            sealed += buf.seal(now)
        elif op < 0.7 and sealed:
            buf.mark_published(rng.choice(sealed).id)
        elif op < 0.8 and sealed:
            ref = rng.choice(sealed)  # acked: still here, dropped, or acked before
            buf.ack(ref.instance, [(ref.seq, ref.seq + rng.randint(0, 2))], now)
        elif op < 0.84 and sealed:
            ref = rng.choice(sealed)
            buf.reject(ref.instance, [(ref.seq, ref.seq)])
        elif op < 0.9:
            buf.max_bytes = rng.choice([64 << 20, buf.disk_bytes() // 2])
            buf.enforce_budget(now)
        elif op < 0.95:
            buf.count_lost_before_buffering(rng.randint(1, 50))
        else:
            buf.enforce_budget(now + 60_000)  # everything older than max_age goes
        assert_identity(buf)
    stats = buf.stats()
    # every path was taken
    assert stats.acknowledged_samples_total > 0 and stats.delivered_after_drop_total > 0
    assert stats.dropped_samples_total > stats.delivered_after_drop_total + stats.in_doubt_samples
    buf.close()
    reopened = open_buffer(tmp_path / "b.db", instance="inst-b")
    assert reopened.stats() == stats._replace(disk_bytes=reopened.stats().disk_bytes)


def test_dropped_after_publication_is_in_doubt_until_acknowledged(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "b.db", max_age_seconds=10)
    refs = []
    for b in range(4):
        buf.append(T0 + b * 1000, cycle(b))
        refs += buf.seal(T0 + b * 1000)
    buf.mark_published(refs[0].id)
    buf.mark_published(refs[1].id)
    assert buf.enforce_budget(T0 + 12_500) == 3 * 3  # batches 0..2 are older than 10 s
    dropped_ms = sqlite3.connect(tmp_path / "b.db").execute(
        "SELECT DISTINCT dropped_ms FROM dropped_published").fetchall()
    assert dropped_ms == [(T0 + 12_500,)]  # the caller's clock, not the wall clock
    stats = buf.stats()
    assert (stats.dropped_samples_total, stats.in_doubt_samples, stats.lost_samples) == (9, 6, 3)
    buf.ack("inst-a", [(0, 0)], T0 + 20_000)  # the broker delivered seq 0 after all
    stats = buf.stats()
    assert (stats.delivered_after_drop_total, stats.in_doubt_samples, stats.lost_samples,
            stats.acknowledged_samples_total) == (3, 3, 3, 0)
    buf.ack("inst-a", [(3, 3)], T0 + 20_000)
    assert buf.stats().acknowledged_samples_total == 3
    assert_identity(buf)


def test_a_buffer_from_before_the_acknowledged_count_starts_it_where_the_identity_says(
        tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = open_buffer(path)
    for b in range(3):
        buf.append(T0 + b, cycle(b))
        buf.seal(T0 + b)
    buf.ack("inst-a", [(0, 0)], T0)
    buf.close()
    db = sqlite3.connect(path)  # as an agent before this count existed left it
    db.execute("DELETE FROM meta WHERE key = 'acknowledged_samples_total'")
    db.commit()
    db.close()
    assert read_stats(path).acknowledged_samples_total == 3  # derived while read-only
    buf = open_buffer(path, instance="inst-b")
    assert buf.stats().acknowledged_samples_total == 3
    assert_identity(buf)


def test_memory_drops_keep_the_identity_before_and_after_they_are_written(tmp_path: Path,
                                                                          flaky: Any) -> None:
    storage = flaky_storage(tmp_path / "b.db", memory_cycles=1)
    storage.append(T0, cycle(0))
    flaky.full = True
    for i in range(1, 4):
        storage.append(T0 + i, cycle(i))
    stats = storage.stats()
    assert stats.dropped_samples_total == 6 and stats.identity_holds  # 2 cycles dropped
    flaky.full = False
    storage.append(T0 + 9, cycle(9))
    stats = storage.stats()
    assert stats.dropped_samples_total == 6 and stats.identity_holds
    assert read_stats(tmp_path / "b.db") == stats
