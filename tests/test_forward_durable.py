"""The durable forwarder (``collector/forward/``) over a real store, to real receivers
(Debian's victoria-metrics and prometheus on loopback): every stored sample reaches the
receiver with its value and timestamp; a receiver down for a while loses nothing; a forwarding
process killed with SIGKILL resumes from its cursor and re-sends at most the request in
flight, which it reports; Prometheus's 400 for samples older than its head is counted and
skipped without taking the recent samples of the same read with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgemon.collector.storage.sql import SQLStorage
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.common.clock import now_ms
from tests.support.broker import free_port
from tests.support.forwarding import Fleet, Running, chunks, config
from tests.support.storages import Stores
from tests.support.tsdb import PROMETHEUS, VICTORIA, Prometheus, VictoriaMetrics
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def open_store(tmp_path: Path) -> SQLiteStorage:
    return SQLiteStorage(tmp_path / "edgemon.db", compact_delay_ms=0)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorage]:
    st = open_store(tmp_path)
    yield st
    st.close()


@pytest.fixture
def either_storage(stores: Stores) -> Iterator[SQLStorage]:
    """The store on SQLite, then on PostgreSQL (the ``stores`` fixture)."""
    st = stores.open(compact_delay_ms=0)
    yield st
    st.close()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm").start()
    yield server
    server.terminate()


def position(storage: SQLStorage, name: str = "rx"):  # type: ignore[no-untyped-def]
    [p] = [p for p in storage.forward_positions() if p.name == name]
    return p


def caught_up(storage: SQLStorage, name: str = "rx") -> bool:
    p = position(storage, name)
    return p.pending_batches == 0 and p.seq == p.head


def test_log_cursors_and_bound(stores: Stores) -> None:
    """Without receivers: what the log holds, in which order, after compaction, duplicates,
    a crash with a request in flight, the bound, and a receiver removed from the config (on
    both backends)."""
    storage = stores.open(compact_delay_ms=0)
    fleet = Fleet(hosts=2)
    start = 1_780_000_000_000
    storage.store_batches(fleet.batches(start, 2))  # before forwarding: not logged
    storage.forward_open({"a": "all", "b": "now"}, now_ms())
    first = fleet.batches(start + 60_000, 3)
    storage.store_batches(first)
    storage.store_batches(first[:2])  # duplicates: not stored, not logged again
    storage.compact_all(now_ms())  # empties `batches`: its ids start again at 1
    second = fleet.batches(start + 120_000, 2)
    storage.store_batches(second)
    got = storage.forward_read("a", 0, 10**9)
    assert [(b.host, b.payload) for b in got] == [(i.batch.host, i.payload)
                                                  for i in first + second]
    seqs = [b.seq for b in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [b.samples for b in got] == [i.batch.sample_count for i in first + second]
    # at most max_samples (but at least one batch)
    assert len(storage.forward_read("a", 0, 1)) == 1
    assert len(storage.forward_read("a", 0, got[0].samples * 2)) == 2
    # "now" started after the newest: it sees only what came after its creation
    assert [b.seq for b in storage.forward_read("b", 0, 10**9)] == seqs

    # a crash while sending seqs[1..2]: those are counted as re-sent at the next start
    storage.forward_advance("a", seqs[0], sent=got[0].samples, inflight=seqs[2])
    storage.close()
    storage = stores.open(compact_delay_ms=0)
    resent = storage.forward_open({"a": "all", "b": "now"}, now_ms())
    assert resent == {"a": got[1].samples + got[2].samples}
    p = position(storage, "a")
    assert (p.seq, p.sent, p.resent) == (seqs[0], got[0].samples, resent["a"])
    assert p.pending_batches == len(seqs) - 1

    # trim: rows both passed go; "b" over its bound skips its oldest, counted
    storage.forward_advance("b", seqs[0])
    assert storage.forward_trim({"a": 10**9, "b": 10**9}, now_ms()) == {}
    assert len(storage.forward_read("b", 0, 10**9)) == len(seqs) - 1
    keep = sum(b.samples for b in got[-2:])
    skipped = storage.forward_trim({"a": 10**9, "b": keep}, now_ms())
    assert skipped == {"b": sum(b.samples for b in got[1:-2])}
    p = position(storage, "b")
    assert (p.skipped, p.pending_samples, p.seq) == (skipped["b"], keep, seqs[-3])
    assert [b.seq for b in storage.forward_read("b", 0, 10**9)] == seqs[-2:]
    # "a" still needs them: still there
    assert [b.seq for b in storage.forward_read("a", 0, 10**9)] == seqs[1:]

    # "a" removed from the configuration: its cursor goes, then what only it needed
    storage.forward_open({"b": "now"}, now_ms())
    storage.forward_trim({"b": 10**9}, now_ms())
    assert [p.name for p in storage.forward_positions()] == ["b"]
    with storage._read() as db:
        assert db.execute("SELECT count(*) FROM forward_log").fetchone()[0] == 2
    # no receiver at all: nothing is logged any more, and the log empties
    storage.forward_open({}, now_ms())
    storage.forward_trim({}, now_ms())
    storage.store_batches(fleet.batches(start + 300_000, 1))
    with storage._read() as db:
        assert db.execute("SELECT count(*) FROM forward_log").fetchone()[0] == 0
    storage.close()


@pytest.mark.slow
@pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")
def test_every_stored_sample_reaches_victoria_metrics_and_survives_it_being_down(
        vm: VictoriaMetrics, storage: SQLiteStorage) -> None:
    fleet = Fleet(hosts=4, cpus=3)
    start = now_ms() // 1000 * 1000 - 3_600_000
    with Running(storage, config(vm.write_url, max_samples_per_request=500)) as run:
        items = fleet.batches(start, 30)
        for part in chunks(items, 7):  # stored while forwarding runs, compacted between
            storage.store_batches(part)
            storage.maintain(now_ms())
        # back-filled history (10 days old) arrives too
        storage.store_batches(fleet.batches(start - 10 * 86_400_000, 3, historical=True))
        wait_until(lambda: caught_up(storage), 60, "forwarded everything")
        assert vm.export('{fleet="test"}') == fleet.want()
        assert position(storage).sent == fleet.total()

        # the receiver goes away: requests are retried, nothing is skipped
        vm.terminate()
        more = fleet.batches(start + 600_000, 10)
        storage.store_batches(more)
        forwarder = run.service.forwarders[0]
        wait_until(lambda: forwarder.counters.retries >= 3, 30, "retries while down")
        p = position(storage)
        assert p.pending_samples == sum(i.batch.sample_count for i in more)
        assert p.rejected == p.skipped == 0
        status = run.service.status()[0]
        assert status.failures.get("network", 0) >= 3
        vm.start()
        wait_until(lambda: caught_up(storage), 60, "forwarded after the receiver is back")
    assert vm.export('{fleet="test"}') == fleet.want()
    p = position(storage)
    assert (p.sent, p.rejected, p.skipped, p.resent) == (fleet.total(), 0, 0, 0)


def _killed_mid_forwarding(tmp_path: Path, storage: SQLiteStorage, url: str, fleet: Fleet,
                           start: int) -> list[int]:
    """Store 60 batches per host, forward them from a process of its own in requests of 50
    samples (a while to send everything) and kill -9 it somewhere in the middle; the ids of
    its child processes."""
    storage.forward_open({"rx": "all"}, now_ms())
    storage.store_batches(fleet.batches(start, 60))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "tests.support.forwarding",
                              str(tmp_path / "edgemon.db"), url, "50"], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: 2 * fleet.total() // 10 < position(storage).sent, 60,
                   "part forwarded")
        workers = [c.pid for c in psutil.Process(child.pid).children()]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        return workers
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.slow
@pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")
def test_kill_9_mid_forwarding_resumes_from_the_cursor(tmp_path: Path, vm: VictoriaMetrics,
                                                       storage: SQLiteStorage) -> None:
    fleet = Fleet(hosts=5, cpus=4, per_batch=10)
    start = now_ms() // 1000 * 1000 - 7_200_000
    workers = _killed_mid_forwarding(tmp_path, storage, vm.write_url, fleet, start)
    assert workers  # the encoder process (and multiprocessing's resource tracker)
    # the forwarder's worker processes do not outlive it
    wait_until(lambda: not any(psutil.pid_exists(w) and psutil.Process(w).status() !=
                               psutil.STATUS_ZOMBIE for w in workers), 10,
               "encoder worker gone after its parent was killed")
    p = position(storage)
    assert 0 < p.sent < fleet.total()
    with Running(storage, config(vm.write_url, max_samples_per_request=5000)):
        wait_until(lambda: caught_up(storage), 60, "forwarded after the restart")
    p = position(storage)
    assert p.sent == fleet.total() and p.rejected == p.skipped == 0
    # exactly the one request in flight (one batch of 50 samples each here)
    assert p.resent == 50
    found = vm.export('{fleet="test"}')
    # VictoriaMetrics keeps a re-sent sample twice (no -dedup.minScrapeInterval): every
    # sample is there, and extra copies are the re-sent request (none if the killed
    # process had not sent it yet)
    assert {k: sorted(set(v)) for k, v in found.items()} == fleet.want()
    extra = sum(len(v) for v in found.values()) - fleet.total()
    assert extra in (0, p.resent)


def _receiver(kind: str, workdir: Path) -> VictoriaMetrics | Prometheus:
    if kind == "prometheus":
        if PROMETHEUS is None:
            pytest.skip("prometheus missing")
        return Prometheus(workdir).start()
    if VICTORIA is None:
        pytest.skip("victoria-metrics missing")
    return VictoriaMetrics(workdir).start()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["victoria-metrics", "prometheus"])
def test_kill_9_then_the_receiver_down_is_still_exact(tmp_path: Path, storage: SQLiteStorage,
                                                      kind: str) -> None:
    """The issue's case on both receivers: the forwarding process killed with SIGKILL mid-way,
    the receiver stopped while the next one starts (retried, nothing skipped), then back: every
    sample there once, the re-sent ones counted (exactly the request in flight).
    VictoriaMetrics keeps a re-sent sample twice (no dedup configured). Prometheus (no
    out-of-order window) refuses the re-sent request with 400 "out of order sample" when it
    already holds it (a series' samples older than its newest, which are these very samples):
    counted as rejected, and the samples are there once."""
    receiver = _receiver(kind, tmp_path / kind)
    fleet = Fleet(hosts=5, cpus=4, per_batch=10)
    start = now_ms() // 1000 * 1000 - 1_800_000
    try:
        _killed_mid_forwarding(tmp_path, storage, receiver.write_url, fleet, start)
        receiver.terminate()
        killed_at = position(storage).sent
        assert 0 < killed_at < fleet.total()
        with Running(storage, config(receiver.write_url, max_samples_per_request=5000)) as run:
            counters = run.service.forwarders[0].counters
            wait_until(lambda: counters.retries >= 3, 30, "retries while the receiver is down")
            p = position(storage)
            assert (p.sent, p.rejected, p.skipped) == (killed_at, 0, 0)
            assert p.pending_samples == fleet.total() - killed_at
            receiver.start()
            wait_until(lambda: caught_up(storage), 60, "forwarded once the receiver is back")
        p = position(storage)
        assert (p.skipped, p.resent) == (0, 50)
        if isinstance(receiver, Prometheus):
            assert p.sent + p.rejected == fleet.total() and p.rejected in (0, p.resent)
            found = {}
            for name in ("cpu_usage_percent", "net_rx_bytes_total"):
                found.update(receiver.samples(f'{name}{{fleet="test"}}', start - 1000,
                                              now_ms()))
            assert found == fleet.want()  # each sample once
        else:
            assert (p.sent, p.rejected) == (fleet.total(), 0)
            found = receiver.export('{fleet="test"}')
            assert {k: sorted(set(v)) for k, v in found.items()} == fleet.want()
            assert sum(len(v) for v in found.values()) - fleet.total() in (0, p.resent)
    finally:
        receiver.terminate()


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing")
def test_prometheus_out_of_bounds_is_counted_and_skipped(tmp_path: Path,
                                                         storage: SQLiteStorage) -> None:
    prom = Prometheus(tmp_path / "prom").start()
    fleet = Fleet(hosts=2)
    start = now_ms() // 1000 * 1000 - 120_000
    try:
        recent = fleet.batches(start, 4)
        with Running(storage, config(prom.write_url)) as run:
            storage.store_batches(recent[:4])  # Prometheus's head starts here
            wait_until(lambda: caught_up(storage), 60, "forwarded the first batches")
            old_fleet = Fleet(hosts=2)
            old_fleet.seqs = fleet.seqs  # same agents, later sequence numbers
            old = old_fleet.batches(start - 7 * 86_400_000, 2, historical=True)
            # old and recent batches in one store: one request first (400 for all of it),
            # then one request per batch
            storage.store_batches(old + recent[4:])
            wait_until(lambda: caught_up(storage), 60, "forwarded or skipped everything")
            status = run.service.forwarders[0].counters
            assert status.failures.get("400", 0) >= len(old)
        p = position(storage)
        old_samples = sum(i.batch.sample_count for i in old)
        assert (p.sent, p.rejected) == (fleet.total(), old_samples)
        found = {}
        for name in ("cpu_usage_percent", "net_rx_bytes_total"):
            found.update(prom.samples(f'{name}{{fleet="test"}}', start - 1000, now_ms()))
        assert found == fleet.want()
    finally:
        prom.terminate()


def _stored(db: Path) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    """Every raw sample of a (stopped) collector's store, keyed like a receiver's series."""
    from edgemon.collector.forward.remote_write import series_labels
    from edgemon.collector.storage.base import RangeQuery

    storage = SQLiteStorage(db)
    try:
        out = {}
        series = storage.series()
        start = min(s.first_ms for s in series)
        end = max(s.last_ms for s in series) + 1
        for name in sorted({s.name for s in series}):
            for r in storage.query(RangeQuery(name, start, end, 1, "last", tier="raw",
                                              max_points=10**9)):
                assert r.host is not None
                key = tuple(series_labels(name, r.host, r.labels))
                out[key] = sorted(r.points)
        return out
    finally:
        storage.close()


@pytest.mark.slow
@pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")
def test_agent_to_collector_to_victoria_metrics(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    """The real spine: an agent through Mosquitto into a collector with ``[[forward]]``; what
    the collector stored is exactly what VictoriaMetrics holds, and ``/metrics`` and
    ``GET /edgemon/api/v1/forward`` say so."""
    from tests.support.processes import Agent, Collector

    vm = VictoriaMetrics(tmp_path / "vm").start()
    collector = Collector(tmp_path / "collector", broker,
                          extra=f'\n[[forward]]\nname = "vm"\nurl = "{vm.write_url}"\n'
                                f"max_samples_per_request = 300\n").start()
    agent = Agent(tmp_path / "agent", broker, host_id="fwd-host", interval=0.2, batch_cycles=2)
    try:
        agent.start()
        wait_until(lambda: collector.get("/edgemon/api/v1/forward")["receivers"][0]
                   ["samples_sent"] > 2000, 60, "samples forwarded")
        agent.terminate()
        stored = sum(h["samples"] for h in collector.get("/edgemon/api/v1/accounting")["hosts"])

        def done() -> bool:
            [r] = collector.get("/edgemon/api/v1/forward")["receivers"]
            return r["pending_samples"] == 0 and r["samples_sent"] == stored
        wait_until(done, 60, "everything stored forwarded")
        [line] = collector.get("/edgemon/api/v1/accounting")["forward"]
        assert (line["name"], line["samples_sent"], line["samples_rejected"],
                line["samples_skipped"]) == ("vm", stored, 0, 0)
        metrics = collector.get("/metrics", raw=True).decode()
        assert f'edgemon_collector_forward_samples_sent_total{{receiver="vm"}} {stored}' \
            in metrics
        assert 'edgemon_collector_forward_pending_samples{receiver="vm"} 0' in metrics
        collector.terminate()
        found = vm.export('{host="fwd-host"}')
        assert sum(len(v) for v in found.values()) == stored
        assert found == _stored(collector.db)
    finally:
        agent.kill()
        collector.kill()
        vm.terminate()


class FlakyReceiver:
    """A remote-write receiver on loopback (stdlib HTTP server) that answers the first
    requests with the given statuses, then 204 and keeps what it was sent."""

    def __init__(self, statuses: list[int]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from edgemon.collector.forward.remote_write import decode

        self.statuses = list(statuses)
        self.kept: list[tuple[tuple[tuple[str, str], ...], tuple[int, float]]] = []
        self.answers: list[int] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = owner.statuses.pop(0) if owner.statuses else 204
                owner.answers.append(status)
                if status == 204:
                    owner.kept += [(tuple(lb), s) for lb, ss in decode(body) for s in ss]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/write"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_5xx_and_429_are_retried_4xx_skipped_and_receivers_are_independent(
        either_storage: SQLStorage) -> None:
    """503 and 429 answers: the same request again (nothing lost, nothing kept twice); a 400:
    the batches of that request are tried one by one, each refused alone counted; a receiver
    that keeps failing does not hold back another one."""
    storage = either_storage
    fleet = Fleet(hosts=2)
    items = fleet.batches(1_780_000_000_000, 6)
    flaky = FlakyReceiver([503, 503, 429, 500])
    refusing = FlakyReceiver([400] * 1000)
    dead = f"http://127.0.0.1:{free_port()}/api/v1/write"  # nothing listens there
    try:
        with Running(storage, config(flaky.url, name="flaky", max_samples_per_request=10**5),
                     config(refusing.url, name="refusing", max_samples_per_request=10**5),
                     config(dead, name="dead")) as run:
            storage.store_batches(items)
            wait_until(lambda: caught_up(storage, "flaky"), 30, "flaky receiver served")
            wait_until(lambda: caught_up(storage, "refusing"), 30, "refusing receiver passed")
            counters = {f.name: f.counters for f in run.service.forwarders}
            assert position(storage, "dead").pending_samples == fleet.total()
            assert counters["dead"].failures["network"] >= 1
        assert flaky.answers[:5] == [503, 503, 429, 500, 204]
        want = sorted((k, s) for k, ss in fleet.want().items() for s in ss)
        assert sorted(flaky.kept) == want  # every sample, once
        assert counters["flaky"].failures == {"503": 2, "429": 1, "500": 1}
        assert counters["flaky"].retries == 4
        total = fleet.total()
        flaky_pos, refusing_pos = position(storage, "flaky"), position(storage, "refusing")
        assert (flaky_pos.sent, flaky_pos.rejected) == (total, 0)
        # one request of all batches, refused; then each batch alone, refused
        assert refusing.answers == [400] * (1 + len(items))
        assert (refusing_pos.sent, refusing_pos.rejected) == (0, total)
    finally:
        flaky.close()
        refusing.close()


def test_encoder_process_killed_is_replaced(either_storage: SQLStorage) -> None:
    """The worker process that encodes dies (SIGKILL): the next batches are encoded by a new
    one, nothing is lost or skipped."""
    storage = either_storage
    fleet = Fleet(hosts=2)
    receiver = FlakyReceiver([])
    try:
        with Running(storage, config(receiver.url)) as run:
            storage.store_batches(fleet.batches(1_780_000_000_000, 3))
            wait_until(lambda: caught_up(storage), 30, "first batches forwarded")
            encoder = run.service.encoder
            assert encoder is not None and encoder._pool is not None
            [worker] = list(encoder._pool._processes.values())
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(10)
            storage.store_batches(fleet.batches(1_780_000_100_000, 3))
            wait_until(lambda: caught_up(storage), 30, "forwarded after the worker died")
            [again] = list(encoder._pool._processes.values())
            assert again.pid != worker.pid
        want = sorted((k, s) for k, ss in fleet.want().items() for s in ss)
        assert sorted(receiver.kept) == want
        p = position(storage)
        assert (p.sent, p.rejected, p.skipped) == (fleet.total(), 0, 0)
    finally:
        receiver.close()
