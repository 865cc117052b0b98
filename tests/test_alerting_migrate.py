"""``edgemon-collector migrate`` copies the alert state (``alerts.db`` beside the SQLite store)
into the PostgreSQL database, schema ``alerting``: alerts, history, the outbox with its
idempotency keys, silences, rule progress, the engine id; verified, and safe to run again. An
engine on the copy goes on where the SQLite one stopped: a pending notification keeps its key,
a firing alert is not notified again, new ids follow the copied ones. And ``backup``/``restore``
of a PostgreSQL store carry the alert state (in the dump), restored over the live one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemon.collector.alerting import AlertEngine, parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.collector.alerting.store import AlertStore
from edgemon.collector.cli import main
from edgemon.collector.storage.backup import backup, restore
from edgemon.collector.storage.postgres import PostgresStorage
from edgemon.collector.storage.sqlite import SQLiteStorage
from tests.support.postgres import Postgres, available
from tests.test_alerting_engine import CPU, MIN, RECEIVER, T0, settings

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

RULES = settings() + RECEIVER + CPU.replace('for = "5m"', 'for = "2m"')


def _state(store: AlertStore) -> dict[str, list[tuple[object, ...]]]:
    tables = {"meta": "key", "alerts": "rule, key", "history": "id", "outbox": "id",
              "silences": "id", "rule_state": "rule"}
    return {t: [tuple(r) for r in store.query(f"SELECT * FROM {t} ORDER BY {order}")]
            for t, order in tables.items()}


def test_migrate_copies_the_alert_state_and_an_engine_goes_on_from_it(
        tmp_path: Path, postgres_server: Postgres, capsys: pytest.CaptureFixture[str]) -> None:
    SQLiteStorage(tmp_path / "edgemon.db").close()  # an (empty) store beside alerts.db
    metrics = InMemoryGridStorage(60_000)
    ts = T0 + MIN * np.arange(0, 30, dtype=np.int64)
    metrics.write("cpu_usage_percent", "h1", {"cpu": "total"}, ts, np.full(ts.size, 95.0))
    clock = {"ms": T0}
    rules = parse_rules(RULES)
    lite = AlertEngine(metrics, tmp_path / "alerts.db", rules=rules,
                       clock_ms=lambda: clock["ms"])
    for minute in range(1, 8):
        clock["ms"] = T0 + minute * MIN
        lite.run_cycle()
    lite.store.add_silence([{"name": "host", "value": "h9", "isRegex": False, "isEqual": True}],
                           T0, T0 + 3_600_000, "ops", "maintenance", T0)
    want = _state(lite.store)
    assert want["alerts"] and want["silences"] and len(want["outbox"]) == 1  # firing, pending
    lite.close()

    url = postgres_server.new_database()
    assert main(["migrate", "--from", str(tmp_path / "edgemon.db"), "--to", url]) == 0
    out = capsys.readouterr().out
    assert "alert state outbox: 1 rows verified" in out and "copied and verified" in out
    shared = AlertStore(url)
    assert _state(shared) == want  # row for row, the engine id (idempotency keys) too
    shared.close()
    assert main(["migrate", "--from", str(tmp_path / "edgemon.db"), "--to", url]) == 0
    assert "already migrated; verified again" in capsys.readouterr().out

    # an engine on the copy: still firing, not notified again; the next transition's ids
    # follow the copied ones and its key has the same engine id
    pg = AlertEngine(metrics, url, rules=rules, clock_ms=lambda: clock["ms"])
    for minute in range(8, 12):
        clock["ms"] = T0 + minute * MIN
        assert pg.run_cycle().notifications == 0
    metrics.write("cpu_usage_percent", "h1", {"cpu": "total"},
                  T0 + MIN * np.arange(30, 40, dtype=np.int64), np.full(10, 5.0))
    for minute in range(31, 34):
        clock["ms"] = T0 + minute * MIN
        pg.run_cycle()
    outbox = pg.store.query("SELECT id, history_id, idempotency_key FROM outbox ORDER BY id")
    assert len(outbox) == 2
    (first_id, _, first_key), (second_id, history_id, second_key) = map(tuple, outbox)
    assert first_key == want["outbox"][0][5] and second_id > first_id
    assert history_id > max(row[0] for row in want["history"])
    assert second_key == f"{pg.store.engine_id}-{history_id}"
    assert second_key.split("-")[0] == first_key.split("-")[0]
    pg.close()


def test_restore_of_a_postgres_store_puts_the_alert_state_back(tmp_path: Path,
                                                               postgres_url: str) -> None:
    """Restored over the live database, whose schema ``alerting`` exists (the dump makes it
    again: without dropping it first the restore failed, "schema alerting already exists")."""
    PostgresStorage(postgres_url).close()
    store = AlertStore(postgres_url)
    kept = store.add_silence([{"name": "host", "value": "h1"}], 0, T0, "ops", "kept", 0)
    store.close()
    backup(postgres_url, tmp_path / "backup")
    store = AlertStore(postgres_url)  # changed after the backup: undone by the restore
    store.expire_silence(kept, 5)
    store.add_silence([{"name": "host", "value": "h2"}], 0, T0, "ops", "later", 0)
    store.close()
    restore(tmp_path / "backup", postgres_url)
    store = AlertStore(postgres_url)
    assert [(s["id"], s["ends_ms"], s["comment"]) for s in store.silences()] == [
        (kept, T0, "kept")]
    store.close()
