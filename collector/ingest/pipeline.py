"""The ingest pipeline: inbox -> decode/validate -> one storage transaction -> PUBACK -> agent ack.

All ingest writes (``store_batches``, ``record_status``) run in ONE dedicated writer thread;
decoding and validation (zstd, msgspec's typed decoder or the pure reader, the schema: CPU work;
``examine.py``) run in ``[ingest] workers`` worker processes (``workers.py``; the event loop
hands them each group and admits the series of each batch under its host's cardinality bound
before the writer stores it, while the workers examine the next groups: collector/STORAGE.md,
"Ingest processes"), or, with ``workers = 0``, in the writer thread as step 1 below says;
never on the event loop. Storage maintenance (compaction) is not ingest's:
``storage.maintenance`` runs it in its own thread (the storage serialises writers itself).
Per group of messages taken from the inbox (up to ``max_batch_per_txn``):

1. writer thread: parse the topic, decode every payload with ``protocol.decode_batch`` (the
   decoder storage reads stored payloads with) and reject the bad ones with a counted reason
   (nothing of a bad message reaches storage); drop the series of a good batch that no real host
   sends or that exceed the host's cardinality bound (``screen``, ``cardinality``: counted per
   series, the rest of the batch is stored, re-encoded and decoded once more); record status
   messages; store all accepted batches with ONE ``store_batches`` call (one transaction, durable
   on return). Memory
   is bounded: once the decoded batches of a group hold ``max_samples_per_txn`` samples, they
   are stored and let go before the rest of the group is decoded (several transactions);
2. event loop, only after that returned: PUBACK every message of the group (stored, duplicate and
   rejected alike: the broker must not redeliver garbage forever), then publish one agent ack per
   (host, instance) on ``edgemon/v1/<host>/ack`` with QoS 1 naming the stored and duplicate seqs.

While more samples are due for compaction (old enough for it, and not yet taken) than ``[ingest]
backlog_budget_samples``, the agent acks of the hosts holding more than their fair share of that
due back-log are held for a while (``backpressure.py``; the batches are stored and PUBACKed as
always). The back-log per host is read from the storage every ``BACKLOG_POLL_S`` in a thread,
never on the event loop.

When storing fails, the group is retried item by item at once (a transient error costs nothing
more). Then:

* some items stored, others not even when tried once more right after: the storage works and
  those items are poison; they are rejected ("storage_error"), PUBACKed, and not acknowledged to
  their agent (which keeps them and sends them again later);
* nothing could be stored: the storage is unavailable. Nothing is acknowledged; the messages stay
  held (so back-pressure builds up) and are retried, with whatever arrived meanwhile, after a
  back-off of 0.5 s doubling to 30 s. On shutdown they are left unacknowledged for the broker to
  deliver again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from edgemon.collector.config import IngestConfig
from edgemon.collector.ingest.backpressure import BackPressure, HeldAck
from edgemon.collector.ingest.cardinality import SeriesLimits
from edgemon.collector.ingest.catalogues import read_stored
from edgemon.collector.ingest.examine import (
    MAX_RESOLVED_PER_ROUND,
    Examiner,
    Facts,
)
from edgemon.collector.ingest.mqtt import Inbox, MqttIngest, RawMessage, now_ms
from edgemon.collector.ingest.outcomes import IngestStats, Outcome
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.ingest.workers import Task, WorkerPool
from edgemon.collector.storage.base import DueBacklog, IngestItem, Storage, StoreResult
from edgemon.common.logs import Throttle
from edgemon.protocol import ProtocolError, parse_topic

__all__ = ["IngestPipeline", "IngestStats", "Outcome"]

log = logging.getLogger("edgemon.collector.ingest.pipeline")

MAX_TRACKED_HOSTS = 10_000
DECODE_ERROR_LOG_INTERVAL = 60.0  # seconds between tracebacks of unexpected decoder errors
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
PIPELINE_DEPTH = 2  # groups examined by the workers ahead of the one being stored
SUPPLY_ROUNDS = 3  # examinations of a message: a worker may ask for its catalogue, then its base
BACKLOG_POLL_S = 0.5  # seconds between reads of the due back-log by host near the budget
BACKLOG_IDLE_POLL_S = 2.0  # ... and below half of it
BACKLOG_POLL_SHARE = 0.1  # ... and at most this share of the time spent reading it
RELEASE_TICK_S = 0.25  # seconds between looks at the held acks


class IngestPipeline:
    def __init__(self, *, storage: Storage, inbox: Inbox, mqtt: MqttIngest | None,
                 config: IngestConfig, writer: Executor, rejects: Rejects | None = None,
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self.storage = storage
        self.inbox = inbox
        self.mqtt = mqtt
        self.config = config
        self.writer = writer
        self.rejects = rejects or Rejects()
        self.clock_ms = clock_ms
        self.stats = IngestStats()
        self.series_limits = SeriesLimits(config.max_series_per_host,
                                          config.max_new_series_per_hour)
        # decode, validate, resolve, screen: in the writer thread, or in worker processes
        self.examiner = Examiner(config.future_tolerance_seconds, config.past_tolerance_days,
                                 load=storage.catalogue, max_series=config.max_series_per_host,
                                 max_new_per_hour=config.max_new_series_per_hour,
                                 whole_batches=True, load_base=storage.stored_batch,
                                 **_resolve_limit(config))
        self.pool = WorkerPool(config.workers,
                               future_tolerance_seconds=config.future_tolerance_seconds,
                               past_tolerance_days=config.past_tolerance_days,
                               max_series=config.max_series_per_host,
                               max_new_per_hour=config.max_new_series_per_hour) \
            if config.workers else None
        # the hosts' budgets of resolved bytes (examine.py): the examiner's, also when workers
        # examine, so a host has one budget whichever examines its batches
        self.resolve_limit = self.examiner.resolve_limit
        self._round = 0
        self.storage_ok = True  # False while the storage refuses every write
        self.heartbeat = time.monotonic()  # last turn of the worker loop (systemd watchdog)
        self._decode_error_log = Throttle(DECODE_ERROR_LOG_INTERVAL)
        self._stop = asyncio.Event()
        # the agent acks of the hosts filling the compaction back-log wait (backpressure.py)
        self.backpressure = BackPressure(budget=config.backlog_budget_samples,
                                         max_hold_s=config.backlog_max_hold_seconds)
        self._backlog_error_log = Throttle(DECODE_ERROR_LOG_INTERVAL)
        self._watcher: asyncio.Task[None] | None = None  # releases held acks (run starts it)

    # --- the worker ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Take, store and acknowledge until ``stop()`` was called and the inbox is empty; then
        publish the acks still held (their batches are stored)."""
        watcher = self._watcher = asyncio.create_task(
            self._watch_backlog(), name="edgemon-ingest-backlog") \
            if self.backpressure.enabled and self.mqtt is not None else None
        try:
            await self._run()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            self._publish_held(self.backpressure.release_all())

    async def _run(self) -> None:
        if self.pool is not None:
            try:
                await self.start_pool()
            except Exception:
                log.exception("could not start the ingest worker processes: examining messages "
                              "in the writer thread instead")
                await self.close_pool()
            if self.pool.started:
                try:
                    await self._run_pooled()
                finally:
                    await self.close_pool()
                return
        retry: list[RawMessage] = []
        backoff = 0.0
        limit = self.config.max_batch_per_txn
        while True:
            self.heartbeat = time.monotonic()
            if retry:
                if not await self._wait_to_retry(retry, backoff):
                    return
                msgs = retry + await self.inbox.get_many(max(0, limit - len(retry)), timeout=0)
            else:
                msgs = await self.inbox.get_many(limit, timeout=1.0)  # 1 s: the heartbeat
            if msgs:
                outcomes = await self.process(msgs)
                retry = [o.msg for o in outcomes if o.retry]
                backoff = min(RETRY_MAX, backoff * 2 or RETRY_FIRST) if retry else 0.0
            elif self._stop.is_set() or self.inbox.closed:
                return
            if self.mqtt is not None:
                self.mqtt.after_release()

    def stop(self) -> None:
        """Finish what is queued, then let ``run`` return (call ``inbox.close()`` first)."""
        self._stop.set()

    async def _wait_to_retry(self, retry: list[RawMessage], backoff: float) -> bool:
        """Wait ``backoff`` seconds before storing ``retry`` again; False (and ``retry`` left
        for the broker to deliver again) when stopping."""
        if self._stop.is_set():
            log.warning("storage unavailable at shutdown: leaving %d message(s) unacknowledged "
                        "for the broker to deliver again", len(retry))
            self.inbox.release(retry)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), backoff)
        return True

    async def process(self, msgs: list[RawMessage]) -> list[Outcome]:
        """Store one group, then acknowledge what is settled. What happened to each message.

        Messages marked ``retry`` stay held in the inbox's accounting; the caller retries them.
        Examined by the worker processes once ``start_pool`` ran (``run`` does), else in the
        writer thread.
        """
        if self.pool is None or not self.pool.started:
            return await self._commit(msgs, self._store_group, msgs)
        try:
            outcomes = await self._examine_pooled(msgs)
        except BaseException:
            self.inbox.release(msgs)
            raise
        return await self._commit(msgs, self._store_outcomes, outcomes)

    async def _commit(self, msgs: list[RawMessage], store: Callable[[Any], list[Outcome]],
                      what: Any) -> list[Outcome]:
        """``store(what)`` in the writer thread, then acknowledge what is settled."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            outcomes = await loop.run_in_executor(self.writer, store, what)
        except BaseException:
            self.inbox.release(msgs)
            raise
        self.stats.transactions += 1
        self.stats.transaction_seconds += time.monotonic() - started
        settled = [o for o in outcomes if not o.retry]
        self.storage_ok = len(settled) == len(outcomes)
        if not self.storage_ok:
            self.stats.storage_retries += 1
        self._acknowledge(settled)
        self.inbox.release([o.msg for o in settled])
        return outcomes

    # --- worker processes (``[ingest] workers``, workers.py) ------------------------------------

    async def start_pool(self) -> None:
        """Start the worker processes (``run`` does; call it before ``process`` otherwise)."""
        if self.pool is not None and not self.pool.started:
            await asyncio.get_running_loop().run_in_executor(None, self.pool.start)

    async def close_pool(self) -> None:
        if self.pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.pool.close)

    async def _run_pooled(self) -> None:
        """Two stages: the workers examine the next groups while the writer stores this one."""
        examined: asyncio.Queue[list[Outcome] | None] = asyncio.Queue(PIPELINE_DEPTH)
        feeder = asyncio.create_task(self._feed(examined), name="edgemon-ingest-examine")
        try:
            await self._drain(examined, feeder)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            while not examined.empty():  # left at shutdown: for the broker to deliver again
                left = examined.get_nowait()
                if left:
                    self.inbox.release([o.msg for o in left])

    async def _feed(self, examined: asyncio.Queue[list[Outcome] | None]) -> None:
        limit = self.config.max_batch_per_txn
        while True:
            msgs = await self.inbox.get_many(limit, timeout=1.0)
            if not msgs:
                if self._stop.is_set() or self.inbox.closed:
                    await examined.put(None)
                    return
                continue
            try:
                outcomes = await self._examine_pooled(msgs)
                await examined.put(outcomes)
            except BaseException:
                self.inbox.release(msgs)
                raise

    async def _drain(self, examined: asyncio.Queue[list[Outcome] | None],
                     feeder: asyncio.Task[None]) -> None:
        retry: list[RawMessage] = []
        backoff = 0.0
        done = False
        while True:
            self.heartbeat = time.monotonic()
            if feeder.done() and feeder.exception() is not None:
                raise feeder.exception()  # type: ignore[misc]
            outcomes: list[Outcome] | None = None
            if retry:
                if not await self._wait_to_retry(retry, backoff):
                    return
                try:
                    outcomes = await self._examine_pooled(retry)
                except BaseException:
                    self.inbox.release(retry)
                    raise
                more = examined.get_nowait() if not done and not examined.empty() else []
                if more is None:
                    done = True
                outcomes += more or []
            elif done:
                return
            else:
                try:
                    outcomes = await asyncio.wait_for(examined.get(), 1.0)  # 1 s: heartbeat
                except TimeoutError:
                    continue
                if outcomes is None:  # the feeder is done: nothing more will come
                    return
            msgs = [o.msg for o in outcomes]
            stored = await self._commit(msgs, self._store_outcomes, outcomes)
            retry = [o.msg for o in stored if o.retry]
            backoff = min(RETRY_MAX, backoff * 2 or RETRY_FIRST) if retry else 0.0
            if self.mqtt is not None:
                self.mqtt.after_release()

    async def _examine_pooled(self, msgs: list[RawMessage]) -> list[Outcome]:
        """Examine ``msgs`` in the worker processes: supply the stored catalogues they ask
        for, admit the series of each batch in order (the host's cardinality bound), and have
        a batch with refused series examined again without them."""
        assert self.pool is not None
        self._round += 1
        project = self._project()
        tasks = [Task(m.topic, m.payload, m.received_ms, budget=self._budget(m.topic),
                      round=self._round, project=project) for m in msgs]
        facts = await self._examined(tasks, list(range(len(tasks))), [None] * len(tasks))
        self._charge_resolved(facts)
        again = []
        for i, f in enumerate(facts):
            if f.series and f.host is not None:
                refused = self.series_limits.admit_hashes(
                    f.host, memoryview(f.series).cast("Q"), msgs[i].received_ms)
                if refused:
                    tasks[i] = replace(tasks[i], refused=refused)
                    again.append(i)
        if again:  # the second look resolves the batch again: its budget pays for that too
            facts = await self._examined(tasks, again, facts)
            self._charge_resolved([facts[i] for i in again])
        self.stats.worker_restarts = self.pool.restarts
        self.stats.worker_crashes = self.pool.crashed
        return [self._outcome(m, f) for m, f in zip(msgs, facts, strict=True)]

    async def _examined(self, tasks: list[Task], which: list[int], facts: list[Any]
                        ) -> list[Facts]:
        """``facts`` with those of ``tasks[which]`` (re)examined, the stored catalogues and
        bases the workers ask for supplied."""
        assert self.pool is not None
        loop = asyncio.get_running_loop()
        for _ in range(SUPPLY_ROUNDS):
            for i, f in zip(which, await self.pool.examine([tasks[i] for i in which]),
                            strict=True):
                facts[i] = f
            which = [i for i in which if facts[i].kind in ("need_catalogue", "need_base")]
            if not which:
                break
            catalogues = {facts[i].need for i in which if facts[i].kind == "need_catalogue"}
            bases = {facts[i].need_base for i in which if facts[i].kind == "need_base"}
            found, found_bases = await loop.run_in_executor(
                self.writer, self._stored_for_workers, catalogues, bases)
            for i in which:
                t = tasks[i]
                tasks[i] = replace(t, supplied={**(t.supplied or {}), **found} if found
                                   else t.supplied,
                                   supplied_bases={**(t.supplied_bases or {}), **found_bases}
                                   if found_bases else t.supplied_bases)
        for i in which:  # asked again for what it was given: cannot happen; never store it
            facts[i] = Facts("reject", facts[i].host, reason="decode_error",
                             detail="a worker kept asking for what it was given")
        return facts

    def _project(self) -> frozenset[str]:
        """The metrics the storage's cache of pending batches keeps for its readers: what an
        accepted batch's columns are projected on where it is examined (``Facts.projected``)."""
        cache = getattr(self.storage, "pending_cache", None)
        return frozenset() if cache is None else cache.hot()

    def _charge_resolved(self, facts: list[Facts]) -> None:
        """What resolving these batches cost leaves their hosts' budgets of resolved bytes (a
        second look is charged again; the byte rate limit of the MQTT front only once, by
        ``Facts.charge`` in ``_outcome``)."""
        for f in facts:
            if f.charge and f.host is not None:
                self.resolve_limit.charge(f.host, f.charge)

    def _budget(self, topic: str) -> float | None:
        """Resolved bytes the topic's host may spend in this round (None: no limit)."""
        if not self.resolve_limit.enabled:
            return None
        try:
            host = parse_topic(topic).host
        except ProtocolError:
            return 0.0
        return min(float(MAX_RESOLVED_PER_ROUND), self.resolve_limit.available(host))

    def _stored_for_workers(self, catalogues: Iterable[tuple[str, str]],
                            bases: Iterable[tuple[str, str, int]]
                            ) -> tuple[dict[tuple[str, str], bytes | None],
                                       dict[tuple[str, str, int], bytes | None]]:
        """The stored message of each (host, id) in ``catalogues`` and the stored payload of
        each (host, instance, seq) in ``bases`` (None: unknown, or unreadable)."""
        return ({key: read_stored(self.storage.catalogue, *key) for key in catalogues},
                {key: read_stored(self.storage.stored_batch, *key) for key in bases})

    # --- writer thread ------------------------------------------------------------------------

    def _store_group(self, msgs: list[RawMessage]) -> list[Outcome]:
        """Examine and store ``msgs`` in order (``workers = 0``)."""
        return self._store_outcomes(map(self._classify, msgs))

    def _store_outcomes(self, outcomes: Iterable[Outcome]) -> list[Outcome]:
        """Store ``outcomes`` in order, in as few transactions as the bound on decoded samples
        held at once (``max_samples_per_txn``) allows (``outcomes`` may be a lazy map that
        decodes each message as it is taken)."""
        out: list[Outcome] = []
        chunk: list[Outcome] = []
        held = 0
        for o in outcomes:
            out.append(o)
            chunk.append(o)
            held += o.samples
            if held >= self.config.max_samples_per_txn:
                self._store_chunk(chunk)
                chunk, held = [], 0
        if chunk:
            self._store_chunk(chunk)
        return out

    def _store_chunk(self, outcomes: list[Outcome]) -> None:
        """Record the statuses and store the batches of ``outcomes`` in one transaction, then
        let the decoded batches go (what is acknowledged later needs only the result)."""
        statuses = [o for o in outcomes if o.kind == "status"]
        # The same batch twice in one group (a quick resend): store the first, the rest are dups.
        first: dict[tuple[str, str, int], Outcome] = {}
        unique: list[Outcome] = []
        repeats: list[tuple[Outcome, Outcome]] = []
        for o in outcomes:
            if o.item is None:
                continue
            b = o.item.batch
            key = (b.host, b.instance, b.seq)
            if key in first:
                repeats.append((o, first[key]))
            else:
                first[key] = o
                unique.append(o)
        for o in statuses:
            self._record_status(o)
        for o in outcomes:
            if o.kind == "catalogue":
                self._store_catalogue(o)
        if unique:
            try:
                _attach(unique, self.storage.store_batches([_item(o) for o in unique]))
            except Exception:
                log.exception("storing %d batch(es) in one transaction failed; storing them "
                              "one by one", len(unique))
                self._store_one_by_one(unique)
                failed = [o for o in unique if o.failed]
                if failed and len(failed) < len(unique):
                    # Others went in after these failed: the storage may have just recovered.
                    # What fails again now, right after a success, is poison.
                    self._store_one_by_one(failed)
        tried = statuses + unique
        failed = [o for o in tried if o.failed]
        if failed:
            storage_works = len(failed) < len(tried)
            for o in failed:
                if storage_works:  # others went in: this one is poison
                    log.error("cannot store a message from %s: %s", o.host, o.detail)
                    o.kind, o.reason, o.item = "reject", "storage_error", None
                else:
                    o.retry = True
        for o, original in repeats:
            if original.retry:
                o.retry = True
            elif original.result is None:
                o.kind, o.reason, o.detail, o.item = "reject", original.reason, "", None
            else:
                b = original.result
                o.result = StoreResult(host=b.host, instance=b.instance, seq=b.seq,
                                       stored=False, samples=b.samples)
        for o in outcomes:
            o.item, o.samples = None, 0

    def _store_one_by_one(self, group: list[Outcome]) -> None:
        for o in group:
            try:
                _attach([o], self.storage.store_batches([_item(o)]))
                o.failed = False
            except Exception as exc:
                o.failed, o.detail = True, repr(exc)[:200]

    def _classify(self, msg: RawMessage) -> Outcome:
        """Examine one message in this thread (no storage yet): an accepted item, a status, a
        catalogue or a reject."""
        return self._outcome(msg, self.examiner.examine(msg.topic, msg.payload, msg.received_ms,
                                                        admit=self.series_limits.admit,
                                                        project=self._project()))

    def _outcome(self, msg: RawMessage, f: Facts) -> Outcome:
        """The outcome of ``msg`` from its examination."""
        if f.trace is not None and self._decode_error_log() is not None:
            log.error("unexpected error decoding a message from %s (logged at most once a "
                      "minute; all are counted as reason decode_error)\n%s", f.host, f.trace)
        o = Outcome(msg, f.host, f.kind, reason=f.reason, detail=f.detail, batch_key=f.batch_key,
                    status=f.status, dropped=f.dropped, catalogue=f.catalogue)
        if f.referencing:
            self.stats.referencing_batches += 1
        if f.charge and f.host is not None and self.mqtt is not None:
            self.mqtt.charge(f.host, f.charge)  # what resolving it cost: the sender pays
        head = f.head
        if head is not None:
            o.item = IngestItem(batch=head, payload=msg.payload if f.payload is None  # type: ignore[arg-type]
                                else f.payload, received_ms=msg.received_ms,
                                historical=f.kind == "backfill", projected=f.projected)
            o.samples, o.sent_ms = head.sample_count, head.sent
        return o

    def _store_catalogue(self, o: Outcome) -> None:
        """Keep a declared catalogue durably (then it is acknowledged); a storage without
        catalogues acknowledges none, so agents keep sending batches inline."""
        catalogue = o.catalogue
        assert catalogue is not None
        try:
            self.storage.store_catalogue(catalogue.host, catalogue.id, o.msg.payload,
                                         o.msg.received_ms)
        except NotImplementedError:
            o.reject("catalogues_unsupported", "this storage keeps no catalogues")
        except Exception as exc:
            log.exception("could not store a catalogue of %s", o.host)
            o.reject("storage_error", repr(exc)[:200])

    def _record_status(self, o: Outcome) -> None:
        doc = o.status or {}
        try:
            self.storage.record_status(o.host or "", doc["instance"], doc["state"] == "online",
                                       doc["ts"], o.msg.received_ms, doc.get("last_seq"))
        except Exception as exc:
            log.exception("could not record the status of %s", o.host)
            o.failed, o.detail = True, repr(exc)[:200]

    # --- back-pressure on the compaction back-log (backpressure.py) ----------------------------

    async def _watch_backlog(self) -> None:
        """Read the due back-log by host in a thread every ``BACKLOG_POLL_S`` (less often
        when a read takes long or the back-log is far below its budget) and publish the held
        acks that are due."""
        loop = asyncio.get_running_loop()
        polled, took = float("-inf"), 0.0
        while True:
            try:
                wait = max(self.backpressure.poll_every(BACKLOG_POLL_S, BACKLOG_IDLE_POLL_S),
                           took / BACKLOG_POLL_SHARE)
                if time.monotonic() - polled >= wait:
                    started = time.monotonic()
                    self.backpressure.begin_poll()
                    backlog = await loop.run_in_executor(None, self._due_by_host)
                    polled = time.monotonic()
                    took = self.backpressure.poll_seconds = polled - started
                    self.backpressure.update(backlog)  # None (unknown): hold nothing
                self._publish_held(self.backpressure.due())
            except Exception:  # never leave acks held for want of a look at them
                if self._backlog_error_log() is not None:
                    log.exception("back-pressure on the back-log failed (logged at most once "
                                  "a minute)")
                self._publish_held(self.backpressure.release_all())
            self.backpressure.refresh()  # for /metrics, rendered on another thread
            await asyncio.sleep(RELEASE_TICK_S)

    def _due_by_host(self) -> DueBacklog | None:
        """(A thread.) The storage's back-log by host; None when it cannot tell."""
        try:
            return self.storage.due_by_host()
        except Exception:
            if self._backlog_error_log() is not None:
                log.exception("cannot read the compaction back-log by host (logged at most "
                              "once a minute): holding no agent acks meanwhile")
            return None

    def _publish_held(self, held: list[HeldAck]) -> None:
        if self.mqtt is None:
            return
        for ack in held:
            if self.mqtt.publish_ack(ack.host, ack.instance, ack.seqs, bases=True):
                self.stats.acks_published += 1

    # --- event loop, after the commit -----------------------------------------------------------

    def _acknowledge(self, outcomes: list[Outcome]) -> None:
        stats = self.stats
        acks: dict[tuple[str, str], list[int]] = {}
        refused: dict[tuple[str, str], tuple[list[int], str]] = {}
        for o in outcomes:
            stats.messages += 1
            if self.mqtt is not None:
                self.mqtt.ack(o.msg)  # PUBACK: the batch is durable (or was rejected)
            if o.kind == "reject":
                if o.reason == "storage_error":
                    stats.storage_errors += 1
                self.rejects.record(o.reason or "invalid", o.host, o.detail)
                if o.host is not None and o.batch_key is not None and \
                        o.reason != "storage_error":
                    # A decodable batch refused for good: tell its agent, which drops and counts
                    # it instead of re-sending it forever. (A storage error may pass: the agent
                    # keeps such a batch and sends it again.)
                    seqs, _ = refused.setdefault((o.host, o.batch_key[0]), ([], o.reason or ""))
                    seqs.append(o.batch_key[1])
                continue
            if o.kind == "status":
                stats.status_messages += 1
                continue
            if o.kind == "catalogue":
                catalogue = o.catalogue
                assert catalogue is not None
                stats.catalogues_stored += 1
                if self.mqtt is not None and self.mqtt.publish_ack(
                        catalogue.host, catalogue.instance, [], catalogues=[catalogue.id]):
                    stats.acks_published += 1
                continue
            result = o.result
            if result is None:  # storage returned no result for it: do not claim it is stored
                stats.storage_errors += 1
                self.rejects.record("storage_error", o.host, "storage returned no result")
                continue
            if result.stored:
                stats.batches_stored += 1
                stats.samples_stored += result.samples
                self.backpressure.stored(result.host, result.samples)
                for reason, (count, example) in (o.dropped or {}).items():
                    self.rejects.record_series(reason, result.host, count, example)
            else:
                stats.duplicates += 1
            acks.setdefault((result.host, result.instance), []).append(result.seq)
            host = result.host
            if host in stats.host_last_received_ms or \
                    len(stats.host_last_received_ms) < MAX_TRACKED_HOSTS:
                stats.host_last_received_ms[host] = o.msg.received_ms
                if o.kind == "metrics" and o.sent_ms is not None:
                    stats.host_lag_ms[host] = o.msg.received_ms - o.sent_ms
        if self.mqtt is not None:
            for (host, instance), seqs in acks.items():
                if self._watcher is not None and not self._watcher.done() and \
                        self.backpressure.hold(host, instance, seqs):
                    continue  # published by _watch_backlog once due, or at shutdown
                if self.mqtt.publish_ack(host, instance, seqs, bases=True):
                    stats.acks_published += 1
            for (host, instance), (seqs, reason) in refused.items():
                if self.mqtt.publish_ack(host, instance, [], rejected=seqs, reason=reason):
                    stats.acks_published += 1


def _resolve_limit(config: IngestConfig) -> dict[str, Any]:
    """The budget of resolved bytes per host (``examine.py``)."""
    return {"resolve_bytes_per_second": config.rate_limit_resolved_bytes_per_second,
            "resolve_byte_burst": config.rate_limit_resolved_byte_burst,
            "max_hosts": config.rate_limit_max_hosts}


def _item(o: Outcome) -> IngestItem:
    assert o.item is not None
    return o.item


def _attach(group: list[Outcome], results: list[StoreResult]) -> None:
    if len(results) != len(group):
        by_key = {(r.host, r.instance, r.seq): r for r in results}
        for o in group:
            b = o.item.batch  # type: ignore[union-attr]
            o.result = by_key.get((b.host, b.instance, b.seq))
        return
    for o, r in zip(group, results, strict=True):
        o.result = r
