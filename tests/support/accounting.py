"""Exact accounting of one agent's samples, checked from outside (its buffer file and the
collector's API): every sample it ever buffered is stored once, dropped (counted) or still
buffered."""

from __future__ import annotations

from .processes import Agent, Collector, buffer_meta, stored_samples
from .waiting import wait_until


def assert_exact_accounting(collector: Collector, agent: Agent) -> dict[str, int]:
    """Stop the agent cleanly, then: stored + dropped + still buffered == ever buffered.

    Samples still in the stopped agent's buffer are not lost (the next start sends them); if one
    of them had also been stored, or anything stored twice, the stored count would be too high.
    """
    wait_until(lambda: buffer_meta(agent.buffer)["batches"] <= 2, 60, "the buffer to drain")
    assert agent.terminate() == 0, agent.output()[-2000:]
    meta = buffer_meta(agent.buffer)
    assert meta["buffered"] <= meta["appended"] // 10, f"most of the back-log is left: {meta}"
    expected = meta["appended"] - meta["dropped"] - meta["buffered"]
    wait_until(lambda: stored_samples(collector, agent.host_id) == expected, 20,
               f"stored == appended - dropped - buffered ({meta})")
    stored = stored_samples(collector, agent.host_id)
    assert stored == expected
    return {**meta, "stored": stored}
