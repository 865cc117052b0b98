"""Agent footprint beside its peers, measured in the same run: resident memory and CPU time of
edgemon-agent, prometheus-node-exporter (scraped as Prometheus would) and collectd (publishing to
MQTT), side by side on this host, at each sampling interval.

    python benchmarks/footprint.py [--quick] [--window S] [--intervals 10,1] [--warmup S]
                                   [--baseline-ref REF]

``--baseline-ref main`` also runs the agent of that git revision (its sources, from
``git archive``, put first on its PYTHONPATH; the same interpreter and libraries) as
``edgemon_baseline`` in the same window: before/after figures from one run.

Starts a private Mosquitto on a free loopback port (persistence off) and, for each interval I,
one of each agent: ``edgemon-agent run`` with a generated config, ``prometheus-node-exporter`` on
a free loopback port scraped every I seconds by this script (GET /metrics, gzip, like
Prometheus), and ``collectd`` with a generated config (cpu per-core percent, memory, swap, load,
df, disk, interface, uptime, ``mqtt`` plugin at QoS 1, Interval I). All intervals run in the same
window. A small in-process subscriber acknowledges edgemon's batches (as the collector would, so
the agent's buffer stays in its steady state) and counts every message on the wire.

Per process tree (the process and its descendants): RSS = sum of VmRSS, sampled every second;
steady state = median of the last half of the window, max = highest sample. CPU = utime + stime
(+ cutime + cstime: reaped children) from /proc/<pid>/stat, from the end of the warm-up to the end
of the window, scaled to CPU-seconds per hour. Writes benchmarks/results/footprint.json (figures
and the RSS/CPU series for plotting). Needs the Debian packages mosquitto,
prometheus-node-exporter and collectd-core; a missing one is recorded as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import getpass
import gzip
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks._common import table, write_result
except ImportError:  # run as a script from benchmarks/
    from _common import table, write_result  # type: ignore[no-redef]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
COLLECTD = shutil.which("collectd") or "/usr/sbin/collectd"
COLLECTD_PLUGIN_DIR = "/usr/lib/collectd"
COLLECTD_TYPES_DB = "/usr/share/collectd/types.db"
TICK = os.sysconf("SC_CLK_TCK")
AGENTS = ("edgemon", "node_exporter", "collectd")
PEERS = ("node_exporter", "collectd")
BATCH_CYCLES = 6  # the agent's default: a batch every 6 intervals
# What Prometheus sends (v2.x scrape): the text format, gzip'd.
SCRAPE_HEADERS = {"Accept": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1",
                  "Accept-Encoding": "gzip", "User-Agent": "Prometheus/2.45.0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {timeout} s")


def _version(cmd: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else ""


# --- /proc accounting ----------------------------------------------------------------------------

def _stat_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks: utime + stime + cutime + cstime) of every process."""
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2:].split()
        # fields[0] is field 3 (state): ppid = 4, utime 14, stime 15, cutime 16, cstime 17
        procs[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return procs


def _tree(root: int, procs: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def _status_kb(pid: int, key: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _thread_ns(pid: int) -> int:
    """CPU time of the live threads of ``pid`` in ns (/proc/<pid>/task/*/schedstat): finer than
    the 10 ms ticks of /proc/<pid>/stat, but blind to threads that have exited."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), \
                    open(f"/proc/{pid}/task/{task.name}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


class Tracked:
    """One agent's process tree and its samples: (t, rss kB, cpu ticks, thread ns)."""

    def __init__(self, name: str, interval: float, proc: subprocess.Popen[bytes] | None,
                 cmd: list[str], log: Path | None) -> None:
        self.name, self.interval, self.proc, self.cmd, self.log = name, interval, proc, cmd, log
        self.samples: list[tuple[float, int, int, int]] = []
        self.hwm_kb = 0
        self.error = ""
        self.extra: dict[str, Any] = {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample(self, t: float, procs: dict[int, tuple[int, int]]) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        pids = _tree(self.proc.pid, procs)
        rss = sum(_status_kb(p, b"VmRSS:") for p in pids)
        ticks = sum(procs[p][1] for p in pids)
        ns = sum(_thread_ns(p) for p in pids)
        self.hwm_kb = max(self.hwm_kb, sum(_status_kb(p, b"VmHWM:") for p in pids))
        if rss:
            self.samples.append((t, rss, ticks, ns))

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-1500:]


# --- the wire: acknowledge edgemon batches, count every message ----------------------------------

def _mqtt_publish_bytes(topic: str, payload: bytes, qos: int = 1) -> int:
    """Size of the MQTT 3.1.1 PUBLISH packet that carried this message to the broker."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + varint + remaining


class WireCounter:
    """Subscribes to edgemon's and collectd's topics on the private broker: acknowledges each
    edgemon batch like the collector does and records (t, bytes, samples) per publisher."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        from edgemon.protocol import ack_topic, decode, encode_ack, expand_samples, parse_topic

        self._decode, self._expand = decode, expand_samples
        self._ack_topic, self._encode_ack, self._parse = ack_topic, encode_ack, parse_topic
        self.events: dict[str, list[tuple[float, int, int]]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"footprint-wire-{os.getpid()}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
        client.subscribe([("edgemon/v1/+/metrics", 1), ("edgemon/v1/+/backfill", 1),
                          ("collectd/#", 1)])

    def _on_message(self, client: Any, _u: Any, msg: Any) -> None:
        size = _mqtt_publish_bytes(msg.topic, msg.payload)
        try:
            if msg.topic.startswith("edgemon/"):
                host = self._parse(msg.topic).host
                doc = self._decode(msg.payload)
                samples = sum(1 for _ in self._expand(doc))
                client.publish(self._ack_topic(host),
                               self._encode_ack(instance=doc["instance"], seqs=[doc["seq"]]), 1)
                source = host
            else:  # collectd/<hostname>/<plugin>/<type>: "time:v1[:v2...]"
                source = msg.topic.split("/")[1]
                samples = msg.payload.count(b":")
        except Exception as exc:  # counted, never fatal to the benchmark
            self.errors.append(f"{msg.topic}: {exc!r}"[:300])
            return
        with self._lock:
            self.events.setdefault(source, []).append((time.monotonic(), size, samples))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()

    def summary(self, source: str, start: float, end: float) -> dict[str, Any]:
        with self._lock:
            events = list(self.events.get(source, ()))
        in_window = [e for e in events if start <= e[0] <= end]
        return _wire_figures(events, in_window, end - start)


def _wire_figures(events: list[tuple[float, int, int]], in_window: list[tuple[float, int, int]],
                  window: float) -> dict[str, Any]:
    nbytes, samples = sum(e[1] for e in events), sum(e[2] for e in events)
    wbytes = sum(e[1] for e in in_window)
    return {"messages": len(events), "bytes": nbytes, "samples": samples,
            "B_per_sample": round(nbytes / samples, 3) if samples else None,
            "bytes_per_hour": round(wbytes / window * 3600) if window > 0 else None}


class Scraper(threading.Thread):
    """GET /metrics every ``interval`` seconds, as Prometheus would (gzip)."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stop_event = threading.Event()
        self.events: list[tuple[float, int, int]] = []  # (t, body bytes on the wire, samples)
        self.text_bytes: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/metrics", headers=SCRAPE_HEADERS)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                text = gzip.decompress(body) if resp.getheader("Content-Encoding") == "gzip" \
                    else body
                samples = sum(1 for line in text.splitlines() if line and line[:1] != b"#")
                self.events.append((time.monotonic(), len(body), samples))
                self.text_bytes.append(len(text))
            except Exception as exc:
                self.errors.append(repr(exc)[:300])
            if next_at < time.monotonic():  # missed scrapes are skipped, not bunched
                next_at = time.monotonic() + self.interval

    def summary(self, start: float, end: float) -> dict[str, Any]:
        events = list(self.events)
        out = _wire_figures(events, [e for e in events if start <= e[0] <= end], end - start)
        out["scrapes"] = out.pop("messages")
        out["text_bytes_per_scrape"] = (round(statistics.mean(self.text_bytes))
                                        if self.text_bytes else None)
        out["errors"] = len(self.errors)
        return out


# --- starting the agents -------------------------------------------------------------------------

try:
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # loaded before any fork
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec (no imports, no locks): SIGTERM when this benchmark dies,
    however it dies (PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    with open(log, "ab") as logf:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent)


def start_mosquitto(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    user = f"user {getpass.getuser()}\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{user}"
                    "persistence false\nmax_queued_messages 10000\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\n")
    proc = _spawn([MOSQUITTO, "-c", str(conf)], work / "mosquitto.log")
    wait_port(port, proc, 10, "mosquitto")
    return proc, port


def _agent_command() -> list[str]:
    script = Path(sys.executable).parent / "edgemon-agent"
    if script.exists():
        return [str(script)]
    found = shutil.which("edgemon-agent")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from edgemon.agent.cli import main; "
                                  "sys.exit(main())"]


def _agent_config_text(host_id: str, interval: float, port: int, buffer: Path) -> str:
    return (f'host_id = "{host_id}"\ninterval_seconds = {interval!r}\n\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {port}\n\n'
            f'[buffer]\npath = "{buffer}"\n\n[log]\nlevel = "warning"\n')


def baseline_tree(work: Path, ref: str) -> Path:
    """The edgemon packages of git revision ``ref`` laid out for PYTHONPATH (edgemon/agent, ...)."""
    root = Path(__file__).resolve().parents[1]
    tree = work / "baseline"
    for part in ("agent", "collector", "protocol", "common"):
        (tree / "edgemon" / part).mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(root), "archive", ref, part],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree / "edgemon" / part),
                        "--strip-components=1"], input=archive, check=True)
    return tree


def start_edgemon(work: Path, interval: float, port: int, name: str = "edgemon",
                  pythonpath: Path | None = None) -> Tracked:
    """edgemon-agent run with a generated TOML config; with environment overrides only if the
    agent rejects that file (its keys were still being settled when this was written).
    ``pythonpath``: run the sources there instead (the baseline)."""
    tag = f"{name}-{interval:g}s"
    d = work / tag
    d.mkdir()
    base = _agent_command()
    log = d / "agent.log"
    host_id = f"bench-{name}-{interval:g}s".replace(".", "_")
    conf = d / "agent.toml"
    conf.write_text(_agent_config_text(host_id, interval, port, d / "buffer" / "buffer.db"))
    conf.chmod(0o600)  # the agent refuses a configuration others can read
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("EDGEMON_AGENT_")]:
        del env[key]
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    try:
        check = subprocess.run([*base, "check-config", "-c", str(conf)], capture_output=True,
                               text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        t = Tracked(name, interval, None, base, log)
        t.error = f"cannot run {base[0]}: {exc}"
        return t
    if "ModuleNotFoundError" in check.stderr or "ImportError" in check.stderr:
        t = Tracked(name, interval, None, base, log)
        t.error = "agent not runnable: " + check.stderr.strip().splitlines()[-1][:300]
        return t
    if check.returncode == 0:
        cmd = [*base, "run", "-c", str(conf)]
        how = "config file"
    else:  # fall back to environment overrides
        env.update({"EDGEMON_AGENT_HOST_ID": host_id,
                    "EDGEMON_AGENT_INTERVAL_SECONDS": f"{interval:g}",
                    "EDGEMON_AGENT_BROKER_HOST": "127.0.0.1",
                    "EDGEMON_AGENT_BROKER_PORT": str(port),
                    "EDGEMON_AGENT_BUFFER_PATH": str(d / "buffer" / "buffer.db"),
                    "EDGEMON_AGENT_LOG_LEVEL": "warning"})
        cmd = [*base, "run"]
        how = "environment (check-config rejected the file: " + \
              (check.stderr.strip() or check.stdout.strip())[-300:] + ")"
    t = Tracked(name, interval, _spawn(cmd, log, env), cmd, log)
    t.extra["configured_by"] = how
    t.extra["host_id"] = host_id
    return t


def start_node_exporter(work: Path, interval: float) -> tuple[Tracked, Scraper | None]:
    log = work / f"node_exporter-{interval:g}s.log"
    if not os.access(NODE_EXPORTER, os.X_OK):
        t = Tracked("node_exporter", interval, None, [NODE_EXPORTER], log)
        t.error = "not installed (apt-get install prometheus-node-exporter)"
        return t, None
    port = free_port()
    cmd = [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    t = Tracked("node_exporter", interval, _spawn(cmd, log), cmd, log)
    try:
        assert t.proc is not None
        wait_port(port, t.proc, 15, "node_exporter")
    except RuntimeError as exc:
        t.error = str(exc)
        return t, None
    scraper = Scraper(port, interval)
    scraper.start()
    return t, scraper


def collectd_config(work: Path, hostname: str, interval: float, broker_port: int) -> str:
    plugins = "".join(f"LoadPlugin {p}\n" for p in
                      ("cpu", "memory", "swap", "load", "df", "disk", "interface", "uptime",
                       "mqtt"))
    return f"""Hostname "{hostname}"
FQDNLookup false
BaseDir "{work}"
PIDFile "{work}/collectd.pid"
PluginDir "{COLLECTD_PLUGIN_DIR}"
TypesDB "{COLLECTD_TYPES_DB}"
Interval {interval:g}
LoadPlugin logfile
<Plugin logfile>
  LogLevel warning
  File STDOUT
  Timestamp true
</Plugin>
{plugins}<Plugin cpu>
  ReportByCpu true
  ReportByState true
  ValuesPercentage true
</Plugin>
<Plugin mqtt>
  <Publish "footprint">
    Host "127.0.0.1"
    Port {broker_port}
    ClientId "{hostname}"
    QoS 1
    Prefix "collectd"
    StoreRates true
    Retain false
  </Publish>
</Plugin>
"""


def start_collectd(work: Path, interval: float, broker_port: int) -> Tracked:
    d = work / f"collectd-{interval:g}s"
    d.mkdir()
    log = d / "collectd.log"
    if not os.access(COLLECTD, os.X_OK) or not Path(COLLECTD_PLUGIN_DIR, "mqtt.so").exists():
        t = Tracked("collectd", interval, None, [COLLECTD], log)
        t.error = "not installed (apt-get install collectd-core)"
        return t
    hostname = f"bench-collectd-{interval:g}s".replace(".", "_")
    conf = d / "collectd.conf"
    conf.write_text(collectd_config(d, hostname, interval, broker_port))
    test = subprocess.run([COLLECTD, "-t", "-C", str(conf)], capture_output=True, text=True,
                          timeout=30, check=False)
    if test.returncode != 0:
        t = Tracked("collectd", interval, None, [COLLECTD], log)
        t.error = f"config rejected: {(test.stderr or test.stdout).strip()[-300:]}"
        return t
    cmd = [COLLECTD, "-f", "-C", str(conf)]
    t = Tracked("collectd", interval, _spawn(cmd, log), cmd, log)
    t.extra["host_id"] = hostname
    return t


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- figures -------------------------------------------------------------------------------------

def figures(t: Tracked, start: float, end: float) -> dict[str, Any]:
    window = [s for s in t.samples if start <= s[0] <= end]
    if len(window) < 2:
        return {"status": "failed", "error": "no samples in the window (process died?) "
                + t.log_tail()[-400:]}
    last_half = [s for s in window if s[0] >= start + (end - start) / 2] or window[-1:]
    first, last = window[0], window[-1]
    seconds = last[0] - first[0]
    ticks = last[2] - first[2]
    cpu_s = ticks / TICK
    return {
        "status": "ok",
        "rss_mb_steady": round(statistics.median(s[1] for s in last_half) / 1024, 2),
        "rss_mb_max": round(max(s[1] for s in window) / 1024, 2),
        "rss_mb_hwm": round(t.hwm_kb / 1024, 2),
        "cpu_s": round(cpu_s, 3),
        "cpu_ticks": ticks,
        "cpu_s_per_hour": round(cpu_s / seconds * 3600, 2) if seconds else None,
        "cpu_percent": round(cpu_s / seconds * 100, 3) if seconds else None,
        "cpu_s_per_hour_threads": round((last[3] - first[3]) / 1e9 / seconds * 3600, 2)
        if seconds else None,
        "cpu_s_before_window": round(first[2] / TICK, 3),  # start-up + warm-up
        "measured_s": round(seconds, 1),
    }


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
        return round(a / b, 2)
    return None


def measure(intervals: list[float], window: float, warmup: float,
            baseline_ref: str | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edgemon-footprint-"))
    mosq = None
    tracked: list[Tracked] = []
    scrapers: dict[float, Scraper] = {}
    wire: WireCounter | None = None
    try:
        mosq, port = start_mosquitto(work)
        wire = WireCounter(port)
        baseline = baseline_tree(work, baseline_ref) if baseline_ref else None
        for interval in intervals:
            tracked.append(start_edgemon(work, interval, port))
            if baseline is not None:
                tracked.append(start_edgemon(work, interval, port, "edgemon_baseline", baseline))
            ne, scraper = start_node_exporter(work, interval)
            tracked.append(ne)
            if scraper:
                scrapers[interval] = scraper
            tracked.append(start_collectd(work, interval, port))
        t0 = time.monotonic()
        start, end = t0 + warmup, t0 + warmup + window
        print(f"warm-up {warmup:g} s, then a {window:g} s window at interval(s) "
              f"{', '.join(f'{i:g} s' for i in intervals)} ...", flush=True)
        while True:
            now = time.monotonic()
            procs = _stat_table()
            for t in tracked:
                t.sample(now, procs)
            if now >= end:
                break
            time.sleep(max(0.0, min(1.0, end - time.monotonic())))
        runs = []
        for interval in intervals:
            run: dict[str, Any] = {"interval_s": interval, "agents": {}, "series": {}}
            for t in (t for t in tracked if t.interval == interval):
                if t.proc is None or t.error:
                    fig: dict[str, Any] = {"status": "skipped", "error": t.error}
                else:
                    fig = figures(t, start, end)
                    if t.proc.poll() is not None:
                        fig = {"status": "failed",
                               "error": f"exited with {t.proc.returncode}: {t.log_tail()}"}
                fig["command"] = " ".join(t.cmd)
                fig.update(t.extra)
                if t.name == "node_exporter" and interval in scrapers:
                    fig["wire"] = scrapers[interval].summary(start, end)
                elif wire is not None and "host_id" in t.extra:
                    fig["wire"] = wire.summary(t.extra["host_id"], start, end)
                run["agents"][t.name] = fig
                run["series"][t.name] = {
                    "t_s": [round(s[0] - t0, 1) for s in t.samples],
                    "rss_mb": [round(s[1] / 1024, 2) for s in t.samples],
                    "cpu_s": [round(s[2] / TICK, 2) for s in t.samples]}
            ours = run["agents"].get("edgemon", {})
            run["ratios"] = {
                f"edgemon/{peer}": {
                    key: _ratio(ours.get(key), run["agents"].get(peer, {}).get(key))
                    for key in ("rss_mb_steady", "rss_mb_max", "cpu_s_per_hour")}
                for peer in (*PEERS, "edgemon_baseline") if peer in run["agents"]}
            runs.append(run)
        return {"runs": runs, "wire_errors": (wire.errors[:20] if wire else []),
                "window_start_s": warmup, "window_s": window}
    finally:
        for scraper in scrapers.values():
            scraper.stop_event.set()
        if wire is not None:
            wire.close()
        for t in tracked:
            stop(t.proc)
        stop(mosq)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 60 s window (default: 600 s)")
    parser.add_argument("--window", type=float, help="seconds measured after the warm-up")
    parser.add_argument("--intervals", default="10,1",
                        help="sampling/scrape intervals in seconds, comma-separated")
    parser.add_argument("--baseline-ref", metavar="REF",
                        help="also run the agent of this git revision, same window")
    parser.add_argument("--warmup", type=float,
                        help="seconds before the window (default: the longest interval + 5; "
                             "without --quick, until the agent's first batch is out: "
                             f"{BATCH_CYCLES} x the longest interval + 5)")
    args = parser.parse_args()
    # SIGTERM (the runner's timeout) unwinds like Ctrl-C: everything started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    window = args.window or (60.0 if args.quick else 600.0)
    if args.warmup is not None:
        warmup = args.warmup
    else:
        warmup = max(intervals) * (1 if args.quick else BATCH_CYCLES) + 5.0
    versions = {
        "node_exporter": _version([NODE_EXPORTER, "--version"], r"version (\S+)"),
        "collectd": _version([COLLECTD, "-h"], r"collectd (\d\S*),"),
        "mosquitto": _version([MOSQUITTO, "-h"], r"mosquitto version (\S+)"),
        "edgemon": _version([*_agent_command(), "--version"], r"edgemon-agent (\S+)"),
    }
    result = measure(intervals, window, warmup, args.baseline_ref)
    rows = []
    names = (*AGENTS, "edgemon_baseline") if args.baseline_ref else AGENTS
    for run in result["runs"]:
        for name in names:
            fig = run["agents"].get(name, {})
            if fig.get("status") != "ok":
                rows.append({"interval": f"{run['interval_s']:g} s", "agent": name,
                             "RSS MB": fig.get("status", "?"),
                             "note": str(fig.get("error", ""))[:70]})
                continue
            w = fig.get("wire") or {}
            rows.append({"interval": f"{run['interval_s']:g} s", "agent": name,
                         "RSS MB": fig["rss_mb_steady"], "max MB": fig["rss_mb_max"],
                         "CPU s/h": fig["cpu_s_per_hour"], "CPU %": fig["cpu_percent"],
                         "B/sample": w.get("B_per_sample", ""),
                         "wire KB/h": round(w["bytes_per_hour"] / 1000, 1)
                         if w.get("bytes_per_hour") is not None else ""})
    print(table(rows, ["interval", "agent", "RSS MB", "max MB", "CPU s/h", "CPU %",
                       "B/sample", "wire KB/h", "note"]))
    for run in result["runs"]:
        for peer, r in run["ratios"].items():
            print(f"{run['interval_s']:g} s  {peer}: RSS x{r['rss_mb_steady']}, "
                  f"CPU x{r['cpu_s_per_hour']}")
    path = write_result("footprint", {"quick": args.quick, "intervals_s": intervals,
                                      "baseline_ref": args.baseline_ref,
                                      "warmup_s": warmup, "versions": versions,
                                      "clock_ticks_per_s": TICK, **result})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
