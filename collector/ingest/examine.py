"""What ingest learns from one received message before storing it, with no shared state: the
work that may run in another process (``workers.py``) or in the writer thread (``workers = 0``).

``Examiner.examine(topic, payload, received_ms)`` parses the topic, decodes and checks the
payload (``decode_received``: zstd, msgspec's typed reader or the pure one, the schema,
catalogue resolution), checks the clock tolerance, screens out the series no real host sends
(``screen.py``) and, when the host's cardinality bound is known (``admit``), those over it;
what is left is re-encoded (zstd level ``FAST_LEVEL``) and decoded once more, so that what is
stored is what ``decode`` returns. It never raises: every outcome is a ``Facts``, small and
picklable: the kind, the reject reason, the batch's head (``BatchHead``: what storage and the
fleet view read of a batch) and the bytes to store when they are not the received ones.

The per-host facts it needs from the collector come with the call:

* ``admit(host, keys, now_ms)``: the cardinality bound (``cardinality.SeriesLimits``), state
  shared by every message of the host. In a worker process it is not at hand: the examiner
  then returns the hashes of the series it would store (``Facts.series``, ``series_hashes``) and
  the collector admits them; if it refuses some, it asks again with ``refused`` (hash ->
  reason), and the examiner drops those too.
* catalogues (SPEC.md §9): the examiner caches those it decoded (``CatalogueCache``); one it
  does not hold is asked of ``load(host, id)`` (the storage, in-process) or, in a worker, answered
  as ``Facts(kind="need_catalogue")``: the collector reads the stored catalogue and asks again
  with it in ``supplied`` ((host, id) -> payload, None when the storage has none).
* bases (SPEC.md §9.1): the examiner keeps the last values of the newest batch of each agent
  instance it decoded (``bases.BaseCache``; a host's messages always go to the same worker); a
  base it does not hold is read with ``load_base(host, instance, seq)`` (in-process) or, in a
  worker, answered as ``Facts(kind="need_base")``: the collector reads the stored batch and asks
  again with it in ``supplied_bases`` ((host, instance, seq) -> payload or None).

Resolving is where a small message can cost much (a few bytes naming a catalogue of long label
values resolve into megabytes). So each host has a budget of resolved bytes, a token bucket of
its own (``[ingest] rate_limit_resolved_bytes_per_second`` and ``_byte_burst``): a batch whose
resolved size (bounded before it is built) the host's budget does not hold is refused
``rate_limited`` before it is built, like a message over the rate limit (not acknowledged to its
agent, which sends it again later). In the writer thread the examiner keeps the buckets
(``resolve_limit``). Worker processes keep no state that matters (one may be started again at
any time), so there the collector keeps them and gives each message its host's ``budget``: what
the bucket holds, at most ``MAX_RESOLVED_PER_ROUND`` (one maximal batch) for all of the host's
messages of one ``round`` (one examination of a group), which the worker counts down; the
collector then takes what was resolved (``Facts.charge``) from the bucket, for a second look
(without the series over the cardinality bound) too, which resolves the batch again.
``Facts.charge`` is also taken from the host's MQTT rate limit (``RateLimiter.charge``): its
frames pay too.

``project``: the metric names the collector's cache of pending batches holds for its readers
(alert rules: ``storage/pending_cache.py``). An accepted batch's columns of those metrics come
back as ``Facts.projected``, made from the batch just decoded, so that the collector caches them
when it stores the batch instead of decoding the stored payload again for its first reader.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Final

from edgemon.collector.http.fleet import CPU, WATCHED
from edgemon.collector.ingest.bases import BaseCache, BaseKey, NeedBase
from edgemon.collector.ingest.catalogues import CatalogueCache
from edgemon.collector.ingest.rate_limit import RateLimiter
from edgemon.collector.ingest.screen import Refusal, SeriesKey, screen, series_keys, without
from edgemon.collector.storage.pending_cache import Projection, projection_of
from edgemon.protocol import (
    LimitExceeded,
    MalformedPayload,
    ProtocolError,
    decode_batch,
    decode_status,
    encode,
    parse_topic,
)
from edgemon.protocol.batch import last_timestamp
from edgemon.protocol.catalogue import Catalogue, decode_catalogue, decode_received
from edgemon.protocol.codec import FAST_LEVEL
from edgemon.protocol.names import validate_instance_id
from edgemon.protocol.schema import ValidBatch

__all__ = ["MAX_RESOLVED_PER_ROUND", "Admit", "BatchHead", "CatalogueHead", "Examiner", "Facts",
           "NeedCatalogue", "series_hashes"]

MAX_RESOLVED_PER_ROUND = 8 << 20  # resolved bytes of one host per round (workers): one batch's

# host, the series it would store, received_ms -> the refused ones with their reason
Admit = Callable[[str, list[SeriesKey], int], dict[SeriesKey, str]]


@dataclass(slots=True)
class BatchHead:
    """What storage and the fleet view read of a stored batch (``ValidBatch``'s fields by the
    same names): ``metrics`` holds only the metrics the fleet view watches, each series entry
    cut to its last sample (``[labels, offset of that sample, [its value]]``: the newest value
    of each series, all that ``http/fleet.py`` reads), and of the CPU metric only the entries
    ``FleetState`` takes (``cpu="total"``; not one per core)."""

    host: str
    instance: str
    seq: int
    sent: int
    t: list[int]
    metrics: list[list[Any]]
    sample_count: int

    @property
    def last_timestamp(self) -> int:
        return last_timestamp(self.t)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled small and quickly (workers' answers)
        return BatchHead, (self.host, self.instance, self.seq, self.sent, self.t, self.metrics,
                           self.sample_count)

    @classmethod
    def of(cls, batch: ValidBatch) -> BatchHead:
        watched = [[name, kind, unit, scale, keys,
                    [[labels, offset + len(deltas) - 1, [sum(deltas)]]
                     for labels, offset, deltas in entries
                     if name != CPU or dict(zip(keys, labels, strict=False)).get("cpu")
                     == "total"]]
                   for name, kind, unit, scale, keys, entries in batch.metrics
                   if name in WATCHED]
        return cls(batch.host, batch.instance, batch.seq, batch.sent, batch.t, watched,
                   batch.sample_count)


@dataclass(frozen=True, slots=True)
class CatalogueHead:
    host: str
    instance: str
    id: str


@dataclass(slots=True)
class Facts:
    """What became of one message before storage (see the module's docstring)."""

    kind: str  # metrics | backfill | status | catalogue | reject | need_catalogue | need_base
    host: str | None
    reason: str | None = None
    detail: str = ""
    batch_key: tuple[str, int] | None = None  # (instance, seq) of a decodable batch
    head: BatchHead | None = None  # (in-process, ``whole_batches``: the ValidBatch itself)
    payload: bytes | None = None  # the bytes to store; None: the received ones
    dropped: dict[str, tuple[int, str]] | None = None  # series left out: reason -> (n, example)
    # hashes of the series to store, not yet admitted (``series_hashes``)
    series: bytes | None = None
    referencing: bool = False
    status: dict[str, Any] | None = None
    catalogue: CatalogueHead | None = None
    need: tuple[str, str] | None = None  # (host, catalogue id) to supply
    trace: str | None = None  # an unexpected decoder error's traceback, for the log
    need_base: BaseKey | None = None  # (host, instance, seq) of a stored batch to supply
    # bytes to charge the host's rate limit beyond the received frame: the packed size of the
    # inline batch a batch naming a catalogue resolved into (its cost, whatever became of it)
    charge: int = 0
    projected: Projection | None = None  # the stored batch's columns of the ``project`` names

    def __reduce__(self) -> tuple[Any, ...]:  # pickled small and quickly (workers' answers)
        return Facts, (self.kind, self.host, self.reason, self.detail, self.batch_key, self.head,
                       self.payload, self.dropped, self.series, self.referencing, self.status,
                       self.catalogue, self.need, self.trace, self.need_base, self.charge,
                       self.projected)


class NeedCatalogue(Exception):
    def __init__(self, host: str, ident: str) -> None:
        super().__init__(host, ident)
        self.key = (host, ident)


def series_hashes(keys: Iterable[SeriesKey], salt: bytes) -> bytes:
    """A 64-bit hash of each series, packed (8 bytes each, ``memoryview(...).cast("Q")`` reads
    them): the same in every process given the same ``salt`` (random per collector run: no one
    can choose colliding series). A fleet sends the same series again and again: each hash is
    computed once and then looked up (``_DIGESTS``), one dict lookup per series where a keyed
    blake2b costs several times that."""
    keys = list(keys)
    known = _DIGESTS.get(salt)
    if known is None:
        known = _DIGESTS[salt] = {}
        while len(_DIGESTS) > 4:  # a few salts at most (one per collector run; tests use more)
            del _DIGESTS[next(iter(_DIGESTS))]
    found = list(map(known.get, keys))
    if None in found:
        if len(known) + len(keys) > _DIGESTS_MAX:
            known.clear()
        for i, digest in enumerate(found):
            if digest is None:
                name, labels = key = keys[i]
                text = "\x00".join((name, *labels))
                found[i] = digest = blake2b(text.encode("utf-8", "surrogatepass"),
                                            digest_size=8, key=salt).digest()
                if len(text) <= _CACHED_TEXT_MAX and len(labels) <= _CACHED_LABELS_MAX:
                    known[key] = digest
    return b"".join(found)  # type: ignore[arg-type]


# salt -> (metric name, label values) -> its 8-byte hash. Bounded: emptied when full; only
# series of at most 8 label values and 256 characters in all are kept (nearly all real ones),
# so an entry holds at most about 1 KB with its key's strings: 32k entries, about 30 MB at worst.
_DIGESTS: dict[bytes, dict[SeriesKey, bytes]] = {}
_DIGESTS_MAX: Final = 32_768
_CACHED_TEXT_MAX: Final = 256
_CACHED_LABELS_MAX: Final = 8


@dataclass
class Examiner:
    future_tolerance_seconds: int
    past_tolerance_days: float
    # in-process: read a catalogue the cache lacks (the storage); None: ask the caller
    load: Callable[[str, str], bytes | None] | None = None
    max_series: int = 0  # the cardinality bound, for the detail of a refused series
    max_new_per_hour: int = 0
    salt: bytes = b""  # for ``series_hashes`` (workers)
    # in-process: ``Facts.head`` is the decoded batch itself (nothing to send anywhere)
    whole_batches: bool = False
    # in-process: read a stored batch a based batch goes on from; None: ask the caller
    load_base: Callable[[str, str, int], bytes | None] | None = None
    # bytes/s and burst of resolved batches per host (the host's byte rate limit; 0: none)
    resolve_bytes_per_second: float = 0.0
    resolve_byte_burst: int = 32 << 20
    max_hosts: int = 10_000
    catalogues: CatalogueCache = field(init=False)
    bases: BaseCache = field(init=False)
    resolve_limit: RateLimiter = field(init=False)
    _resolved: int = field(init=False, default=0)  # ``cost`` of the message being examined
    _budgeted: bool = field(init=False, default=True)  # its resolving spends the budget
    _budget: float | None = field(init=False, default=None)  # given with it (workers)
    _round: int = field(init=False, default=0)
    _project: frozenset[str] = field(init=False, default=frozenset())  # given with the message
    _spent: dict[str, int] = field(init=False, default_factory=dict)  # host -> in this round

    def __post_init__(self) -> None:
        self.catalogues = CatalogueCache(self.load)
        self.bases = BaseCache(self.load_base)
        self.resolve_limit = RateLimiter(messages_per_second=0, message_burst=1,
                                         bytes_per_second=self.resolve_bytes_per_second,
                                         byte_burst=self.resolve_byte_burst,
                                         max_hosts=self.max_hosts)

    def examine(self, topic: str, payload: bytes, received_ms: int, *,
                admit: Admit | None = None, refused: dict[int, str] | None = None,
                supplied: dict[tuple[str, str], bytes | None] | None = None,
                supplied_bases: dict[BaseKey, bytes | None] | None = None,
                budget: float | None = None, round_: int = 0,
                project: frozenset[str] = frozenset()) -> Facts:
        """Never raises (see the module's docstring). ``budget``: the bytes the host may have
        resolved in round ``round_`` (given by the collector to a worker); None: the
        examiner's own ``resolve_limit`` decides. ``project``: the metric names whose columns
        an accepted batch's ``Facts.projected`` holds."""
        self._resolved = 0
        self._project = project
        # a second look (without the series the cardinality bound refused) is not refused: the
        # first was admitted; the collector charges what it resolved afterwards
        self._budgeted = refused is None
        self._budget = budget
        if round_ != self._round:
            self._round, self._spent = round_, {}
        facts = self._examine(topic, payload, received_ms, admit, refused, supplied,
                              supplied_bases)
        facts.charge = self._resolved
        return facts

    def _cost(self, host: str, packed: int) -> None:
        """Resolving ``packed`` bytes for ``host``: within its budget, or refused before."""
        if self._budgeted and not self._within_budget(host, packed):
            raise LimitExceeded(f"resolving this batch ({packed} bytes) is over the host's byte "
                                "rate limit; its agent sends it again later",
                                reason="rate_limited")
        self._resolved += packed

    def _within_budget(self, host: str, packed: int) -> bool:
        if self._budget is None:
            return self.resolve_limit.allow(host, packed)
        spent = self._spent.get(host, 0) + packed
        if spent > self._budget:
            return False
        self._spent[host] = spent
        return True

    def _examine(self, topic: str, payload: bytes, received_ms: int, admit: Admit | None,
                 refused: dict[int, str] | None,
                 supplied: dict[tuple[str, str], bytes | None] | None,
                 supplied_bases: dict[BaseKey, bytes | None] | None) -> Facts:
        try:
            host, kind = parse_topic(topic)
        except ProtocolError as exc:
            return Facts("reject", None, reason=exc.reason, detail=str(exc))
        try:
            if kind == "status":
                return Facts("status", host, status=self._checked_status(payload, received_ms))
            if kind == "catalogue":
                return self._checked_catalogue(payload, host)
            if kind not in ("metrics", "backfill"):
                return Facts("reject", host, reason="unexpected_topic",
                             detail=f"collector does not read {kind} topics")
            if refused is not None:
                admit = _refusing(refused, self.salt)
            return self._checked_batch(payload, host, kind, received_ms, admit, supplied or {},
                                       supplied_bases)
        except NeedCatalogue as need:
            return Facts("need_catalogue", host, need=need.key)
        except NeedBase as need:
            return Facts("need_base", host, need_base=need.key)
        except ProtocolError as exc:  # over the rate limit: not refused for good (no batch key)
            return Facts("reject", host, reason=exc.reason, detail=str(exc),
                         batch_key=None if exc.reason == "rate_limited" else exc.batch_key)
        except Exception as exc:  # a decoder bug must not stop ingest of everyone else
            return Facts("reject", host, reason="decode_error", detail=repr(exc)[:200],
                         trace=traceback.format_exc())

    def _lookup(self, host: str, supplied: dict[tuple[str, str], bytes | None]
                ) -> Callable[[str], Catalogue | None]:
        def lookup(ident: str) -> Catalogue | None:
            found = self.catalogues.cached(host, ident)
            if found is not None:
                return found
            if (host, ident) in supplied:
                return self.catalogues.take(host, ident, supplied[(host, ident)])
            if self.load is None:
                raise NeedCatalogue(host, ident)
            return self.catalogues.get(host, ident)
        return lookup

    def _checked_catalogue(self, payload: bytes, host: str) -> Facts:
        catalogue = decode_catalogue(payload)
        if catalogue.host != host:
            return Facts("reject", host, reason="host_mismatch",
                         detail=f"catalogue says host {catalogue.host[:64]!r}")
        # Kept now: a referencing batch resolved with it is stored inline, readable on its own,
        # whether or not storing the catalogue itself succeeds.
        self.catalogues.put(catalogue)
        return Facts("catalogue", host,
                     catalogue=CatalogueHead(catalogue.host, catalogue.instance, catalogue.id))

    def _checked_batch(self, payload: bytes, host: str, kind: str, received_ms: int,
                       admit: Admit | None, supplied: dict[tuple[str, str], bytes | None],
                       supplied_bases: dict[BaseKey, bytes | None] | None) -> Facts:
        bases = self.bases
        batch, referencing = decode_received(
            payload, self._lookup(host, supplied),
            lambda instance, seq, catalogue: bases.lookup(host, instance, seq, catalogue,
                                                          supplied_bases),
            cost=lambda packed: self._cost(host, packed))
        key = (batch.instance, batch.seq)
        if batch.host != host:
            return Facts("reject", host, reason="host_mismatch", batch_key=key,
                         detail=f"payload says host {batch.host[:64]!r}")
        bases.put(host, batch.instance, batch.seq, batch.metrics)  # as sent: unscreened
        late = self.time_problem(batch.first_timestamp, batch.last_timestamp, received_ms)
        if late is not None:
            return Facts("reject", host, reason=late[0], detail=late[1], batch_key=key)
        stored: bytes | None = None
        series: bytes | None = None
        refusals = screen(batch)
        keys = [k for k in series_keys(batch.metrics) if k not in refusals]
        if admit is None:
            series = series_hashes(keys, self.salt)
        else:
            for k, reason in admit(host, keys, received_ms).items():
                refusals[k] = Refusal(reason, f"{k[0]}: over the host's bound of "
                                      f"{self.max_series} series / {self.max_new_per_hour} new "
                                      "series per hour")
        dropped: dict[str, tuple[int, str]] | None = None
        try:
            if refusals:
                dropped = {}
                for refusal in refusals.values():
                    n, example = dropped.get(refusal.reason, (0, refusal.detail))
                    dropped[refusal.reason] = (n + 1, example)
                stored = encode(batch.to_map(without(batch.metrics, refusals)), level=FAST_LEVEL)
                batch = None  # type: ignore[assignment]  # let it go before decoding again
                batch = decode_batch(stored)
            elif referencing:  # stored resolved: every stored batch is readable on its own
                stored = encode(batch.to_map(), level=FAST_LEVEL)
        except ProtocolError as exc:  # what is left does not encode within the limits
            return Facts("reject", host, reason=exc.reason, detail=str(exc), batch_key=key)
        head = batch if self.whole_batches else BatchHead.of(batch)
        # ``batch`` is what decoding the stored bytes gives (the received ones, or ``stored``)
        projected = projection_of(batch.t, batch.metrics, self._project) if self._project \
            else None
        return Facts(kind, host, batch_key=key, head=head, payload=stored,  # type: ignore[arg-type]
                     dropped=dropped, series=series, referencing=referencing,
                     projected=projected)

    def time_problem(self, oldest: int, newest: int, received_ms: int, *,
                     past: bool = True) -> tuple[str, str] | None:
        """(reason, detail) if a timestamp lies outside the collector's clock tolerance."""
        tolerance_s = self.future_tolerance_seconds
        if newest > received_ms + tolerance_s * 1000:
            ahead_s = (newest - received_ms) / 1000
            return "future_timestamp", (f"timestamp {ahead_s:.0f} s ahead of the collector's "
                                        f"clock (tolerance {tolerance_s} s)")
        if past and oldest < received_ms - self.past_tolerance_days * 86_400_000:
            return "past_timestamp", (f"timestamp older than {self.past_tolerance_days} days")
        return None

    def _checked_status(self, payload: bytes, received_ms: int) -> dict[str, Any]:
        """A status message that storage can record: ``decode_status``, a valid instance id, and
        ``ts`` an integer within the clock tolerance of batches. A Last Will (offline) may be
        older than ``past_tolerance_days``: the agent composes it when it connects."""
        try:
            doc = decode_status(payload)
        except RecursionError:
            raise MalformedPayload("not JSON: nested too deeply", reason="not_json") from None
        validate_instance_id(doc["instance"])
        ts = doc["ts"]
        if type(ts) is not int or ts < 0:
            raise MalformedPayload("status ts must be milliseconds since the epoch (an integer)",
                                   reason="schema")
        late = self.time_problem(ts, ts, received_ms, past=doc["state"] == "online")
        if late is not None:
            raise ProtocolError(f"status {late[1]}", reason=late[0])
        return doc


def _refusing(refused: dict[int, str], salt: bytes) -> Admit:
    """``admit`` for the second look at a batch: refuse the series the collector refused."""
    def admit(_host: str, keys: list[SeriesKey], _now_ms: int) -> dict[SeriesKey, str]:
        hashes = memoryview(series_hashes(keys, salt)).cast("Q")
        return {k: refused[h] for k, h in zip(keys, hashes, strict=True) if h in refused}
    return admit
