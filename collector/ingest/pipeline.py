"""The ingest pipeline: inbox -> decode/validate -> one storage transaction -> PUBACK -> agent ack.

All ingest writes (``store_batches``, ``record_status``) run in ONE dedicated writer thread;
decoding and validation (zstd, msgspec's typed decoder or the pure reader, the schema: CPU work)
run there too, never on the event loop. Storage maintenance (compaction) is not ingest's:
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
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from edgemon.collector.config import IngestConfig
from edgemon.collector.ingest.bases import BaseCache
from edgemon.collector.ingest.cardinality import SeriesLimits
from edgemon.collector.ingest.catalogues import CatalogueCache
from edgemon.collector.ingest.mqtt import Inbox, MqttIngest, RawMessage, now_ms
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.ingest.screen import Refusal, screen, series_keys, without
from edgemon.collector.storage.base import IngestItem, Storage, StoreResult
from edgemon.common.logs import Throttle
from edgemon.protocol import (
    MalformedPayload,
    ProtocolError,
    decode_batch,
    decode_status,
    encode,
    parse_topic,
)
from edgemon.protocol.catalogue import Catalogue, decode_catalogue, decode_received
from edgemon.protocol.codec import FAST_LEVEL
from edgemon.protocol.names import validate_instance_id
from edgemon.protocol.schema import ValidBatch

__all__ = ["IngestPipeline", "IngestStats", "Outcome"]

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
    kind: str  # "metrics" | "backfill" | "status" | "catalogue" | "reject"
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
    dropped: dict[str, tuple[int, str]] | None = None  # series left out: reason -> (n, example)
    catalogue: Catalogue | None = None  # a declared series catalogue (SPEC.md §9)

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
    catalogues_stored: int = 0  # series catalogues stored and acknowledged (SPEC.md §9)
    referencing_batches: int = 0  # batches received naming a catalogue instead of inline
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
        self.series_limits = SeriesLimits(config.max_series_per_host,
                                          config.max_new_series_per_hour)
        self.catalogues = CatalogueCache(storage)
        self.bases = BaseCache(storage)  # what based batches go on from (SPEC.md §9.1)
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
        """Decode and check one message (no storage yet): an accepted item, a status or a reject."""
        try:
            host, kind = parse_topic(msg.topic)
        except ProtocolError as exc:
            return Outcome(msg, None, "reject", reason=exc.reason, detail=str(exc))
        try:
            if kind == "status":
                return Outcome(msg, host, "status", status=self._checked_status(msg))
            if kind == "catalogue":
                return self._checked_catalogue(msg, host)
            if kind not in ("metrics", "backfill"):
                return Outcome(msg, host, "reject", reason="unexpected_topic",
                               detail=f"collector does not read {kind} topics")
            return self._checked_batch(msg, host, kind)
        except ProtocolError as exc:
            return Outcome(msg, host, "reject", reason=exc.reason, detail=str(exc),
                           batch_key=exc.batch_key)
        except Exception as exc:  # a decoder bug must not stop ingest of everyone else
            if self._decode_error_log() is not None:
                log.exception("unexpected error decoding a message from %s (logged at most "
                              "once a minute; all are counted as reason decode_error)", host)
            return Outcome(msg, host, "reject", reason="decode_error", detail=repr(exc)[:200])

    def _checked_catalogue(self, msg: RawMessage, host: str) -> Outcome:
        catalogue = decode_catalogue(msg.payload)
        if catalogue.host != host:
            return Outcome(msg, host, "reject", reason="host_mismatch",
                           detail=f"catalogue says host {catalogue.host[:64]!r}")
        return Outcome(msg, host, "catalogue", catalogue=catalogue)

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
            return
        except Exception as exc:
            log.exception("could not store a catalogue of %s", o.host)
            o.reject("storage_error", repr(exc)[:200])
            return
        self.catalogues.put(catalogue)

    def _checked_batch(self, msg: RawMessage, host: str, kind: str) -> Outcome:
        batch, referencing = decode_received(
            msg.payload, lambda ident: self.catalogues.get(host, ident),
            lambda instance, seq, catalogue: self.bases.lookup(host, instance, seq, catalogue))
        key = (batch.instance, batch.seq)
        if batch.host != host:
            return Outcome(msg, host, "reject", reason="host_mismatch", batch_key=key,
                           detail=f"payload says host {batch.host[:64]!r}")
        self.bases.put(host, batch.instance, batch.seq, batch.metrics)  # as sent: unscreened
        late = self._time_problem(batch.first_timestamp, batch.last_timestamp, msg.received_ms)
        if late is not None:
            return Outcome(msg, host, "reject", reason=late[0], detail=late[1], batch_key=key)
        payload = msg.payload
        dropped: dict[str, tuple[int, str]] | None = None
        try:
            if referencing:
                self.stats.referencing_batches += 1
            screened = self._screened(host, batch, msg)
            if screened is not None:
                payload, dropped = screened
                batch = None  # type: ignore[assignment]  # let it go before the rest is decoded
                batch = decode_batch(payload)
            elif referencing:  # stored resolved: every stored batch is readable on its own
                payload = encode(batch.to_map(), level=FAST_LEVEL)  # (screened: done above)
        except ProtocolError as exc:  # what is left does not encode within the limits
            return Outcome(msg, host, "reject", reason=exc.reason, detail=str(exc), batch_key=key)
        item = IngestItem(batch=batch, payload=payload, received_ms=msg.received_ms,
                          historical=kind == "backfill")
        return Outcome(msg, host, kind, item=item, batch_key=key, samples=batch.sample_count,
                       sent_ms=batch.sent, dropped=dropped)

    def _screened(self, host: str, batch: ValidBatch, msg: RawMessage
                  ) -> tuple[bytes, dict[str, tuple[int, str]]] | None:
        """None if every series of ``batch`` may be stored; else the payload of the rest (less
        the series no real host sends and those over the host's cardinality bound) and the
        dropped series by reason. The caller decodes that payload with the decoder of every
        payload: what is stored is what ``decode`` returns."""
        refused = screen(batch)
        keys = [k for k in series_keys(batch.metrics) if k not in refused]
        limits = self.series_limits
        for k, reason in limits.admit(host, keys, msg.received_ms).items():
            refused[k] = Refusal(reason, f"{k[0]}: over the host's bound of "
                                 f"{limits.max_series} series / {limits.max_new_per_hour} new "
                                 "series per hour")
        if not refused:
            return None
        dropped: dict[str, tuple[int, str]] = {}
        for refusal in refused.values():
            n, example = dropped.get(refusal.reason, (0, refusal.detail))
            dropped[refusal.reason] = (n + 1, example)
        return encode(batch.to_map(without(batch.metrics, refused)), level=FAST_LEVEL), dropped

    def _time_problem(self, oldest: int, newest: int, received_ms: int, *,
                      past: bool = True) -> tuple[str, str] | None:
        """(reason, detail) if a timestamp lies outside the collector's clock tolerance."""
        tolerance_s = self.config.future_tolerance_seconds
        if newest > received_ms + tolerance_s * 1000:
            ahead_s = (newest - received_ms) / 1000
            return "future_timestamp", (f"timestamp {ahead_s:.0f} s ahead of the collector's "
                                        f"clock (tolerance {tolerance_s} s)")
        if past and oldest < received_ms - self.config.past_tolerance_days * 86_400_000:
            return "past_timestamp", (f"timestamp older than {self.config.past_tolerance_days} "
                                      "days")
        return None

    def _checked_status(self, msg: RawMessage) -> dict[str, Any]:
        """A status message that storage can record: ``decode_status``, a valid instance id, and
        ``ts`` an integer within the clock tolerance of batches. A Last Will (offline) may be
        older than ``past_tolerance_days``: the agent composes it when it connects."""
        try:
            doc = decode_status(msg.payload)
        except RecursionError:
            raise MalformedPayload("not JSON: nested too deeply", reason="not_json") from None
        validate_instance_id(doc["instance"])
        ts = doc["ts"]
        if type(ts) is not int or ts < 0:
            raise MalformedPayload("status ts must be milliseconds since the epoch (an integer)",
                                   reason="schema")
        late = self._time_problem(ts, ts, msg.received_ms, past=doc["state"] == "online")
        if late is not None:
            raise ProtocolError(f"status {late[1]}", reason=late[0])
        return doc

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
                if self.mqtt.publish_ack(host, instance, seqs, bases=True):
                    stats.acks_published += 1
            for (host, instance), (seqs, reason) in refused.items():
                if self.mqtt.publish_ack(host, instance, [], rejected=seqs, reason=reason):
                    stats.acks_published += 1


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
