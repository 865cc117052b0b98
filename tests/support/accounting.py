"""Exact accounting of one agent's samples, checked from outside: ``edgemon-agent status
--json`` on the agent's side, the accounting API on the collector's."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from typing import Any

from .processes import BIN, Agent, Collector, buffer_meta
from .waiting import wait_until


def agent_status(agent: Agent) -> dict[str, Any]:
    """``edgemon-agent status --json``; fails the test unless the buffer's identity holds."""
    result = subprocess.run([str(BIN / "edgemon-agent"), "status", "--json", "-c",
                             str(agent.config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    assert doc["identity"]["holds"] and doc["lost_samples"] >= 0, doc
    return doc


def unacknowledged(agent: Agent) -> dict[tuple[str, int], int]:
    """Samples of every batch the buffer still holds or dropped in doubt, by (instance, seq):
    the collector may have stored them without its acknowledgement having arrived."""
    db = sqlite3.connect(f"{agent.buffer.absolute().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT instance, seq, samples FROM batches UNION ALL "
                          "SELECT instance, seq, samples FROM dropped_published").fetchall()
    finally:
        db.close()
    return {(instance, seq): samples for instance, seq, samples in rows}


def accounting(collector: Collector, host: str, timeout: float = 10) -> dict[str, Any]:
    """The collector's accounting of ``host``, with the samples it holds over all time."""
    now_ms = int(time.time() * 1000)
    doc: dict[str, Any] = collector.get(
        f"/edgemon/api/v1/accounting?host={host}&start={now_ms - 86_400_000}"
        f"&end={now_ms + 3_600_000}", timeout=timeout)
    return doc


def stored_of(doc: dict[str, Any], batches: dict[tuple[str, int], int]) -> int:
    """Samples of ``batches`` that the accounting ``doc`` says are stored."""
    ranges = {i["instance"]: i["seq_ranges"] for i in doc["instances"]}
    return sum(n for (instance, seq), n in batches.items()
               if any(lo <= seq <= hi for lo, hi in ranges.get(instance, [])))


def assert_exact_accounting(collector: Collector, agent: Agent) -> dict[str, Any]:
    """Stop the agent cleanly, then: what the collector stores is exactly what the agent had
    acknowledged or saw delivered after a drop, plus the unacknowledged batches it holds."""
    def drained() -> bool:  # the back-log gone: what is left is the batches still in flight
        meta = buffer_meta(agent.buffer)  # (few, and a small share of all appended so far)
        return meta["batches"] <= 2 and meta["buffered"] <= meta["appended"] // 10

    wait_until(drained, 60, "the buffer to drain")
    assert agent.terminate() == 0, agent.output()[-2000:]
    status = agent_status(agent)
    assert status["buffered_samples"] <= status["appended_samples"] // 10, (
        f"most of the back-log is left: {status}")
    held = unacknowledged(agent)
    seen: dict[str, Any] = {}

    def adds_up() -> bool:
        # the answer's time is not what is tested: on a loaded machine a collector busy with
        # a back-log's compaction has answered in more than 10 s (CI: two fault tests)
        doc = seen["doc"] = accounting(collector, agent.host_id, timeout=60)
        expected = (status["acknowledged_samples"] + status["dropped_then_delivered_samples"]
                    + stored_of(doc, held))
        seen["expected"] = expected
        return doc["samples"] == expected

    wait_until(adds_up, 30, f"stored == acknowledged + delivered after drop + held and stored "
                            f"({status}, {seen})")
    doc = seen["doc"]
    assert doc["samples_complete"], doc
    # the data itself, counted in the query path, holds every accounted sample exactly once
    assert doc["range"]["samples"] == doc["samples"] and doc["range"]["exact"], doc["range"]
    return {**status, "stored": doc["samples"], "accounting": doc,
            "dropped": status["lost_samples"]}
