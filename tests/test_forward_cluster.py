"""Forwarding from a shared group (issue 16 with issue 20): two real collector processes on one
PostgreSQL store, each decoding in its ingest worker processes, get a host's catalogue, a
referencing batch and based batches (SPEC.md §9, §9.1) in turns; only the leader sends to
VictoriaMetrics, and VictoriaMetrics ends up with every sample once, with the values and
timestamps of the batches as the agent built them (the forms are resolved before storing,
whichever collector stored them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.storage.batches import read_batch
from edgemon.protocol import encode
from tests.support import postgres
from tests.support.stand_in_agent import StandInAgent
from tests.support.tsdb import VICTORIA, VictoriaMetrics
from tests.support.waiting import wait_until
from tests.test_cluster_bases import _batch, send_catalogue_then_based
from tests.test_cluster_postgres import SharedStore

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing"),
              pytest.mark.skipif(postgres.available() is not None,
                                 reason=postgres.available() or "")]

BATCHES = 12

Key = tuple[tuple[str, str], ...]


class ForwardingGroup(SharedStore):
    """``SharedStore`` with a ``[[forward]]`` receiver in both collectors' configuration."""

    def __init__(self, tmp_path: Path, url: str, write_url: str) -> None:
        self.write_url = write_url
        super().__init__(tmp_path, url)

    def _collector(self, tmp_path: Path, name: str, url: str) -> Any:
        collector = super()._collector(tmp_path, name, url)
        collector.config.write_text(collector.config.read_text() + (
            f'\n[[forward]]\nname = "vm"\nurl = "{self.write_url}"\n'
            "retry_initial_seconds = 0.05\nretry_max_seconds = 0.5\n"))
        return collector

    def receivers(self, name: str) -> list[dict[str, Any]]:
        return self.collectors[name].get("/edgemon/api/v1/forward")["receivers"]  # type: ignore[no-any-return]


def as_built() -> dict[Key, list[tuple[int, float]]]:
    """Every sample of the inline batches, read with storage's reader: what a receiver should
    hold (labels as forwarded, value scaled back)."""
    out: dict[Key, list[tuple[int, float]]] = {}
    for seq in range(BATCHES):
        cols = read_batch(encode(_batch(seq)))
        bounds = cols.bounds.tolist()
        for metric in cols.metrics:
            for entry in range(metric.first, metric.end):
                labels = dict(zip(metric.keys, cols.labels[entry], strict=True))
                key = tuple(sorted({**labels, "host": "h1", "__name__": metric.name}.items()))
                lo, hi = bounds[entry], bounds[entry + 1]
                out.setdefault(key, []).extend(
                    (int(t), int(v) / 10 ** metric.scale)
                    for t, v in zip(cols.ts[lo:hi], cols.values[lo:hi], strict=True))
    return {k: sorted(v) for k, v in out.items()}


def test_only_the_leader_forwards_resolved_samples_stored_by_either_collector(
        tmp_path: Path, postgres_url: str) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    group = ForwardingGroup(tmp_path, postgres_url, vm.write_url)
    agent = None
    try:
        for collector in group.collectors.values():
            collector.start()
        wait_until(lambda: group.leader() is not None, 30, "a leader")
        group.watch()  # every role stated from now on (a busy machine may move leadership)
        leader = group.leader()
        assert leader is not None
        wait_until(lambda: group.receivers(leader), 30, "the leader forwarding")
        agent = StandInAgent(group.broker, "h1", password=group.passwords["h1"])
        send_catalogue_then_based(agent, BATCHES)
        assert agent.rejected() == []
        stored = {name: group.batches_stored(name) for name in group.collectors}
        assert sum(stored.values()) == BATCHES and min(stored.values()) > 0, stored

        want = as_built()
        total = sum(map(len, want.values()))

        def done() -> dict[str, Any] | None:
            now = group.leader()
            [r] = group.receivers(now) if now is not None else [None]
            return r if r and r["pending_samples"] == 0 and r["samples_sent"] == total else None
        wait_until(done, 60, "every stored sample forwarded")
        r = done()
        assert r is not None
        assert (r["samples_rejected"], r["samples_skipped"]) == (0, 0)
        led = {name for roles in group.roles_seen for name, role in roles.items()
               if role == "leader"}
        for name in set(group.collectors) - led:
            assert group.receivers(name) == []  # it never led: it sent nothing
        found = vm.export('{host="h1"}')
        assert {k: sorted(set(v)) for k, v in found.items()} == want  # the agent's values
        # each once; a new leader (if leadership moved) sent the request in flight again
        assert sum(map(len, found.values())) - total in (0, r["samples_resent"])
    finally:
        if agent is not None:
            agent.close()
        group.close()
        vm.terminate()
