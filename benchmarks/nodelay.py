"""TCP_NODELAY on the MQTT sockets: QoS 1 messages/s through Mosquitto, one publisher to one
acking subscriber, with and without TCP_NODELAY on the clients' sockets (the shared client,
``edgemon.common.mqtt_client``) and on the broker's (``set_tcp_nodelay``, which the generated
mosquitto.conf sets), all in one run.

    python benchmarks/nodelay.py [--seconds S] [--size BYTES]

The publisher keeps paho's default window of 20 QoS 1 messages in flight, as the agent does, so
each window waits for PUBACK round trips: that is where Nagle's algorithm on either side and the
peer's delayed ACKs cost up to 40 ms. Writes ``benchmarks/results/nodelay.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


from _common import table, write_result
from ingest import start_broker, stop

from edgemon.common import mqtt_client

TOPIC = "bench/nodelay"


def _nagle(_client: Any, _userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)


def broker_config(nodelay: bool) -> Callable[[int], str]:
    return lambda port: (f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                         f"persistence false\nset_tcp_nodelay {'true' if nodelay else 'false'}\n")


def subscriber(port: int, nodelay: bool, ready: Any, stop_flag: Any, received: Any) -> None:
    """(a process of its own: no GIL shared with the publisher) Count QoS 1 messages, PUBACKed
    by paho as they arrive."""
    sub = mqtt_client.make_client(f"sub-{nodelay}", clean_session=True)
    if not nodelay:
        sub.on_socket_open = _nagle

    def on_message(*_: Any) -> None:
        received.value += 1

    sub.on_message = on_message
    sub.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
    sub.on_subscribe = lambda *_: ready.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    stop_flag.wait(600)
    sub.disconnect()
    sub.loop_stop()


def run(port: int, seconds: float, size: int, nodelay: bool) -> dict[str, Any]:
    ready, stop_flag = multiprocessing.Event(), multiprocessing.Event()
    counter = multiprocessing.Value("q", 0)
    proc = multiprocessing.Process(target=subscriber, daemon=True,
                                   args=(port, nodelay, ready, stop_flag, counter))
    proc.start()
    assert ready.wait(10)
    pub = mqtt_client.make_client(f"pub-{nodelay}", clean_session=True)
    if not nodelay:
        pub.on_socket_open = _nagle
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    payload = b"x" * size
    latencies = []
    for _ in range(200):  # one at a time: publish -> PUBACK
        started = time.perf_counter()
        pub.publish(TOPIC, payload, qos=1).wait_for_publish(5)
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    before = counter.value
    deadline = time.monotonic() + seconds
    published = 0
    started = time.monotonic()
    while time.monotonic() < deadline:  # windows of 20 in flight, as paho's default
        infos = [pub.publish(TOPIC, payload, qos=1) for _ in range(20)]
        for info in infos:
            info.wait_for_publish(5)
        published += 20
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    received = counter.value - before
    pub.disconnect()
    pub.loop_stop()
    stop_flag.set()
    proc.join(10)
    return {"nodelay": nodelay, "puback_p50_ms": round(latencies[100] * 1000, 2),
            "puback_p90_ms": round(latencies[180] * 1000, 2),
            "published_per_s": round(published / elapsed),
            "received_per_s": round(received / elapsed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=2000, help="payload bytes (a small batch)")
    parser.add_argument("--quick", action="store_true", help="2 s per run")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    work = Path(tempfile.mkdtemp(prefix="edgemon-nodelay-"))
    rows = []
    for broker_nodelay in (False, True):
        broker, port = start_broker(work, broker_config(broker_nodelay))
        try:
            for client_nodelay in (False, True):
                row = run(port, seconds, args.size, client_nodelay)
                rows.append({"broker_nodelay": broker_nodelay, **row})
        finally:
            stop(broker)

    def rate(broker_flag: bool, client_flag: bool) -> int:
        return next(r["published_per_s"] for r in rows
                    if r["broker_nodelay"] is broker_flag and r["nodelay"] is client_flag)

    result = {"seconds": seconds, "payload_bytes": args.size, "runs": rows, "headline": [
        {"figure": "QoS 1 messages/s, one connection, 20 in flight, TCP_NODELAY on clients and "
                   "broker", "unit": "msg/s", "value": rate(True, True),
         "baselines": {"no TCP_NODELAY": rate(False, False),
                       "clients only": rate(False, True), "broker only": rate(True, False)}},
        {"figure": "QoS 1 publish -> PUBACK p90, TCP_NODELAY on clients and broker", "unit": "ms",
         "value": next(r["puback_p90_ms"] for r in rows if r["broker_nodelay"] and r["nodelay"]),
         "baselines": {"no TCP_NODELAY": next(r["puback_p90_ms"] for r in rows
                                              if not r["broker_nodelay"] and not r["nodelay"])}}]}
    write_result("nodelay", result)
    print(table(rows, ["broker_nodelay", "nodelay", "puback_p50_ms", "puback_p90_ms",
                       "published_per_s", "received_per_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
