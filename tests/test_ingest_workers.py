"""Ingest worker processes (``[ingest] workers``, collector/ingest/workers.py): every message
has the same outcome as when the writer thread examines it, and a worker process that dies
(killed from outside, or by a payload) loses nothing and holds up nothing else.

Real processes throughout: the pool's forkserver children, real signals, a real SQLite (and
PostgreSQL, for catalogues) storage; the fuzz rig of ``test_fuzz_ingest`` feeds messages
through the MQTT callback and the bounded inbox as paho would."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.config import IngestConfig
from edgemon.collector.ingest.inbox import Inbox, RawMessage
from edgemon.collector.ingest.pipeline import IngestPipeline, Outcome
from edgemon.collector.ingest.workers import WorkerPool
from edgemon.protocol import decode, encode
from edgemon.protocol.catalogue import compact, decode_catalogue, encode_catalogue
from edgemon.protocol.topics import catalogue_topic, metrics_topic
from tests.support import poison_worker
from tests.support.storages import Stores
from tests.support.waiting import wait_until
from tests.test_fuzz_ingest import (
    CORPUS,
    CORPUS_WINDOW,
    Rig,
    _corpus,
    _good_companion,
    assert_storage_reads,
    close_rig,
    make_rig,
    now_ms,
)
from tests.test_protocol_catalogue import _Acks

HOST_TOPIC = b"edgemon/v1/fuzz-host/metrics"


def _pooled(rig: Rig, pool: WorkerPool | None = None) -> Rig:
    if pool is not None:
        rig.pipeline.pool = pool
    rig.loop.run_until_complete(rig.pipeline.start_pool())
    assert rig.pipeline.pool is not None and rig.pipeline.pool.started
    return rig


def _close(rig: Rig) -> None:
    rig.loop.run_until_complete(rig.pipeline.close_pool())
    close_rig(rig)


def _pool(workers: int, **kw: Any) -> WorkerPool:
    return WorkerPool(workers, future_tolerance_seconds=300, past_tolerance_days=30,
                      max_series=5000, max_new_per_hour=1000, **kw)


def _shown(o: Outcome) -> tuple[Any, ...]:
    r = o.result
    return (o.kind, o.host, o.reason, o.batch_key, o.dropped,
            None if r is None else (r.host, r.instance, r.seq, r.stored, r.samples))


def _good(host: str, seq: int) -> bytes:
    t0 = (now_ms() // 1000 - 120) * 1000
    return encode({"v": 1, "host": host, "instance": "inst", "seq": seq, "sent": now_ms(),
                   "t": [t0, 10_000, 10_000],
                   "metrics": [["load1", "gauge", "", 2, [], [[[], 0, [42, 1, 1]]]],
                               ["cpu_usage_percent", "gauge", "percent", 1, ["cpu"],
                                [[["total"], 0, [125, 1, -2]]]]]})


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[tuple[Rig, Rig]]:
    """The writer thread's rig and a rig with two worker processes."""
    alone = make_rig(tmp_path / "alone.db", **CORPUS_WINDOW, workers=0)
    pooled = _pooled(make_rig(tmp_path / "pooled.db", **CORPUS_WINDOW, workers=2))
    yield alone, pooled
    close_rig(alone)
    _close(pooled)


def test_every_corpus_payload_has_the_outcome_the_writer_thread_gives_it(
        rigs: tuple[Rig, Rig]) -> None:
    alone, pooled = rigs
    messages = []
    for name, _reason in _corpus():
        topic_file = CORPUS / f"{name}.topic"
        topic = topic_file.read_bytes() if topic_file.exists() else HOST_TOPIC
        messages.append((topic, (CORPUS / f"{name}.bin").read_bytes()))
        messages.append((HOST_TOPIC, _good_companion(len(messages)).payload))
    for k in range(0, len(messages), 100):  # groups spread over both workers in chunks
        group = messages[k:k + 100]
        assert [_shown(o) for o in pooled.ingest(group)] == \
            [_shown(o) for o in alone.ingest(group)]
    assert pooled.rejects.by_reason() == alone.rejects.by_reason()
    assert pooled.rejects.series_by_reason() == alone.rejects.series_by_reason()
    assert pooled.storage.payloads == alone.storage.payloads  # the same bytes stored
    for payload in pooled.storage.payloads.values():
        assert_storage_reads(payload)
    assert pooled.pipeline.pool is not None and pooled.pipeline.pool.restarts == 0


def test_a_series_over_the_hosts_bound_is_dropped_as_in_the_writer_thread(
        tmp_path: Path) -> None:
    rig = _pooled(make_rig(tmp_path / "e.db", workers=2, max_series_per_host=1))
    try:
        first, second = rig.ingest([(HOST_TOPIC, _good("fuzz-host", 1)),
                                    (HOST_TOPIC, _good("fuzz-host", 2))])
        assert first.result is not None and first.result.stored
        assert first.dropped is not None and set(first.dropped) == {"series_limit"}
        stored = decode(rig.storage.payloads[("fuzz-host", "inst", 1)])
        assert len(stored["metrics"]) == 1  # one series of the two: the host's bound
        assert second.result is not None and second.result.stored
        assert rig.rejects.series_by_reason() == {"series_limit": 2}
    finally:
        _close(rig)


def _group(rig: Rig, n: int, first_seq: int) -> list[tuple[bytes, bytes]]:
    return [(f"edgemon/v1/h-{i}/metrics".encode(), _good(f"h-{i}", first_seq)) for i in range(n)]


def _all_stored(outcomes: list[Outcome]) -> bool:
    return all(o.kind == "metrics" and o.result is not None and o.result.stored
               for o in outcomes)


def _dead(pid: int) -> bool:
    """Gone or a zombie. The process can be reaped between a look at ``/proc/<pid>`` and a read
    of it: the read then fails (FileNotFoundError, or ESRCH: ProcessLookupError)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_worker_killed_while_idle_is_started_again_and_nothing_is_lost(
        tmp_path: Path) -> None:
    rig = _pooled(make_rig(tmp_path / "e.db", workers=1))
    pool = rig.pipeline.pool
    assert pool is not None
    try:
        assert _all_stored(rig.ingest(_group(rig, 40, 1)))
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _dead(victim), 10, "the killed worker to die")
        outcomes = rig.ingest(_group(rig, 40, 2))
        assert _all_stored(outcomes)
        assert pool.restarts == 1 and pool.crashed == 0
        assert victim not in pool.pids() and len(pool.pids()) == 1
        assert rig.rejects.by_reason() == {}
    finally:
        _close(rig)


def test_a_worker_killed_holding_a_chunk_loses_none_of_it(tmp_path: Path) -> None:
    rig = _pooled(make_rig(tmp_path / "e.db", workers=1))
    pool = rig.pipeline.pool
    assert pool is not None
    try:
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGSTOP)  # it takes the chunk and never answers ...
        for mid, (topic, payload) in enumerate(_group(rig, 12, 1), start=1):
            import paho.mqtt.client as mqtt

            message = mqtt.MQTTMessage(mid=mid, topic=topic)
            message.payload, message.qos = payload, 1
            rig.front._handle(message)
        turn = rig.loop.create_task(rig._turn(12))
        rig.loop.run_until_complete(asyncio.sleep(0))
        wait_until(lambda: pool.slots[0].busy, 10, "the chunk to be out to the worker")
        os.kill(victim, signal.SIGKILL)  # ... and dies with it
        outcomes = rig.loop.run_until_complete(turn)
        assert _all_stored(outcomes) and len(outcomes) == 12
        assert pool.restarts == 1 and pool.crashed == 0
        assert rig.rejects.by_reason() == {}
    finally:
        _close(rig)


def test_a_payload_that_kills_its_worker_twice_is_rejected_and_nothing_else(
        tmp_path: Path) -> None:
    rig = _pooled(make_rig(tmp_path / "e.db", workers=2),
                  _pool(2, serve=poison_worker.serve))
    pool = rig.pipeline.pool
    assert pool is not None
    try:
        group = _group(rig, 30, 1)
        group.insert(7, (b"edgemon/v1/h-poison/metrics", poison_worker.POISON))
        outcomes = rig.ingest(group)
        bad = outcomes.pop(7)
        assert (bad.kind, bad.host, bad.reason) == ("reject", "h-poison", "worker_crash")
        assert bad.batch_key is None  # its agent is not told: it keeps the batch, sends again
        assert _all_stored(outcomes) and len(outcomes) == 30
        assert pool.restarts == 2 and pool.crashed == 1
        assert rig.rejects.by_reason() == {"worker_crash": 1}
        assert _all_stored(rig.ingest(_group(rig, 30, 2)))  # the pool works on
        # the poisoning host's next messages are not examined for a while: no more restarts
        again = rig.ingest([(b"edgemon/v1/h-poison/metrics", poison_worker.POISON),
                            (b"edgemon/v1/h-poison/metrics", _good("h-poison", 3)),
                            *_group(rig, 3, 3)])
        assert [(o.host, o.reason) for o in again[:2]] == [("h-poison", "worker_crash")] * 2
        assert _all_stored(again[2:])
        assert pool.restarts == 2 and pool.crashed == 1
    finally:
        _close(rig)


def test_a_worker_that_does_not_answer_is_killed_and_replaced(tmp_path: Path) -> None:
    rig = _pooled(make_rig(tmp_path / "e.db", workers=1), _pool(1, hang_seconds=1.0))
    pool = rig.pipeline.pool
    assert pool is not None
    try:
        hung = pool.pids()[0]
        os.kill(hung, signal.SIGSTOP)  # stuck for good: only the pool's deadline ends it
        outcomes = rig.ingest(_group(rig, 5, 1))
        assert _all_stored(outcomes)
        assert pool.restarts == 1 and hung not in pool.pids()
    finally:
        _close(rig)


# --- catalogues: supplied to whichever worker lacks one, on SQLite and PostgreSQL --------------

def _message(topic: str, payload: bytes, mid: int) -> RawMessage:
    return RawMessage(topic=topic, payload=payload, mid=mid, qos=1, retain=False,
                      received_ms=now_ms(), generation=0, size=len(payload))


def test_referencing_batches_are_resolved_by_every_worker_and_stored_inline(
        stores: Stores) -> None:
    storage = stores.open()
    loop = asyncio.new_event_loop()
    acks = _Acks()
    with ThreadPoolExecutor(1) as writer:
        pipeline = IngestPipeline(storage=storage,
                                  inbox=Inbox(loop, max_messages=1000, max_bytes=1 << 24),
                                  mqtt=acks, config=IngestConfig(workers=2),  # type: ignore[arg-type]
                                  writer=writer)
        loop.run_until_complete(pipeline.start_pool())
        try:
            hosts = [f"h-{i}" for i in range(8)]
            declared, referencing = [], []
            for host in hosts:
                batch = decode(_good(host, 1))
                metrics, ident, ref = compact(batch)
                message = encode_catalogue(host=host, instance="inst", metrics=metrics,
                                           ident=ident)
                declared.append(_message(catalogue_topic(host), message, len(declared) + 1))
                referencing.append((host, batch, encode(ref)))
            loop.run_until_complete(pipeline.process(declared))
            assert all(decode_catalogue(m.payload).id for m in declared)
            # the workers that examine these may not have decoded the catalogue: the pipeline
            # reads it from the storage for them
            pool = pipeline.pool
            assert pool is not None
            os.kill(pool.pids()[0], signal.SIGKILL)
            msgs = [_message(metrics_topic(host), payload, 100 + i)
                    for i, (host, _, payload) in enumerate(referencing)]
            outcomes = loop.run_until_complete(pipeline.process(msgs))
            assert [(o.kind, o.reason) for o in outcomes] == [("metrics", None)] * len(hosts)
            assert pipeline.stats.referencing_batches == len(hosts)
            for o, (host, _, _) in zip(outcomes, referencing, strict=True):
                assert o.result is not None and o.result.stored and o.result.host == host
                assert o.result.samples == 6
            with storage._read() as db:  # stored inline: each readable on its own
                stored = [decode(bytes(p)) for (p,) in db.execute("SELECT payload FROM batches")]
            assert sorted((b["host"], b["metrics"]) for b in stored) == \
                sorted((host, batch["metrics"]) for host, batch, _ in referencing)
            assert pool.crashed == 0
        finally:
            loop.run_until_complete(pipeline.close_pool())
    loop.close()
    storage.close()


def test_workers_setting_is_validated_by_check_config(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    def check(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "collector.toml"
        path.write_text(text)
        path.chmod(0o600)
        return subprocess.run([sys.executable, "-m", "edgemon.collector.cli", "check-config",
                               "-c", str(path)], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})

    bad = check("[ingest]\nworkers = -1\n")
    assert bad.returncode == 2 and "ingest.workers" in bad.stderr, bad
    ok = check("[ingest]\nworkers = 0\n")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.split("\n", 1)[1])["ingest"]["workers"] == 0
    assert IngestConfig().workers == 2  # the default the benchmark justified on 2 cores
