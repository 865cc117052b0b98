"""Forwarding is singleton work (issue 20): among collectors that share a store only the leader
sends. Two forwarding services over one store (two handles on one SQLite file, as two
collectors on one PostgreSQL store), one leading: the follower sends nothing; when leadership
moves, the new leader goes on from the cursor in the store and the receiver (Debian's
victoria-metrics on loopback) has every sample once, none re-sent. How the app moves it:
``CollectorService._follow_leadership`` (collector/app.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.common.clock import now_ms
from tests.support.forwarding import Fleet, Running, config
from tests.support.tsdb import VICTORIA, VictoriaMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")


def test_only_the_leader_forwards_and_a_new_leader_resumes_at_the_cursor(tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    stores = [SQLiteStorage(tmp_path / "edgemon.db", compact_delay_ms=0) for _ in range(2)]
    leading = {"a": True, "b": False}
    a = Running(stores[0], config(vm.write_url, max_samples_per_request=40),
                encode_in_process=False, leading=lambda: leading["a"])
    b = Running(stores[1], config(vm.write_url, max_samples_per_request=40),
                encode_in_process=False, leading=lambda: leading["b"])
    try:
        assert a.service.running and not b.service.running

        def position() -> object:
            [p] = [p for p in stores[1].forward_positions() if p.name == "rx"]
            return p

        def caught_up() -> bool:
            p = position()
            return p.pending_batches == 0 and p.seq == p.head  # type: ignore[attr-defined]

        fleet = Fleet(hosts=2)
        start = now_ms() // 1000 * 1000 - 600_000
        stores[1].store_batches(fleet.batches(start, 6))  # stored by the follower, sent by a
        wait_until(caught_up, 30, "the leader sends what the follower stored")
        assert b.service.forwarders == [] and b.service.status() == []
        sent_by_a = a.service.forwarders[0].counters.requests
        assert sent_by_a > 0

        # leadership moves: a pauses (cursor kept in the store), b resumes from it
        leading["a"] = False
        a.pause()
        leading["b"] = True
        b.resume()
        assert b.service.running and not a.service.running
        stores[0].store_batches(fleet.batches(start + 300_000, 6))
        wait_until(caught_up, 30, "the new leader sends the rest")
        assert a.service.forwarders[0].counters.requests == sent_by_a, "a follower sent"
        assert b.service.forwarders[0].counters.requests > 0
        p = position()
        assert p.sent == fleet.total() and p.resent == 0 and p.skipped == 0  # type: ignore
        assert vm.export('{fleet="test"}') == fleet.want()

        # a resume while already leading, or a pause while following, changes nothing
        b.resume()
        a.pause()
        assert len(b.service.forwarders) == 1 and b.service.running
    finally:
        a.close()
        b.close()
        for store in stores:
            store.close()
        vm.terminate()
