"""L0's choice of pending batches (``Compaction._choose_pending``), which reads the
``batches_by_age`` index in pages instead of grouping the whole pending table, against the
plain definition (one ``GROUP BY host_id`` over every pending batch, the old query), on both
backends: random pending tables, small pages, ties in time, hosts due by age, by size, both."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edgemon.collector.storage.sql import SQLStorage
from tests.support.storages import Stores

T0 = 1_780_012_800_000


def reference(db: Any, now_ms: int, delay_ms: int, step: int
              ) -> tuple[list[tuple[int, int, int]], bool]:
    """The choice as the collector made it before: every host's oldest batch and sum, due
    hosts in the order of their oldest batch (then host id), each one's batches by id while the
    budget lasts."""
    rows = db.execute("SELECT host_id, min(received_ms), sum(samples) FROM batches "
                      "GROUP BY host_id ORDER BY 2, 1").fetchall()
    due = [hid for hid, oldest, n in rows if oldest <= now_ms - delay_ms or n >= step]
    budget, chosen, more = step, [], False
    for hid in due:
        if budget <= 0:
            more = True
            break
        first = True
        for batch_id, n in db.execute("SELECT id, samples FROM batches WHERE host_id = ? "
                                      "ORDER BY id", (hid,)):
            if not first and n > budget:
                more = True
                break
            first, budget = False, budget - n
            chosen.append((hid, batch_id, n))
    return chosen, more


def fill(store: SQLStorage, rng: random.Random) -> None:
    hosts = rng.randint(1, 40)
    rows = []
    for i in range(rng.randint(0, 300)):
        hid = rng.randint(1, hosts)
        received = T0 + rng.choice((0, 1000, 2000)) * rng.randint(0, 60)  # many ties
        rows.append((hid, "i1", i, received, T0, T0, rng.choice((1, 50, 480, 3000)), 0, b"x"))
    with store._write() as db:
        db.execute("DELETE FROM batches")
        db.executemany("INSERT INTO batches (host_id, instance, seq, received_ms, t_min, t_max, "
                       "samples, historical, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


@pytest.mark.parametrize("seed", range(3))
def test_the_choice_is_the_one_of_the_whole_table_query(stores: Stores, seed: int) -> None:
    store = stores.open(compact_delay_ms=30_000)
    store.due_page = 7  # many pages, page ends inside runs of equal times
    rng = random.Random(seed)
    try:
        for _ in range(12):
            fill(store, rng)
            for now in (T0, T0 + 30_000, T0 + 60_000, T0 + 200_000):
                for step in (1, 480, 5_000, 20_000, 200_000):
                    store.step_samples = step
                    with store._read() as db:
                        got = store._choose_pending(db, now)
                        want = reference(db, now, store.compact_delay_ms, step)
                    assert got == want, (now, step)
    finally:
        store.close()
