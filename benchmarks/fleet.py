"""A simulated fleet of agents for load tests: N hosts publishing protocol v1 batches over MQTT.

    python benchmarks/fleet.py --port 1883 --hosts 50 --batches 10 [--rate 100] [--burst 5]

Each simulated host has its own host id, instance id and increasing sequence numbers, and sends
batches like the agent's (~81 series x ``cycles`` timestamps ``interval_ms`` apart: CPU and
memory percent gauges, byte gauges, increasing counters), encoded exactly as the agent does
(``edgemon.protocol.encode``, or a faster zstd level for generating big loads). Batches go out
with QoS 1 on ``edgemon/v1/<host>/metrics`` (or ``backfill`` for an offline burst); the fleet
subscribes to the hosts' ack topics and records, per batch, the time from publish to the
collector's ack. The collector acks only once a batch is durable, so that is the
publish-to-stored lag.

Importable: ``Fleet(host, port, hosts=...)``, ``connect()``, ``prepare()``/``run()``/``burst()``,
``wait_acked()``, ``summary()``, ``close()``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import zstandard
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.common.mqtt_client import set_tcp_nodelay
from edgemon.protocol import encode
from edgemon.protocol.codec import DICTIONARY_ID, dictionary
from edgemon.protocol.status import decode_ack
from edgemon.protocol.topics import PREFIX, ack_topic, backfill_topic, metrics_topic

# (name, kind, unit, scale, label keys, [label values...], model) -- ~81 series per host
_GAUGE, _COUNTER = "gauge", "counter"


def _series_defs() -> list[tuple[str, str, str, int, tuple[str, ...], tuple[str, ...], str]]:
    out: list[tuple[str, str, str, int, tuple[str, ...], tuple[str, ...], str]] = []
    for cpu in ["total", *map(str, range(8))]:
        out.append(("cpu_usage_percent", _GAUGE, "percent", 2, ("cpu",), (cpu,), "percent"))
    for mode in ("user", "system", "iowait", "steal"):
        out.append(("cpu_mode_percent", _GAUGE, "percent", 2, ("cpu", "mode"), ("total", mode),
                    "percent"))
    for name in ("load1", "load5", "load15"):
        out.append((name, _GAUGE, "", 2, (), (), "load"))
    for name in ("memory_total_bytes", "swap_total_bytes"):
        out.append((name, _GAUGE, "bytes", 0, (), (), "const"))
    for name in ("memory_available_bytes", "memory_used_bytes", "memory_free_bytes",
                 "memory_cached_bytes", "memory_buffers_bytes", "swap_used_bytes"):
        out.append((name, _GAUGE, "bytes", 0, (), (), "bytes"))
    out.append(("memory_usage_percent", _GAUGE, "percent", 2, (), (), "percent"))
    out.append(("swap_in_bytes_total", _COUNTER, "bytes", 0, (), (), "slow_counter"))
    for mount, dev in (("/", "/dev/sda1"), ("/data", "/dev/sdb1")):
        keys, labels = ("mount", "device", "fstype"), (mount, dev, "ext4")
        out.append(("disk_total_bytes", _GAUGE, "bytes", 0, keys, labels, "const"))
        out.append(("disk_used_bytes", _GAUGE, "bytes", 0, keys, labels, "bytes"))
        out.append(("disk_free_bytes", _GAUGE, "bytes", 0, keys, labels, "bytes"))
        out.append(("disk_usage_percent", _GAUGE, "percent", 2, keys, labels, "percent"))
        out.append(("disk_inodes", _GAUGE, "inodes", 0, keys, labels, "const"))
        out.append(("disk_inodes_used", _GAUGE, "inodes", 0, keys, labels, "bytes"))
    for dev in ("sda", "sdb", "nvme0n1"):
        for name, unit, scale in (("diskio_read_bytes_total", "bytes", 0),
                                  ("diskio_written_bytes_total", "bytes", 0),
                                  ("diskio_reads_total", "operations", 0),
                                  ("diskio_writes_total", "operations", 0),
                                  ("diskio_read_time_seconds_total", "seconds", 3),
                                  ("diskio_write_time_seconds_total", "seconds", 3),
                                  ("diskio_busy_time_seconds_total", "seconds", 3)):
            out.append((name, _COUNTER, unit, scale, ("device",), (dev,), "counter"))
    for iface in ("eth0", "eth1", "docker0"):
        for name, unit in (("network_received_bytes_total", "bytes"),
                           ("network_sent_bytes_total", "bytes"),
                           ("network_received_packets_total", "packets"),
                           ("network_sent_packets_total", "packets"),
                           ("network_receive_errors_total", "packets"),
                           ("network_send_errors_total", "packets")):
            out.append((name, _COUNTER, unit, 0, ("interface",), (iface,), "counter"))
    out.append(("system_uptime_seconds", _COUNTER, "seconds", 0, (), (), "uptime"))
    out.append(("system_processes", _GAUGE, "", 0, (), (), "load"))
    out.append(("system_context_switches_total", _COUNTER, "", 0, (), (), "counter"))
    out.append(("system_interrupts_total", _COUNTER, "", 0, (), (), "counter"))
    return out


SERIES = _series_defs()


class SimHost:
    """One simulated agent: host id, instance id, sequence numbers, series state."""

    def __init__(self, host: str, seed: int, start_ms: int, *, cycles: int = 6,
                 interval_ms: int = 10_000) -> None:
        self.host = host
        self.instance = uuid.UUID(int=random.Random(seed).getrandbits(128)).hex[:16]
        self.seq = 0
        self.next_ms = start_ms
        self.cycles, self.interval_ms = cycles, interval_ms
        self.rng = random.Random(seed)
        rng = self.rng
        self.busy = rng.uniform(1, 40)
        self.values: list[int] = []
        self.steps: list[int] = []
        for _, _, _, scale, _, _, model in SERIES:
            if model == "const":
                v, step = rng.randrange(1, 2000) << 30, 0
            elif model == "percent":
                v, step = int(self.busy * 10**scale), int(3 * 10**scale)
            elif model == "load":
                v, step = rng.randrange(0, 800), 20
            elif model == "bytes":
                v, step = rng.randrange(1 << 28, 1 << 33) // 4096 * 4096, 1 << 20
            elif model == "slow_counter":
                v, step = rng.randrange(0, 1 << 20), 0
            elif model == "uptime":
                v, step = rng.randrange(0, 10**7), interval_ms // 1000
            else:  # counter
                v, step = rng.randrange(0, 1 << 40), int(10 ** rng.uniform(0, 6))
            self.values.append(v)
            self.steps.append(step)

    def next_batch(self) -> dict[str, Any]:
        """The next batch map (seq, timestamps and counters advance)."""
        rng = self.rng
        times = [self.next_ms + i * self.interval_ms + rng.randrange(0, 15)
                 for i in range(self.cycles)]
        self.next_ms += self.cycles * self.interval_ms
        by_metric: dict[tuple[str, str, str, int, tuple[str, ...]], list[list[Any]]] = {}
        for i, (name, kind, unit, scale, keys, labels, model) in enumerate(SERIES):
            v, step = self.values[i], self.steps[i]
            col: list[int] = []
            for _ in range(self.cycles):
                if model == "percent":
                    hi = 100 * 10**scale
                    v = min(hi, max(0, v + rng.randint(-step, step)))
                elif model in ("load", "bytes"):
                    v = max(0, v + rng.randint(-step, step))
                elif model in ("counter", "uptime"):
                    # a steady rate with +-10 % jitter, like real byte/packet counters
                    v += step + rng.randint(-step // 10, step // 10) if model == "counter" \
                        else step
                col.append(v)
            self.values[i] = v
            deltas = [col[0]] + [b - a for a, b in itertools.pairwise(col)]
            by_metric.setdefault((name, kind, unit, scale, keys), []).append(
                [list(labels), 0, deltas])
        metrics = [[m[0], m[1], m[2], m[3], list(m[4]), sorted(entries)]
                   for m, entries in sorted(by_metric.items())]
        t_deltas = [times[0]] + [b - a for a, b in itertools.pairwise(times)]
        seq, self.seq = self.seq, self.seq + 1
        return {"v": 1, "host": self.host, "instance": self.instance, "seq": seq,
                "sent": int(time.time() * 1000), "t": t_deltas, "metrics": metrics}

    def again(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``'s values as this host's next batch (next seq and timestamps)."""
        t = [self.next_ms + batch["t"][0] % 15, *batch["t"][1:]]  # jitter as next_batch
        self.next_ms += self.cycles * self.interval_ms
        seq, self.seq = self.seq, self.seq + 1
        return {**batch, "seq": seq, "sent": int(time.time() * 1000), "t": t}


SAMPLES_PER_SERIES_CYCLE = len(SERIES)


class _FastEncoder:
    """msgpack + zstd at a low level with the published dictionary (decodes like the agent's)."""

    def __init__(self, level: int) -> None:
        self.zc = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                           write_dict_id=True,
                                           dict_data=dictionary(DICTIONARY_ID))

    def __call__(self, batch: dict[str, Any]) -> bytes:
        return self.zc.compress(msgpack.packb(batch, use_bin_type=True))


# One encoded batch ready to publish: (host, instance, seq, samples, topic, payload).
Prepared = tuple[str, str, int, int, str, bytes]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


class Fleet:
    """N simulated hosts publishing to one broker over one MQTT connection, ack latency per batch.

    ``start_ms``: where the hosts' clocks start (default: one batch ago), so a run of B batches
    per host ending near now should start at ``now - B * cycles * interval_ms``.
    ``zstd_level``: None = exactly the agent's encoding (level 19, slow: ~ms per batch); a number
    = a faster level with the same dictionary (the collector decodes both alike).
    ``username``/``password``: a secured broker (then one host, whose user name is its host id);
    ``nodelay``: TCP_NODELAY on the connection, as the agent sets it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, hosts: int = 10,
                 prefix: str = "fleet", cycles: int = 6, interval_ms: int = 10_000,
                 start_ms: int | None = None, seed: int = 1, zstd_level: int | None = None,
                 client_id: str | None = None, username: str | None = None,
                 password: str | None = None, nodelay: bool = False) -> None:
        self.broker = (host, port)
        if start_ms is None:
            start_ms = int(time.time() * 1000) - cycles * interval_ms
        self.hosts = [SimHost(f"{prefix}-{i:05d}", seed * 1_000_003 + i, start_ms,
                              cycles=cycles, interval_ms=interval_ms) for i in range(hosts)]
        self.by_name = {h.host: h for h in self.hosts}
        self.encode = encode if zstd_level is None else _FastEncoder(zstd_level)
        self._credentials = (username, password)
        self._ack_filter = ack_topic(self.hosts[0].host) if username else f"{PREFIX}/+/ack"
        self.client = self._new_client(client_id, nodelay)
        self._lock = threading.Lock()
        self._acks_came = threading.Condition(self._lock)
        self._subscribed = threading.Event()
        self._pending: dict[tuple[str, str, int], tuple[float, int]] = {}
        self.latencies: list[float] = []  # seconds, publish -> ack, per acked batch
        self.sent = self.sent_samples = 0
        self.acked = self.acked_samples = 0
        self.rejected = 0
        self.ack_times: deque[tuple[float, int]] = deque()  # (time, samples) of each ack

    # --- connection ---------------------------------------------------------------------------

    def _new_client(self, client_id: str | None, nodelay: bool) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"fleet-{uuid.uuid4().hex[:12]}",
                             clean_session=True)
        username, password = self._credentials
        if username is not None:  # a secured broker: the user may read only its own acks
            client.username_pw_set(username, password)
        if nodelay:  # as the agent and the collector do
            client.on_socket_open = set_tcp_nodelay
        client.max_inflight_messages_set(0)  # unlimited: the broker is the bottleneck
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    def attach(self, host: str, port: int, *, nodelay: bool) -> Fleet:
        """Point the fleet at another broker (after ``close()``): a new connection, with or
        without TCP_NODELAY, statistics and un-acked batches cleared. Call ``connect()``."""
        self.broker = (host, port)
        self.client = self._new_client(None, nodelay)
        self._subscribed.clear()
        with self._lock:
            self._pending.clear()
        self.reset_stats()
        return self

    def connect(self, timeout: float = 10.0) -> Fleet:
        self.client.connect(*self.broker, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"no connection/subscription to {self.broker} in {timeout} s")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        client.subscribe(self._ack_filter, qos=1)
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        host = msg.topic.split("/")[2]
        if host not in self.by_name:
            return
        try:
            ack = decode_ack(msg.payload)
        except Exception:
            return
        with self._lock:
            for ranges, ok in ((ack.acked, True), (ack.rejected, False)):
                for lo, hi in ranges:
                    for seq in range(lo, hi + 1):
                        entry = self._pending.pop((host, ack.instance, seq), None)
                        if entry is None:
                            continue
                        if ok:
                            self.latencies.append(now - entry[0])
                            self.acked += 1
                            self.acked_samples += entry[1]
                            self.ack_times.append((now, entry[1]))
                        else:
                            self.rejected += 1
            self._acks_came.notify_all()

    # --- generating and publishing --------------------------------------------------------------

    def prepare(self, batches_per_host: int, *, backfill: bool = False,
                distinct: int | None = None) -> list[Prepared]:
        """Encoded batches, round robin over the hosts (host 0 seq k, host 1 seq k, ...).

        ``distinct``: simulate only that many batches per host and send their values again
        after that (new sequence numbers and timestamps; counters step back then): about 3x
        faster to generate, for loads of millions of samples."""
        out: list[Prepared] = []
        samples = len(SERIES) * self.hosts[0].cycles
        topics = {h.host: backfill_topic(h.host) if backfill else metrics_topic(h.host)
                  for h in self.hosts}
        seen: dict[str, list[dict[str, Any]]] = {h.host: [] for h in self.hosts}
        for r in range(batches_per_host):
            for h in self.hosts:
                if distinct is None or r < distinct:
                    batch = h.next_batch()
                    if distinct is not None:
                        seen[h.host].append(batch)
                else:
                    batch = h.again(seen[h.host][r % distinct])
                out.append((h.host, h.instance, batch["seq"], samples, topics[h.host],
                            self.encode(batch)))
        return out

    def publish(self, item: Prepared) -> None:
        host, instance, seq, samples, topic, payload = item
        with self._lock:
            self._pending[(host, instance, seq)] = (time.monotonic(), samples)
            self.sent += 1
            self.sent_samples += samples
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")

    def run(self, items: Iterable[Prepared], *, rate: float | None = None,
            max_unacked: int = 20_000) -> float:
        """Publish ``items``: ``rate`` batches/s (evenly spaced), or as fast as the collector
        acks them with at most ``max_unacked`` outstanding. Returns the seconds it took."""
        started = time.monotonic()
        for i, item in enumerate(items):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            while self.unacked >= max_unacked:
                time.sleep(0.002)
            self.publish(item)
        return time.monotonic() - started

    def burst(self, batches_per_host: int) -> float:
        """Offline burst: each host held ``batches_per_host`` batches; publish them all at once on
        the backfill topic. Returns the seconds publishing took."""
        return self.run(self.prepare(batches_per_host, backfill=True))

    @property
    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_unacked_below(self, n: int, timeout: float) -> bool:
        """Until fewer than ``n`` batches are un-acked (True) or ``timeout`` s passed."""
        with self._acks_came:
            return self._acks_came.wait_for(lambda: len(self._pending) < n, timeout)

    def wait_acked(self, timeout: float) -> bool:
        """Until every published batch is acked (True) or ``timeout`` s passed (False)."""
        deadline = time.monotonic() + timeout
        while self.unacked:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def reset_stats(self) -> None:
        with self._lock:
            self.latencies.clear()
            self.ack_times.clear()
            self.sent = self.sent_samples = self.acked = self.acked_samples = self.rejected = 0

    def summary(self) -> dict[str, Any]:
        with self._lock:
            lat = list(self.latencies)
            times = list(self.ack_times)
            out: dict[str, Any] = {
                "hosts": len(self.hosts), "sent": self.sent, "acked": self.acked,
                "rejected": self.rejected, "unacked": len(self._pending),
                "sent_samples": self.sent_samples, "acked_samples": self.acked_samples}
        out["lag_p50_ms"] = _ms(_pct(lat, 50))
        out["lag_p99_ms"] = _ms(_pct(lat, 99))
        out["lag_max_ms"] = _ms(max(lat) if lat else None)
        out["lag_mean_ms"] = _ms(statistics.fmean(lat) if lat else None)
        if len(times) >= 2 and times[-1][0] > times[0][0]:
            span = times[-1][0] - times[0][0]
            out["acked_samples_per_s"] = round((sum(s for _, s in times) - times[0][1]) / span)
        return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--prefix", default="fleet")
    ap.add_argument("--batches", type=int, default=3, help="batches per host (live topic)")
    ap.add_argument("--rate", type=float, default=None, help="batches/s in all (default: ASAP)")
    ap.add_argument("--burst", type=int, default=0,
                    help="then an offline burst: this many held batches per host on backfill")
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--interval-ms", type=int, default=10_000)
    ap.add_argument("--zstd-level", type=int, default=None,
                    help="faster encoding than the agent's level 19 (same dictionary)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for acks")
    args = ap.parse_args(argv)
    per_batch = args.cycles * args.interval_ms
    start = int(time.time() * 1000) - (args.batches + args.burst) * per_batch
    fleet = Fleet(args.broker, args.port, hosts=args.hosts, prefix=args.prefix,
                  cycles=args.cycles, interval_ms=args.interval_ms, start_ms=start,
                  zstd_level=args.zstd_level).connect()
    try:
        items = fleet.prepare(args.batches)
        took = fleet.run(items, rate=args.rate)
        if args.burst:
            took += fleet.burst(args.burst)
        ok = fleet.wait_acked(args.timeout)
        print(json.dumps({**fleet.summary(), "publish_seconds": round(took, 2),
                          "all_acked": ok}, indent=1))
    finally:
        fleet.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
