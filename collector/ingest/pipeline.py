"""The ingest pipeline: inbox -> decode/validate -> one storage transaction -> PUBACK -> agent ack.

All ingest writes (``store_batches``, ``record_status``) run in ONE dedicated writer thread;
decoding and validation (zstd, msgpack, pydantic: CPU work) run there too, never on the event
loop. Storage maintenance (compaction) is not ingest's: ``storage.maintenance`` runs it in its
own thread (the storage serialises writers itself).
Per group of messages taken from the inbox (up to ``max_batch_per_txn``):

1. writer thread: parse the topic, decode and validate every payload; reject the bad ones with a
   counted reason (nothing of a bad message reaches storage); record status messages; store all
   accepted batches with ONE ``store_batches`` call (one transaction, durable on return). Memory
   is bounded: once the decoded batches of a group hold ``max_samples_per_txn`` samples, they
   are stored and let go before the rest of the group is decoded (several transactions);
2. event loop, only after that returned: PUBACK every message of the group (stored, duplicate and
   rejected alike: the broker must not redeliver garbage forever), then publish one agent ack per
   (host, instance) on ``edgemon/v1/<host>/ack`` with QoS 1 naming the stored and duplicate seqs.

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
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from edgemon.collector.config import IngestConfig
from edgemon.collector.ingest.mqtt import Inbox, MqttIngest, RawMessage, now_ms
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage.base import IngestItem, Storage, StoreResult
from edgemon.common.logs import Throttle
from edgemon.protocol import MalformedPayload, ProtocolError, decode, decode_status, parse_topic
from edgemon.protocol.limits import MAX_COMPRESSED_BYTES, MAX_INT
from edgemon.protocol.schema import validate_batch

__all__ = ["IngestPipeline", "IngestStats", "Outcome"]

_INSTANCE_RE = re.compile(r"[A-Za-z0-9._-]+")  # as protocol.schema checks it in batches

log = logging.getLogger("edgemon.collector.ingest.pipeline")

MAX_TRACKED_HOSTS = 10_000
DECODE_ERROR_LOG_INTERVAL = 60.0  # seconds between tracebacks of unexpected decoder errors
RETRY_FIRST = 0.5
RETRY_MAX = 30.0


@dataclass(slots=True)
class Outcome:
    """What became of one message."""

    msg: RawMessage
    host: str | None
    kind: str  # "metrics" | "backfill" | "status" | "reject"
    reason: str | None = None
    detail: str = ""
    item: IngestItem | None = None
    result: StoreResult | None = None
    status: dict[str, Any] | None = None
    failed: bool = False  # storing it raised
    retry: bool = False  # storage unavailable: keep it, do not acknowledge, try again later
    batch_key: tuple[str, int] | None = None  # (instance, seq) of a decodable batch
    samples: int = 0  # decoded samples held by ``item``
    sent_ms: int | None = None  # the batch's ``sent`` (kept when ``item`` is let go)

    def reject(self, reason: str, detail: str) -> Outcome:
        """Turn this outcome into a rejection (keeping ``batch_key`` so the agent can be told)."""
        self.kind, self.reason, self.detail, self.item = "reject", reason, detail, None
        return self


@dataclass
class IngestStats:
    """Counters for /metrics."""

    messages: int = 0
    batches_stored: int = 0
    samples_stored: int = 0
    duplicates: int = 0
    status_messages: int = 0
    transactions: int = 0
    transaction_seconds: float = 0.0
    storage_errors: int = 0
    storage_retries: int = 0
    acks_published: int = 0
    host_lag_ms: dict[str, int] = field(default_factory=dict)
    host_last_received_ms: dict[str, int] = field(default_factory=dict)


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
        self.storage_ok = True  # False while the storage refuses every write
        self.heartbeat = time.monotonic()  # last turn of the worker loop (systemd watchdog)
        self._decode_error_log = Throttle(DECODE_ERROR_LOG_INTERVAL)
        self._stop = asyncio.Event()

    # --- the worker ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Take, store and acknowledge until ``stop()`` was called and the inbox is empty."""
        retry: list[RawMessage] = []
        backoff = 0.0
        limit = self.config.max_batch_per_txn
        while True:
            self.heartbeat = time.monotonic()
            if retry:
                if self._stop.is_set():
                    log.warning("storage unavailable at shutdown: leaving %d message(s) "
                                "unacknowledged for the broker to deliver again", len(retry))
                    self.inbox.release(retry)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
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

    async def process(self, msgs: list[RawMessage]) -> list[Outcome]:
        """Store one group, then acknowledge what is settled. What happened to each message.

        Messages marked ``retry`` stay held in the inbox's accounting; the caller retries them.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            outcomes = await loop.run_in_executor(self.writer, self._store_group, msgs)
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

    # --- writer thread ------------------------------------------------------------------------

    def _store_group(self, msgs: list[RawMessage]) -> list[Outcome]:
        """Classify and store ``msgs`` in order, in as few transactions as the bound on decoded
        samples held at once (``max_samples_per_txn``) allows."""
        outcomes: list[Outcome] = []
        chunk: list[Outcome] = []
        held = 0
        for msg in msgs:
            o = self._classify(msg)
            outcomes.append(o)
            chunk.append(o)
            held += o.samples
            if held >= self.config.max_samples_per_txn:
                self._store_chunk(chunk)
                chunk, held = [], 0
        if chunk:
            self._store_chunk(chunk)
        return outcomes

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
        """Decode and check one message (no storage yet): an accepted item, a status or a reject."""
        try:
            host, kind = parse_topic(msg.topic)
        except ProtocolError as exc:
            return Outcome(msg, None, "reject", reason=exc.reason, detail=str(exc))
        key: tuple[str, int] | None = None
        try:
            if kind == "status":
                return Outcome(msg, host, "status", status=_checked_status(msg.payload))
            if kind not in ("metrics", "backfill"):
                return Outcome(msg, host, "reject", reason="unexpected_topic",
                               detail=f"collector does not read {kind} topics")
            if msg.size > MAX_COMPRESSED_BYTES:
                return Outcome(msg, host, "reject", reason="too_large",
                               detail=f"{msg.size} bytes > {MAX_COMPRESSED_BYTES}")
            raw = decode(msg.payload)
            key = _batch_key(raw)
            batch = validate_batch(raw)
        except ProtocolError as exc:
            return Outcome(msg, host, "reject", reason=exc.reason, detail=str(exc),
                           batch_key=key)
        except Exception as exc:  # a decoder bug must not stop ingest of everyone else
            if self._decode_error_log() is not None:
                log.exception("unexpected error decoding a message from %s (logged at most "
                              "once a minute; all are counted as reason decode_error)", host)
            return Outcome(msg, host, "reject", reason="decode_error", detail=repr(exc)[:200])
        if batch.host != host:
            return Outcome(msg, host, "reject", reason="host_mismatch", batch_key=key,
                           detail=f"payload says host {batch.host[:64]!r}")
        oldest = batch.t[0]
        newest = sum(batch.t)
        tolerance_s = self.config.future_tolerance_seconds
        if newest > msg.received_ms + tolerance_s * 1000:
            ahead_s = (newest - msg.received_ms) / 1000
            return Outcome(msg, host, "reject", reason="future_timestamp", batch_key=key,
                           detail=f"sample {ahead_s:.0f} s ahead of the collector's clock "
                                  f"(tolerance {tolerance_s} s)")
        if oldest < msg.received_ms - self.config.past_tolerance_days * 86_400_000:
            return Outcome(msg, host, "reject", reason="past_timestamp", batch_key=key,
                           detail=f"sample older than {self.config.past_tolerance_days} days")
        item = IngestItem(batch=batch, payload=msg.payload, received_ms=msg.received_ms,
                          historical=kind == "backfill")
        return Outcome(msg, host, kind, item=item, batch_key=key, samples=batch.sample_count,
                       sent_ms=batch.sent)

    def _record_status(self, o: Outcome) -> None:
        doc = o.status or {}
        try:
            self.storage.record_status(o.host or "", doc["instance"], doc["state"] == "online",
                                       doc["ts"], o.msg.received_ms, doc.get("last_seq"))
        except Exception as exc:
            log.exception("could not record the status of %s", o.host)
            o.failed, o.detail = True, repr(exc)[:200]

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
            result = o.result
            if result is None:  # storage returned no result for it: do not claim it is stored
                stats.storage_errors += 1
                self.rejects.record("storage_error", o.host, "storage returned no result")
                continue
            if result.stored:
                stats.batches_stored += 1
                stats.samples_stored += result.samples
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
                if self.mqtt.publish_ack(host, instance, seqs):
                    stats.acks_published += 1
            for (host, instance), (seqs, reason) in refused.items():
                if self.mqtt.publish_ack(host, instance, [], rejected=seqs, reason=reason):
                    stats.acks_published += 1


def _checked_status(payload: bytes) -> dict[str, Any]:
    """A status message that storage can record: ``decode_status`` plus the checks it leaves out
    (JSON nested too deep, ``ts`` a bool or beyond 64 bits, an invalid instance id)."""
    try:
        doc = decode_status(payload)
    except RecursionError:
        raise MalformedPayload("not JSON: nested too deeply", reason="not_json") from None
    ts = doc["ts"]
    if type(ts) is not int or not 0 <= ts <= MAX_INT:
        raise MalformedPayload("status ts must be milliseconds since the epoch (an integer "
                               f"from 0 to {MAX_INT})", reason="schema")
    if not _INSTANCE_RE.fullmatch(doc["instance"]):
        raise MalformedPayload("status instance id: use letters, digits, '.', '-', '_'",
                               reason="schema")
    return doc


def _batch_key(raw: dict[str, Any]) -> tuple[str, int] | None:
    """(instance, seq) of a decoded batch map, if both look sane, before full validation."""
    instance, seq = raw.get("instance"), raw.get("seq")
    if (isinstance(instance, str) and 0 < len(instance) <= 64 and type(seq) is int
            and 0 <= seq < 2**63):
        return instance, seq
    return None


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
