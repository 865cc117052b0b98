"""Hostile batches that name a series catalogue or go on from a base (SPEC.md §9, §9.1): the
classes of attack the referencing paths open, through the real ingest pipeline (in the writer
thread and in worker processes) over real storage, SQLite and PostgreSQL.

Each case (``CASES``) says what it attacks and why it must be refused, or which of its series
must be dropped; a good host's batch goes in the same group. What must hold for every case:
the refusal is counted under its reason; nothing is stored for the attacker but what an inline
batch could have stored (its resolved values screened like inline ones, its series under its own
cardinality bound); no host reaches another host's catalogues or bases, nor an instance another
instance's; every stored batch reads back with the one decoder and passes the screen again;
compaction quarantines nothing. And the sender pays for what resolving costs: a few bytes naming
a catalogue of long label values are charged to its rate limit at their resolved size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from edgemon.collector.ingest.rate_limit import RateLimiter, message_cost
from edgemon.collector.ingest.screen import screen
from edgemon.protocol import decode_batch, encode
from edgemon.protocol.base import base_check
from edgemon.protocol.catalogue import catalogue_id, encode_catalogue
from edgemon.protocol.codec import BASED_DICTIONARY_ID
from edgemon.protocol.limits import MAX_INT
from edgemon.protocol.topics import catalogue_topic, metrics_topic
from tests.test_protocol_catalogue import NOW, _message, _run, ingest  # noqa: F401

DAY = 86_400_000
CPU_NET = [["cpu_usage_percent", "gauge", "percent", 2, ["cpu"], [["0"]]],
           ["net_bytes_total", "counter", "bytes", 0, ["iface"], [["eth0"]]]]
T = [NOW - 20_000, 10_000, 10_000]
FIRST = [1000, 0, 0, 5000, 10, 10]  # batch 1 of CPU_NET: cpu 10.00 %, counter 5000..5020
LASTS = [1000, 5020]  # its last values: what a batch based on it goes on from

Message = tuple[str, bytes]


def declare(host: str, metrics: list[list[Any]], instance: str = "inst",
            **extra: Any) -> tuple[str, Message]:
    ident = catalogue_id(metrics)
    if extra:
        doc = {"v": 1, "host": host, "instance": instance, "id": ident, "metrics": metrics,
               **extra}
        return ident, (catalogue_topic(host), encode(doc))
    return ident, (catalogue_topic(host), encode_catalogue(host=host, instance=instance,
                                                           metrics=metrics, ident=ident))


def head(host: str, seq: int, instance: str = "inst") -> dict[str, Any]:
    return {"v": 1, "host": host, "instance": instance, "seq": seq, "sent": NOW, "t": T}


def referencing(host: str, ident: str, seq: int, values: list[int], instance: str = "inst",
                **extra: Any) -> Message:
    return metrics_topic(host), encode({**head(host, seq, instance), "catalogue": ident,
                                        "values": values, **extra})


def based(host: str, ident: str, seq: int, base: tuple[int, list[int]], bvalues: list[Any],
          **extra: Any) -> Message:
    doc = {**head(host, seq), "catalogue": ident, "base": [base[0], base_check(base[1])],
           "bvalues": bvalues, **extra}
    return metrics_topic(host), encode(doc, dict_id=BASED_DICTIONARY_ID)


@dataclass
class Case:
    attacks: str  # what it tries
    why: str  # why it must be refused (or what must be dropped)
    build: Callable[[str, str], tuple[list[Message], Message]]  # (host, peer) -> setup, hostile
    reject: str | None = None  # the reason the message is refused for
    dropped: set[str] = field(default_factory=set)  # reasons series are dropped for (stored)


def _on_cpu_net(hostile: Callable[[str, str], Message]) -> Callable[[str, str],
                                                                     tuple[list[Message], Message]]:
    """The host declared CPU_NET and stored batch 1 naming it; then ``hostile(host, ident)``."""
    def build(host: str, _peer: str) -> tuple[list[Message], Message]:
        ident, catalogue = declare(host, CPU_NET)
        return [catalogue, referencing(host, ident, 1, FIRST)], hostile(host, ident)
    return build


def _declared(metrics: list[list[Any]], values: list[int]) -> Callable[
        [str, str], tuple[list[Message], Message]]:
    def build(host: str, _peer: str) -> tuple[list[Message], Message]:
        ident, catalogue = declare(host, metrics)
        return [catalogue], referencing(host, ident, 1, values)
    return build


def _another_hosts_base(host: str, peer: str) -> tuple[list[Message], Message]:
    """The peer stored batch 1 of instance "inst"; the host (same instance id, same catalogue,
    no batch 1 of its own) goes on from it with the peer's values."""
    ident, own = declare(host, CPU_NET)
    _, theirs = declare(peer, CPU_NET)
    return ([own, theirs, referencing(peer, ident, 1, FIRST)],
            based(host, ident, 2, (1, LASTS), [5, 0, 0, 0, 0, 0]))


def _another_instances_base(host: str, _peer: str) -> tuple[list[Message], Message]:
    ident, own = declare(host, CPU_NET)
    return ([own, referencing(host, ident, 1, FIRST, instance="other")],
            based(host, ident, 2, (1, LASTS), [5, 0, 0, 0, 0, 0]))


def _another_hosts_catalogue(host: str, peer: str) -> tuple[list[Message], Message]:
    ident, theirs = declare(peer, CPU_NET)
    return [theirs], referencing(host, ident, 1, FIRST)


def _catalogue_for_another_host(host: str, peer: str) -> tuple[list[Message], Message]:
    _ident, (_topic, payload) = declare(peer, CPU_NET)
    return [], (catalogue_topic(host), payload)


def _many_series(n: int) -> list[list[Any]]:
    return [["disk_free_bytes", "gauge", "bytes", 0, ["disk"], [[f"d{i:05d}"] for i in range(n)]]]


CASES: dict[str, Case] = {
    "catalogue_reserved_names": Case(
        "a catalogue declaring __proto__, a collector self-metric and an invented agent_ name",
        "reserved names (SPEC §8) are screened on the resolved batch as on an inline one",
        _declared([["__proto__", "gauge", "", 0, [], [[]]],
                   ["agent_made_up", "gauge", "", 0, [], [[]]],
                   ["edgemon_ingest_lag_seconds", "gauge", "", 0, [], [[]]],
                   ["load1", "gauge", "", 2, [], [[]]]], [1, 0, 0] * 4),
        dropped={"reserved_name"}),
    "catalogue_label_control_characters": Case(
        "label values with NUL, escape and bidi-override characters declared once in a catalogue",
        "label values must be printable (SPEC §8) whichever form carried them",
        _declared([["temp", "gauge", "", 0, ["zone"], [["a\x00b"], ["\x1b[2J"], ["\u202etxt"],
                                                       ["ok"]]]], [20, 0, 0] * 4),
        dropped={"not_printable"}),
    "referencing_percent_9e16": Case(
        "a referencing batch carrying cpu_usage_percent of 9e16",
        "percent outside [-0.5, 100.5] is impossible (SPEC §8): the series is dropped",
        _declared(CPU_NET, [9 * 10**16, 0, 0, 5000, 10, 10]), dropped={"percent_out_of_range"}),
    "referencing_cardinality_6000_series": Case(
        "one small batch naming a catalogue of 6,000 series",
        "series from a catalogue count under the host's cardinality bound (5,000) like inline ones",
        _declared(_many_series(6000), [4096, 0, 0] * 6000),
        dropped={"series_limit", "new_series_limit"}),
    "based_percent_after_the_base": Case(
        "a based batch whose numbers are plausible but whose resolved values are 210 %",
        "the screen applies to resolved values, base included",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS), [20_000, 0, 0, 0, 0, 0])),
        dropped={"percent_out_of_range"}),
    "based_counter_negative_after_cumulation": Case(
        "a counter's second differences that cumulate below zero",
        "a counter is never negative (SPEC §8), whatever form its values came in",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS), [0, 0, 0, -6000, 0, 0])),
        dropped={"negative_value"}),
    "based_factor_beyond_64_bits": Case(
        "a factor that multiplies a number beyond signed 64 bits",
        "every product must fit in 64 bits (SPEC §9.1)",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS), [0, 0, 0, 4, 0, 0],
                                       factors=[[1, 2**62]])),
        reject="schema"),
    "based_counter_cumulation_beyond_64_bits": Case(
        "a counter's second differences whose running sum leaves 64 bits",
        "every d[i] must fit in 64 bits (SPEC §9.1)",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS), [0, 0, 0, 2**62, 2**62, 0])),
        reject="schema"),
    "based_resolved_values_overflow_when_cumulated": Case(
        "resolved deltas that each fit but whose samples (their running sum) do not",
        "cumulated values must fit in 64 bits (SPEC §2): storage could not read them",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS),
                                       [MAX_INT - 1000, MAX_INT - 10, 0, 0, 0, 0])),
        reject="schema"),
    "based_float_numbers": Case(
        "bvalues holding floats", "values are integers (SPEC §2)",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS), [0.5, 0, 0, 0, 0, 0])),
        reject="schema"),
    "based_on_a_later_batch": Case(
        "a base whose seq is not below the batch's", "0 <= base_seq < seq (SPEC §9.1)",
        _on_cpu_net(lambda h, i: based(h, i, 2, (2, LASTS), [0] * 6)), reject="schema"),
    "based_with_values_too": Case(
        "a based batch carrying values as well", "values or bvalues, never both (SPEC §9.1)",
        _on_cpu_net(lambda h, i: based(h, i, 2, (1, LASTS), [0] * 6, values=[0] * 6)),
        reject="schema"),
    "based_on_another_hosts_batch": Case(
        "a base that is another host's batch (same instance id, same seq)",
        "bases are looked up under the topic's host: a host reads only its own",
        _another_hosts_base, reject="unknown_base"),
    "based_on_another_instances_batch": Case(
        "a base that is another instance's batch of the same host",
        "a base is a batch of the same instance (SPEC §9.1)",
        _another_instances_base, reject="unknown_base"),
    "referencing_another_hosts_catalogue": Case(
        "naming a catalogue another host declared",
        "catalogues are looked up under the topic's host (SPEC §9)",
        _another_hosts_catalogue, reject="unknown_catalogue"),
    "catalogue_for_another_host": Case(
        "another host's catalogue published on the attacker's topic",
        "a catalogue's host must be its topic's (SPEC §9)",
        _catalogue_for_another_host, reject="host_mismatch"),
    "catalogue_poison_unknown_key": Case(
        "a catalogue with an unknown key holding a msgpack timestamp (extension type)",
        "no extension types anywhere (SPEC §2, §7)",
        lambda h, _p: ([], declare(h, CPU_NET, extra_key=msgpack.Timestamp(1, 0))[1]),
        reject="schema"),
    "referencing_sparse_index_past_the_catalogue": Case(
        "a sparse series index beyond the catalogue", "indexes name catalogue series (SPEC §9)",
        _on_cpu_net(lambda h, i: referencing(h, i, 2, FIRST, sparse=[[7, []]])),
        reject="schema"),
    "referencing_with_metrics_too": Case(
        "a batch with both metrics and a catalogue", "one form or the other (SPEC §9)",
        _on_cpu_net(lambda h, i: referencing(h, i, 2, FIRST, metrics=[])), reject="schema"),
    "catalogue_formula_and_markup_labels": Case(
        "label values that are a spreadsheet formula and HTML, declared once",
        "printable text is data: stored, and neutralised where it is shown (CSV export, pages)",
        _declared([["temp", "gauge", "", 0, ["zone"], [["=HYPERLINK(\"http://x\")"],
                                                       ["<script>alert(1)</script>"]]]],
                  [20, 0, 0] * 2)),
}


def _good(seq: int) -> Message:
    return metrics_topic("h-good"), encode({
        **head("h-good", seq), "metrics": [["load1", "gauge", "", 2, [], [[[], 0, [42, 1, 1]]]]]})


@pytest.mark.parametrize("pooled", [False, True], ids=["writer-thread", "workers"])
def test_hostile_references_are_refused_or_screened_and_storage_reads_the_rest(
        ingest: Any, pooled: bool) -> None:  # noqa: F811
    pipeline, storage, _acks = ingest
    if pooled:
        pipeline.loop.run_until_complete(pipeline.start_pool())
    mid = 0
    try:
        for n, (name, case) in enumerate(sorted(CASES.items())):
            host, peer = f"bad-{n}", f"peer-{n}"
            setup, hostile = case.build(host, peer)
            for topic, payload in setup:
                mid += 1
                [o] = _run(pipeline, _message(topic, payload, mid))
                assert o.kind != "reject", (name, "setup", o.reason, o.detail)
            mid += 2
            outcome, good = _run(pipeline, _message(*hostile, mid), _message(*_good(mid), mid + 1))
            assert good.kind == "metrics" and good.result.stored, (name, good)
            if case.reject is not None:
                assert (outcome.kind, outcome.reason) == ("reject", case.reject), \
                    (name, outcome.detail)
                assert pipeline.rejects.by_host_reason().get((host, case.reject)) == 1, name
                continue
            assert outcome.kind in ("metrics", "catalogue") and outcome.reason is None, \
                (name, outcome.reason, outcome.detail)
            if outcome.kind == "metrics":
                assert outcome.result.stored, name
                dropped = set(outcome.dropped or {})
                assert dropped == case.dropped or (dropped and dropped <= case.dropped), \
                    (name, outcome.dropped)
                for reason in outcome.dropped or {}:
                    assert pipeline.rejects.series_by_host_reason()[(host, reason)] > 0
                # stored resolved: it reads on its own with the one decoder, and passes the
                # screen again (nothing implausible was stored)
                batch = decode_batch(storage.stored_batch(host, "inst", outcome.batch_key[1]))
                assert screen(batch) == {}, name
    finally:
        if pooled:
            pipeline.loop.run_until_complete(pipeline.close_pool())
    storage.compact_all(NOW + 2 * DAY)
    assert storage.stats().quarantined == {}
    hosts = {s.host for s in storage.series()}
    assert "h-good" in hosts


class _Limited:
    """The pipeline's MQTT face with a real rate limiter behind ``charge`` (no broker needed:
    the limiter's admission is what ``MqttIngest._over_rate_limit`` calls)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def ack(self, msg: Any) -> bool:
        return True

    def publish_ack(self, *a: Any, **kw: Any) -> bool:
        return True

    def after_release(self) -> None:
        pass

    def charge(self, host: str, size: int) -> None:
        self.limiter.charge(host, size)


@pytest.mark.parametrize("pooled", [False, True], ids=["writer-thread", "workers"])
def test_a_small_message_naming_a_big_catalogue_is_charged_its_resolved_size(
        ingest: Any, pooled: bool) -> None:  # noqa: F811
    """20,000 series of 200-character label values, declared once (charged once, ~4 MB); each
    batch naming them is ~100 bytes on the wire and declares ~20 KB, but resolves into ~4 MB
    that the collector builds, screens, hashes and encodes. Charged only its frame, one host
    could make the collector build 200 such batches from one burst; charged what it resolves
    into, the first one empties the host's byte bucket and the next wait for its refill, while
    another host's messages are admitted as before."""
    pipeline, _storage, _acks = ingest
    # the budget of resolved bytes (its own, 8 MiB by default) is not what this test is about:
    # one that holds the batches the MQTT byte rate admits
    pipeline.resolve_limit = pipeline.examiner.resolve_limit = RateLimiter(
        messages_per_second=0, message_burst=1, bytes_per_second=1 << 20, byte_burst=64 << 20,
        max_hosts=100)
    clock = [1000.0]
    limiter = RateLimiter(messages_per_second=100, message_burst=1000,
                          bytes_per_second=1 << 20, byte_burst=8 << 20, max_hosts=100,
                          clock=lambda: clock[0])
    pipeline.mqtt = _Limited(limiter)
    if pooled:
        pipeline.loop.run_until_complete(pipeline.start_pool())
    try:
        labels = [["x" * 192 + f"{i:08d}"] for i in range(20_000)]
        ident, (topic, catalogue) = declare("h-amp", [["m", "gauge", "", 0, ["k"], labels]])
        assert limiter.allow("h-amp", message_cost(catalogue, len(catalogue)))
        [o] = _run(pipeline, _message(topic, catalogue, 1))
        assert o.kind == "catalogue"
        clock[0] += 60  # a minute later: the bucket is full again
        admitted = 0
        for seq in range(1, 6):
            topic, payload = referencing("h-amp", ident, seq, [0] * 20_000,
                                         t=[NOW - 1000])
            assert len(payload) < 1000
            if not limiter.allow("h-amp", message_cost(payload, len(payload))):
                continue
            admitted += 1
            [o] = _run(pipeline, _message(topic, payload, 1 + seq))
            assert o.kind == "metrics" and o.result.stored, o
        assert admitted == 2  # the burst (8 MiB) holds two resolved batches (4.4 MB each)
        assert limiter.allow("h-other", 1 << 20)  # another host is not affected
        clock[0] += 10  # ten seconds at 1 MiB/s: room for two more
        assert limiter.allow("h-amp", 100)
    finally:
        if pooled:
            pipeline.loop.run_until_complete(pipeline.close_pool())


def test_a_resolved_batch_is_charged_whatever_became_of_it() -> None:
    """Refused after it was built (its samples overflow when cumulated): charged all the same."""
    from edgemon.collector.ingest.examine import Examiner

    ident, (_t, catalogue) = declare("h-a", CPU_NET)
    examiner = Examiner(300, 30, load=lambda h, i: catalogue if (h, i) == ("h-a", ident)
                        else None, whole_batches=True)
    topic, payload = referencing("h-a", ident, 1, [MAX_INT, 1, 0, 5000, 10, 10])
    facts = examiner.examine(topic, payload, NOW, admit=lambda *a: {})
    assert (facts.kind, facts.reason) == ("reject", "schema")
    assert facts.charge > 0
    topic, payload = referencing("h-a", ident, 2, FIRST)
    assert examiner.examine(topic, payload, NOW, admit=lambda *a: {}).charge > 0
    inline = encode({**head("h-a", 3), "metrics": [["load1", "gauge", "", 2, [], [
        [[], 0, [42, 1, 1]]]]]})
    assert examiner.examine(metrics_topic("h-a"), inline, NOW, admit=lambda *a: {}).charge == 0


def test_a_host_inventing_instances_pushes_out_only_its_own_bases() -> None:
    """The bases ingest holds in memory are bounded per host too: a host sending batches under
    ever new instance ids (each the newest of its instance) evicts its own, not a good host's,
    whose next based batch would otherwise need a read of the store."""
    from edgemon.collector.ingest.bases import BaseCache
    from edgemon.protocol.catalogue import decode_catalogue

    def metrics(n: int) -> list[list[Any]]:
        return [["m", "gauge", "", 0, ["k"], [[[str(i)], 0, [i + 1]] for i in range(n)]]]

    reads: list[tuple[str, str, int]] = []
    cache = BaseCache(lambda *key: reads.append(key), max_series=100, max_host_series=30)
    cache.put("h-good", "inst", 1, metrics(20))
    for i in range(20):
        cache.put("h-noisy", f"i{i}", 1, metrics(10))
    _ident, (_t, message) = declare("h-good", [["m", "gauge", "", 0, ["k"],
                                                [[str(i)] for i in range(20)]]])
    catalogue = decode_catalogue(message)
    assert cache.lookup("h-good", "inst", 1, catalogue) == list(range(1, 21))
    assert reads == []  # held, not read again
    held = [k for k in cache._cached if k[0] == "h-noisy"]
    assert held == [("h-noisy", f"i{i}") for i in (17, 18, 19)]  # its own share: 30 series


def _started_pipeline(storage: Any, loop: Any, config: Any, writer: Any) -> Any:
    """An ingest pipeline of ``config`` over ``storage``, its worker processes started when
    ``config.workers``."""
    from edgemon.collector.ingest.inbox import Inbox
    from edgemon.collector.ingest.pipeline import IngestPipeline
    from tests.test_protocol_catalogue import _Acks

    pipeline = IngestPipeline(storage=storage, inbox=Inbox(loop, max_messages=100,
                                                           max_bytes=1 << 24),
                              mqtt=_Acks(), config=config, writer=writer)  # type: ignore[arg-type]
    pipeline.loop = loop  # type: ignore[attr-defined]
    if config.workers:
        loop.run_until_complete(pipeline.start_pool())
    return pipeline


@pytest.mark.parametrize("pooled", [False, True], ids=["writer-thread", "workers"])
def test_a_burst_of_batches_naming_a_big_catalogue_is_resolved_only_within_the_hosts_budget(
        stores: Any, pooled: bool) -> None:
    """Charging the rate limit after resolving comes too late for a burst: every message that
    arrived before the first was resolved is already queued. So resolving itself is within a
    budget per host (its own burst and rate, ``rate_limit_resolved_*``): of five batches that each
    resolve into ~4.7 MB, arriving together, the 8 MiB budget resolves one; the others are
    refused ``rate_limited`` before they are built (not for good: no batch key, its agent sends
    them again later), and another host's batch in the same group is stored."""
    import asyncio
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from edgemon.collector.config import IngestConfig

    storage = stores.open()
    loop = asyncio.new_event_loop()
    config = IngestConfig(rate_limit_resolved_bytes_per_second=1000,
                          rate_limit_resolved_byte_burst=8 << 20, workers=2 if pooled else 0)
    with ThreadPoolExecutor(1) as writer:
        pipeline = _started_pipeline(storage, loop, config, writer)
        try:
            labels = [["x" * 192 + f"{i:08d}"] for i in range(20_000)]
            ident, catalogue = declare("h-amp", [["m", "gauge", "", 0, ["k"], labels]])
            _, good_catalogue = declare("h-good", CPU_NET)
            for mid, message in enumerate((catalogue, good_catalogue)):
                [o] = _run(pipeline, _message(*message, mid))
                assert o.kind == "catalogue", o
            burst = [_message(*referencing("h-amp", ident, seq, [0] * 20_000, t=[NOW - 1000]),
                              10 + seq) for seq in range(1, 6)]
            good = _message(*referencing("h-good", catalogue_id(CPU_NET), 1, FIRST), 20)
            outcomes = _run(pipeline, *burst, good)
            # the next group (a round of its own; a worker started again would know nothing):
            # the host's budget still holds what the first one left, less than one batch
            if pooled:
                for pid in pipeline.pool.pids():
                    os.kill(pid, signal.SIGKILL)
            later = _run(pipeline, *[_message(*referencing("h-amp", ident, seq, [0] * 20_000,
                                                           t=[NOW - 1000]), 20 + seq)
                                     for seq in (6, 7)])
        finally:
            if pooled:
                loop.run_until_complete(pipeline.close_pool())
    loop.close()
    storage.close()
    shown = [(o.kind, o.reason, o.batch_key) for o in outcomes]
    assert shown == [("metrics", None, ("inst", 1))] + [("reject", "rate_limited", None)] * 4 \
        + [("metrics", None, ("inst", 1))], shown
    assert outcomes[0].result.stored and outcomes[-1].result.stored
    assert [(o.kind, o.reason) for o in later] == [("reject", "rate_limited")] * 2
    assert pipeline.rejects.by_host_reason()[("h-amp", "rate_limited")] == 6


AMPLIFIER = [["m", "gauge", "", 0, ["k"], [["x" * 192 + f"{i:08d}"] for i in range(20_000)]]]


def _pipeline_run(stores: Any, config: Any, groups: list[list[Any]],
                  ) -> tuple[list[list[Any]], Any]:
    """Each group of ``groups`` (RawMessages) examined and stored by a pipeline of ``config``
    (worker processes when ``config.workers``): their outcomes, and the pipeline."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor


    storage = stores.open()
    loop = asyncio.new_event_loop()
    outcomes = []
    with ThreadPoolExecutor(1) as writer:
        pipeline = _started_pipeline(storage, loop, config, writer)
        try:
            outcomes = [_run(pipeline, *group) for group in groups]
        finally:
            if config.workers:
                loop.run_until_complete(pipeline.close_pool())
    loop.close()
    storage.close()
    return outcomes, pipeline


def test_resolving_has_a_budget_of_its_own_below_the_byte_rate_limit(stores: Any) -> None:
    """Resolving has a budget of its own (``rate_limit_resolved_*``: by default 8 MiB burst,
    2 MiB/s), not the byte rate limit's (32 MiB burst): of five ~100-byte batches arriving
    together that each resolve into ~4.7 MB, one is resolved and four are refused
    ``rate_limited`` before they are built, where the byte burst would have held all five
    (a rate of 1 byte/s here, so that the refill while resolving does not count)."""
    from edgemon.collector.config import IngestConfig

    ident, catalogue = declare("h-amp", AMPLIFIER)
    burst = [_message(*referencing("h-amp", ident, seq, [0] * 20_000, t=[NOW - 1000]),
                      10 + seq) for seq in range(1, 6)]
    config = IngestConfig(workers=0, rate_limit_resolved_bytes_per_second=1)
    assert config.rate_limit_byte_burst > 5 * 4_700_000  # what the byte burst would admit
    [[declared], outcomes], pipeline = _pipeline_run(
        stores, config, [[_message(*catalogue, 1)], burst])
    assert declared.kind == "catalogue", declared
    assert [(o.kind, o.reason) for o in outcomes] == \
        [("metrics", None)] + [("reject", "rate_limited")] * 4, outcomes
    defaults = IngestConfig()
    for limiter in (pipeline.resolve_limit, pipeline.examiner.resolve_limit):
        assert limiter.byte_burst == defaults.rate_limit_resolved_byte_burst == 8 << 20
    assert pipeline.resolve_limit.bytes_per_second == 1
    assert defaults.rate_limit_resolved_bytes_per_second == 2 << 20


def test_the_second_look_at_a_batch_over_the_series_bound_is_charged_too(stores: Any) -> None:
    """With workers, a batch with series over its host's cardinality bound is resolved twice
    (the second look drops the refused series): its host's budget pays for both."""
    from edgemon.collector.config import IngestConfig
    from edgemon.collector.ingest.examine import Examiner

    ident, catalogue = declare("h-amp", AMPLIFIER)
    message = _message(*referencing("h-amp", ident, 1, [0] * 20_000, t=[NOW - 1000]), 11)
    examiner = Examiner(300, 30, load=lambda h, i: catalogue[1], whole_batches=True)
    once = examiner.examine(message.topic, message.payload, NOW, admit=lambda *a: {}).charge
    assert once > 4_000_000
    burst = 16 << 20
    config = IngestConfig(workers=2, rate_limit_resolved_bytes_per_second=1000,
                          rate_limit_resolved_byte_burst=burst, max_series_per_host=5000)
    [[declared], [o]], pipeline = _pipeline_run(
        stores, config, [[_message(*catalogue, 1)], [message]])
    assert declared.kind == "catalogue", declared
    assert o.kind == "metrics" and o.dropped, o  # 15,000 series over the bound: a second look
    # at 1000 bytes/s, a minute's refill is far less than one look
    assert pipeline.resolve_limit.available("h-amp") <= burst - 2 * once + 60_000
