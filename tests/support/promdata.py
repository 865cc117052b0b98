"""A deterministic fleet data set for the PromQL tests, stored through ``Storage.store_batches``.

Hosts differ on purpose: a 15 s interval, a host that stops early (stale for lookback), one that
starts late, counters with resets, non-integer counters, gauges with holes longer than the
5-minute lookback, constant gauges (standard deviation exactly 0) and per-core labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import IngestItem, Storage
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch

MINUTE = 60_000
HOUR = 3_600_000

CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
LOAD = MetricDef("load1", GAUGE, "", 2)
MEM_AVAILABLE = MetricDef("memory_available_bytes", GAUGE, "bytes")
MEM_TOTAL = MetricDef("memory_total_bytes", GAUGE, "bytes")
DISK_TOTAL = MetricDef("disk_total_bytes", GAUGE, "bytes", 0, ("mount",))
DISK_FREE = MetricDef("disk_free_bytes", GAUGE, "bytes", 0, ("mount",))
UPTIME = MetricDef("system_uptime_seconds", GAUGE, "seconds")
TEMP = MetricDef("temperature_celsius", GAUGE, "celsius", 1)
NET_RX = MetricDef("network_received_bytes_total", COUNTER, "bytes", 0, ("iface",))
NET_TX = MetricDef("network_sent_bytes_total", COUNTER, "bytes", 0, ("iface",))
BUSY = MetricDef("diskio_busy_time_seconds_total", COUNTER, "seconds", 3, ("device",))
METRICS = (CPU, LOAD, MEM_AVAILABLE, MEM_TOTAL, DISK_TOTAL, DISK_FREE, TEMP, NET_RX, NET_TX, BUSY,
           UPTIME)


@dataclass(frozen=True)
class HostPlan:
    name: str
    interval_ms: int = 10_000
    start_offset_ms: int = 0  # starts this long after the data set's start
    stop_before_end_ms: int = 0  # stops this long before its end
    cpus: int = 2


HOSTS = (
    HostPlan("web-01"),
    HostPlan("web-02", cpus=4),
    HostPlan("db-01", interval_ms=15_000),
    HostPlan("edge-07", stop_before_end_ms=40 * MINUTE),
    HostPlan("edge-08", start_offset_ms=50 * MINUTE, cpus=1),
    HostPlan("gw-1", interval_ms=30_000),
)


def _batches(plan: HostPlan, start_ms: int, end_ms: int, rng: np.random.Generator,
             per_batch: int = 6) -> Iterator[IngestItem]:
    t = start_ms + plan.start_offset_ms
    stop = end_ms - plan.stop_before_end_ms
    seq = 0
    state: dict[tuple[str, str], int] = {}
    total_mem = int(rng.integers(4, 64)) * 2**30
    disk_total = {"/": 256 * 2**30, "/data": 10 * 2**40}
    disk_free = {"/": int(rng.integers(10, 200)) * 2**30, "/data": int(rng.integers(1, 9)) * 2**40}
    temperature_gap = (start_ms + HOUR + int(rng.integers(0, 30)) * MINUTE,)
    builder, cycles = BatchBuilder(), 0
    while t < stop:
        ts = t + int(rng.integers(0, 16))
        for c in ("total", *(str(i) for i in range(plan.cpus))):
            if c != "total" and rng.random() < 0.02:
                continue  # a core missing from a cycle
            builder.add(ts, CPU, (c,), int(rng.integers(0, 10_001)))
        builder.add(ts, LOAD, (), int(abs(rng.normal(120, 60))))
        builder.add(ts, MEM_TOTAL, (), total_mem)
        builder.add(ts, MEM_AVAILABLE, (), int(total_mem * rng.uniform(0.1, 0.9)))
        for mount in disk_free:
            disk_free[mount] -= int(rng.integers(0, 2**20))
            builder.add(ts, DISK_FREE, (mount,), disk_free[mount])
            builder.add(ts, DISK_TOTAL, (mount,), disk_total[mount])
        builder.add(ts, UPTIME, (), (ts - start_ms) // 1000 + 86_400)
        gap = temperature_gap[0]
        if not gap <= ts < gap + 12 * MINUTE:  # a hole longer than the 5 min lookback
            builder.add(ts, TEMP, (), int(rng.normal(450, 40)))
        for metric, ifaces in ((NET_RX, ("eth0", "wlan0")), (NET_TX, ("eth0",))):
            for iface in ifaces:
                key = (metric.name, iface)
                if rng.random() < 0.01:
                    state[key] = int(rng.integers(0, 5000))  # a reset (reboot)
                else:
                    state[key] = state.get(key, int(rng.integers(10**9, 10**12))) + \
                        int(rng.integers(0, 3_000_000))
                builder.add(ts, metric, (iface,), state[key])
        key = ("busy", "sda")
        state[key] = state.get(key, 0) + int(rng.integers(0, 9_000))
        builder.add(ts, BUSY, ("sda",), state[key])
        cycles += 1
        if cycles == per_batch:
            yield _item(builder, plan.name, seq, ts)
            builder, cycles, seq = BatchBuilder(), 0, seq + 1
        t += plan.interval_ms
    if cycles:
        yield _item(builder, plan.name, seq, t)


def _item(builder: BatchBuilder, host: str, seq: int, last_ms: int) -> IngestItem:
    payload = encode(builder.build(host=host, instance="i1", seq=seq, sent_ms=last_ms + 500))
    return IngestItem(validate_batch(decode(payload)), payload, last_ms + 800, False)


def fill(storage: Storage, start_ms: int, end_ms: int, seed: int = 15,
         hosts: tuple[HostPlan, ...] = HOSTS) -> int:
    """Store the data set for ``[start_ms, end_ms)``; the number of samples stored."""
    rng = np.random.default_rng(seed)
    stored = 0
    for plan in hosts:
        items = list(_batches(plan, start_ms, end_ms, rng))
        for a in range(0, len(items), 200):
            stored += sum(r.samples for r in storage.store_batches(items[a:a + 200]))
    return stored


def build_store(path: Path, start_ms: int, end_ms: int, seed: int = 15) -> Storage:
    storage = open_storage(path)
    fill(storage, start_ms, end_ms, seed)
    return storage
