"""End-to-end ingest against the transport ceiling, in one run: stored samples/s sustained with
compaction running, the compaction back-log over time, ack lag, CPU per process tree and memory,
and the effect of TCP_NODELAY.

    python benchmarks/ingest.py [--quick] [--runs K] [--seconds S] [--py-spy] [...]

Nothing that makes the load shares an interpreter with the collector, and no batch is encoded
inside a timed window (``ingest_load.py``): ``--publishers`` processes each simulate
``--hosts`` hosts and encode all their one-minute batches (486 samples) before the first phase.
Each phase has its own private Mosquitto (unbounded in-flight window and queues,
``set_tcp_nodelay true``); the publishers send QoS 1 as fast as acks return, at most
``--window`` batches un-acked each (so at full speed the ack lag is about the window over
the rate; ``--pace`` sends a fixed rate instead). Per run (``--runs`` times; min / median / max
reported):

1. ceiling: the publishers against a *bare acking subscriber* (its own process: acks each batch
   at once, stores nothing): what MQTT and paho carry on this machine, once with TCP_NODELAY on
   the clients' sockets (as the agent and the collector set it) and once with paho's default
   sockets (Nagle's algorithm on);
2. collector: ``edgemon-collector run`` (default settings, maintenance every 2 s) for
   ``--seconds``: stored (= acked: the collector acks only durable batches) samples/s over the
   window and after its first 60 s, ack lag p50/p99 (and the worst 10 s p99), the samples
   waiting for compaction every 10 s (read-only from its database, or its /metrics) with the
   slope of that back-log over the window's last two thirds, CPU of the collector's whole
   process tree (any worker or compaction processes it runs are found through /proc), of the
   broker and of the publishers as shares of one core, and the tree's RSS and PSS;
3. TCP_NODELAY off: a fresh collector whose sockets cannot set TCP_NODELAY (a ``sitecustomize``
   drops the option in it and in its children, and counts the attempts), publishers without it,
   for ``--nodelay-seconds``, beside step 2's rate over its own first as many seconds.

``--compare-inflight N``: also a collector phase with the broker's ``max_inflight_messages`` at N
(Mosquitto's default is 20) instead of unbounded. ``--compare-forward SECONDS``: also a
collector phase forwarding every stored sample to a VictoriaMetrics on loopback (``[[forward]]``,
issue 16), beside the same first seconds of step 2; the forwarder's figures as the window ends
(sent, pending). ``--set SECTION.KEY=VALUE``: collector
settings (e.g. its number of ingest processes). ``--py-spy``: record the collector tree during
step 2 of the first run (py-spy, non-blocking, 50 Hz) and print the functions with the most
own time. The fleet step-up of the former version (fleets of doubling size at 10 s, simulated
in-process) is gone: its simulator shared the two cores with the collector and was the limit.

Writes ``benchmarks/results/ingest.json`` (with ``headline`` figures for ``run.py``); prints
tables. On a shared, loaded machine only the ratios measured in one run travel (collector /
ceiling, TCP_NODELAY on / off); the load average is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_result
from fleet import Fleet
from ingest_load import SAMPLES_PER_BATCH, Publishers, bare_subscriber, rate_between
from proctree import TreeSampler
from pyspy_top import PySpy, executable

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
COLLECTOR = Path(sys.executable).parent / "edgemon-collector"
BATCH_MS = 60_000  # 6 cycles x 10 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(what)


def start_broker(work: Path, config: Callable[[int], str] | None = None,
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on a free port, logging to ``work``; ``config(port)``: the listener and any
    settings (default: an open listener with unbounded queues), followed by the user to run as
    and the log settings."""
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text((config(port) if config else
                     f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                     "persistence false\nmax_inflight_messages 0\n"
                     "max_queued_messages 1000000\nmax_queued_bytes 0\n")
                    + ("user root\n" if os.geteuid() == 0 else f"user {getpass.getuser()}\n")
                    + "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
    log = open(work / "mosquitto.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()

    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    wait_for(up, 10, "mosquitto did not start")
    return proc, port


def start_collector(work: Path, mqtt_port: int, *, http_extra: str = "",
                    ingest: str = "queue_max = 20000\npast_tolerance_days = 30\n",
                    mqtt_extra: str = "", storage_extra: str = "",
                    env: dict[str, str] | None = None, executable: Path = COLLECTOR,
                    tables: str = "",
                    ) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A collector on ``mqtt_port`` with its data in ``work``; ``http_extra``, ``ingest``,
    ``mqtt_extra`` and ``storage_extra`` are TOML lines for those sections, ``tables`` more
    TOML at the end (e.g. ``[[forward]]``), ``env`` added to its environment; ``executable``:
    another checkout's ``edgemon-collector`` (a baseline). Returns
    (process, HTTP port, database path) once ready."""
    http = free_port()
    db = work / "data" / "edgemon.db"
    conf = work / "collector.toml"
    conf.write_text(f"[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n{mqtt_extra}\n"
                    f"[storage]\npath = \"{db}\"\nmaintain_interval_seconds = 2\n{storage_extra}\n"
                    f"[http]\nhost = \"127.0.0.1\"\nport = {http}\n{http_extra}\n"
                    f"[ingest]\n{ingest}\n{tables}")
    conf.chmod(0o600)
    log = open(work / "collector.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([str(executable), "run", "-c", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env} if env else None)
    log.close()

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((work / "collector.log").read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as r:
            return r.status == 200
    wait_for(ready, 30, "collector not ready")
    return proc, http, db


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; then whatever is left of the process group the
    process leads (``start_new_session``: its children, such as worker processes)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# --- rate steps (benchmarks/scale_out.py) -----------------------------------------------------

def rate_step(port: int, *, hosts: int, rate: float | None, seconds: float,
              prefix: str) -> dict[str, Any]:
    """``hosts`` hosts, ``rate`` batches/s in all (None: as fast as acked) for ~``seconds``."""
    n = int((rate or 1500) * seconds)
    per_host = max(1, math.ceil(n / hosts))
    fleet = Fleet("127.0.0.1", port, hosts=hosts, prefix=prefix, zstd_level=3,
                  start_ms=int(time.time() * 1000) - per_host * BATCH_MS).connect()
    try:
        items = fleet.prepare(per_host)[:n]
        took = fleet.run(items, rate=rate, max_unacked=2000)
        drained = fleet.wait_acked(30)
        s = fleet.summary()
    finally:
        fleet.close()
    s.update(offered_batches_per_s=rate or "max", publish_s=round(took, 1), all_acked=drained)
    return s


# --- measuring the collector ------------------------------------------------------------------

NAGLE_SITECUSTOMIZE = '''\
"""benchmarks/ingest.py: this interpreter's sockets cannot set TCP_NODELAY (each attempt is
counted in $EDGEMON_BENCH_NAGLE_LOG)."""
import os
import socket

_setsockopt = socket.socket.setsockopt


def _nagle(self, level, option, value, *rest):
    if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY and value:
        log = os.environ.get("EDGEMON_BENCH_NAGLE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\\n")
        value = 0
    return _setsockopt(self, level, option, value, *rest)


socket.socket.setsockopt = _nagle
'''


def nagle_env(work: Path) -> tuple[dict[str, str], Path]:
    """Environment for a collector whose sockets cannot set TCP_NODELAY, and the file that
    counts its attempts."""
    site = work / "nagle"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NAGLE_SITECUSTOMIZE)
    log = work / "nagle-attempts.log"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "EDGEMON_BENCH_NAGLE_LOG": str(log)}, log


def pending_samples(db: Path, http: int | None = None) -> int | None:
    """Samples stored but not yet compacted: read-only from the database (the collector keeps
    writing), else the collector's ``edgemon_storage_pending_samples`` on /metrics."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT coalesce(sum(samples), 0) FROM batches").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        pass
    if http is None:
        return None
    return next((int(float(line.split()[1])) for line in metric_lines(http, timeout=5)
                 if line.startswith("edgemon_storage_pending_samples ")), None)


def metrics_text(http: int, timeout: float = 10) -> str:
    """The collector's ``/metrics`` (readable without a token in these runs)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=timeout) as r:
        return r.read().decode()


def metric_lines(http: int, timeout: float = 10) -> list[str]:
    """The lines of ``metrics_text``; none when the collector does not answer (now)."""
    try:
        return metrics_text(http, timeout).splitlines()
    except (OSError, ValueError):
        return []


def backpressure_figures(http: int) -> dict[str, float]:
    """The collector's ``edgemon_collector_backlog_*`` figures (due and pending samples, held
    acks, the budget; ingest ``backpressure.py``) from /metrics; empty when unreadable (a token
    is needed unless the run sets ``--set http.public_metrics=true``) or absent (a collector
    without back-pressure)."""
    prefix = "edgemon_collector_backlog_"
    return {line.split()[0][len(prefix):]: float(line.split()[1])
            for line in metric_lines(http, timeout=5) if line.startswith(prefix)}


def slope(points: list[tuple[float, int]]) -> float | None:
    """Least-squares slope (per second) of (t, value) points."""
    if len(points) < 2:
        return None
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else None


class Watch:
    """CPU of process trees during a phase (sampled every ``tick()``), and every 10 s the
    collector tree's memory and the compaction back-log."""

    def __init__(self, roots: dict[str, tuple[int, bool]], collector: str | None = None,
                 db: Path | None = None, http: int | None = None) -> None:
        self.samplers = {k: TreeSampler(pid, tree=tree) for k, (pid, tree) in roots.items()}
        self.collector, self.db, self.http = collector, db, http
        self.t0 = 0.0
        self.next_slow = 0.0
        self.backlog: list[tuple[float, int]] = []
        self.held: list[tuple[float, dict[str, float]]] = []  # back-pressure figures
        self.memory: list[tuple[float, dict[str, float]]] = []

    def start(self, t0: float) -> None:
        self.t0 = t0
        while time.monotonic() < t0:
            time.sleep(0.001)
        for s in self.samplers.values():
            s.start()
        self.next_slow = t0 + 10

    def tick(self, final: bool = False) -> None:
        for s in self.samplers.values():
            s.sample()
        if self.collector and (final or time.monotonic() >= self.next_slow):
            self.next_slow += 10
            at = round(time.monotonic() - self.t0, 1)
            if self.db is not None:
                pending = pending_samples(self.db, self.http)
                if pending is not None:
                    self.backlog.append((at, pending))
            if self.http is not None:
                held = backpressure_figures(self.http)
                if held:
                    self.held.append((at, {k: held[k] for k in (
                        "acks_held", "hosts_held", "acks_held_total", "acks_released_late_total",
                        "budget_samples", "fair_level_samples", "due_samples",
                        "pending_samples", "poll_seconds") if k in held}))
            self.memory.append((at, self.samplers[self.collector].memory()))

    def report(self, seconds: float, stored_per_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cpu_share_of_one_core": {k: s.total() for k, s in self.samplers.items()},
            "cpu_by_process": {k: s.shares() for k, s in self.samplers.items() if s.tree}}
        if self.collector:
            peak = self.samplers[self.collector].peak
            out["collector_memory_mb"] = {"peak_rss": peak.get("rss_mb"),
                                          "peak_pss": peak.get("pss_mb"),
                                          "end": self.memory[-1][1] if self.memory else None}
            out["collector_processes"] = len(self.samplers[self.collector].names)
            out["backlog_samples"] = self.backlog
            if self.held:  # acks held by the back-pressure on the back-log, every 10 s
                out["backpressure"] = self.held
            warm = seconds / 3
            k = slope([p for p in self.backlog if p[0] >= warm])
            out["backlog_at_end"] = self.backlog[-1][1] if self.backlog else None
            out["backlog_slope_samples_per_s"] = None if k is None else round(k)
            # flat: growing by less than 2 % of what is stored (12 s of ingest per 10 minutes)
            out["backlog_flat"] = None if k is None or not stored_per_s \
                else bool(k < 0.02 * stored_per_s)
        return out


# --- phases -----------------------------------------------------------------------------------

SECTIONS = ("mqtt", "ingest", "storage", "http", "forward")  # collector settings (--set)


def broker_config(port: int, inflight: int = 0) -> str:
    """An open listener, unbounded queues, an in-flight window of ``inflight`` messages per
    client (0: unbounded), TCP_NODELAY (as the generated broker configuration sets it)."""
    return (f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"max_inflight_messages {inflight}\nmax_queued_messages 1000000\n"
            "max_queued_bytes 0\nset_tcp_nodelay true\n")


def publisher_roots(pubs: Publishers) -> dict[str, tuple[int, bool]]:
    return {f"publisher{i}": (pid, False) for i, pid in enumerate(pubs.pids)}


def ceiling_phase(pubs: Publishers, args: argparse.Namespace, nodelay: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edgemon-ingest-ceiling-", dir=args.dir))
    broker = sub = None
    ctx = mp.get_context("fork")
    stop_sub = ctx.Event()
    try:
        broker, port = start_broker(work, broker_config)
        ready = ctx.Event()
        sub = ctx.Process(target=bare_subscriber, args=(port, nodelay, ready, stop_sub),
                          daemon=True)
        sub.start()
        if not ready.wait(30):
            raise TimeoutError("bare subscriber did not subscribe")
        assert sub.pid is not None
        watch = Watch({"subscriber": (sub.pid, False), "broker": (broker.pid, False),
                       **publisher_roots(pubs)})
        r = pubs.run(port, nodelay=nodelay, seconds=args.ceiling_seconds, window=args.window,
                     on_start=watch.start, tick=watch.tick)
        watch.tick(final=True)
        r.update(watch.report(args.ceiling_seconds, r["stored_samples_per_s"]))
    finally:
        stop_sub.set()
        if sub is not None:
            sub.join(10)
            if sub.is_alive():
                sub.kill()
        if broker is not None:
            stop(broker)
        shutil.rmtree(work, ignore_errors=True)
    r.pop("stored_per_second", None)
    return r


def forward_status(http: int) -> dict[str, float]:
    """The collector's ``[[forward]]`` receiver "vm" as its ``/metrics`` show it (sent,
    pending, lag, requests, retries, rejected)."""
    text = metrics_text(http)
    out = {}
    for name in ("samples_sent", "pending_samples", "lag_seconds", "requests", "retries",
                 "samples_rejected"):
        total = "" if name in ("pending_samples", "lag_seconds") else "_total"
        prefix = f'edgemon_collector_forward_{name}{total}{{receiver="vm"}} '
        out[name] = next((float(line[len(prefix):]) for line in text.splitlines()
                          if line.startswith(prefix)), float("nan"))
    return out


def compaction_events(http: int) -> dict[str, float] | None:
    """``edgemon_storage_compaction_events_total`` by event as the window ends (L0 paths and
    fallback reasons, give-ways, the writer's waits for the lock), or None without them."""
    prefix = 'edgemon_storage_compaction_events_total{event="'
    out = {}
    for line in metric_lines(http):
        if line.startswith(prefix):
            event, _, value = line[len(prefix):].partition('"} ')
            out[event] = float(value)
    return out or None


def collector_phase(pubs: Publishers, args: argparse.Namespace, *, nodelay: bool,
                    seconds: float, profile: bool, inflight: int = 0,
                    forward_url: str | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edgemon-ingest-collector-", dir=args.dir))
    broker = collector = None
    env, attempts = (None, None) if nodelay else nagle_env(work)
    spy: PySpy | None = None
    try:
        broker, port = start_broker(work, lambda p: broker_config(p, inflight))
        sets = {k: dict(args.set.get(k, {})) for k in SECTIONS}
        sets["ingest"] = {"queue_max": "20000", "past_tolerance_days": "30", **sets["ingest"]}
        extra = {k: "".join(f"{key} = {v}\n" for key, v in kv.items()) for k, kv in sets.items()}
        forward = ""
        if forward_url:
            forward = f'[[forward]]\nname = "vm"\nurl = "{forward_url}"\n{extra["forward"]}'
        if "auth" not in sets["http"]:  # /metrics readable without a token (its figures)
            extra["http"] += 'auth = "none"\n'

        collector, http, db = start_collector(
            work, port, env=env, http_extra=extra["http"], mqtt_extra=extra["mqtt"],
            storage_extra=extra["storage"], ingest=extra["ingest"], tables=forward)
        watch = Watch({"collector": (collector.pid, True), "broker": (broker.pid, False),
                       **publisher_roots(pubs)}, collector="collector", db=db, http=http)

        def on_start(t0: float) -> None:
            nonlocal spy
            watch.start(t0)
            if profile:
                spy = PySpy.start(collector.pid, seconds, work / "py-spy.txt")

        r = pubs.run(port, nodelay=nodelay, seconds=seconds, window=args.window,
                     on_start=on_start, tick=watch.tick, pace=args.pace)
        watch.tick(final=True)
        if forward_url:  # where forwarding stands as the window ends
            fwd = forward_status(http)
            r["forward"] = {k: fwd[k] for k in ("samples_sent", "pending_samples",
                                                "lag_seconds", "requests", "retries",
                                                "samples_rejected")}
            r["forward"]["sent_samples_per_s"] = round(fwd["samples_sent"] / seconds)
            t_end = time.monotonic()  # the publishers have stopped: how long to catch up
            while fwd["pending_samples"] != 0 and time.monotonic() < t_end + 300:
                time.sleep(1)
                fwd = forward_status(http)
            r["forward"]["caught_up_after_s"] = (round(time.monotonic() - t_end, 1)
                                                 if fwd["pending_samples"] == 0 else None)
        r.update(watch.report(seconds, r["stored_samples_per_s"]))
        r["compaction_events"] = compaction_events(http)
        r["stored_samples_per_s_after_warmup"] = rate_between(r, warmup(seconds), seconds)
        r["stored_per_10s"] = [rate_between(r, lo, min(lo + 10, seconds))
                               for lo in range(0, math.ceil(seconds), 10)]
        if spy is not None:
            r["py_spy"] = spy.finish()
        if attempts is not None:
            r["nodelay_attempts_dropped"] = (len(attempts.read_text().splitlines())
                                             if attempts.exists() else 0)
    finally:
        if spy is not None and spy.proc.poll() is None:
            spy.proc.terminate()
            spy.proc.wait(30)
        for proc in (collector, broker):
            if proc is not None:
                stop(proc)
        complaints = log_complaints(work / "collector.log")
        shutil.rmtree(work, ignore_errors=True)
    r["collector_log_complaints"] = complaints
    return r


def log_complaints(log: Path) -> dict[str, int]:
    """How often the collector logged each warning or error (its first 100 characters), but
    the usual ones of a benchmark's collector (no API tokens, no external URL)."""
    out: dict[str, int] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = {"level": "error", "msg": line}
        if not isinstance(entry, dict) or entry.get("level") not in ("warning", "error",
                                                                     "critical"):
            continue
        msg = str(entry.get("msg", ""))
        if msg.startswith(("no API tokens", "alerting.external_url")):
            continue
        out[msg[:100]] = out.get(msg[:100], 0) + 1
    return out


def warmup(seconds: float) -> float:
    """The part of a window left out of the "after warm-up" rate: 60 s (compaction has started
    by then), at most a third of the window."""
    return min(60.0, seconds / 3)


def one_run(pubs: Publishers, args: argparse.Namespace, first: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    for nodelay in (True, False):
        key = "ceiling" if nodelay else "ceiling_no_nodelay"
        result[key] = ceiling_phase(pubs, args, nodelay)
        print(f"  {key}: {result[key]['stored_samples_per_s']:,} samples/s, "
              f"lag p99 {result[key]['lag_p99_ms']} ms", flush=True)
    c = result["collector"] = collector_phase(pubs, args, nodelay=True, seconds=args.seconds,
                                              profile=args.py_spy and first)
    print(f"  collector: {c['stored_samples_per_s']:,} samples/s "
          f"({c['stored_samples_per_s_after_warmup']} after {warmup(args.seconds):g} s), "
          f"lag p50/p99 "
          f"{c['lag_p50_ms']}/{c['lag_p99_ms']} ms, back-log at end {c['backlog_at_end']}, "
          f"slope {c['backlog_slope_samples_per_s']}/s, CPU {c['cpu_share_of_one_core']}",
          flush=True)
    if c.get("compaction_events"):
        print(f"  compaction events: {c['compaction_events']}", flush=True)
    if args.nodelay_seconds > 0:
        n = result["collector_no_nodelay"] = collector_phase(
            pubs, args, nodelay=False, seconds=args.nodelay_seconds, profile=False)
        n["with_nodelay_same_interval"] = rate_between(c, 0, args.nodelay_seconds)
        print(f"  collector without TCP_NODELAY: {n['stored_samples_per_s']:,} samples/s "
              f"(with it, first {args.nodelay_seconds:g} s: {n['with_nodelay_same_interval']}); "
              f"lag p99 {n['lag_p99_ms']} ms; {n['nodelay_attempts_dropped']} attempts to set it "
              "dropped", flush=True)
    if args.compare_inflight:
        m = result["collector_inflight"] = collector_phase(
            pubs, args, nodelay=True, seconds=args.nodelay_seconds or 60, profile=False,
            inflight=args.compare_inflight)
        m["unbounded_same_interval"] = rate_between(c, 0, args.nodelay_seconds or 60)
        print(f"  collector, broker max_inflight_messages {args.compare_inflight}: "
              f"{m['stored_samples_per_s']:,} samples/s (unbounded, same interval: "
              f"{m['unbounded_same_interval']}); lag p99 {m['lag_p99_ms']} ms", flush=True)
    if args.compare_forward:
        f = result["collector_forward"] = forward_phase(pubs, args)
        f["without_forwarding_same_interval"] = rate_between(c, 0, args.compare_forward)
        print(f"  collector forwarding to VictoriaMetrics: {f['stored_samples_per_s']:,} "
              f"samples/s stored (without forwarding, same interval: "
              f"{f['without_forwarding_same_interval']}); forwarded {f['forward']}; "
              f"CPU {f['cpu_share_of_one_core']}", flush=True)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def forward_phase(pubs: Publishers, args: argparse.Namespace) -> dict[str, Any]:
    """A collector phase (``--compare-forward`` seconds) with a ``[[forward]]`` receiver: a
    VictoriaMetrics on loopback (Debian's, started here)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.tsdb import VictoriaMetrics

    work = Path(tempfile.mkdtemp(prefix="edgemon-ingest-vm-", dir=args.dir))
    vm = VictoriaMetrics(work).start()
    try:
        return collector_phase(pubs, args, nodelay=True, seconds=args.compare_forward,
                               profile=False, forward_url=vm.write_url)
    finally:
        vm.terminate()
        shutil.rmtree(work, ignore_errors=True)


# --- report -------------------------------------------------------------------------------------

def mmm(values: list[Any]) -> dict[str, Any] | None:
    vals = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def cell(values: list[Any], scale: float = 1, fmt: str = ",.0f") -> str:
    m = mmm(values)
    if m is None:
        return "-"
    return " / ".join(format(m[k] * scale, fmt) for k in ("min", "median", "max"))


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def col(phase: str, key: str) -> list[Any]:
        return [r[phase].get(key) for r in runs if phase in r]

    def cpu(phase: str, who: str) -> list[float]:
        return [sum(v for k, v in r[phase]["cpu_share_of_one_core"].items()
                    if k.startswith(who)) for r in runs if phase in r]

    s: dict[str, Any] = {}
    for phase in ("ceiling", "ceiling_no_nodelay", "collector", "collector_no_nodelay",
                  "collector_inflight", "collector_forward"):
        if phase not in runs[0]:
            continue
        s[phase] = {k: mmm(col(phase, k)) for k in (
            "stored_samples_per_s", "stored_samples_per_s_after_warmup", "lag_p50_ms",
            "lag_p99_ms", "lag_p99_worst_10s_ms", "longest_stall_s", "backlog_at_end",
            "backlog_slope_samples_per_s", "with_nodelay_same_interval",
            "unbounded_same_interval", "without_forwarding_same_interval")}
        s[phase]["cpu"] = {w: mmm(cpu(phase, w)) for w in
                           ("collector", "subscriber", "broker", "publisher")}
        mem = [r[phase].get("collector_memory_mb", {}) for r in runs]
        s[phase]["peak_pss_mb"] = mmm([m.get("peak_pss") for m in mem])
        s[phase]["peak_rss_mb"] = mmm([m.get("peak_rss") for m in mem])
    s["ratio_to_ceiling"] = mmm([r["collector"]["stored_samples_per_s"]
                                 / r["ceiling"]["stored_samples_per_s"]
                                 for r in runs if r["ceiling"]["stored_samples_per_s"]])
    s["backlog_flat"] = [r["collector"].get("backlog_flat") for r in runs]
    return s


def headline(s: dict[str, Any], args: argparse.Namespace, runs_: list[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    def med(phase: str, key: str) -> Any:
        m = (s.get(phase) or {}).get(key)
        return None if m is None else m["median"]

    def cpu(phase: str, who: str) -> Any:
        m = (s.get(phase) or {}).get("cpu", {}).get(who)
        return None if m is None else round(m["median"], 2)

    runs = f"median of {args.runs} run(s)"
    out = [
        {"figure": f"stored samples/s over {args.seconds:g} s, compaction running",
         "unit": "samples/s", "value": med("collector", "stored_samples_per_s"),
         "baselines": {"transport ceiling (bare acking subscriber)":
                       med("ceiling", "stored_samples_per_s")},
         "note": f"{runs}; {args.publishers} publisher processes x {args.hosts} hosts, "
                 f"window {args.window}"
                 + (f", paced at {args.pace:,.0f}/s" if args.pace else "")
                 + f"; back-log flat: {s['backlog_flat']}"},
        {"figure": f"stored samples/s after the first {warmup(args.seconds):g} s",
         "unit": "samples/s",
         "value": med("collector", "stored_samples_per_s_after_warmup"), "baselines": {}},
        {"figure": "compaction back-log growth (slope, last 2/3 of the window)",
         "unit": "samples/s", "value": med("collector", "backlog_slope_samples_per_s"),
         "baselines": {}, "note": f"back-log at end {med('collector', 'backlog_at_end')}"},
        {"figure": "ack lag p99", "unit": "ms", "value": med("collector", "lag_p99_ms"),
         "baselines": {"transport ceiling": med("ceiling", "lag_p99_ms")},
         "note": f"p50 {med('collector', 'lag_p50_ms')} ms; worst 10 s p99 "
                 f"{med('collector', 'lag_p99_worst_10s_ms')} ms; longest stretch without "
                 f"an ack {med('collector', 'longest_stall_s')} s"},
        {"figure": "collector process tree CPU", "unit": "cores",
         "value": cpu("collector", "collector"), "baselines": {},
         "note": f"broker {cpu('collector', 'broker')}, publishers "
                 f"{cpu('collector', 'publisher')} cores; load average "
                 f"{[r['load_average_before'][0] for r in runs_]}"},
        {"figure": "collector process tree peak PSS", "unit": "MB",
         "value": med("collector", "peak_pss_mb"), "baselines": {},
         "note": f"peak RSS summed {med('collector', 'peak_rss_mb')} MB"},
        {"figure": "transport ceiling with TCP_NODELAY on the clients", "unit": "samples/s",
         "value": med("ceiling", "stored_samples_per_s"),
         "baselines": {"paho's default sockets": med("ceiling_no_nodelay",
                                                     "stored_samples_per_s")}},
    ]
    if "collector_no_nodelay" in s:
        out.append({"figure": f"collector stored samples/s, first {args.nodelay_seconds:g} s, "
                              "TCP_NODELAY on", "unit": "samples/s",
                    "value": med("collector_no_nodelay", "with_nodelay_same_interval"),
                    "baselines": {"TCP_NODELAY off (collector and publishers)":
                                  med("collector_no_nodelay", "stored_samples_per_s")}})
    if "collector_inflight" in s:
        out.append({"figure": f"collector stored samples/s, first {args.nodelay_seconds:g} s, "
                              "broker in-flight window unbounded", "unit": "samples/s",
                    "value": med("collector_inflight", "unbounded_same_interval"),
                    "baselines": {f"max_inflight_messages {args.compare_inflight}":
                                  med("collector_inflight", "stored_samples_per_s")}})
    if "collector_forward" in s:
        fwd = [r["collector_forward"]["forward"] for r in runs_ if "collector_forward" in r]
        out.append({"figure": f"collector stored samples/s, first {args.compare_forward:g} s, "
                              "forwarding every stored sample to VictoriaMetrics",
                    "unit": "samples/s",
                    "value": med("collector_forward", "stored_samples_per_s"),
                    "baselines": {"without forwarding": med(
                        "collector_forward", "without_forwarding_same_interval")},
                    "note": "forwarded samples/s, pending at the end: "
                            + "; ".join(f"{f['sent_samples_per_s']}, {f['pending_samples']}"
                                        for f in fwd)})
    return out


def print_report(runs: list[dict[str, Any]], s: dict[str, Any], args: argparse.Namespace
                 ) -> None:
    rows = []
    for phase, label in (("ceiling", "ceiling, TCP_NODELAY"),
                         ("ceiling_no_nodelay", "ceiling, paho default sockets"),
                         ("collector", f"collector, {args.seconds:g} s"),
                         ("collector_no_nodelay",
                          f"collector, {args.nodelay_seconds:g} s, no TCP_NODELAY"),
                         ("collector_inflight", f"collector, {args.nodelay_seconds:g} s, broker "
                                                f"max_inflight_messages {args.compare_inflight}"),
                         ("collector_forward", f"collector, {args.compare_forward:g} s, "
                                               "forwarding to VictoriaMetrics")):
        if phase not in runs[0]:
            continue
        receiver = "subscriber" if phase.startswith("ceiling") else "collector"
        rs = [r[phase] for r in runs]

        def cpu(who: str, rs: list[dict[str, Any]] = rs) -> list[float]:
            return [sum(v for k, v in r["cpu_share_of_one_core"].items() if k.startswith(who))
                    for r in rs]

        rows.append({
            "phase": label,
            "stored samples/s": cell([r["stored_samples_per_s"] for r in rs]),
            f"after {warmup(args.seconds):g} s": cell(
                [r.get("stored_samples_per_s_after_warmup") for r in rs]),
            "lag p50 ms": cell([r["lag_p50_ms"] for r in rs]),
            "lag p99 ms": cell([r["lag_p99_ms"] for r in rs]),
            "CPU % receiver": cell(cpu(receiver), 100),
            "broker": cell(cpu("broker"), 100),
            "publishers": cell(cpu("publisher"), 100),
            "longest stall s": cell([r.get("longest_stall_s") for r in rs]),
            "back-log end": cell([r.get("backlog_at_end") for r in rs]),
            "slope /s": cell([r.get("backlog_slope_samples_per_s") for r in rs]),
            "PSS MB": cell([(r.get("collector_memory_mb") or {}).get("peak_pss") for r in rs]),
        })
    print(f"\n{args.runs} run(s); min / median / max; {args.publishers} publishers x "
          f"{args.hosts} hosts, window {args.window}; CPU as % of one core; load average "
          f"{[r['load_average_before'] for r in runs]}")
    print(table(rows, list(rows[0])))
    ratio = s["ratio_to_ceiling"]
    if ratio:
        print(f"collector / ceiling: {ratio['min']:.1%} / {ratio['median']:.1%} / "
              f"{ratio['max']:.1%}; back-log flat: {s['backlog_flat']}")
    last = runs[-1]["collector"]
    print("last run, stored samples/s per 10 s: "
          + " ".join(f"{(v or 0) / 1000:.0f}k" for v in last["stored_per_10s"]))
    print("last run, back-log (s, samples): "
          + " ".join(f"{t:g}:{n:,}" for t, n in last["backlog_samples"]))
    held = last.get("backpressure")
    if held:
        keys = ("due_samples", "pending_samples", "acks_held", "hosts_held", "acks_held_total",
                "acks_released_late_total")
        print(f"last run, back-pressure (budget {held[-1][1].get('budget_samples', 0):,.0f} "
              "samples; s: due / pending samples / acks held now / hosts held / held in all / "
              "released late): "
              + " ".join(f"{t:g}:" + "/".join(f"{f.get(k, 0):.0f}" for k in keys)
                         for t, f in held))
    procs = last.get("cpu_by_process", {}).get("collector", {})
    print("last run, collector tree CPU per process: "
          + ", ".join(f"{k} {100 * v:.0f}%" for k, v in procs.items()))
    spy = runs[0]["collector"].get("py_spy")
    if spy:
        if "error" in spy:
            print(f"py-spy failed: {spy['error']}")
        else:
            print(f"\npy-spy, collector tree, own time ({spy['samples']:,} samples):")
            print(table([{"share": f"{100 * t['own_share']:.1f}%", "function": t["function"]}
                         for t in spy["top"]], ["share", "function"]))
            print("per process: " + ", ".join(f"{k}: {100 * v:.0f}%"
                                              for k, v in spy["processes"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one run, 45 s collector window, short ceiling and TCP_NODELAY phases")
    ap.add_argument("--runs", type=int, default=None, help="runs (default 3; quick 1)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="collector window (default 600; quick 45)")
    ap.add_argument("--ceiling-seconds", type=float, default=None,
                    help="each ceiling phase (default 30; quick 8)")
    ap.add_argument("--nodelay-seconds", type=float, default=None,
                    help="collector without TCP_NODELAY (default 60; quick 15; 0: skip)")
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--hosts", type=int, default=3000, help="hosts per publisher")
    ap.add_argument("--window", type=int, default=256, help="un-acked batches per publisher")
    ap.add_argument("--max-rate", type=float, default=None,
                    help="samples/s the encoded batches must last the collector window at "
                         "(default 1.2 M; quick 0.6 M); a phase that runs out says so")
    ap.add_argument("--pace", type=float, default=0,
                    help="collector phases: this many samples/s in all, evenly spaced, instead "
                         "of as fast as acks return (ack lag at a given rate)")
    ap.add_argument("--compare-inflight", type=int, default=0, metavar="N",
                    help="also a collector phase (--nodelay-seconds long) with the broker's "
                         "max_inflight_messages at N (Mosquitto's default: 20) instead of "
                         "unbounded")
    ap.add_argument("--compare-forward", type=float, default=0, metavar="SECONDS",
                    help="also a collector phase this long forwarding every stored sample to a "
                         "VictoriaMetrics on loopback ([[forward]]), beside the same interval "
                         "of the collector phase without")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a collector setting (TOML value), e.g. --set 'ingest.workers=2'; "
                         f"sections: {', '.join(SECTIONS)}; repeatable")
    ap.add_argument("--py-spy", action="store_true",
                    help="profile the collector tree in the first run (needs py-spy)")
    ap.add_argument("--dir", type=Path, default=None, help="where the work directories go")
    ap.add_argument("--label", default="", help="results file suffix (e.g. the code measured)")
    args = ap.parse_args(argv)
    q = args.quick
    for key, full, quick in (("runs", 3, 1), ("seconds", 600.0, 45.0),
                             ("ceiling_seconds", 30.0, 8.0), ("nodelay_seconds", 60.0, 15.0),
                             ("max_rate", 1.2e6, 0.6e6)):
        if getattr(args, key) is None:
            setattr(args, key, quick if q else full)
    settings: dict[str, dict[str, str]] = {}
    for item in args.set:
        section, _, rest = item.partition(".")
        if section not in SECTIONS or "=" not in rest:
            ap.error(f"--set {item!r}: want SECTION.KEY=VALUE with SECTION one of {SECTIONS}")
        key, _, value = rest.partition("=")
        settings.setdefault(section, {})[key.strip()] = value.strip()
    args.set = settings
    if args.py_spy and executable() is None:
        ap.error("--py-spy: py-spy is not installed (pip install py-spy)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run.py's timeout: clean up
    name = "ingest" + (f"_{args.label}" if args.label else "")
    batches = math.ceil(args.max_rate * args.seconds / SAMPLES_PER_BATCH / args.publishers)
    print(f"encoding {batches:,} batches in each of {args.publishers} publishers "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    runs: list[dict[str, Any]] = []
    pubs = Publishers(args.publishers, args.hosts, batches)
    try:
        print(f"encoded in {[p['prepare_s'] for p in pubs.prepared]} s", flush=True)
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            runs.append(one_run(pubs, args, first=i == 0))
            write_result(name, {"args": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in vars(args).items()},
                                "runs": runs, "complete": False})
    finally:
        pubs.close()
    s = summarise(runs, args)
    print_report(runs, s, args)
    path = write_result(name, {"args": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items()},
                               "encoded_batches": pubs.batches, "summary": s,
                               "headline": headline(s, args, runs), "runs": runs, "complete": True})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
