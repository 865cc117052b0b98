"""The spine, end to end: a real agent and a real collector process through a real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgemon.agent.families import DEFAULT_FAMILIES, sensors, start
from tests.support.broker import Broker
from tests.support.processes import Agent, Collector, Process, buffer_meta, stored_samples
from tests.support.waiting import wait_until

HOST = "e2e-host"
FAMILY_PROBES = {  # one metric every family must deliver
    "cpu": "cpu_usage_percent", "load": "load1", "memory": "memory_total_bytes",
    "disk": "disk_total_bytes", "diskio": "diskio_read_bytes_total",
    "network": "network_received_bytes_total", "system": "system_uptime_seconds",
    "cpu_seconds": "cpu_seconds_total", "kernel": "kernel_context_switches_total",
    "pressure": "pressure_waiting_seconds_total", "sensors": "sensor_temperature_celsius",
    "sockets": "sockets_used", "filefd": "file_descriptors_allocated", "processes": "processes",
}


@pytest.fixture
def system(tmp_path: Path, broker: Broker) -> Iterator[tuple[Broker, Collector, Agent]]:
    collector = Collector(tmp_path / "collector", broker).start()
    agent = Agent(tmp_path / "agent", broker, host_id=HOST, interval=0.2, batch_cycles=2,
                  buffer_extra="ack_timeout_seconds = 3.0")
    agent.start()
    yield broker, collector, agent
    agent.kill()
    collector.kill()


def _names(collector: Collector) -> set[str]:
    try:
        return {s["name"] for s in collector.get(f"/edgemon/api/v1/hosts/{HOST}/series")["series"]}
    except OSError:
        return set()


def _last(collector: Collector, metric: str, labels: str = "") -> float:
    doc = collector.get(f"/edgemon/api/v1/query?metric={metric}&host={HOST}{labels}"
                        "&agg=last&step=60"
                        "&start=now-10m&tier=raw")
    points = [p for s in doc["series"] for p in s["points"]]
    assert points, f"no points for {metric}"
    return max(points)[1]


def test_every_family_reaches_the_api_with_plausible_values(
        system: tuple[Broker, Collector, Agent]) -> None:
    _, collector, agent = system
    assert set(FAMILY_PROBES) == set(DEFAULT_FAMILIES)
    available, _ = start()  # those this host has (no pressure without PSI, sensors on metal)
    probes = {FAMILY_PROBES[n] for n in available
              if n != "sensors" or sensors.TEMPERATURE in {r[0] for r in available[n]()}}
    wait_until(lambda: probes <= _names(collector), 30,
               f"every family in the API (agent log: {agent.log})")
    hosts = {h["host"]: h for h in collector.get("/edgemon/api/v1/hosts")["hosts"]}
    assert hosts[HOST]["online"] is True
    assert _last(collector, "memory_total_bytes") == psutil.virtual_memory().total
    assert 0 <= _last(collector, "cpu_usage_percent", "&label.cpu=total") <= 100
    assert _last(collector, "system_boot_time_seconds") == pytest.approx(psutil.boot_time(), abs=2)
    # alerting runs inside the collector with the shipped rules
    rules = {r["name"] for r in collector.get("/edgemon/api/v1/rules")["rules"]}
    assert {"cpu-high", "host-down", "disk-full-soon"} <= rules
    assert isinstance(collector.get("/edgemon/api/v1/alerts")["alerts"], list)
    assert "/edgemon/api/v1/alerts" in collector.get("/edgemon/api/v1/openapi.json")["paths"]
    assert agent.terminate() == 0
    assert collector.terminate() == 0


def test_agent_keeps_batches_until_the_collector_acknowledges_them(
        system: tuple[Broker, Collector, Agent]) -> None:
    _, collector, agent = system
    wait_until(lambda: "load1" in _names(collector), 30, "first data")
    assert collector.terminate() == 0
    # The broker is up and takes every publish, but nobody acknowledges: the buffer grows.
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] >= 5, 30, "buffer growing")
    collector.start()
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] <= 1, 30, "buffer drained")
    assert agent.terminate() == 0
    # Exact accounting: every sample ever buffered is stored, dropped or still buffered.
    meta = buffer_meta(agent.buffer)
    wait_until(lambda: stored_samples(collector, HOST) + meta["dropped"] + meta["buffered"]
               == meta["appended"], 20, f"accounting to add up: {meta}")
    assert meta["dropped"] == 0


def test_a_second_instance_on_the_same_files_refuses_to_start(
        system: tuple[Broker, Collector, Agent], tmp_path: Path) -> None:
    broker, collector, agent = system
    for twin, log in ((Agent(tmp_path / "agent", broker, host_id=HOST), "twin-agent.log"),
                      (Collector(tmp_path / "collector", broker), "twin-collector.log")):
        twin.log = tmp_path / log  # same buffer or database path as the running one
        Process.start(twin)
        assert twin.proc is not None and twin.proc.wait(timeout=20) == 2
        assert "already using" in twin.output()
    assert agent.running() and collector.running()
