"""Based batches (protocol SPEC.md §9.1) in a shared group: two collector processes on one
PostgreSQL store take turns; a based batch whose base the other collector stored is resolved
from the store (the pending base batch), never refused, and every batch is stored once."""

from __future__ import annotations

import time
from typing import Any

from edgemon.protocol import encode, metrics_topic
from edgemon.protocol.base import last_values, rebase
from edgemon.protocol.catalogue import compact, encode_catalogue
from edgemon.protocol.codec import BASED_DICTIONARY_ID
from edgemon.protocol.topics import catalogue_topic
from tests.support.stand_in_agent import StandInAgent
from tests.support.waiting import wait_until
from tests.test_cluster_postgres import SharedStore, shared  # noqa: F401

BASE_MS = (int(time.time()) - 3600) * 1000


def _batch(seq: int) -> dict[str, Any]:
    t0 = BASE_MS + seq * 30_000
    return {"v": 1, "host": "h1", "instance": "inst-1", "seq": seq, "sent": t0 + 25_000,
            "t": [t0, 10_000, 10_000],
            "metrics": [["load1", "gauge", "", 2, [], [[[], 0, [40 + seq, 1, -1]]]],
                        ["net_bytes_total", "counter", "bytes", 0, ["iface"],
                         [[["eth0"], 0, [10**12 + 12_288 * seq, 4096, 4096]]]]]}


def send_catalogue_then_based(agent: StandInAgent, batches: int) -> None:
    """As an agent does: h1's catalogue, batch 0 referencing it, then batches 1.. each based
    on the one before; each acknowledged before the next."""
    metrics, ident, referencing = compact(_batch(0))
    agent.publish(catalogue_topic("h1"), encode_catalogue(
        host="h1", instance="inst-1", metrics=metrics, ident=ident))
    wait_until(lambda: any(ident in a.catalogues for a in agent.acks), 30,
               "the catalogue acknowledged")
    agent.publish(metrics_topic("h1"), encode(referencing))
    agent.wait_acked(0)
    for seq in range(1, batches):
        inline = _batch(seq)
        _m, same, referencing = compact(inline, metrics)
        assert same == ident
        based = rebase(referencing, metrics, last_values(_batch(seq - 1)["metrics"]), seq - 1)
        assert based is not None
        agent.publish(metrics_topic("h1"), encode(based, dict_id=BASED_DICTIONARY_ID))
        agent.wait_acked(seq)


def test_a_based_batch_resolves_on_whichever_collector_of_the_group_gets_it(
        shared: SharedStore) -> None:  # noqa: F811
    for collector in shared.collectors.values():
        collector.start()
    wait_until(lambda: shared.leader() is not None, 30, "a leader")
    agent = StandInAgent(shared.broker, "h1", password=shared.passwords["h1"])
    try:
        send_catalogue_then_based(agent, 12)
        assert agent.rejected() == []
        assert all(a.bases for a in agent.acks if a.acked)
        stored = {name: shared.batches_stored(name) for name in shared.collectors}
        assert sum(stored.values()) == 12 and min(stored.values()) > 0, stored
        seqs, _doc = shared.stored("a", "h1")
        assert seqs == set(range(12))
    finally:
        agent.close()
