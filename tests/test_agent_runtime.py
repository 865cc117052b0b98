"""Agent runtime pieces without a broker: sender scheduling, back-off, self metrics, the loop."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

import pytest

from edgemon.agent import __version__
from edgemon.agent.buffer import BatchRef, Buffer, BufferStats, read_stats
from edgemon.agent.cli import main
from edgemon.agent.config import load_config
from edgemon.agent.families import Reading
from edgemon.agent.presence import CollectorPresence
from edgemon.agent.publisher import reconnect_delay
from edgemon.agent.runner import Runner, new_instance_id
from edgemon.agent.selfmetrics import AgentHealth, readings
from edgemon.agent.sender import Sender
from edgemon.common.logs import Throttle, setup_logging
from edgemon.protocol import GAUGE, MetricDef, decode, expand_samples
from edgemon.protocol.batch import KINDS
from edgemon.protocol.presence import collector_state_topic, encode_collector_state
from tests.support.broker import free_port
from tests.support.waiting import wait_until

NOW_MS = 1_800_000_000_000
LIVE, BACKFILL = "edgemon/v1/h/metrics", "edgemon/v1/h/backfill"


class FakeSource:
    """Sealed batches in memory, as the buffer store would hand them to the sender."""

    def __init__(self) -> None:
        self.batches: dict[int, BatchRef] = {}
        self.published: set[int] = set()
        self.generation = 1

    def add(self, batch_id: int, last_ms: int) -> None:
        self.batches[batch_id] = BatchRef(batch_id, "i", batch_id, last_ms - 1, last_ms, 1)

    def newest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]:
        skip = set(exclude)
        return [self.batches[i] for i in sorted(self.batches, reverse=True)
                if i not in skip][:limit]

    def oldest(self, limit: int, exclude: Iterable[int] = ()) -> list[BatchRef]:
        skip = set(exclude)
        return [self.batches[i] for i in sorted(self.batches) if i not in skip][:limit]

    def get(self, batch_id: int) -> tuple[BatchRef, bytes] | None:
        ref = self.batches.get(batch_id)
        return None if ref is None else (ref, f"payload-{batch_id}".encode())

    def mark_published(self, batch_id: int) -> None:
        self.published.add(batch_id)


class Harness:
    def __init__(self, *, rate: float = 2.0, max_inflight: int = 4, accept: bool = True) -> None:
        self.clock = 100.0
        self.source = FakeSource()
        self.published: list[tuple[str, bytes]] = []
        self.accept = accept
        self.sender = Sender(self.source, self.publish, host_id="h", live_window=120,
                             ack_timeout=60, backfill_per_second=rate, max_inflight=max_inflight,
                             clock=lambda: self.clock, wall_ms=lambda: NOW_MS)

    def publish(self, topic: str, payload: bytes) -> bool:
        if self.accept:
            self.published.append((topic, payload))
        return self.accept

    def take(self) -> list[tuple[str, int]]:
        out = [(t, int(p.split(b"-")[1])) for t, p in self.published]
        self.published.clear()
        return out


def test_live_batches_go_first_then_the_backlog_oldest_first_at_its_rate() -> None:
    h = Harness(rate=2.0, max_inflight=10)
    for i in range(1, 6):
        h.source.add(i, NOW_MS - 3_600_000 + i)  # an hour old: back-log
    h.source.add(6, NOW_MS - 20_000)
    h.source.add(7, NOW_MS - 5_000)  # live
    h.sender.pump()
    assert h.take() == [(LIVE, 7), (LIVE, 6), (BACKFILL, 1), (BACKFILL, 2)]  # burst of 2
    h.sender.pump()
    assert h.take() == []  # no tokens left
    assert h.sender.next_due() == pytest.approx(100.5)
    h.clock += 0.5
    h.sender.pump()
    assert h.take() == [(BACKFILL, 3)]


def test_at_most_max_inflight_unacknowledged() -> None:
    h = Harness(rate=100.0, max_inflight=3)
    for i in range(1, 10):
        h.source.add(i, NOW_MS - 3_600_000 + i)
    h.sender.pump()
    assert [i for _t, i in h.take()] == [1, 2, 3]
    h.clock += 10
    h.sender.pump()
    assert h.take() == []
    del h.source.batches[2]  # acknowledged: deleted from the buffer ...
    h.sender.forget([2])     # ... and no longer in flight
    h.sender.pump()
    assert [i for _t, i in h.take()] == [4]


def test_unacknowledged_batches_are_republished_after_the_timeout() -> None:
    h = Harness()
    h.source.add(1, NOW_MS - 1000)
    h.sender.pump()
    assert h.take() == [(LIVE, 1)]
    h.clock += 59.9
    h.sender.pump()
    assert h.take() == []
    assert h.sender.next_due() == pytest.approx(160.0)
    h.clock += 0.1
    h.sender.pump()
    assert h.take() == [(LIVE, 1)]  # the same payload again
    assert h.sender.resent_total == 1


def test_a_collector_coming_online_makes_everything_in_flight_due_now() -> None:
    h = Harness(rate=2.0, max_inflight=10)
    for i in range(1, 5):
        h.source.add(i, NOW_MS - 3_600_000 + i)
    h.source.add(5, NOW_MS - 1000)
    h.sender.pump()
    assert h.take() == [(LIVE, 5), (BACKFILL, 1), (BACKFILL, 2)]
    h.clock += 1.0  # two more tokens, but nothing is due again before the 60 s ack timeout
    h.sender.pump()
    assert h.take() == [(BACKFILL, 3), (BACKFILL, 4)]
    h.clock += 1.0
    assert h.sender.resend_unacknowledged() == 5
    h.sender.pump()  # live first, then the back-log oldest first at its rate
    assert h.take() == [(LIVE, 5), (BACKFILL, 1), (BACKFILL, 2)]
    h.clock += 1.0
    h.sender.pump()
    assert h.take() == [(BACKFILL, 3), (BACKFILL, 4)]


def test_batch_ids_of_a_replaced_buffer_are_forgotten_before_use() -> None:
    h = Harness(max_inflight=2)
    h.source.add(1, NOW_MS - 1000)
    h.source.add(2, NOW_MS - 900)
    h.sender.pump()
    assert len(h.sender.inflight) == 2
    h.source.generation += 1  # corrupt buffer replaced: ids 1 and 2 now mean other batches
    h.sender.forget([1])
    assert h.sender.inflight == {}
    h.sender.pump()
    assert sorted(i for _t, i in h.take()) == [1, 1, 2, 2]  # the new buffer's, published anew


def test_presence_allows_publishing_unless_collectors_are_known_and_none_is_online() -> None:
    presence = CollectorPresence()
    topic = collector_state_topic

    def state(cid: str, online: bool) -> bytes:
        return encode_collector_state(cid, online=online, ts_ms=NOW_MS)

    assert presence.publishing_allowed and not presence.take_came_online()  # nothing known
    presence.update(topic("a"), state("a", False), retained=True)
    assert not presence.publishing_allowed
    presence.update(topic("b"), state("b", True), retained=True)
    assert presence.publishing_allowed and presence.take_came_online()
    assert not presence.take_came_online()  # once
    presence.update(topic("b"), state("b", True), retained=True)
    assert not presence.take_came_online()  # a retained replay of what we knew
    presence.update(topic("b"), state("b", True), retained=False)
    assert not presence.take_came_online()  # b announced itself again (a role change)
    presence.update(topic("a"), state("a", True), retained=False)
    assert not presence.take_came_online()  # a second one beside b: what we sent reached b
    presence.update(topic("a"), state("a", False), retained=False)
    presence.update(topic("b"), state("b", False), retained=False)
    presence.update(topic("a"), state("a", True), retained=False)
    assert presence.take_came_online()  # none was online, now a is: send again
    presence.update(topic("a"), state("a", False), retained=False)
    presence.update(topic("b"), state("b", False), retained=False)
    assert not presence.publishing_allowed and presence.online_collectors() == []
    presence.update(topic("a"), b"", retained=False)  # state cleared
    presence.update(topic("b"), b"", retained=False)
    assert presence.publishing_allowed and not presence.seen  # as if no collector had spoken
    presence.update(topic("a"), b'{"v":1,"state":"up"}', retained=True)
    presence.update("edgemon/v1/_collectors/x/y/state", state("a", True), retained=True)
    assert presence.invalid_total == 2 and not presence.seen
    presence.update(topic("a"), state("a", False), retained=True)
    presence.reset()  # reconnected: what we knew may be stale
    assert presence.publishing_allowed and not presence.seen
    presence.update(topic("a"), state("a", True), retained=True)
    assert presence.take_came_online()


def test_nothing_is_lost_when_publishing_is_refused() -> None:
    h = Harness(accept=False)
    h.source.add(1, NOW_MS - 1000)
    assert h.sender.pump() == 0
    assert h.sender.inflight == {}
    assert h.sender.next_due() == pytest.approx(101.0)  # pauses instead of spinning
    h.accept = True
    h.clock += 1
    h.sender.pump()
    assert h.take() == [(LIVE, 1)]


def test_reconnect_delay_is_full_jitter_capped() -> None:
    assert reconnect_delay(0, lambda: 0.999) == pytest.approx(0.999)
    assert reconnect_delay(3, lambda: 0.999) == pytest.approx(7.992)
    assert reconnect_delay(20, lambda: 1.0) == 60.0
    assert reconnect_delay(20, lambda: 0.0) == 0.05  # never a busy loop
    assert reconnect_delay(5, lambda: 0.5, cap=4.0) == 2.0
    delays = {reconnect_delay(6) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= 60.0  # spread out, not lock-step


def test_self_metrics_are_well_formed_readings() -> None:
    stats = BufferStats(batches=3, samples=30, pending_cycles=2, pending_samples=7,
                        disk_bytes=4096, oldest_ms=NOW_MS - 90_500, appended_samples_total=100,
                        acknowledged_samples_total=52, dropped_samples_total=11,
                        delivered_after_drop_total=4, in_doubt_samples=2, last_ack_ms=None)
    health = AgentHealth(cycle_seconds=0.01234, buffer=stats,
                         memory_cycles=0, reconnects=2, buffer_recoveries=1, buffer_errors=0,
                         publish_errors=4)
    values = {metric.name: value for metric, _labels, value in readings(health, NOW_MS)}
    assert values["agent_cycle_duration_seconds"] == 0.0123
    assert values["agent_buffer_batches"] == 3
    assert values["agent_buffer_samples"] == 37
    assert values["agent_buffer_oldest_age_seconds"] == 90
    assert values["agent_dropped_samples_total"] == 11
    assert values["agent_appended_samples_total"] == 100
    assert values["agent_acknowledged_samples_total"] == 52
    assert values["agent_dropped_then_delivered_samples_total"] == 4
    assert values["agent_reconnects_total"] == 2
    assert values["agent_publish_errors_total"] == 4
    assert values["agent_memory_rss_bytes"] > 1 << 20
    for metric, labels, _value in readings(health, NOW_MS):
        assert metric.kind in KINDS and labels == ()
        assert metric.name.endswith("_total") == (metric.kind == "counter")


def test_instance_ids_are_new_every_time() -> None:
    ids = {new_instance_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 12 and int(i, 16) >= 0 for i in ids)


def test_the_agent_does_not_import_the_collectors_heavy_dependencies() -> None:
    code = ("import sys\n"
            "import edgemon.agent.cli, edgemon.agent.runner\n"
            "heavy = {'numpy', 'aiohttp', 'pydantic', 'asyncio', 'edgemon.protocol.schema'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


TICK = MetricDef("tick", GAUGE, "")


def _run_cycles(runner: Runner, cycles: int) -> None:
    """Run the agent's loop in a thread until it has done ``cycles`` cycles, then stop it."""
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(lambda: runner.cycles >= cycles, 10, f"{cycles} cycles")
    finally:
        runner.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_the_loop_samples_on_schedule_and_buffers_without_a_broker(tmp_path: Path) -> None:
    config = load_config(None, environ={
        "EDGEMON_AGENT_BROKER_PORT": str(free_port()),  # nobody listens there
        "EDGEMON_AGENT_INTERVAL_SECONDS": "0.05",
        "EDGEMON_AGENT_BATCH_CYCLES": "4",
        "EDGEMON_AGENT_BUFFER_PATH": str(tmp_path / "buffer.db"),
        "EDGEMON_AGENT_HOST_ID": "h"})
    counter = itertools.count()

    def slow_family() -> list[Reading]:
        time.sleep(0.01)  # work inside the cycle must not push the schedule
        return [(TICK, (), next(counter))]

    runner = Runner(config, collectors={"tick": slow_family})
    _run_cycles(runner, 30)
    stats = read_stats(config.buffer.path)
    assert stats.pending_cycles == 0 and stats.batches == -(-runner.cycles // 4)
    times = _cycle_times(config.buffer.path)
    assert len(times) == runner.cycles
    # start + k * interval: the samples sit on the 50 ms grid of the first, with no drift. A
    # cycle the machine ran late is off the grid by its lateness alone (the next is back on
    # it), so the median deviation stays small; a schedule that added the 10 ms of work to
    # every interval would spread deviations evenly over 0-25 ms (median ~12.5 ms).
    deviations = sorted(abs(t - times[0] - round((t - times[0]) / 50) * 50) for t in times)
    assert deviations[len(deviations) // 2] < 8, deviations


def test_a_family_with_a_longer_interval_is_sampled_every_nth_cycle(tmp_path: Path) -> None:
    config = load_config(None, environ={
        "EDGEMON_AGENT_BROKER_PORT": str(free_port()),
        "EDGEMON_AGENT_INTERVAL_SECONDS": "0.05",
        "EDGEMON_AGENT_FAMILIES": "cpu,load",
        "EDGEMON_AGENT_INTERVALS_LOAD": "0.15",  # every third cycle, from the first
        "EDGEMON_AGENT_BUFFER_PATH": str(tmp_path / "buffer.db"),
        "EDGEMON_AGENT_HOST_ID": "h"})
    calls: dict[str, list[int]] = {"cpu": [], "load": []}
    runner: Runner

    def family(name: str) -> Callable[[], list[Reading]]:
        return lambda: calls[name].append(runner.cycles) or []

    runner = Runner(config, collectors={"cpu": family("cpu"), "load": family("load")})
    _run_cycles(runner, 10)
    assert calls["cpu"] == list(range(len(calls["cpu"])))
    assert calls["load"] == [c for c in calls["cpu"] if c % 3 == 0]


def _cycle_times(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    payloads = [row[0] for row in db.execute("SELECT payload FROM batches ORDER BY id")]
    db.close()
    return sorted({s.timestamp_ms for p in payloads for s in expand_samples(decode(p))
                   if s.name == "tick"})


def test_status_shows_the_buffer(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "buffer.db"
    buf = Buffer.open(path, host="h", instance="i", max_bytes=1 << 20, max_age_seconds=3600)
    buf.append(NOW_MS, [(TICK, (), 1)])
    buf.seal(NOW_MS)
    buf.append(NOW_MS + 1, [(TICK, (), 2)])
    monkeypatch.setenv("EDGEMON_AGENT_BUFFER_PATH", str(path))
    buf.ack("i", [(0, 0)], NOW_MS + 2)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split("  ", 1) for line in out.splitlines())
    assert {key: value.strip() for key, value in rows.items() if key in (
        "appended samples", "acknowledged samples", "buffered", "dropped then delivered")} == {
        "appended samples": "2", "acknowledged samples": "1",
        "buffered": "0 batches, 1 samples (1 cycles not yet sealed)",
        "dropped then delivered": "0"}
    assert rows["identity"].strip().startswith("OK: appended = acknowledged + dropped + buffered")
    assert main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["appended_samples"], doc["acknowledged_samples"], doc["dropped_samples"],
            doc["buffered_samples"], doc["identity"]["holds"]) == (2, 1, 0, 1, True)
    assert doc["oldest_buffered_ms"] == NOW_MS + 1
    buf.close()

    db = sqlite3.connect(path)  # the counters no longer add up
    db.execute("UPDATE meta SET value = value + 5 WHERE key = 'appended_samples_total'")
    db.commit()
    db.close()
    assert main(["status"]) == 3
    assert "MISMATCH: appended = acknowledged + dropped + buffered (7 = 1 + 0 + 1)" in (
        capsys.readouterr().out)

    # a fresh install: the agent has not run yet
    monkeypatch.setenv("EDGEMON_AGENT_BUFFER_PATH", str(tmp_path / "missing.db"))
    assert main(["status"]) == 0
    assert capsys.readouterr().out.startswith("no buffer yet at ")
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exists"] is False
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    monkeypatch.setenv("EDGEMON_AGENT_BUFFER_PATH", str(tmp_path / "garbage.db"))
    assert main(["status"]) == 1
    assert "cannot read the buffer" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["check-config", "status"])
def test_output_into_a_closed_pipe_prints_no_traceback(tmp_path: Path, command: str) -> None:
    """`edgemon-agent check-config | head`: the reader went away before we wrote."""
    env = {**os.environ, "EDGEMON_AGENT_BUFFER_PATH": str(tmp_path / "b.db")}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "edgemon.agent.cli", command],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
                                timeout=30)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141  # as a command killed by SIGPIPE


def test_logs_are_json_lines_with_extra_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)  # pytest's capture handlers live there
    setup_logging("info", stream)
    try:
        logging.getLogger("edgemon.agent.test").info("hello %s", "world", extra={"batch": 7})
        logging.getLogger("edgemon.agent.test").debug("not shown")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    [line] = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["msg"], doc["batch"]) == (
        "info", "edgemon.agent.test", "hello world", 7)
    assert doc["ts"].endswith("Z")


def test_throttle_lets_one_through_per_period_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle() == 0
    assert throttle() is None and throttle() is None
    now[0] = 60.0
    assert throttle() == 2


def test_the_version_is_the_package_version() -> None:
    assert __version__ == metadata.version("edgemon")


def test_systemd_notifications_watchdog_and_reload(tmp_path: Path) -> None:
    """Type=notify: READY=1, WATCHDOG=1 from the loop, SIGHUP re-reads the file, STOPPING=1."""
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(10)
    config = tmp_path / "agent.toml"
    config.write_text(f'interval_seconds = 0.1\n[broker]\nport = {free_port()}\n'
                      f'[buffer]\npath = "{tmp_path / "buffer.db"}"\n[log]\nlevel = "info"\n')
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMON_AGENT_")}
    env.update(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="300000")
    agent = subprocess.Popen([sys.executable, "-m", "edgemon.agent.cli", "run", "-c",
                              str(config)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        def receive_until(wanted: str) -> list[str]:
            seen = []
            while True:
                message = sock.recv(4096).decode()
                seen.append(message)
                if message.startswith(wanted):
                    return seen

        assert receive_until("READY=1")[-1].startswith("READY=1\nSTATUS=sampling every 0.1 s")
        receive_until("WATCHDOG=1")
        receive_until("WATCHDOG=1")  # keeps coming while the loop turns
        config.write_text(config.read_text().replace('"info"', '"debug"').replace(
            "interval_seconds = 0.1", "interval_seconds = 0.2"))
        agent.send_signal(signal.SIGHUP)
        assert receive_until("RELOADING=1")[-1].startswith("RELOADING=1\nMONOTONIC_USEC=")
        receive_until("READY=1")
        agent.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        stdout, _ = agent.communicate(timeout=10)
    finally:
        agent.kill()
        agent.wait()
        sock.close()
    assert agent.returncode == 0
    logs = [json.loads(line) for line in stdout.splitlines()]
    [reloaded] = [e for e in logs if e["msg"].startswith("reload: log level")]
    assert reloaded["restart_needed"] == ["interval_seconds"]
    debug = [e["msg"] for e in logs if e["level"] == "debug"]
    assert debug[0] == "reload: configuration read"  # the new level applies at once


def test_an_unacknowledged_catalogue_is_declared_again_ever_less_often(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemon.agent import runner as runner_module
    from edgemon.protocol import encode_ack
    from edgemon.protocol.catalogue import decode_catalogue

    config = load_config(None, environ={
        "EDGEMON_AGENT_BROKER_PORT": str(free_port()), "EDGEMON_AGENT_HOST_ID": "h",
        "EDGEMON_AGENT_BUFFER_PATH": str(tmp_path / "buffer.db"),
        "EDGEMON_AGENT_BUFFER_ACK_TIMEOUT_SECONDS": "10"})
    runner = Runner(config, collectors={})
    now = [1000.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: now[0])
    published: list[tuple[str, bytes, bool]] = []
    monkeypatch.setattr(runner.publisher, "publish",
                        lambda topic, payload, retain=False: published.append(
                            (topic, payload, retain)) or True)
    metric = MetricDef("wide_thing", GAUGE, "", 0, ("k",))
    for i in range(6):
        runner.store.append(1_800_000_000_000 + i, [(metric, (str(n),), n + i)
                                                    for n in range(40)])
    runner.store.seal(1_800_000_010_000)
    declared = []
    for t in range(0, 200):  # 200 s of loop turns, nobody acknowledging
        now[0] = 1000.0 + t
        before = len(published)
        runner._declare_catalogue()
        if len(published) > before:
            declared.append(t)
    assert declared == [0, 10, 30, 70, 150]  # ack timeout, doubling
    topic, payload, retain = published[-1]
    assert topic == "edgemon/v1/h/catalogue" and retain
    ident = decode_catalogue(payload).id
    runner._acks.put(encode_ack(instance="other", seqs=[], catalogues=[ident]))
    runner._apply_acks()
    assert runner.store.newest_catalogue() == (ident, True)
    now[0] += 1000
    runner._declare_catalogue()
    assert len(published) == len(declared)  # acknowledged: not declared again
    runner.store.close()
