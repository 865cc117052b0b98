"""What only the PostgreSQL store has: schema migrations, partitions dropped by retention, the
copy of a SQLite store (``migrate``), and a server that crashes mid-ingest.

The behaviour both backends share is tested on both by the other storage tests (``stores``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from edgemon.collector.cli import main
from edgemon.collector.storage.accounting import accounting_of
from edgemon.collector.storage.base import RangeQuery, StorageUnavailable, StoreResult
from edgemon.collector.storage.postgres import PostgresStorage
from edgemon.collector.storage.postgres.migrations import MIGRATIONS
from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite import SQLiteStorage
from tests.support.postgres import Postgres, available
from tests.support.waiting import wait_until
from tests.test_storage_sqlite import (
    DAY,
    HOUR,
    INTERVAL,
    METRICS,
    MIN,
    T0,
    Fleet,
    assert_matches,
    make_items,
    q,
    reference,
)

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

SPAN = 6 * HOUR


def _fleet(seed: int = 7) -> Fleet:
    f = Fleet()
    rng = np.random.default_rng(seed)
    for h, host in enumerate(("web-01", "web-02", "db-01")):
        f.add_batches(host, f"inst{h}", 0, T0 + h * 5_000, SPAN // INTERVAL, rng)
    return f


def _partitions(url: str) -> dict[str, list[int]]:
    """Lower bounds of the partitions of every partitioned table."""
    out: dict[str, list[int]] = {}
    with psycopg.connect(url) as conn:
        for parent, child in conn.execute(
                "SELECT p.relname, c.relname FROM pg_inherits i JOIN pg_class c ON "
                "c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname IN ('blocks', 'chunks', 'rollups_1m', 'rollups_1h')"):
            out.setdefault(parent, []).append(int(child.rsplit("_", 1)[1]))
    return {k: sorted(v) for k, v in out.items()}


# -- schema migrations ------------------------------------------------------------------------

def test_migrate_schema_applies_each_version_once_and_refuses_a_newer_database(
        postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate-schema", "--url", postgres_url]) == 0
    out = capsys.readouterr().out
    assert f"applied schema version {MIGRATIONS[-1].version}" in out
    assert main(["migrate-schema", "--url", postgres_url]) == 0
    assert "(nothing to do)" in capsys.readouterr().out
    # collectors starting together: each opens the store, the migrations ran once
    opened: list[PostgresStorage] = []
    threads = [threading.Thread(target=lambda: opened.append(PostgresStorage(postgres_url)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 3
    for st in opened:
        st.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (
            len(MIGRATIONS),)
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    assert main(["migrate-schema", "--url", postgres_url]) == 1
    assert "schema version 999" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="newer edgemon"):
        PostgresStorage(postgres_url)


def test_an_unreachable_server_is_a_storage_unavailable_error() -> None:
    with pytest.raises(StorageUnavailable, match=r"PostgreSQL at 127\.0\.0\.1:9/edgemon"):
        PostgresStorage("postgresql://edgemon@127.0.0.1:9/edgemon", connect_timeout_s=1)


# -- partitions -------------------------------------------------------------------------------

def test_retention_drops_whole_partitions(postgres_url: str) -> None:
    f = Fleet()
    rng = np.random.default_rng(3)
    for day in range(4):
        f.add_batches("h", "r", day * 1000, T0 + day * DAY, 2 * HOUR // INTERVAL, rng)
    st = PostgresStorage(postgres_url, compact_delay_ms=0, raw_retention_ms=DAY,
                         rollup_1m_retention_ms=2 * DAY, rollup_1h_retention_ms=40 * DAY)
    st.store_batches(f.items)
    st.compact_all(T0 + DAY)  # nothing has expired yet at this time
    before = _partitions(postgres_url)
    assert before["blocks"] == [T0 + d * DAY for d in range(4)]  # 2 h a day: one window each
    now = T0 + 3 * DAY + 12 * HOUR
    st.compact_all(now)
    after = _partitions(postgres_url)
    raw_cut, cut_1m = T0 + 2 * DAY + 12 * HOUR, T0 + DAY
    assert after["blocks"] and min(after["blocks"]) >= raw_cut
    assert after["chunks"] == after["blocks"]
    assert min(after["rollups_1m"]) >= cut_1m
    assert set(before["blocks"]) - set(after["blocks"]) == {T0 + d * DAY for d in range(3)}
    # what is left answers as the reference says (the same test runs on both backends in
    # test_storage_sqlite.test_retention_per_tier)
    query = q("temperature_celsius", T0 + 3 * DAY, T0 + 3 * DAY + 2 * HOUR, 10 * MIN,
              tier="raw")
    assert_matches(st.query(query), reference(f, query))
    st.close()


# -- migration from SQLite --------------------------------------------------------------------

def _everything(st: SQLStorage, fleet: Fleet) -> dict[str, Any]:
    """What a store answers, sample by sample (raw points at 1 ms steps cover every sample)."""
    out: dict[str, Any] = {"hosts": st.hosts(), "series": st.series(), "gaps": st.gaps()}
    accounting = accounting_of(st)
    assert accounting is not None
    out["accounting"] = accounting.hosts()
    for name in METRICS:
        for tier, step, how in (("raw", INTERVAL, "last"), ("1m", MIN, "sum"),
                                ("1h", HOUR, "count")):
            out[(name, tier)] = st.query(RangeQuery(
                name=name, start_ms=T0, end_ms=T0 + SPAN, step_ms=step, aggregation=how,
                tier=tier, max_points=10**7))
    return out


def test_migrate_copies_a_sqlite_store_exactly_and_can_run_again(
        tmp_path: Path, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = _fleet()
    path = tmp_path / "edgemon.db"
    lite = SQLiteStorage(path, compact_delay_ms=0, close_grace_ms=0)
    half = len(fleet.items) // 2
    lite.store_batches(fleet.items[:half])
    lite.compact_all(T0 + SPAN + DAY)  # blocks, chunks, rollups
    lite.store_batches(fleet.items[half:-7])  # pending batches; the last 7 lost: gaps
    lite.record_status("web-01", "inst0", False, T0 + SPAN, T0 + SPAN, last_seq=999)
    lite.store_batches([make_items("late", 1, [(T0 + HOUR, METRICS["temperature_celsius"],
                                                (), 5)])])
    want = _everything(lite, fleet)
    lite.close()

    url = postgres_server.new_database()
    assert main(["migrate", "--from", f"sqlite:///{path}", "--to", url]) == 0
    assert "copied and verified" in capsys.readouterr().out
    st = PostgresStorage(url)
    assert _everything(st, fleet) == want
    assert st.window_ms == 2 * HOUR
    # the copy goes on as a store: compaction finishes on PostgreSQL with the same answers
    st.compact_all(T0 + SPAN + DAY)
    assert st.backlog(T0 + SPAN + DAY)["pending_batches"] == 0
    query = q("net_bytes_total", T0, T0 + SPAN, HOUR, rate=True, tier="1h")
    assert {r.host for r in st.query(query)} == {"web-01", "web-02", "db-01"}
    lite = SQLiteStorage(path, compact_delay_ms=0, close_grace_ms=0)
    lite.compact_all(T0 + SPAN + DAY)
    assert st.query(query) == lite.query(query)
    # the same blobs: the same bytes by part for /metrics (the disk is each engine's own)
    sizes = st.tier_bytes()
    assert sizes == lite.tier_bytes() and sizes["raw"] > 0 and sizes["1h"] > 0
    lite.close()
    st.close()

    # both stores compacted the same batches the same way: row for row, byte for byte the
    # same tables, which re-running the migration verifies
    assert main(["migrate", "--from", str(path), "--to", url]) == 0
    assert "already migrated; verified again" in capsys.readouterr().out
    # a source that changed since (what the collector stored after the copy): refused
    lite = SQLiteStorage(path)
    lite.store_batches(fleet.items[-7:])
    lite.close()
    assert main(["migrate", "--from", str(path), "--to", url]) == 1
    assert "hosts: source has 4 rows" in capsys.readouterr().err  # last_seen moved
    other = postgres_server.new_database()
    st = PostgresStorage(other)
    st.store_batches(fleet.items[:1])
    st.close()
    assert main(["migrate", "--from", str(path), "--to", other]) == 1
    assert "already holds data" in capsys.readouterr().err
    fresh = postgres_server.new_database()
    assert main(["migrate", "--from", str(path), "--to", fresh]) == 0
    assert main(["migrate", "--from", str(path), "--to", fresh]) == 0
    assert "already migrated; verified again" in capsys.readouterr().out


# -- the server crashes -----------------------------------------------------------------------

def test_server_crash_mid_ingest_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    """The database server stops at once (``pg_ctl -m immediate``: no checkpoint, WAL recovery
    at restart) while a writer stores batches one transaction at a time, resending what was
    not acknowledged (as ingest does: an unacknowledged batch stays with its agent). Every
    acknowledged batch survives; the resent ones are stored once."""
    server = Postgres(tmp_path / "pg", durable=True).start()
    try:
        url = server.new_database()
        fleet = _fleet(11)
        st = PostgresStorage(url, compact_delay_ms=0, connect_timeout_s=2)
        acked: list[StoreResult] = []
        unavailable: list[BaseException] = []
        done = threading.Event()

        def writer() -> None:
            for i in range(0, len(fleet.items), 3):
                group = fleet.items[i:i + 3]
                while True:
                    try:
                        acked.extend(st.store_batches(group))
                        break
                    except (StorageUnavailable, psycopg.Error) as exc:
                        unavailable.append(exc)
                        time.sleep(0.05)  # ingest's back-off, shortened
                if i % 30 == 0:  # compaction in between; a failed step is tried again later
                    with contextlib.suppress(StorageUnavailable, psycopg.Error):
                        st.maintain_step(T0 + SPAN + DAY)
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        wait_until(lambda: len(acked) >= len(fleet.items) // 3, 60, "a third stored")
        server.stop("immediate")
        wait_until(lambda: any(isinstance(e, StorageUnavailable) for e in unavailable), 30,
                   "the writer sees the storage unavailable")
        assert not done.is_set()
        server.restart()
        thread.join(120)
        assert done.is_set()
        stored = [r for r in acked if r.stored]
        assert len(acked) == len(fleet.items)  # every batch acknowledged once it was stored
        assert len(stored) <= len(fleet.items)
        st.compact_all(T0 + SPAN + DAY)
        total = sum(len(p) for p in fleet.samples.values())
        count = q("cpu_usage_percent", T0, T0 + SPAN, SPAN, aggregation="count", group_by=())
        expected = sum(1 for k, p in fleet.samples.items() if k[1] == "cpu_usage_percent"
                       for t, _ in p if t < T0 + SPAN)
        assert st.query(count)[0].points == [(T0, float(expected))]
        accounting = accounting_of(st)
        assert accounting is not None
        hosts = accounting.hosts()
        assert sum(h.samples for h in hosts) == total  # each batch counted once
        assert sum(h.batches for h in hosts) == len(fleet.items)
        assert sum(h.missing_batches for h in hosts) == 0
        st.close()
    finally:
        server.remove()


def test_after_a_long_outage_the_storage_works_again_as_soon_as_the_server_is_back(
        tmp_path: Path) -> None:
    """A pool that backs its reconnect attempts off without bound (psycopg_pool's default)
    sleeps longer the longer the server was down, and the collector stored nothing for 12-17 s
    after the server was back. Within the few seconds the next request takes, it works."""
    server = Postgres(tmp_path / "pg", durable=True).start()
    try:
        st = PostgresStorage(server.new_database(), connect_timeout_s=2)  # a request waits <= 2 s
        assert st.hosts() == []
        server.stop("immediate")
        # A doubling back-off tries 1, 3, 7, 15 and 31 s after the first failure: the server is
        # back at 18-21 s (restart included), 10 s or more before that back-off's next try.
        outage = time.monotonic() + 16
        while time.monotonic() < outage:  # requests keep coming while it is down, as ingest's
            with pytest.raises(StorageUnavailable):
                st.hosts()
            time.sleep(0.2)
        server.restart()
        wait_until(lambda: _works(st), 4, "the storage working again")
        st.close()
    finally:
        server.remove()


def _works(st: PostgresStorage) -> bool:
    try:
        return st.hosts() == []
    except StorageUnavailable:
        return False


def test_the_collector_rides_out_a_database_crash(tmp_path: Path, broker: Any) -> None:
    """A real collector (MQTT ingest, HTTP) on PostgreSQL: while the server is down nothing is
    acknowledged to the agent, the collector keeps running and says it is not ready; once the
    server is back every batch is stored, once, and acknowledged."""
    from edgemon.collector.app import open_default_storage
    from edgemon.collector.config import (
        CollectorConfig,
        HttpConfig,
        MqttConfig,
        StorageConfig,
    )
    from edgemon.protocol import metrics_topic
    from tests.support.stand_in_agent import StandInAgent, make_batch
    from tests.test_collector_ingest import RunningCollector

    server = Postgres(tmp_path / "pg", durable=True).start()
    url = server.new_database()
    config = CollectorConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port, client_id="collector-pg",
                        keepalive=10),
        storage=StorageConfig(path=tmp_path / "data" / "edgemon.db", url=url,
                              maintain_interval_seconds=0.2),
        http=HttpConfig(port=0, auth="none"))
    running = RunningCollector(config, open_default_storage).start()
    agent = StandInAgent(broker, "web-07")
    try:
        for seq in (1, 2, 3):
            agent.publish(metrics_topic("web-07"), make_batch("web-07", seq))
        for seq in (1, 2, 3):
            agent.wait_acked(seq)
        server.stop("immediate")
        for seq in (4, 5, 6):
            agent.publish(metrics_topic("web-07"), make_batch("web-07", seq))
        wait_until(lambda: running.get("/readyz")[0] == 503, 30, "not ready while down")
        assert running.thread.is_alive()
        assert sorted(agent.acked()) == [1, 2, 3]  # nothing acknowledged while down
        server.restart()
        for seq in (4, 5, 6):
            agent.wait_acked(seq)
        wait_until(lambda: running.get("/readyz")[0] == 200, 30, "ready again")
        agent.publish(metrics_topic("web-07"), make_batch("web-07", 2))  # a resend
        agent.wait_acked(2, times=2)
        storage = running.collector.storage
        accounting = accounting_of(storage)  # type: ignore[arg-type]
        assert accounting is not None
        [host] = accounting.hosts("web-07")
        assert (host.batches, host.missing_batches) == (6, 0)
        assert host.samples == 6 * make_batch_samples()
    finally:
        agent.close()
        running.stop()
        server.remove()


def make_batch_samples() -> int:
    from edgemon.protocol import decode
    from edgemon.protocol.schema import validate_batch
    from tests.support.stand_in_agent import make_batch

    return validate_batch(decode(make_batch("x", 1))).sample_count


def test_storage_url_is_checked_with_the_line_it_is_on(tmp_path: Path) -> None:
    from edgemon.collector.config import ConfigError, load_config

    path = tmp_path / "collector.toml"
    path.write_text('[storage]\npath = "/tmp/x.db"\nurl = "mysql://db/edgemon"\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    assert "storage.url" in problems and ":3" in problems and "postgresql://" in problems
    path.write_text('[storage]\nurl = "postgresql://edgemon@db:5432/edgemon"\n')
    assert load_config(path).storage.url == "postgresql://edgemon@db:5432/edgemon"


# -- the forwarding log with several collectors ------------------------------------------------

def test_forward_log_of_two_collectors_is_read_whole_and_once_while_they_write(
        postgres_url: str) -> None:
    """Two collectors store batches (and each other's, as a redelivery does) into one
    database while a forwarder reads the log after the newest seq it has seen: it gets every
    stored batch exactly once, in increasing seq. This needs seq to grow in commit order
    (writers hold the store's advisory lock until COMMIT); a seq drawn outside it would let a
    reader pass a batch still being committed and skip it."""
    from tests.support.forwarding import Fleet

    items = Fleet(hosts=4, per_batch=2).batches(1_780_000_000_000, 25)
    a, b = PostgresStorage(postgres_url, pool_size=2), PostgresStorage(postgres_url, pool_size=2)
    a.forward_open({"rx": "all"}, 0)
    mine = {0: [i for i in items if i.batch.host in ("host-0", "host-1")],
            1: [i for i in items if i.batch.host in ("host-2", "host-3")]}
    done = threading.Event()
    seen: list[tuple[int, bytes]] = []

    def write(store: PostgresStorage, own: list[Any], other: list[Any]) -> None:
        for n, item in enumerate(own):
            store.store_batches([item])
            if n % 3 == 0 and n < len(other):
                store.store_batches([other[n]])  # the other collector's batch: a duplicate

    def read() -> None:
        after = 0
        while True:
            last = done.is_set()
            got = a.forward_read("rx", after, 10**9)
            seen.extend((x.seq, x.payload) for x in got)
            if got:
                after = got[-1].seq
                a.forward_advance("rx", after, sent=sum(x.samples for x in got))
            if last and not got:
                return

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(a, mine[0], mine[1])),
               threading.Thread(target=write, args=(b, mine[1], mine[0]))]
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join(60)
    assert not reader.is_alive()
    seqs = [s for s, _ in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert sorted(p for _, p in seen) == sorted(i.payload for i in items)
    [pos] = a.forward_positions()
    assert (pos.seq, pos.head, pos.pending_batches) == (seqs[-1], seqs[-1], 0)
    assert pos.sent == sum(i.batch.sample_count for i in items)
    a.close()
    b.close()
