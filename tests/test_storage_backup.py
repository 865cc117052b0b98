"""``edgemon-collector backup`` and ``restore`` (``storage/backup.py``) on both backends: a backup
taken while batches are being stored and compacted restores to a store that holds every sample
of every batch the snapshot holds (and every batch stored before the backup began), once, with
the collector's alert state and tokens; a damaged or unfinished backup is refused before
anything is replaced, and an intact one replaces a store that moved on.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from edgemon.collector.cli import main
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.maintenance import MaintenanceRunner
from edgemon.collector.storage.sql import SQLStorage
from tests.support.storages import Stores
from tests.test_storage_crash import _check, _fleet, _stored_samples
from tests.test_storage_sqlite import DAY, MIN, T0, TEMP, make_items, q

OPTIONS = {"compact_delay_ms": 0, "raw_retention_ms": 3000 * DAY,
           "rollup_1m_retention_ms": 3000 * DAY, "rollup_1h_retention_ms": 3000 * DAY}
LIVE = "live-host"  # the host whose batches keep arriving while the backup is taken
POINTS = 5  # samples per live batch


def _config(folder: Path, url: str | None) -> Path:
    """A collector configuration whose store is in ``folder`` (or at ``url``)."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "collector.toml"
    conf.write_text(f'[storage]\npath = "{folder / "edgemon.db"}"\n'
                    + (f'url = "{url}"\n' if url else ""))
    conf.chmod(0o600)
    return conf


def _source(stores: Stores, tmp_path: Path) -> tuple[Path, str | None]:
    """The configuration of a collector whose store is this test's (a SQLite file in
    ``source/``, or the test's PostgreSQL database), and the database URL if any."""
    url = stores.location if stores.backend == "postgres" else None
    conf = _config(tmp_path / "source", url)
    if url is None:
        stores.path = tmp_path / "source" / "edgemon.db"
    return conf, url


def _live_batch(seq: int) -> object:
    t = T0 + seq * POINTS * 10_000
    return make_items(LIVE, seq, [(t + i * 10_000, TEMP, (), 100 + seq + i)
                                  for i in range(POINTS)], instance="L")


def _live_seqs(st: SQLStorage) -> set[int]:
    with st._read() as db:
        ranges = db.execute("SELECT lo, hi FROM seq_ranges r JOIN hosts h ON h.id = r.host_id "
                            "WHERE h.name = ?", (LIVE,)).fetchall()
    return {seq for lo, hi in ranges for seq in range(lo, hi + 1)}


def _open(location: str) -> SQLStorage:
    return open_storage(location, **OPTIONS)  # type: ignore[return-value]


def test_a_backup_under_ingest_restores_every_sample_it_holds(
        stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = _fleet()
    conf, source_url = _source(stores, tmp_path)
    (tmp_path / "source" / "tokens.json").write_text('{"tokens": []}\n')
    with contextlib.closing(sqlite3.connect(tmp_path / "source" / "alerts.db")) as alerts:
        alerts.execute("CREATE TABLE silences (id TEXT)")
        alerts.execute("INSERT INTO silences VALUES ('s-1')")
        alerts.commit()
    st = stores.open(**OPTIONS)
    st.store_batches(fleet.items)  # pending: compacted while the backup is taken
    runner = MaintenanceRunner(st, interval=0.01, idle_pause=0.0)
    stored: list[int] = []
    stop = threading.Event()

    def ingest() -> None:
        seq = 0
        while not stop.is_set():
            st.store_batches([_live_batch(seq)])  # type: ignore[list-item]
            stored.append(seq)
            seq += 1

    writer = threading.Thread(target=ingest)
    runner.start()
    writer.start()
    try:
        while len(stored) < 20 and writer.is_alive():
            stop.wait(0.01)
        before = set(stored)  # committed before the backup began
        assert main(["backup", str(tmp_path / "backup"), "-c", str(conf)]) == 0
        during = len(stored)
    finally:
        stop.set()
        writer.join()
        runner.stop()
    assert during > len(before), "nothing was stored while the backup was taken"
    assert "backup written" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"edgemon.db" if source_url is None else "edgemon.dump",
                                      "alerts.db", "tokens.json"}
    st.close()

    target_url = stores._postgres.new_database() if stores._postgres else None  # type: ignore[union-attr]
    target_conf = _config(tmp_path / "target", target_url)
    assert main(["restore", str(tmp_path / "backup"), "-c", str(target_conf)]) == 0
    assert "restored and verified" in capsys.readouterr().out
    assert (tmp_path / "target" / "tokens.json").read_text() == '{"tokens": []}\n'
    with contextlib.closing(sqlite3.connect(tmp_path / "target" / "alerts.db")) as alerts:
        assert alerts.execute("SELECT id FROM silences").fetchall() == [("s-1",)]
    restored = _open(target_url or str(tmp_path / "target" / "edgemon.db"))
    try:
        seqs = _live_seqs(restored)
        assert before <= seqs <= set(stored) and seqs == set(range(len(seqs)))
        live = POINTS * len(seqs)
        assert _stored_samples(restored) == live + sum(len(p) for p in fleet.samples.values())
        assert manifest["samples"] == live + sum(item.batch.sample_count
                                                 for item in fleet.items)
        restored.compact_all(T0 + 3000 * DAY // 2)
        _check(restored, fleet)  # the fleet, whole, as queries see it
        counts = restored.query(q(TEMP.name, T0, T0 + (len(stored) + 1) * POINTS * 10_000,
                                  60 * MIN, hosts=(LIVE,), aggregation="count", tier="raw"))
        assert sum(v for r in counts for _, v in r.points) == live
    finally:
        restored.close()


def test_a_damaged_or_unfinished_backup_is_refused_and_nothing_replaced(
        stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = _fleet()
    conf, source_url = _source(stores, tmp_path)
    st = stores.open(**OPTIONS)
    st.store_batches(fleet.items[:3])
    st.close()
    backup = tmp_path / "backup"
    assert main(["backup", str(backup), "-c", str(conf)]) == 0
    assert main(["backup", str(backup), "-c", str(conf)]) == 1  # never over another backup
    assert "is not empty" in capsys.readouterr().err
    st = stores.open(**OPTIONS)
    st.store_batches(fleet.items[3:])  # the store moves on
    st.close()
    shutil.copytree(backup, tmp_path / "good")
    store_file = backup / ("edgemon.db" if source_url is None else "edgemon.dump")
    data = bytearray(store_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    store_file.write_bytes(bytes(data))
    assert main(["restore", str(backup), "-c", str(conf)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    (backup / "manifest.json").unlink()
    assert main(["restore", str(backup), "-c", str(conf)]) == 1
    assert "unfinished" in capsys.readouterr().err
    st = stores.open(**OPTIONS)
    try:
        assert _stored_samples(st) == sum(len(p) for p in fleet.samples.values())
    finally:
        st.close()
    # the intact copy replaces the store that moved on: back to the three batches
    assert main(["restore", str(tmp_path / "good"), "-c", str(conf)]) == 0
    st = stores.open(**OPTIONS)
    try:
        assert _stored_samples(st) == sum(item.batch.sample_count for item in fleet.items[:3])
    finally:
        st.close()
