"""Copy a SQLite store into a PostgreSQL one, exactly: ``edgemon-collector migrate``.

Every table of the store is copied row by row with its ids (batches still pending, sequence
ranges, series, blocks, chunks, rollups, quarantine, accounting, cutoffs), through ``COPY``, in
ONE PostgreSQL transaction, from one read snapshot of the SQLite file. Before the commit both
sides are read again in key order and compared: row counts and a SHA-256 of every row, table by
table; any difference rolls everything back. So a copy is whole or absent: a crash or an error
half-way leaves the target as it was, and running the command again starts over.

The target must be empty (just created, or only migrated to its schema) or hold this very copy:
then the command verifies it again and changes nothing (safe to re-run). A target with other
data is refused. The compaction window of the target is the source's.

The alerting engine's state (``alerts.db`` beside the storage file: alert state, history, the
notification outbox and deliveries, silences, rule progress) is copied in the same transaction
into the schema ``alerting`` when that file exists, with its ids and its engine id, so a
notification still waiting in the outbox goes out from PostgreSQL with the same idempotency
key; it is verified the same way. Tokens (``tokens.json``) stay a file of each collector's own.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from edgemon.collector.storage.postgres import migrations
from edgemon.common.sqlite_files import connect_read_only

__all__ = ["MigrationError", "TableCheck", "migrate_sqlite_to_postgres"]

MARKER = "migrated_from_sqlite"  # meta key of the target once a copy was committed
_META_KEYS = ("window_ms", "cutoff_raw", "cutoff_1m", "cutoff_1h")

# table -> (columns, key order); the columns are those both schemas have
_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "hosts": (("id", "name", "online", "status_seen", "instance", "instance_ts", "last_seen_ms",
               "last_status_ms", "clock_offset_ms", "offsets"), "id"),
    "instances": (("host_id", "instance", "first_seen_ms", "last_seen_ms"), "host_id, instance"),
    "seq_ranges": (("host_id", "instance", "lo", "hi"), "host_id, instance, lo"),
    "batches": (("id", "host_id", "instance", "seq", "received_ms", "t_min", "t_max", "samples",
                 "historical", "payload"), "id"),
    "quarantine": (("id", "host_id", "instance", "seq", "received_ms", "quarantined_ms",
                    "reason", "payload"), "id"),
    "series": (("id", "host_id", "name", "labels", "kind", "unit", "scale", "first_ms",
                "last_ms"), "id"),
    "blocks": (("id", "host_id", "window_ms", "n", "times"), "id"),
    "chunks": (("series_id", "window_ms", "block_id", "data"), "block_id, series_id"),
    "dirty": (("host_id", "window_ms", "blocks", "samples"), "host_id, window_ms"),
    "rollups": (("series_id", "tier", "window_ms", "data"), "series_id, tier, window_ms"),
    "instance_accounts": (("host_id", "instance", "counted_batches", "samples",
                           "declared_last_seq", "declared_ms"), "host_id, instance"),
}
_IDENTITY = {"hosts": "id", "batches": "id", "quarantine": "id", "series": "id"}
# the alert state (``alerting/store.py``): table of alerts.db -> (columns, key order), copied
# into the schema ``alerting``
_ALERT_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "meta": (("key", "value"), "key"),
    "rule_state": (("rule", "kind", "signature", "watermark", "last_eval_ms", "duration_ms",
                    "series", "error", "blob"), "rule"),
    "alerts": (("rule", "key", "host", "labels", "status", "active_since", "fired_at",
                "clearing_since", "value", "wm", "last_data", "notified", "fingerprint",
                "alert_labels", "annotations", "updated_ms"), "rule, key"),
    "history": (("id", "rule", "key", "host", "labels", "from_status", "status", "at_ms",
                 "created_ms", "value", "starts_at", "ends_at", "historical", "silenced",
                 "notified", "reason", "fingerprint", "annotations"), "id"),
    "outbox": (("id", "history_id", "receiver", "rule", "fingerprint", "idempotency_key",
                "body", "created_ms", "attempts", "state", "delivered_ms", "delivery_id"), "id"),
    "deliveries": (("id", "receiver", "group_key", "idempotency_key", "sent_ms", "alerts",
                    "status_code"), "id"),
    "receiver_state": (("receiver", "failures", "next_attempt_ms", "last_error"), "receiver"),
    "silences": (("id", "matchers", "starts_ms", "ends_ms", "created_by", "comment",
                  "created_ms", "updated_ms"), "id"),
    "holes": (("rule", "key", "from_ms", "body"), "rule, key, from_ms"),
}
_ALERT_IDENTITY = ("history", "outbox", "deliveries")
_ALERT_SCHEMA = "alerting"
_FETCH = 2_000


class MigrationError(RuntimeError):
    """The copy cannot be made or did not verify; nothing was changed."""


@dataclass(frozen=True, slots=True)
class TableCheck:
    table: str
    rows: int
    sha256: str


def migrate_sqlite_to_postgres(source: str | Path, target_url: str, *,
                               alerts: str | Path | None = None,
                               progress: Callable[[str], None] = lambda _: None
                               ) -> tuple[bool, list[TableCheck]]:
    """Copy ``source`` (a SQLite store file) and the alert state ``alerts`` (default:
    ``alerts.db`` beside ``source``, when it exists) into ``target_url``; (copied now, the
    checks of every table). ``copied`` is False when the target already held this copy
    (verified)."""
    path = Path(source)
    if not path.is_file():
        raise MigrationError(f"{path}: no such SQLite file")
    alerts_path = Path(alerts) if alerts is not None else path.parent / "alerts.db"
    if alerts is not None and not alerts_path.is_file():
        raise MigrationError(f"{alerts_path}: no such SQLite file")
    src = connect_read_only(path, busy_timeout_ms=30_000)
    alert_src = (connect_read_only(alerts_path, busy_timeout_ms=30_000)
                 if alerts_path.is_file() else None)
    try:
        return _migrate(src, alert_src, path, target_url, progress)
    finally:
        src.close()
        if alert_src is not None:
            alert_src.close()


def _migrate(src: sqlite3.Connection, alert_src: sqlite3.Connection | None, path: Path,
             target_url: str, progress: Callable[[str], None]) -> tuple[bool, list[TableCheck]]:
    src.execute("BEGIN")  # one snapshot for the copy and its check
    alert_tables: list[str] = []
    if alert_src is not None:
        alert_src.execute("BEGIN")
        have_alerts = {n for (n,) in alert_src.execute("SELECT name FROM sqlite_schema")}
        alert_tables = [t for t in _ALERT_TABLES if t in have_alerts]
    meta = dict(src.execute("SELECT key, value FROM meta"))
    if "window_ms" not in meta:
        raise MigrationError(f"{path}: not an edgemon storage file (no meta)")
    have = {name for (name,) in src.execute("SELECT name FROM sqlite_schema")}
    tables = [t for t in _TABLES if t in have]
    with psycopg.connect(target_url, autocommit=True) as dst:
        migrations.apply(dst)
        with dst.transaction():
            dst.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                        (migrations.LOCK_NAMESPACE, 2))
            state = dict(dst.execute("SELECT key, value FROM meta").fetchall())
            if state.get(MARKER):
                return False, (_verify(src, dst, tables, progress, meta)
                               + _verify_alerts(alert_src, dst, alert_tables, progress))
            busy = [t for t in ("hosts", "batches", "series", "alerting.history",
                                "alerting.outbox", "alerting.silences") if dst.execute(
                f"SELECT EXISTS (SELECT 1 FROM {t})".encode()).fetchone()[0]]  # type: ignore[index]
            if busy:
                raise MigrationError(f"the target already holds data ({', '.join(busy)}): "
                                     "migrate into an empty database")
            _copy(src, dst, tables, meta, "instance_accounts" in have, progress)
            if alert_src is not None:
                _copy_alerts(alert_src, dst, alert_tables, progress)
            checks = (_verify(src, dst, tables, progress, meta)
                      + _verify_alerts(alert_src, dst, alert_tables, progress))
            dst.execute("INSERT INTO meta (key, value) VALUES (%s, 1)", (MARKER,))
        return True, checks


def _copy_alerts(src: sqlite3.Connection, dst: psycopg.Connection[Any], tables: list[str],
                 progress: Callable[[str], None]) -> None:
    """The alert state into the schema ``alerting``, ids and engine id kept (the target's
    own engine id, made when a collector first opened it, is replaced)."""
    dst.execute(f"DELETE FROM {_ALERT_SCHEMA}.meta".encode())
    for table in tables:
        columns, order = _ALERT_TABLES[table]
        n = 0
        with dst.cursor().copy(f"COPY {_ALERT_SCHEMA}.{table} ({', '.join(columns)}) "
                               f"FROM STDIN".encode()) as copy:
            for row in _rows(src, table, columns, order):
                copy.write_row(row)
                n += 1
        progress(f"alert state {table}: {n} rows copied")
    for table in _ALERT_IDENTITY:
        name = f"{_ALERT_SCHEMA}.{table}"
        dst.execute(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)".encode())


def _verify_alerts(src: sqlite3.Connection | None, dst: psycopg.Connection[Any],
                   tables: list[str], progress: Callable[[str], None]) -> list[TableCheck]:
    """The alert tables on both sides: the same rows (count and SHA-256)."""
    checks = []
    for table in tables if src is not None else []:
        columns, order = _ALERT_TABLES[table]
        want = _digest(_rows(src, table, columns, order))
        got = _digest(_rows(dst.cursor(binary=True), f"{_ALERT_SCHEMA}.{table}", columns,
                            order))
        if want != got:
            raise MigrationError(f"alert state {table}: source has {want[0]} rows (sha256 "
                                 f"{want[1][:16]}), target {got[0]} (sha256 {got[1][:16]}): "
                                 "not the same copy")
        checks.append(TableCheck(f"{_ALERT_SCHEMA}.{table}", want[0], want[1]))
        progress(f"alert state {table}: {want[0]} rows verified (sha256 {want[1][:16]})")
    return checks


def _copy(src: sqlite3.Connection, dst: psycopg.Connection[Any], tables: list[str],
          meta: dict[str, Any], accounts: bool, progress: Callable[[str], None]) -> None:
    window_ms = int(meta["window_ms"])
    dst.execute("DELETE FROM meta WHERE key = ANY(%s)", (list(_META_KEYS),))
    with dst.cursor().copy("COPY meta (key, value) FROM STDIN") as copy:
        for key in _META_KEYS:
            copy.write_row((key, int(meta.get(key, 0))))
    _make_partitions(src, dst, window_ms)
    if accounts:  # copied as they are: the trigger must not count the batches again
        dst.execute("ALTER TABLE batches DISABLE TRIGGER instance_accounts_stored")
    for table in tables:
        columns, order = _TABLES[table]
        cols = ", ".join(columns)
        n = 0
        with dst.cursor().copy(f"COPY {table} ({cols}) FROM STDIN".encode()) as copy:
            for row in _rows(src, table, columns, order):
                copy.write_row(row)
                n += 1
        progress(f"{table}: {n} rows copied")
    if accounts:
        dst.execute("ALTER TABLE batches ENABLE TRIGGER instance_accounts_stored")
    for table, column in _IDENTITY.items():
        dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "  # type: ignore[arg-type]
                    f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)".encode())
    dst.execute("SELECT setval('blocks_id_seq', coalesce((SELECT max(id) FROM blocks), 0) + 1, "
                "false)")


def _make_partitions(src: sqlite3.Connection, dst: psycopg.Connection[Any],
                     window_ms: int) -> None:
    """The partitions every copied block, chunk and rollup row needs (the target is not in
    use yet: making them inside the copy's transaction is safe)."""
    from edgemon.collector.storage.sql.store import TIERS

    wanted: set[tuple[str, int, int]] = set()
    for (w,) in src.execute("SELECT DISTINCT window_ms FROM blocks UNION "
                            "SELECT DISTINCT window_ms FROM chunks"):
        low = w - w % window_ms
        wanted |= {("blocks", low, low + window_ms), ("chunks", low, low + window_ms)}
    for name, (width, tier_window) in TIERS.items():
        for (w,) in src.execute("SELECT DISTINCT window_ms FROM rollups WHERE tier = ?",
                                (width,)):
            low = w - w % tier_window
            wanted.add((f"rollups_{name}", low, low + tier_window))
    for parent, low, high in sorted(wanted):
        dst.execute(f'CREATE TABLE IF NOT EXISTS "{parent}_{low}" PARTITION OF "{parent}" '
                    f"FOR VALUES FROM ({low}) TO ({high})".encode())


def _rows(db: Any, table: str, columns: Iterable[str], order: str
          ) -> Iterator[tuple[Any, ...]]:
    """Every row of ``table`` in key order (``db``: a sqlite3 connection or psycopg cursor)."""
    cur = db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
    while rows := cur.fetchmany(_FETCH):
        yield from (tuple(r) for r in rows)


def _digest(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update(repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)).encode())
        n += 1
    return n, h.hexdigest()


def _verify(src: sqlite3.Connection, dst: psycopg.Connection[Any], tables: list[str],
            progress: Callable[[str], None], meta: dict[str, Any]) -> list[TableCheck]:
    """Both sides, table by table, in key order: the same rows (count and SHA-256)."""
    checks = []
    target_meta = dict(dst.execute("SELECT key, value FROM meta WHERE key = ANY(%s)",
                                   (list(_META_KEYS),)).fetchall())
    source_meta = {k: int(meta.get(k, 0)) for k in _META_KEYS}
    if target_meta != source_meta:
        raise MigrationError(f"meta differs: source {source_meta}, target {target_meta}")
    for table in tables:
        columns, order = _TABLES[table]
        want = _digest(_rows(src, table, columns, order))
        got = _digest(_rows(dst.cursor(binary=True), table, columns, order))
        if want != got:
            raise MigrationError(f"{table}: source has {want[0]} rows (sha256 {want[1][:16]}), "
                                 f"target {got[0]} (sha256 {got[1][:16]}): not the same copy")
        checks.append(TableCheck(table, want[0], want[1]))
        progress(f"{table}: {want[0]} rows verified (sha256 {want[1][:16]})")
    return checks
