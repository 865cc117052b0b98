"""The load side of ``benchmarks/ingest.py``, each in a process of its own so that none shares an
interpreter (or a GIL) with the collector or with the others:

* ``Publishers``: P processes, each simulating its own hosts (``fleet.Fleet``). Each encodes all
  its batches once, when it starts, before any timed window; then, phase after phase, it connects
  (with or without TCP_NODELAY) and publishes QoS 1 as fast as acks return, at most ``window``
  batches un-acked, from a common start time until the phase's end, and reports when each ack
  came and how long it took. Every phase publishes the same batches from the first one on: each
  phase has a fresh broker and a fresh collector (or the bare subscriber).
* ``bare_subscriber``: acks every batch at once, storing nothing (reads instance and seq from
  the batch's first bytes): what MQTT and paho carry on this machine, the transport ceiling.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import statistics
import time
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import zstandard
from fleet import SERIES, Fleet
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.common.mqtt_client import set_tcp_nodelay
from edgemon.protocol import ack_topic, encode_ack
from edgemon.protocol.codec import DICTIONARY_ID, dictionary

BATCH_MS = 60_000  # 6 cycles x 10 s: one batch a minute per host, as the agent sends
SAMPLES_PER_BATCH = len(SERIES) * 6


# --- the bare acking subscriber ---------------------------------------------------------------

def bare_subscriber(port: int, nodelay: bool, ready: Any, stop_event: Any) -> None:
    """(a process) Ack every batch at once, storing nothing: instance and seq from the batch's
    first bytes (the agent writes v, host, instance, seq first), one QoS 1 ack per message."""
    dctx = zstandard.ZstdDecompressor(dict_data=dictionary(DICTIONARY_ID))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{os.getpid()}")
    if nodelay:
        client.on_socket_open = set_tcp_nodelay
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe("edgemon/v1/+/metrics", qos=1)
        ready.set()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(dctx.stream_reader(msg.payload).read(160))
        unpacker.read_map_header()
        doc = {unpacker.unpack(): unpacker.unpack() for _ in range(4)}
        c.publish(ack_topic(msg.topic.split("/")[2]),
                  encode_ack(instance=doc["instance"], seqs=[doc["seq"]]), qos=1)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    stop_event.wait()
    client.disconnect()
    client.loop_stop()


# --- publishers ---------------------------------------------------------------------------------

def _publisher(index: int, hosts: int, per_host: int, distinct: int, conn: Connection) -> None:
    """(a process) Encode ``per_host`` batches for each of ``hosts`` hosts, then run phases as
    ``conn`` asks: (port, nodelay, seconds, window, pace) -> connected -> start time ->
    result."""
    started = time.perf_counter()
    fleet = Fleet(hosts=hosts, prefix=f"p{index}", zstd_level=3, seed=index + 1,
                  start_ms=int(time.time() * 1000) - (per_host + 1) * BATCH_MS)
    items = fleet.prepare(per_host, distinct=distinct)
    conn.send({"batches": len(items), "prepare_s": round(time.perf_counter() - started, 1)})
    while (cmd := conn.recv()) is not None:
        port, nodelay, seconds, window, pace = cmd  # pace: batches/s, 0: as acks return
        try:
            fleet.attach("127.0.0.1", port, nodelay=nodelay).connect(30)
        except (OSError, TimeoutError) as exc:
            conn.send({"error": repr(exc)})
            continue
        conn.send({"connected": True})
        t0 = conn.recv()
        while time.monotonic() < t0:
            time.sleep(0.001)
        deadline = t0 + seconds
        i = 0
        while i < len(items):
            now = time.monotonic()
            if now >= deadline:
                break
            if pace and (due := t0 + i / pace) > now:
                time.sleep(min(due, deadline) - now)
                continue
            if not fleet.wait_unacked_below(window, min(0.1, deadline - now)):
                continue
            fleet.publish(items[i])
            i += 1
        stopped = time.monotonic() - t0
        drained = fleet.wait_acked(30)
        with fleet._lock:
            acks = array("d", (t - t0 for t, _ in fleet.ack_times))
            lags = array("d", fleet.latencies)
            rejected, unacked = fleet.rejected, len(fleet._pending)
        fleet.close()
        conn.send({"sent": i, "exhausted": i == len(items), "stopped_s": stopped,
                   "drained": drained, "rejected": rejected, "unacked": unacked,
                   "acks": acks.tobytes(), "lags": lags.tobytes()})


class Publishers:
    """P publisher processes with their batches encoded (``__init__`` waits for that)."""

    def __init__(self, count: int, hosts: int, batches: int, distinct: int = 4) -> None:
        ctx = mp.get_context("fork")
        per_host = max(1, math.ceil(batches / hosts))
        self.conns: list[Connection] = []
        self.procs = []
        for i in range(count):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_publisher, args=(i, hosts, per_host, distinct, theirs),
                            daemon=True)
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)
        self.prepared = [self._recv(c, 3600) for c in self.conns]
        self.batches = sum(p["batches"] for p in self.prepared)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def _recv(self, conn: Connection, timeout: float) -> dict[str, Any]:
        if not conn.poll(timeout):
            raise TimeoutError("a publisher did not answer")
        msg = conn.recv()
        if "error" in msg:
            raise RuntimeError(f"publisher: {msg['error']}")
        return msg

    def run(self, port: int, *, nodelay: bool, seconds: float, window: int,
            on_start: Callable[[float], None], tick: Callable[[], None],
            pace: float = 0) -> dict[str, Any]:
        """One phase: all publishers from a common start, as fast as acks return or ``pace``
        samples/s in all; ``on_start(t0)`` just before it, ``tick()`` about every second until
        all have reported. Returns ``combine()``."""
        per_publisher = pace / SAMPLES_PER_BATCH / len(self.conns)
        for c in self.conns:
            c.send((port, nodelay, seconds, window, per_publisher))
        for c in self.conns:
            self._recv(c, 60)
        t0 = time.monotonic() + 0.2
        on_start(t0)
        for c in self.conns:
            c.send(t0)
        results: dict[int, dict[str, Any]] = {}
        while len(results) < len(self.conns):
            for c in wait([c for i, c in enumerate(self.conns) if i not in results], timeout=1):
                results[self.conns.index(c)] = c.recv()  # type: ignore[arg-type]
            tick()
        return combine([results[i] for i in range(len(self.conns))], seconds)

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def combine(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The publishers' acks as one phase: stored samples/s over the window (acks up to its end;
    if every publisher ran out of batches, up to the last ack), per second, ack lag."""
    acks = sorted((t, lag) for r in results
                  for t, lag in zip(array("d", r["acks"]), array("d", r["lags"]), strict=True))
    exhausted = all(r["exhausted"] for r in results)
    span = seconds
    if exhausted and acks and 0 < acks[-1][0] < seconds:
        span = acks[-1][0]
    per_second = [0] * max(1, math.ceil(seconds))
    for t, _ in acks:
        if 0 <= t < len(per_second):
            per_second[int(t)] += SAMPLES_PER_BATCH
    in_window = sum(1 for t, _ in acks if t <= span)
    gap = longest = 0
    for n in per_second[:math.ceil(span)]:
        gap = gap + 1 if n == 0 else 0
        longest = max(longest, gap)
    lags = sorted(lag for _, lag in acks)
    worst_p99 = []
    for lo in range(0, math.ceil(seconds), 10):
        bucket = sorted(lag for t, lag in acks if lo <= t < lo + 10)
        if bucket:
            worst_p99.append(_percentile(bucket, 0.99) or 0.0)
    return {
        "window_s": seconds, "span_s": round(span, 1),
        "stored_samples_per_s": round(in_window * SAMPLES_PER_BATCH / span) if span else 0,
        "stored_per_second": per_second,
        "longest_stall_s": longest,  # whole seconds in a row without a single ack
        "lag_p50_ms": _ms(_percentile(lags, 0.5)), "lag_p99_ms": _ms(_percentile(lags, 0.99)),
        "lag_max_ms": _ms(lags[-1] if lags else None),
        "lag_p99_worst_10s_ms": _ms(max(worst_p99) if worst_p99 else None),
        "lag_p99_10s_median_ms": _ms(statistics.median(worst_p99) if worst_p99 else None),
        "sent": sum(r["sent"] for r in results), "acked": len(acks),
        "rejected": sum(r["rejected"] for r in results),
        "unacked_at_end": sum(r["unacked"] for r in results),
        "publishers_ran_out": [r["exhausted"] for r in results],
    }


def rate_between(phase: dict[str, Any], start: float, end: float) -> int | None:
    """Stored samples/s between ``start`` and ``end`` seconds of a phase (whole seconds)."""
    ps = phase["stored_per_second"][int(start):int(end)]
    return round(sum(ps) / len(ps)) if ps else None
