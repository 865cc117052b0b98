"""Recovery after a fault: time from a broker restart, or a collector restart, until the agent's
back-log is drained (every batch sealed before the restart acknowledged), beside the ack
timeout and the goal: 2 x the reconnect back-off cap + the back-fill time of the back-log,
independent of the ack timeout.

    python benchmarks/recovery.py [--quick] [--tiny]

Real processes (a private Mosquitto, a collector, an agent sampling every 0.2 s, one cycle a
batch, back-fill at 20 batches/s, reconnect back-off capped at 2 s on both sides). Each run:
steady state, then the fault for a few seconds (6 with --quick, 30 without) while the agent
builds a back-log, then the restart. Faults (``FAULTS``): broker kill -9 with persistence,
broker kill -9 that loses the broker's state, collector kill -9. --quick runs the state-lost
broker with and without presence and the collector with presence; the full run every fault
three times with presence and once without.

- *presence*: the collector's presence (SPEC.md) says whether it listens. Until the collector
  publishes it itself, this script publishes it in its place, as the collector would: offline
  when it dies (its Last Will), online once it is connected and subscribed (its /readyz says
  mqtt). The ack timeout is set to 60 s to show that recovery does not wait for it.
- *ack timeout only*: no presence at all (an older collector); the agent re-sends what was
  lost in flight only after its ack timeout. Skipped when the collector publishes presence
  itself (it cannot be switched off).

Writes benchmarks/results/recovery.json.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from benchmarks._common import table, write_result  # noqa: E402
from edgemon.protocol.presence import COLLECTOR_STATE_FILTER  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.presence import publish_collector_state  # noqa: E402
from tests.support.processes import Agent, Collector  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

HOST = "recovery-bench"
STAND_IN = "bench-stand-in"  # the collector id this script publishes presence for
INTERVAL_S = 0.2
BACKFILL_PER_S = 20.0
RECONNECT_CAP_S = 2.0  # broker.reconnect_max_seconds of the agent, mqtt's of the collector


def buffer_ids(agent: Agent, at_most: int | None = None) -> int:
    """Batches in the agent's buffer (with an id up to ``at_most``), read-only."""
    db = sqlite3.connect(f"{agent.buffer.absolute().as_uri()}?mode=ro", uri=True)
    try:
        if at_most is None:
            return int(db.execute("SELECT coalesce(max(id), 0) FROM batches").fetchone()[0])
        return int(db.execute("SELECT count(*) FROM batches WHERE id <= ?",
                              (at_most,)).fetchone()[0])
    finally:
        db.close()


def _started(agent: Agent) -> bool:
    try:
        return buffer_ids(agent) >= 10
    except sqlite3.Error:  # not created yet
        return False


def _subscribed_or_restarted(collector: Collector) -> int:
    """1 once the collector is subscribed; a collector that exited (a transport error it did
    not survive) is started again, as systemd's Restart=on-failure would, and counted."""
    if not collector.running():
        collector.exits = getattr(collector, "exits", 0) + 1  # type: ignore[attr-defined]
        collector.start()
    return 1 + getattr(collector, "exits", 0) if mqtt_ready(collector) else 0


def collector_publishes_presence(broker: Broker) -> bool:
    """Whether a retained collector state is on the broker (the collector publishes its own)."""
    seen = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda *_args: seen.set()
    client.on_connect = lambda c, *_args: c.subscribe(COLLECTOR_STATE_FILTER, 1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        return seen.wait(1.0)
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_ready(collector: Collector) -> bool:
    try:
        return bool(collector.get("/readyz").get("mqtt"))
    except OSError:
        return False  # 503 (not ready) or not listening yet


def announce_when_ready(broker: Broker, collector: Collector, deadline_s: float) -> None:
    """Publish the stand-in's online state the moment the collector is subscribed again."""
    def run() -> None:
        try:
            wait_until(lambda: mqtt_ready(collector), deadline_s, "collector subscribed",
                       interval=0.02)
            publish_collector_state(broker, STAND_IN, online=True)
        except (AssertionError, OSError, TimeoutError):
            pass  # the run's own deadline reports it

    threading.Thread(target=run, daemon=True).start()


FAULTS = {
    "broker": "broker kill -9 (persistence on: sessions and retained states saved every second)",
    "broker, state lost": "broker kill -9 without persistence: sessions, queues and retained "
                          "states gone, so what the agent publishes before the collector "
                          "subscribes again reaches nobody",
    "collector": "collector kill -9 (its session queues for it on the broker)",
}


def one_run(fault: str, presence: bool, outage_s: float, ack_timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker", persistence=fault != "broker, state lost").start()
        collector = Collector(work / "collector", broker).start()
        agent = Agent(work / "agent", broker, host_id=HOST, interval=INTERVAL_S, batch_cycles=1,
                      buffer_extra=f"ack_timeout_seconds = {ack_timeout_s}\n"
                                   f"backfill_batches_per_second = {BACKFILL_PER_S}\n"
                                   "max_inflight = 32")
        row: dict[str, Any] = {"fault": fault, "presence": presence, "outage_s": outage_s,
                               "ack_timeout_s": ack_timeout_s}
        try:
            if presence:
                publish_collector_state(broker, STAND_IN, online=True)
            elif collector_publishes_presence(broker):
                return {**row, "skipped": "the collector publishes presence itself"}
            agent.start()
            wait_until(lambda: _started(agent), 30, "steady state")
            if fault.startswith("broker"):
                broker.kill()
            else:
                collector.kill()
                if presence:
                    publish_collector_state(broker, STAND_IN, online=False)  # its Last Will
            time.sleep(outage_s)  # the outage itself: the agent keeps sampling meanwhile
            last_before = buffer_ids(agent)
            backlog = buffer_ids(agent, last_before)
            restarted = time.monotonic()
            if fault.startswith("broker"):
                broker.start()
                if presence:
                    announce_when_ready(broker, collector, 60)
            else:
                collector.start()
                if presence:
                    publish_collector_state(broker, STAND_IN, online=True)
            exits = wait_until(lambda: _subscribed_or_restarted(collector), 60,
                               "collector subscribed", interval=0.02)
            ready = time.monotonic()
            wait_until(lambda: buffer_ids(agent, last_before) == 0, 3 * ack_timeout_s + 60,
                       "the back-log drained", interval=0.05)
            drained = time.monotonic()
        finally:
            agent.kill()
            collector.kill()
            broker.kill()
    backfill_s = backlog / BACKFILL_PER_S
    goal = 2 * RECONNECT_CAP_S + backfill_s
    recovery = drained - restarted
    # a restarted collector needs its start-up (Python, storage) before it can subscribe: the
    # goal counts from its readiness; after a broker restart it counts from the restart
    judged = drained - ready if fault == "collector" else recovery
    return {**row, "backlog_batches": backlog, "backfill_s": round(backfill_s, 2),
            "recovery_s": round(recovery, 2), "after_collector_ready_s": round(drained - ready, 2),
            "goal_s": round(goal, 2), "within_goal": judged <= goal,
            "collector_exits": exits - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="seconds-long runs (smoke test)")
    args = parser.parse_args()
    # (fault, presence, ack timeout) of every run
    lost = "broker, state lost"
    if args.tiny:
        outage, plan = 2.0, [(lost, True, 60.0), ("collector", True, 60.0)]
    elif args.quick:
        outage, plan = 6.0, [(lost, True, 60.0), (lost, False, 15.0), ("collector", True, 60.0)]
    else:
        outage = 30.0
        plan = [(fault, presence, 60.0) for fault in FAULTS
                for presence in (True, True, True, False)]
    runs = [one_run(fault, presence, outage, ack) for fault, presence, ack in plan]
    columns = ["fault", "presence", "outage_s", "backlog_batches", "ack_timeout_s",
               "recovery_s", "after_collector_ready_s", "backfill_s", "goal_s", "within_goal",
               "collector_exits", "skipped"]
    print(table(runs, columns))
    print("\n(recovery: from the broker or collector restart until every batch sealed before it"
          " is acknowledged; goal: 2 x reconnect back-off cap + back-log / back-fill rate,\n"
          " judged from the restart for the broker and from readiness for the collector;"
          " collector_exits: the collector died on the fault and was started again)")
    headline = []
    for fault in FAULTS:
        ours = [r for r in runs if r["fault"] == fault and r["presence"] and "skipped" not in r]
        legacy = [r for r in runs if r["fault"] == fault and not r["presence"]
                  and "skipped" not in r]
        if not ours:
            continue
        worst = max(ours, key=lambda r: r["recovery_s"])
        baselines = {"goal": worst["goal_s"], "ack timeout": worst["ack_timeout_s"]}
        if legacy:
            baselines["ack timeout only"] = legacy[0]["recovery_s"]
        headline.append({"figure": f"recovery: {fault} (worst of {len(ours)})",
                         "unit": "s", "value": worst["recovery_s"], "baselines": baselines,
                         "note": f"{worst['backlog_batches']} batches back-log; ack timeout "
                                 f"{worst['ack_timeout_s']:g} s (ack timeout only: "
                                 f"{legacy[0]['ack_timeout_s']:g} s)" if legacy else ""})
    path = write_result("recovery", {"runs": runs, "headline": headline, "faults": FAULTS,
                                     "interval_s": INTERVAL_S, "backfill_per_s": BACKFILL_PER_S,
                                     "reconnect_cap_s": RECONNECT_CAP_S})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
