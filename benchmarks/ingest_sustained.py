"""Sustained ingest against the transport ceiling, in one run: stored samples/s with compaction
running, ack lag, collector CPU and the compaction back-log.

    python benchmarks/ingest_sustained.py [--seconds S] [--runs K] [--publishers P] [--window W]
        [--workers 0,1,2] [--no-alerting] [--profile DIR]

Per run, on a private Mosquitto (``ingest.start_broker``: unbounded in-flight window and queues,
``set_tcp_nodelay true``):

1. ceiling: ``P`` publisher processes (``fleet.Fleet``, TCP_NODELAY, pre-encoded one-minute
   batches of 486 samples from their own hosts, generated before the timed window) publish QoS 1
   as fast as acks return, at most ``W`` un-acked each, to a *bare acking subscriber* (its own
   process, TCP_NODELAY): it reads instance and seq from the first bytes of each batch and acks
   at once, storing nothing. What MQTT and paho carry on this machine;
2. collector: the same publishers against a real collector (``edgemon-collector run``, default
   storage settings, compaction every 2 s) for ``S`` seconds, once per ``--workers`` setting
   (``[ingest] workers``: 0 = decode in the collector's own process, N = N worker processes).

Reported per run: acked (= durably stored) samples/s over the timed window, ack lag p50/p99,
CPU of the collector (its main process and each child: ingest workers, their forkserver), the
broker and the publishers (share of one core, from /proc), the collector's peak RSS (main
process + children, sampled every second), the collector's CPU seconds per million samples
stored (all its processes: what travels when other load takes CPU from it), and the
samples waiting for compaction at 10 s intervals and at the end (read from the collector's
database, read-only). min / median / max over the runs. Writes
``benchmarks/results/ingest_sustained.json``. Figures from a loaded machine are only comparable
within one run: the ratio to the ceiling is the figure that travels.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
import paho.mqtt.client as mqtt
import psutil
import zstandard
from _common import table, write_result
from fleet import Fleet
from ingest import start_broker, start_collector, stop
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.common.mqtt_client import set_tcp_nodelay
from edgemon.protocol import ack_topic, encode_ack
from edgemon.protocol.codec import dictionary

BATCH_MS = 60_000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --- the bare acking subscriber -----------------------------------------------------------------

def bare_subscriber(port: int, ready: Any, stop_event: Any) -> None:
    """Ack every batch at once, storing nothing: instance and seq from the batch's first bytes
    (the agent writes v, host, instance, seq first), one QoS 1 ack per message."""
    dctx = {i: zstandard.ZstdDecompressor(dict_data=dictionary(i)) for i in (1,)}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{os.getpid()}")
    client.on_socket_open = set_tcp_nodelay
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe("edgemon/v1/+/metrics", qos=1)
        ready.set()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        head = dctx[1].stream_reader(msg.payload).read(160)
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(head)
        unpacker.read_map_header()
        doc = {}
        for _ in range(4):
            key = unpacker.unpack()
            doc[key] = unpacker.unpack()
        c.publish(ack_topic(msg.topic.split("/")[2]),
                  encode_ack(instance=doc["instance"], seqs=[doc["seq"]]), qos=1)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    stop_event.wait()
    client.disconnect()
    client.loop_stop()


# --- publishers -----------------------------------------------------------------------------------

def publisher(index: int, port: int, hosts: int, batches: int, window: int, seconds: float,
              go: Any, prepared: Any, out: Any) -> None:
    per_host = max(1, -(-batches // hosts))
    fleet = Fleet("127.0.0.1", port, hosts=hosts, prefix=f"p{index}-{os.getpid()}",
                  zstd_level=3, nodelay=True, seed=index + 1,
                  start_ms=int(time.time() * 1000) - (per_host + 1) * BATCH_MS)
    items = fleet.prepare(per_host)[:batches]  # outside the timed window
    fleet.connect()
    prepared.release()
    go.wait()
    started = time.monotonic()
    deadline = started + seconds
    sent = 0
    for item in items:
        if time.monotonic() >= deadline:
            break
        while fleet.unacked >= window:
            time.sleep(0.0005)
        fleet.publish(item)
        sent += 1
    ran = time.monotonic() - started
    fleet.wait_acked(5)
    s = fleet.summary()
    with fleet._lock:
        lat = list(fleet.latencies)
        acked_in_window = sum(n for t, n in fleet.ack_times if t <= started + ran)
    fleet.close()
    out.put({"index": index, "ran_s": ran, "sent": sent, "exhausted": sent == len(items),
             "acked_samples_in_window": acked_in_window, "latencies": lat,
             "rejected": s["rejected"], "unacked": s["unacked"]})


def family(pid: int) -> dict[str, int]:
    """The collector's process and its children (ingest workers, the forkserver), by name."""
    out = {"collector": pid}
    with contextlib.suppress(psutil.Error):
        for i, child in enumerate(psutil.Process(pid).children(recursive=True)):
            out[f"collector.{child.name()[:24]}.{i}"] = child.pid
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / (1 << 20)


def run_publishers(port: int, args: argparse.Namespace, batches: int, watch: dict[str, int],
                   db: Path | None, on_go: Any = None) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    prepared = ctx.Semaphore(0)
    procs = [ctx.Process(target=publisher, args=(i, port, args.hosts, batches, args.window,
                                                 args.seconds, go, prepared, out))
             for i in range(args.publishers)]
    for p in procs:
        p.start()
    for _ in procs:
        if not prepared.acquire(timeout=600):
            raise TimeoutError("publishers did not get ready")
    watch = {**watch, **{f"publisher{i}": p.pid for i, p in enumerate(procs)}}
    cpu0 = {k: cpu_seconds(pid) for k, pid in watch.items()}
    backlog: list[tuple[float, int]] = []
    collector = [pid for k, pid in watch.items() if k.startswith("collector")]
    peak_rss = 0.0
    t0 = time.monotonic()
    go.set()
    if on_go is not None:
        on_go()
    next_backlog = t0 + 10
    while any(p.is_alive() for p in procs) and time.monotonic() - t0 < args.seconds:
        time.sleep(min(1.0, max(0.1, args.seconds - (time.monotonic() - t0))))
        peak_rss = max(peak_rss, rss_mb(collector))
        if db is not None and time.monotonic() >= next_backlog:
            next_backlog += 10
            backlog.append((round(time.monotonic() - t0, 1), pending_samples(db)))
    wall = time.monotonic() - t0
    cpu = {k: round((cpu_seconds(pid) - cpu0[k]) / wall, 3) for k, pid in watch.items()
           if Path(f"/proc/{pid}").exists()}
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    lat = sorted(x for r in results for x in r["latencies"])
    ran = max(r["ran_s"] for r in results)
    return {
        "stored_samples_per_s": round(sum(r["acked_samples_in_window"] for r in results) / ran),
        "ran_s": round(ran, 1),
        "lag_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "lag_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1)
        if lat else None,
        "cpu_share_of_one_core": cpu,
        "collector_peak_rss_mb": round(peak_rss, 1) if collector else None,
        "backlog_samples": backlog,
        "publishers_ran_out": any(r["exhausted"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
    }


def broker_config(port: int) -> str:
    """An open listener, unbounded in-flight window and queues, TCP_NODELAY (as the generated
    broker configuration sets it)."""
    return (f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 0\nmax_queued_messages 1000000\nmax_queued_bytes 0\n"
            "set_tcp_nodelay true\n")


def pending_samples(db: Path) -> int:
    """Samples stored but not yet compacted (read-only; the collector keeps writing)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT coalesce(sum(samples), 0) FROM batches").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edgemon-sustained-"))
    broker = collector = None
    result: dict[str, Any] = {}
    try:
        broker, port = start_broker(work, broker_config)
        ctx = mp.get_context("fork")
        ready, stop_sub = ctx.Event(), ctx.Event()
        sub = ctx.Process(target=bare_subscriber, args=(port, ready, stop_sub))
        sub.start()
        if not ready.wait(30):
            raise TimeoutError("bare subscriber did not subscribe")
        result["ceiling"] = run_publishers(
            port, args, args.ceiling_batches, {"broker": broker.pid, "subscriber": sub.pid}, None)
        stop_sub.set()
        sub.join(10)
        print(f"  ceiling: {result['ceiling']['stored_samples_per_s']:,} samples/s", flush=True)
        for workers in args.workers:
            phase = collector_phase(workers)
            run_dir = work / phase
            run_dir.mkdir()
            collector, _http, db = start_collector(
                run_dir, port, ingest=f"queue_max = 20000\npast_tolerance_days = 30\n"
                f"workers = {workers}\n" + ("" if args.alerting else
                                             "[alerting]\nenabled = false\n"))
            deadline = time.monotonic() + 60  # ready before its workers are: wait for them
            # with workers: the forkserver and multiprocessing's resource tracker too
            while len(family(collector.pid)) < 1 + workers + 2 * (workers > 0) and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
            spy: list[Any] = []
            pid = collector.pid
            try:
                result[phase] = run_publishers(
                    port, args, args.batches, {"broker": broker.pid, **family(collector.pid)},
                    db, on_go=lambda pid=pid, w=workers, spy=spy: spy.append(
                        profile(args, pid, f"w{w}")))
                result[phase]["backlog_at_end"] = pending_samples(db)
            finally:
                for p in spy:
                    if p is not None:
                        p.wait(args.seconds + 120)
                stop(collector)
                collector = None
            print(f"  {phase}: {result[phase]['stored_samples_per_s']:,} samples/s, "
                  f"backlog {result[phase]['backlog_at_end']:,}", flush=True)
    finally:
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    return result


def profile(args: argparse.Namespace, pid: int, name: str) -> Any:
    """``py-spy record`` of the collector and its worker processes over the timed window
    (``--profile DIR``: raw collapsed stacks, one file per phase), or None."""
    if args.profile is None:
        return None
    import subprocess

    out = Path(args.profile) / f"{name}-{pid}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--subprocesses",
                             "--nonblocking", "-r", "50", "-p", str(pid), "-d",
                             str(int(args.seconds)), "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spread(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    fmt = "{:,.2f}" if max(vals) < 10 else "{:,.0f}"
    return " / ".join(fmt.format(v) for v in (min(vals), statistics.median(vals), max(vals)))


def cpu_per_million(r: dict[str, Any], phase: str) -> float:
    """CPU seconds the receiver (all its processes) spent per million samples stored: what
    travels between runs on a machine whose other load takes CPU from the receiver."""
    receiver = "subscriber" if phase == "ceiling" else "collector"
    share = sum(v for k, v in r["cpu_share_of_one_core"].items() if k.split(".")[0] == receiver)
    return share / max(1, r["stored_samples_per_s"]) * 1e6


def collector_phase(workers: int) -> str:
    return f"collector, workers = {workers}"


def cpu_cell(rs: list[dict[str, Any]], receiver: str) -> str:
    """Median CPU (% of one core) of the receiver (main process + children, and the main
    process alone), the broker and all publishers together."""
    def median_of(pick: Any) -> str:
        return f"{100 * statistics.median(pick(r['cpu_share_of_one_core']) for r in rs):.0f}"
    return " / ".join((median_of(lambda c: sum(v for k, v in c.items()
                                               if k.split(".")[0] == receiver)) +
                       f" ({median_of(lambda c: c.get(receiver, 0))})",
                       median_of(lambda c: c.get("broker", 0)),
                       median_of(lambda c: sum(v for k, v in c.items()
                                               if k.startswith("publisher")))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--hosts", type=int, default=3000, help="hosts per publisher")
    ap.add_argument("--window", type=int, default=256, help="un-acked batches per publisher")
    ap.add_argument("--batches", type=int, default=30_000,
                    help="pre-encoded batches per publisher for the collector phase")
    ap.add_argument("--ceiling-batches", type=int, default=60_000)
    ap.add_argument("--label", default="", help="results file suffix (e.g. the code measured)")
    ap.add_argument("--profile", help="py-spy the collector phases into this directory")
    ap.add_argument("--no-alerting", dest="alerting", action="store_false",
                    help="collector without alert evaluation (default: the shipped rules)")
    ap.add_argument("--workers", type=lambda text: [int(x) for x in text.split(",")],
                    default=[0, 2], help="[ingest] workers settings to run, e.g. 0,1,2")
    args = ap.parse_args(argv)
    runs = []
    name = "ingest_sustained" + (f"_{args.label}" if args.label else "")
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        runs.append(one_run(args))
        write_result(name, {"args": vars(args), "runs": runs, "complete": False})  # so far
    rows = []
    phases = ["ceiling", *map(collector_phase, args.workers)]
    for phase in phases:
        rs = [r[phase] for r in runs]
        rows.append({
            "phase": phase,
            "stored samples/s (min / med / max)": spread([r["stored_samples_per_s"] for r in rs]),
            "ack lag p50 ms": spread([r["lag_p50_ms"] for r in rs]),
            "ack lag p99 ms": spread([r["lag_p99_ms"] for r in rs]),
            "CPU % (receiver total (main) / broker / publishers)": cpu_cell(
                rs, "subscriber" if phase == "ceiling" else "collector"),
            "receiver CPU s per 1 M samples": spread([cpu_per_million(r, phase) for r in rs]),
            "peak RSS MB": spread([r.get("collector_peak_rss_mb") for r in rs]),
            "backlog at end": spread([r.get("backlog_at_end") for r in rs]),
        })
    print(f"{args.runs} run(s) of {args.seconds:.0f} s per phase, {args.publishers} publishers x "
          f"window {args.window}; loaded 2-core machine")
    print(table(rows, list(rows[0])))
    ratio: dict[str, list[float]] = {}
    for phase in phases[1:]:
        ratio[phase] = [r[phase]["stored_samples_per_s"]
                        / max(1, r["ceiling"]["stored_samples_per_s"])
                        for r in runs]
        print(f"{phase} / ceiling: " + " / ".join(
            f"{x:.1%}" for x in (min(ratio[phase]), statistics.median(ratio[phase]),
                                 max(ratio[phase]))))
    if len(phases) > 2:
        base = phases[1]
        for phase in phases[2:]:
            rel = [r[phase]["stored_samples_per_s"] / max(1, r[base]["stored_samples_per_s"])
                   for r in runs]
            print(f"{phase} / {base}: " + " / ".join(
                f"{x:.2f}x" for x in (min(rel), statistics.median(rel), max(rel))))
    path = write_result(name, {"args": vars(args), "runs": runs, "ratio_to_ceiling": ratio,
                               "complete": True})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
