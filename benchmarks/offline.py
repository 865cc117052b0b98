"""Offline operation: what the agent's buffer costs on disk, how long the default budget lasts,
and how fast a back-log drains with live traffic flowing.

    python benchmarks/offline.py [--quick]

Part 1 (in-process, real psutil readings): fills a buffer the way the agent does at its default
settings (10 s interval, 6 cycles a batch) and reports on-disk bytes per buffered sample and the
days of offline operation the default 64 MiB budget holds.
Part 2 (real processes): a private Mosquitto, a collector and an agent; the broker is stopped
while the agent builds a back-log, then started; reports the back-fill rate (samples/s and
multiple of real time) and the age of the newest stored sample while the back-log drains.
Writes benchmarks/results/offline.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import table, write_result  # noqa: E402
from edgemon.agent.buffer import Buffer  # noqa: E402
from edgemon.agent.families import start as start_families  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.processes import Agent, Collector, buffer_meta  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

DEFAULT_BUDGET = 64 << 20
DEFAULT_INTERVAL_S = 10
DEFAULT_BATCH_CYCLES = 6


def buffer_cost(cycles: int) -> dict[str, float]:
    """Fill a buffer with ``cycles`` cycles of this host's real readings at 10 s spacing."""
    collectors = list(start_families()[0].values())  # the default families this host has
    for collect in collectors:
        collect()
    readings = [r for collect in collectors for r in collect()]
    with tempfile.TemporaryDirectory() as tmp:
        buf = Buffer.open(Path(tmp) / "b.db", host="bench", instance="bench0000001",
                          max_bytes=DEFAULT_BUDGET, max_age_seconds=10**9)
        t0 = 1_795_000_000_000
        samples = 0
        for i in range(cycles):
            # values move as on a live host: re-read every cycle, timestamps 10 s apart
            if i % 30 == 0:
                readings = [r for collect in collectors for r in collect()]
            samples += buf.append(t0 + i * DEFAULT_INTERVAL_S * 1000, readings)
            if (i + 1) % DEFAULT_BATCH_CYCLES == 0:
                buf.seal(t0 + i * DEFAULT_INTERVAL_S * 1000)
        buf._reclaim()
        disk = buf.disk_bytes()
        buf.close()
    per_sample = disk / samples
    per_day = samples / cycles * 86_400 / DEFAULT_INTERVAL_S
    return {"samples": samples, "series": len(readings), "disk_bytes": disk,
            "bytes_per_sample": round(per_sample, 3),
            "days_in_default_budget": round(DEFAULT_BUDGET / (per_sample * per_day), 1)}


def backfill(outage_s: float, interval: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker").start()
        collector = Collector(work / "collector", broker).start()
        agent = Agent(work / "agent", broker, host_id="offline-bench", interval=interval,
                      batch_cycles=1, buffer_extra="backfill_batches_per_second = 50.0\n"
                                                   "max_inflight = 64")
        try:
            agent.start()
            wait_until(lambda: buffer_meta(agent.buffer)["appended"] > 0, 30, "first cycle")
            broker.stop()
            stop = time.monotonic()
            wait_until(lambda: time.monotonic() - stop >= outage_s, outage_s + 5, "the outage")
            backlog = buffer_meta(agent.buffer)["buffered"]
            broker.start()
            started = time.monotonic()
            ages: list[float] = []
            while buffer_meta(agent.buffer)["batches"] > 2:
                doc = collector.get("/edgemon/api/v1/query?metric=system_uptime_seconds"
                                    "&host=offline-bench&agg=last&step=1&start=now-5m&tier=raw")
                newest = max((p[0] for s in doc["series"] for p in s["points"]), default=0)
                age = time.time() - newest / 1000
                if ages or age < 3:  # from the first live sample after the reconnect on
                    ages.append(age)
                time.sleep(0.25)  # probe period
                if time.monotonic() - started > 300:
                    break
            drained = time.monotonic() - started
        finally:
            agent.kill()
            collector.kill()
            broker.kill()
    rate = backlog / drained if drained else float("nan")
    return {"outage_s": outage_s, "backlog_samples": backlog, "drain_s": round(drained, 2),
            "backfill_samples_per_s": round(rate),
            "x_real_time": round(outage_s / drained, 1) if drained else None,
            "live_age_p50_s": round(statistics.median(ages), 2) if ages else None,
            "live_age_max_s": round(max(ages), 2) if ages else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    cost = buffer_cost(360 if args.quick else 8640)  # 1 hour / 1 day of cycles
    fill = backfill(outage_s=15 if args.quick else 120, interval=0.1)
    print(table([{"figure": k, "value": v} for k, v in {**cost, **fill}.items()],
                ["figure", "value"]))
    print("\n(live age: now - start of the 1 s step holding the newest stored sample)")
    path = write_result("offline", {"buffer": cost, "backfill": fill})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
