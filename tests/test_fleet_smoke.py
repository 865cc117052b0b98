"""benchmarks/fleet.py against a private broker and a real collector: every batch gets acked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.fleet import Fleet
from tests.support.broker import MOSQUITTO, Broker
from tests.support.processes import Collector

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto not installed")


def test_fleet_batches_all_acked(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=False).start()
    collector = Collector(tmp_path / "collector", broker)
    try:
        collector.start()
        fleet = Fleet(broker.host, broker.port, hosts=2, prefix="smoke",
                      start_ms=int(time.time() * 1000) - 4 * 60_000).connect()
        try:
            items = fleet.prepare(2)  # live topic
            fleet.run(items)
            fleet.burst(1)  # and an offline burst on the backfill topic
            assert fleet.wait_acked(15), fleet.summary()
            summary = fleet.summary()
        finally:
            fleet.close()
        assert summary["sent"] == 6
        assert summary["acked"] == 6
        assert summary["rejected"] == 0
        assert summary["acked_samples"] == 6 * 81 * 6
        assert summary["lag_p99_ms"] is not None
        hosts = {h["host"] for h in collector.get("/edgemon/api/v1/hosts")["hosts"]}
        assert {"smoke-00000", "smoke-00001"} <= hosts
    finally:
        collector.kill()
        broker.kill()
