"""kill -9 during compaction loses nothing and counts nothing twice.

The compaction runs in a child process that SIGKILLs itself in the middle of a transaction:
after writing N chunk or rollup rows, or just before the N-th COMMIT of a compaction step
(``EDGEMON_STORAGE_TEST_KILL=<stage>:<N>``). The parent
then reopens the store and checks every sample against the reference, before and after
finishing the compaction. On both backends (for PostgreSQL the client dies, the server rolls
its transaction back; the server itself dying is ``test_storage_postgres.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from edgemon.collector.storage.encoding import decode_chunks, decode_times
from edgemon.collector.storage.sql import SQLStorage
from tests.support.storages import Stores
from tests.test_storage_sqlite import (
    DAY,
    HOUR,
    INTERVAL,
    MIN,
    T0,
    Fleet,
    assert_matches,
    q,
    reference,
)

CHILD = """
import sys
from edgemon.collector.storage import open_storage
st = open_storage(sys.argv[1], compact_delay_ms=0, close_grace_ms=int(sys.argv[3]),
                  step_samples=5_000)  # several transactions per stage
st.compact_all(int(sys.argv[2]))
print("compaction finished")
"""

SPAN = 5 * HOUR


def _fleet() -> Fleet:
    f = Fleet()
    rng = np.random.default_rng(11)
    for h, host in enumerate(("a-1", "b-2")):
        f.add_batches(host, f"i{h}", 0, T0 + h * 3_000, SPAN // INTERVAL, rng)
    return f


def _check(st: object, fleet: Fleet) -> None:
    for tier, step in (("raw", 30 * MIN), ("1m", 30 * MIN), ("1h", HOUR)):
        for agg in ("count", "sum", "last", "max"):
            query = q("cpu_usage_percent", T0, T0 + SPAN, step, aggregation=agg, tier=tier)
            assert_matches(st.query(query), reference(fleet, query))  # type: ignore[attr-defined]
        query = q("net_bytes_total", T0, T0 + SPAN, step, rate=True, tier=tier)
        assert_matches(st.query(query), reference(fleet, query))  # type: ignore[attr-defined]


def _stored_samples(st: SQLStorage) -> int:
    """Samples physically kept: in chunks (decoded against their blocks) plus pending batches."""
    with st._read() as db:
        times = {bid: decode_times(t) for bid, t in db.execute("SELECT id, times FROM blocks")}
        rows = db.execute("SELECT block_id, data FROM chunks").fetchall()
        pending = db.execute("SELECT coalesce(sum(samples), 0) FROM batches").fetchone()[0]
    _, _, sizes = decode_chunks([r[1] for r in rows], [times[r[0]] for r in rows])
    return int(sizes.sum()) + pending


def _run_child(location: str, now: int, grace: int, kill: str
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEMON_STORAGE_TEST_KILL": kill}
    return subprocess.run([sys.executable, "-c", CHILD, location, str(now), str(grace)],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kill", ["l0:1", "l0:25", "l0end:1", "l0end:2", "l1:1", "l1:30", "l1:45",
                                  "l1end:1"])
def test_kill_9_during_compaction(stores: Stores, kill: str) -> None:
    fleet = _fleet()
    st = stores.open(compact_delay_ms=0)
    items = fleet.items
    third = len(items) // 3
    if kill.startswith("l1"):
        # several L0 blocks per window, so that L1 merges and rolls up real work
        for part in (items[:third], items[third:2 * third], items[2 * third:]):
            st.store_batches(part)
            st.close_grace_ms = 10 * DAY
            st.compact_all(T0 + SPAN)
        assert st.backlog()["pending_batches"] == 0
    else:
        st.store_batches(items)
    rows_before = Stores.sql(st, "SELECT count(*) FROM chunks")
    st.close()

    child = _run_child(stores.location, T0 + SPAN + DAY, 10 * MIN, kill)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "compaction finished" not in child.stdout

    st = stores.open(compact_delay_ms=0)
    if kill.endswith(":1") and kill.startswith("l0"):
        # the killed first transaction left nothing behind
        assert Stores.sql(st, "SELECT count(*) FROM chunks") == rows_before
    total = sum(len(p) for p in fleet.samples.values())
    assert _stored_samples(st) == total  # nothing lost, nothing stored twice
    _check(st, fleet)  # nor counted twice
    st.compact_all(T0 + SPAN + DAY)
    assert st.backlog(T0 + SPAN + DAY)["closable_windows"] == 0
    _check(st, fleet)
    assert _stored_samples(st) == total
    st.close()


def test_child_without_kill_finishes(stores: Stores) -> None:
    """The harness itself: without the hook the child completes (so the kills above are real)."""
    fleet = _fleet()
    st = stores.open(compact_delay_ms=0)
    st.store_batches(fleet.items)
    st.close()
    child = _run_child(stores.location, T0 + SPAN + DAY, 10 * MIN, "")
    assert child.returncode == 0, child.stderr
    assert "compaction finished" in child.stdout
    st = stores.open(compact_delay_ms=0)
    assert st.backlog(T0 + SPAN + DAY) == {"pending_batches": 0, "pending_samples": 0,
                                           "dirty_windows": 0, "closable_windows": 0}
    _check(st, fleet)
    st.close()
