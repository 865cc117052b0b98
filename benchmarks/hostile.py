"""A hostile flood from one host: what it costs the collector and a good host beside it.

    python benchmarks/hostile.py [--quick] [--seconds S]

A private Mosquitto and a real collector process (default ``[ingest]`` limits). A good host (the
fleet simulator, one host, 5 batches/s of 81 series x 6 cycles) publishes first alone, then
during a flood from one other host: garbage, decompression and msgpack bombs, valid-looking
batches claiming the good host, far-future batches, JSON bombs on its status topic, published
QoS 1 as fast as the broker takes them. Measured, in the same run:

* the good host's lag, publish -> stored (the collector acknowledges only committed batches),
  p50/p99, without and with the flood;
* the collector's resident memory before the flood (baseline) and its peak during it (VmRSS
  sampled every 50 ms, and VmHWM);
* rejects/s sustained during the flood, by reason (from /metrics), and what got through.

Writes ``benchmarks/results/hostile.json``; prints a table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
import paho.mqtt.client as mqtt
import zstandard
from _common import table, write_result
from fleet import Fleet
from ingest import start_broker, start_collector, stop
from paho.mqtt.enums import CallbackAPIVersion

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fuzz_corpus"
GOOD_RATE = 5.0  # batches/s of the good host
FLOOD_HOST = "flood-host"


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def rejects(http: int) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as r:
        text = r.read().decode()
    return Counter({m.group(1): int(float(m.group(2))) for m in re.finditer(
        r'^edgemon_collector_rejects_total\{reason="([^"]+)"\} (\S+)$', text, re.M)})


def flood_payloads() -> list[tuple[str, bytes]]:
    now = int(time.time() * 1000)
    topic = f"edgemon/v1/{FLOOD_HOST}/metrics"
    zstd = zstandard.ZstdCompressor(level=3)
    entries = [[[str(s)], 0, [1000 + s] + [7] * 9] for s in range(2000)]
    impostor = zstd.compress(msgpack.packb({
        "v": 1, "host": "good-00000", "instance": "impostor", "seq": 1, "sent": now,
        "t": [now - 60_000] + [1000] * 9, "metrics": [["cpu_x", "gauge", "", 0, ["s"], entries]]}))
    future = zstd.compress(msgpack.packb({
        "v": 1, "host": FLOOD_HOST, "instance": "f", "seq": 1, "sent": now,
        "t": [now + 86_400_000], "metrics": [["m", "gauge", "", 0, [], [[[], 0, [1]]]]]}))
    corpus = [(topic, (CORPUS / f"{name}.bin").read_bytes()) for name in (
        "zstd_bomb_64mib", "zstd_declares_1tib", "msgpack_empty_array_bomb",
        "msgpack_string_bomb", "too_many_samples", "msgpack_deep_unknown_key", "value_nan")]
    return [(topic, b"\x00garbage" * 25), (topic, impostor), (topic, future),
            (f"edgemon/v1/{FLOOD_HOST}/status", b"[" * 20_000), *corpus]


class Flooder(threading.Thread):
    """Publishes the flood QoS 1 as fast as its client may (1000 in flight) until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(2000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.stop_event = threading.Event()
        self.published = 0

    def run(self) -> None:
        payloads = flood_payloads()
        i = 0
        while not self.stop_event.is_set():
            topic, payload = payloads[i % len(payloads)]
            if self.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.002)
                continue
            self.published += 1
            i += 1

    def close(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.client.disconnect()
        self.client.loop_stop()


def good_phase(port: int, seconds: float, phase: int) -> dict[str, Any]:
    """The good host publishing for ``seconds``: its publish -> stored lag. Phase 0's batches
    cover the time before phase 1's, which ends now (batches of 60 s each)."""
    batches = max(1, int(GOOD_RATE * seconds))
    start_ms = int(time.time() * 1000) - (2 - phase) * batches * 60_000
    fleet = Fleet("127.0.0.1", port, hosts=1, prefix="good", zstd_level=3, seed=phase + 1,
                  start_ms=start_ms).connect()
    try:
        items = fleet.prepare(batches)
        fleet.run(items, rate=GOOD_RATE)
        all_acked = fleet.wait_acked(60)
        s = fleet.summary()
    finally:
        fleet.close()
    return {"sent": s["sent"], "acked": s["acked"], "rejected": s["rejected"],
            "all_acked": all_acked, "lag_p50_ms": s["lag_p50_ms"], "lag_p99_ms": s["lag_p99_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s phases (default 30 s)")
    parser.add_argument("--seconds", type=float, help="length of each phase")
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    work = Path(tempfile.mkdtemp(prefix="edgemon-hostile-"))
    broker = collector = None
    try:
        broker, port = start_broker(work)
        # default ingest limits; the API open on loopback (no tokens) for /metrics
        collector, http, _ = start_collector(work, port, http_extra='auth = "none"\n',
                                             ingest="")
        pid = collector.pid
        quiet = good_phase(port, seconds, 0)
        print(f"no flood: {quiet}", flush=True)
        baseline = rss_kib(pid)
        before = rejects(http)
        samples: list[int] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                samples.append(rss_kib(pid)["VmRSS"])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        flooder = Flooder(port)
        started = time.monotonic()
        flooder.start()
        try:
            flooded = good_phase(port, seconds, 1)
        finally:
            flood_s = time.monotonic() - started
            after = rejects(http)
            flooder.close()
            sampling.set()
            sampler.join()
        print(f"flood: {flooded}", flush=True)
        peak = max([*samples, rss_kib(pid)["VmHWM"]])
        counted = after - before
        total = sum(counted.values())
        result = {
            "phase_seconds": seconds, "good_batches_per_s": GOOD_RATE,
            "no_flood": quiet, "flood": flooded,
            "flood_published": flooder.published,
            "flood_published_per_s": round(flooder.published / flood_s, 1),
            "rejects_per_s": round(total / flood_s, 1),
            "rejects_by_reason": dict(sorted(counted.items())),
            "collector_rss_baseline_mb": round(baseline["VmRSS"] / 1024, 1),
            "collector_rss_peak_mb": round(peak / 1024, 1),
            "headline": [
                {"figure": "collector peak RSS during the flood", "unit": "MB",
                 "value": round(peak / 1024, 1),
                 "baselines": {"before the flood": round(baseline["VmRSS"] / 1024, 1)}},
                {"figure": "rejects/s sustained (one flooding host)", "unit": "msg/s",
                 "value": round(total / flood_s, 1)},
                {"figure": "good host lag p50 during the flood", "unit": "ms",
                 "value": flooded["lag_p50_ms"], "baselines": {"no flood": quiet["lag_p50_ms"]}},
                {"figure": "good host lag p99 during the flood", "unit": "ms",
                 "value": flooded["lag_p99_ms"], "baselines": {"no flood": quiet["lag_p99_ms"]}},
            ],
        }
        write_result("hostile", result)
        print(table([{"figure": h["figure"], "value": h["value"], "unit": h["unit"],
                      "baseline": h.get("baselines", {})} for h in result["headline"]],
                    ["figure", "value", "unit", "baseline"]))
        print(f"rejects by reason: {result['rejects_by_reason']}")
        return 0 if quiet["all_acked"] and flooded["all_acked"] else 1
    finally:
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
