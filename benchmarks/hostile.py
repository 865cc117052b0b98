"""A hostile flood from one host: what it costs the collector and a good host beside it.

    python benchmarks/hostile.py [--quick] [--seconds S]

A private Mosquitto and a real collector process (default ``[ingest]`` limits). A good host (the
fleet simulator, one host, 5 batches/s of 81 series x 6 cycles) publishes first alone, then
during a flood from one other host: garbage, decompression and msgpack bombs, valid-looking
batches claiming the good host, far-future batches, JSON bombs on its status topic, ~100-byte
batches naming a catalogue of 20,000 long label values that the host declared first (each
resolves into ~4.7 MB), published QoS 1 as fast as the broker takes them. Measured, in the same run:

* the good host's lag, publish -> stored (the collector acknowledges only committed batches),
  p50/p99, without and with the flood;
* the collector's resident memory before the flood (baseline) and its peak during it: VmRSS of
  its whole process tree (the collector, its ingest worker processes, where payloads are
  decoded, their forkserver and the compaction process) summed every 50 ms, and the collector
  process's own VmHWM;
* rejects/s sustained during the flood, by reason (from /metrics), and what got through.

Writes ``benchmarks/results/hostile.json``; prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import re
import shutil
import subprocess
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
from proctree import tree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgemon.collector.config import IngestConfig
from edgemon.collector.ingest.workers import CHUNK
from edgemon.protocol.catalogue import catalogue_id, encode_catalogue
from edgemon.protocol.limits import (
    MAX_COMPRESSED_BYTES,
    MAX_DECODE_BYTES,
    MAX_EXTENSION_ELEMENTS,
    MAX_LABEL_VALUES,
    MAX_LABELS,
    MAX_METRICS,
    MAX_SAMPLES,
    MAX_SERIES,
    MAX_TIMESTAMPS,
)
from tests.support.flood import RawFlooder

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fuzz_corpus"
GOOD_RATE = 5.0  # batches/s of the good host
FLOOD_HOST = "flood-host"
WORKERS = IngestConfig().workers  # the collector's default [ingest] workers
# a catalogue of long label values the flooding host declares once; its batches naming it are
# ~100 bytes each and resolve into ~4.7 MB (charged at that size: SPEC.md §9)
AMPLIFIER_SERIES = [["x" * 192 + f"{i:08d}"] for i in range(20_000)]


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def tree_rss_kib(pid: int) -> int:
    """VmRSS summed over ``pid`` and its descendants (ingest workers decode in their own
    processes: the collector's memory is the tree's)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):  # ended meanwhile
            total += rss_kib(p).get("VmRSS", 0)
    return total


class RssSampler:
    """VmRSS of the process tree under ``pid`` every 50 ms in a thread, from creation until
    ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(tree_rss_kib(self.pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_kib(self) -> int:
        """The highest sample of the tree, or the collector process's own high-water mark when
        higher."""
        return max([*self.samples, rss_kib(self.pid)["VmHWM"]])


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
    amplifier = zstd.compress(msgpack.packb({
        "v": 1, "host": FLOOD_HOST, "instance": "f", "seq": 2, "sent": now, "t": [now - 1000],
        "catalogue": amplifier_catalogue()[0], "values": [0] * len(AMPLIFIER_SERIES)}))
    return [(topic, b"\x00garbage" * 25), (topic, impostor), (topic, future),
            (f"edgemon/v1/{FLOOD_HOST}/status", b"[" * 20_000), (topic, amplifier), *corpus]


def amplifier_catalogue() -> tuple[str, bytes]:
    """(id, message) of the flooding host's catalogue of long label values."""
    metrics = [["m", "gauge", "", 0, ["k"], AMPLIFIER_SERIES]]
    ident = catalogue_id(metrics)
    return ident, encode_catalogue(host=FLOOD_HOST, instance="f", metrics=metrics, ident=ident,
                                   level=3)


class Flooder(threading.Thread):
    """Declares its catalogue (``amplifier_catalogue``), then publishes the flood QoS 1 as fast
    as its client may (1000 in flight) until stopped."""

    def __init__(self, port: int, http: int) -> None:
        super().__init__(daemon=True)
        self.http = http
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(2000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.stop_event = threading.Event()
        self.published = 0

    def declare(self) -> None:
        """Publish the catalogue and wait until the collector stored it."""
        self.client.publish(f"edgemon/v1/{FLOOD_HOST}/catalogue", amplifier_catalogue()[1],
                            qos=1).wait_for_publish(30)
        deadline = time.monotonic() + 30
        while _metrics(self.http).get("catalogues_stored_total", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the collector did not store the flooding host's catalogue")
            time.sleep(0.1)

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


# --- flood at the broker's maximum rate (issue 13 item 4: a flood stays with its sender) ---------
#
# A broker with the generated configuration (``broker-auth mosquitto-conf``: users, ACL, client
# ids bound to users, queue bounds), a collector and a good host logged in as themselves, and a
# flooding host using its *own valid* credentials on its own topic, as fast as Mosquitto reads
# (tests/support/flood.py: pre-built PUBLISH packets written back to back).

FLOOD_USER = "flood-host"
GOOD_USER = "good-00000"


def raw_flood(port: int, password: str, seconds: float, counter: Any) -> None:
    """(a process) Flood as the flooding host for ``seconds`` (tests/support/flood.py);
    ``counter`` gets the number of messages written."""
    counter.value = RawFlooder(port, FLOOD_USER, password, _valid_batch(FLOOD_USER)).run(seconds)


def _valid_batch(host: str) -> bytes:
    now = int(time.time() * 1000)
    fleet = Fleet(hosts=1, prefix="x", zstd_level=3, start_ms=now - 60_000)
    fleet.hosts[0].host = host
    return fleet.encode(fleet.hosts[0].next_batch())


def _secured_broker(work: Path) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    """Mosquitto with exactly the generated configuration; the users' passwords."""
    from edgemon.collector.broker.auth import AuthDir, mosquitto_conf

    auth, collector_password = AuthDir.init(work / "broker-auth")
    passwords = {"edgemon-collector": collector_password,
                 GOOD_USER: auth.add(GOOD_USER, "host"), FLOOD_USER: auth.add(FLOOD_USER, "host")}
    proc, port = start_broker(work, lambda port: mosquitto_conf(
        auth, port=port, bind="127.0.0.1", persistence_location=work))
    return proc, port, passwords


def _metrics(http: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^edgemon_collector_(\S+?) (\S+)$", text, re.M)}


def _good_phase_secured(port: int, password: str, seconds: float, phase: int
                        ) -> dict[str, Any]:
    """The good host publishing for ``seconds`` (5 batches/s) with its own credentials: its
    publish -> stored lag, what was never acknowledged, and the longest wait between acks."""
    batches = max(1, int(GOOD_RATE * seconds))
    start_ms = int(time.time() * 1000) - (2 - phase) * batches * 60_000
    fleet = Fleet("127.0.0.1", port, hosts=1, prefix="good", zstd_level=3, seed=phase + 1,
                  start_ms=start_ms, username=GOOD_USER, password=password,
                  nodelay=True).connect()
    gaps: list[float] = []
    watching = threading.Event()

    def watch() -> None:  # the longest time without any ack while batches were outstanding
        last, acked = time.monotonic(), 0
        while not watching.wait(0.05):
            now, count = time.monotonic(), fleet.summary()["acked"]
            if count != acked or not fleet.unacked:
                last, acked = now, count
            gaps.append(now - last)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        fleet.run(fleet.prepare(batches), rate=GOOD_RATE)
        all_acked = fleet.wait_acked(60)
        s = fleet.summary()
    finally:
        watching.set()
        watcher.join()
        fleet.close()
    return {"sent": s["sent"], "acked": s["acked"], "never_acked": s["unacked"],
            "all_acked": all_acked, "lag_p50_ms": s["lag_p50_ms"],
            "lag_p99_ms": s["lag_p99_ms"], "lag_max_ms": s["lag_max_ms"],
            "longest_ack_gap_s": round(max(gaps, default=0.0), 2)}


def max_rate_flood(seconds: float) -> dict[str, Any]:
    """The good host alone, then beside a flood at the broker's maximum rate, same run."""
    work = Path(tempfile.mkdtemp(prefix="edgemon-flood-"))
    broker = collector = None
    try:
        broker, port, passwords = _secured_broker(work)
        login = (f'username = "edgemon-collector"\n'
                 f'password = "{passwords["edgemon-collector"]}"\n')
        collector, http, _ = start_collector(work, port, http_extra='auth = "none"\n',
                                             ingest="", mqtt_extra=login)
        quiet = _good_phase_secured(port, passwords[GOOD_USER], seconds, 0)
        print(f"no flood: {quiet}", flush=True)
        before = _metrics(http)
        counter = multiprocessing.Value("q", 0)
        flooder = multiprocessing.Process(target=raw_flood, daemon=True,
                                          args=(port, passwords[FLOOD_USER], seconds, counter))
        started = time.monotonic()
        flooder.start()
        flooded = _good_phase_secured(port, passwords[GOOD_USER], seconds, 1)
        flooder.join(seconds + 30)
        flood_s = time.monotonic() - started
        after = _metrics(http)
        print(f"flood: {flooded}", flush=True)

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        stalls = sum(v - before.get(k, 0.0) for k, v in after.items()
                     if k.startswith("mqtt_stalls_total"))
        dropped_by_broker = (work / "mosquitto.log").read_text().count(
            "Outgoing messages are being dropped")
        return {
            "phase_seconds": seconds, "no_flood": quiet, "flood": flooded,
            "flood_messages_written": counter.value,
            "flood_messages_per_s": round(counter.value / flood_s),
            "collector_received_per_s": round(delta("mqtt_messages_received_total") / flood_s),
            "collector_rate_limited": int(delta("rate_limited_total")),
            "stalls_detected": int(stalls),
            "broker_dropping_notices": dropped_by_broker,
        }
    finally:
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def flood_headline(flood: dict[str, Any]) -> list[dict[str, Any]]:
    quiet, flooded = flood["no_flood"], flood["flood"]
    return [
        {"figure": "good host lag p50, one host flooding at the broker's max rate", "unit": "ms",
         "value": flooded["lag_p50_ms"], "baselines": {"no flood": quiet["lag_p50_ms"]}},
        {"figure": "good host lag p99, one host flooding at the broker's max rate", "unit": "ms",
         "value": flooded["lag_p99_ms"], "baselines": {"no flood": quiet["lag_p99_ms"]}},
        {"figure": "good batches never acknowledged during the max-rate flood", "unit": "batches",
         "value": flooded["never_acked"], "baselines": {"no flood": quiet["never_acked"]}},
        {"figure": "longest wait for any good ack during the max-rate flood", "unit": "s",
         "value": flooded["longest_ack_gap_s"], "baselines": {"no flood":
                                                              quiet["longest_ack_gap_s"]}},
        {"figure": "max-rate flood written by one authenticated host", "unit": "msg/s",
         "value": flood["flood_messages_per_s"]},
    ]


BOMB_HOSTS = 32  # host topics the bombs are spread over
BOMB_INBOX = 1000  # [ingest] queue_max of the bomb collector (the default)
BOMB_INBOX_BYTES = 64 << 20  # [ingest] queue_max_bytes (the default)
_CORPUS_BOMBS = ("bomb_", "msgpack_", "zstd_bomb", "zstd_declares", "too_many_")


def largest_batches(now_ms: int) -> list[tuple[str, bytes]]:
    """(kind, payload): valid batches that make the decoder build the most of each kind of
    object, each naming a host other than its topic's, so it is refused once fully decoded."""
    zstd = zstandard.ZstdCompressor(level=3)

    def batch(metrics: list, t: list[int] | None = None, **extra: Any) -> bytes:
        return zstd.compress(msgpack.packb({
            "v": 1, "host": "not-the-topics-host", "instance": "bomb", "seq": 1, "sent": now_ms,
            "t": t or [now_ms - 60_000], "metrics": metrics, **extra}, use_bin_type=True))

    n = MAX_TIMESTAMPS
    ints = batch([["m", "gauge", "", 0, ["s"], [[[str(s)], 0, [-20] * n]
                                                 for s in range(MAX_SAMPLES // n)]]],
                 t=[now_ms - 3_600_000] + [1] * (n - 1))
    keys = [f"k{i}" for i in range(MAX_LABELS)]
    strings = batch([["m", "gauge", "", 0, keys,
                      [[[f"{i}\U0001F600"] + ["\U0001F600" * 7] * (MAX_LABELS - 1), 0, [1]]
                       for i in range(MAX_LABEL_VALUES // MAX_LABELS)]]])
    per = MAX_SERIES // MAX_METRICS
    entries = batch([[f"m{m}", "gauge", "", 0, ["a"], [[[str(e)], 0, [1000 + e]]
                                                        for e in range(per)]]
                     for m in range(MAX_METRICS)])
    extension = batch([], extra=[{"k": "\U0001F600" * 64}
                                 for _ in range(MAX_EXTENSION_ELEMENTS // 3)])
    return [("a million integers", ints), ("262,144 UCS-4 label values", strings),
            ("65,536 series entries", entries), ("a full unknown-key budget", extension)]


def bomb_payloads(now_ms: int) -> list[tuple[str, bytes]]:
    """(kind, payload) of every bomb: the corpus's amplification and decompression bombs (each
    refused before it is built) and the largest batches (each refused once built)."""
    names = sorted(p.stem for p in CORPUS.glob("*.bin") if p.stem.startswith(_CORPUS_BOMBS)
                   and not (CORPUS / f"{p.stem}.topic").exists())
    return [(n, (CORPUS / f"{n}.bin").read_bytes()) for n in names] + largest_batches(now_ms)


class Bomber(threading.Thread):
    """Publishes the bombs QoS 1 in rounds (every kind ``copies`` times, spread over
    ``BOMB_HOSTS`` host topics), each round as fast as the broker takes it, the next one once
    the collector has counted the last: every kind is decoded over and over, and the inbox holds
    a round at a time."""

    def __init__(self, port: int, http: int, bombs: list[tuple[str, bytes]],
                 copies: int = 4) -> None:
        super().__init__(daemon=True)
        self.bombs, self.http, self.copies = bombs, http, copies
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bomber")
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.stop_event = threading.Event()
        self.published = self.rounds = self.bytes = 0

    def run(self) -> None:
        counted = sum(rejects(self.http).values())
        i = 0
        while not self.stop_event.is_set():
            for _ in range(self.copies):
                for _, payload in self.bombs:
                    self.client.publish(f"edgemon/v1/bomb-{i % BOMB_HOSTS:03d}/metrics", payload,
                                        qos=1)
                    self.published += 1
                    self.bytes += len(payload)
                    i += 1
            target = counted + self.published
            while not self.stop_event.is_set() and sum(rejects(self.http).values()) < target:
                time.sleep(0.1)
            self.rounds += 1

    def close(self) -> None:
        self.stop_event.set()
        self.join(30)
        self.client.disconnect()
        self.client.loop_stop()


def bomb_stream(work: Path, seconds: float) -> dict[str, Any]:
    """Peak RSS of a collector (rate limit off) under ``seconds`` of bombs of every kind. (With
    the rate limit off, the bombs fill the one inbox: other hosts wait behind them; that is the
    rate limiter's job, measured by the flood phase.)"""
    work.mkdir(parents=True, exist_ok=True)
    broker = collector = None
    try:
        broker, port = start_broker(work)
        collector, http, _ = start_collector(
            work, port, http_extra='auth = "none"\n',
            ingest=(f"queue_max = {BOMB_INBOX}\nqueue_max_bytes = {BOMB_INBOX_BYTES}\n"
                    "rate_limit_messages_per_second = 0\nrate_limit_bytes_per_second = 0\n"))
        pid = collector.pid
        quiet = good_phase(port, min(seconds, 10.0), 0)
        baseline = tree_rss_kib(pid)
        before = rejects(http)
        bombs = bomb_payloads(int(time.time() * 1000))
        sampler = RssSampler(pid)
        bomber = Bomber(port, http, bombs)
        started = time.monotonic()
        bomber.start()
        try:
            time.sleep(seconds)
        finally:
            bomb_s = time.monotonic() - started
            bomber.close()
            after = rejects(http)
            sampler.stop()
        peak = sampler.peak_kib()
    finally:
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
    mib = 1 << 20
    counted = after - before
    base_mb = baseline * 1024 / mib
    literal = base_mb + MAX_DECODE_BYTES * BOMB_INBOX / mib
    # each worker decodes one message at a time and holds a copy of its chunk's payloads
    tight = base_mb + (BOMB_INBOX_BYTES + WORKERS * (MAX_DECODE_BYTES + CHUNK
                                                     * MAX_COMPRESSED_BYTES)) / mib
    return {
        "seconds": round(bomb_s, 1), "kinds": [k for k, _ in bombs], "rounds": bomber.rounds,
        "published": bomber.published, "published_per_s": round(bomber.published / bomb_s, 1),
        "published_mb": round(bomber.bytes / mib, 1),
        "rejects_by_reason": dict(sorted(counted.items())),
        "good_warm_up": quiet,
        "rss_baseline_mb": round(base_mb, 1), "rss_peak_mb": round(peak / 1024, 1),
        "rss_growth_mb": round(peak / 1024 - base_mb, 1),
        "max_decode_mb": round(MAX_DECODE_BYTES / mib, 1), "inbox_messages": BOMB_INBOX,
        "ingest_workers": WORKERS,
        "bound_per_message_x_inbox_mb": round(literal, 1),
        "bound_inbox_bytes_plus_one_decode_mb": round(tight, 1),
        "within_bound": peak / 1024 <= literal, "within_tight_bound": peak / 1024 <= tight,
    }


def bomb_headline(bombs: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"figure": "collector peak RSS during the bomb stream (rate limit off)", "unit": "MB",
         "value": bombs["rss_peak_mb"],
         "baselines": {"before the bombs": bombs["rss_baseline_mb"],
                       "baseline + inbox bytes + one decode and chunk per worker": bombs[
                           "bound_inbox_bytes_plus_one_decode_mb"],
                       "baseline + MAX_DECODE_BYTES x inbox": bombs[
                           "bound_per_message_x_inbox_mb"]}},
        {"figure": "bombs refused/s (one writer thread, rate limit off)", "unit": "msg/s",
         "value": round(sum(bombs["rejects_by_reason"].values()) / bombs["seconds"], 1)},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s phases (default 30 s)")
    parser.add_argument("--seconds", type=float, help="length of each phase")
    parser.add_argument("--part", choices=("all", "bombs", "flood"), default="all",
                        help="flood: only the flood at the broker's maximum rate")
    parser.add_argument("--flood-seconds", type=float,
                        help="length of the max-rate flood and of its baseline (default 60)")
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    flood_seconds = args.flood_seconds or (20.0 if args.quick else 60.0)
    if args.part == "flood":
        flood = max_rate_flood(flood_seconds)
        write_result("hostile_flood", {**flood, "headline": flood_headline(flood)})
        print(table(flood_headline(flood), ["figure", "value", "unit", "baselines"]))
        return 0 if flood["flood"]["never_acked"] == 0 else 1
    work = Path(tempfile.mkdtemp(prefix="edgemon-hostile-"))
    broker = collector = None
    try:
        broker, port = start_broker(work)
        # default ingest limits; the API open on loopback (no tokens) for /metrics
        # the bombs must reach the collector to measure what they cost it: the flooding host
        # is not left out at the broker here (max_rate_flood measures that)
        collector, http, _ = start_collector(work, port, http_extra='auth = "none"\n',
                                             ingest="",
                                             mqtt_extra="flood_trigger_per_second = 0\n")
        pid = collector.pid
        quiet = good_phase(port, seconds, 0)
        print(f"no flood: {quiet}", flush=True)
        baseline = tree_rss_kib(pid)
        before = rejects(http)
        sampler = RssSampler(pid)
        flooder = Flooder(port, http)
        flooder.declare()
        started = time.monotonic()
        flooder.start()
        try:
            flooded = good_phase(port, seconds, 1)
        finally:
            flood_s = time.monotonic() - started
            after = rejects(http)
            flooder.close()
            sampler.stop()
        print(f"flood: {flooded}", flush=True)
        peak = sampler.peak_kib()
        bombs = bomb_stream(work / "bombs", seconds)
        print(f"bomb stream: {bombs}", flush=True)
        counted = after - before
        total = sum(counted.values())
        result = {
            "phase_seconds": seconds, "good_batches_per_s": GOOD_RATE,
            "no_flood": quiet, "flood": flooded,
            "flood_published": flooder.published,
            "flood_published_per_s": round(flooder.published / flood_s, 1),
            "rejects_per_s": round(total / flood_s, 1),
            "rejects_by_reason": dict(sorted(counted.items())),
            "collector_rss_baseline_mb": round(baseline / 1024, 1),
            "collector_rss_peak_mb": round(peak / 1024, 1),
            "headline": [
                {"figure": "collector peak RSS during the flood", "unit": "MB",
                 "value": round(peak / 1024, 1),
                 "baselines": {"before the flood": round(baseline / 1024, 1)}},
                {"figure": "rejects/s sustained (one flooding host)", "unit": "msg/s",
                 "value": round(total / flood_s, 1)},
                {"figure": "good host lag p50 during the flood", "unit": "ms",
                 "value": flooded["lag_p50_ms"], "baselines": {"no flood": quiet["lag_p50_ms"]}},
                {"figure": "good host lag p99 during the flood", "unit": "ms",
                 "value": flooded["lag_p99_ms"], "baselines": {"no flood": quiet["lag_p99_ms"]}},
                *bomb_headline(bombs),
            ],
            "bomb_stream": bombs,
        }
        if args.part == "all":
            flood = max_rate_flood(flood_seconds)
            result["max_rate_flood"] = flood
            result["headline"] += flood_headline(flood)
        write_result("hostile", result)
        print(table([{"figure": h["figure"], "value": h["value"], "unit": h["unit"],
                      "baseline": h.get("baselines", {})} for h in result["headline"]],
                    ["figure", "value", "unit", "baseline"]))
        print(f"rejects by reason: {result['rejects_by_reason']}")
        ok = quiet["all_acked"] and flooded["all_acked"] and bombs["within_bound"]
        return 0 if ok else 1
    finally:
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
