"""The alerting engine's state: alert state, history, the notification outbox, deliveries,
silences and per-rule progress. In its own SQLite file beside an embedded store, or in the
shared PostgreSQL database (schema ``alerting``) when the collectors share one: ``backends.py``.

This module is the only one that knows the tables: the engine hands it records
(``AlertRecord``, ``HistoryRecord``, ``OutboxRecord``, ``RuleProgress``, ``HoleRecord``) and
gets records back; columns are named, and the JSON inside them is encoded and decoded here.

Everything one evaluation cycle decides (state rows, history rows, outbox rows, watermarks) is
written in one transaction (``AlertStore.cycle()``), so a crash leaves either all of it or none.
A delivery marks its outbox rows delivered in the same transaction that records the delivery.

The tables are those of ``_SCHEMA`` (SQLite) and of migration 3 of the PostgreSQL store
(``storage/postgres/migrations.py``, the same columns with PostgreSQL types); the SQL here is
what both accept.

Why one module of ~600 lines: it is the only one that knows the tables (the rule of this
package), so every record, statement and the schema stay together.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from edgemon.collector.alerting.backends import (
    AlertBackend,
    PostgresBackend,
    SQLiteBackend,
    is_postgres_url,
)

__all__ = ["AlertRecord", "AlertStore", "CycleWrite", "HistoryRecord", "HoleRecord",
           "OutboxRecord", "RuleProgress"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rule_state (
    rule TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    signature TEXT NOT NULL,       -- what the state depends on (kind, metric, match, step)
    watermark INTEGER NOT NULL,    -- newest evaluation time processed
    last_eval_ms INTEGER,          -- wall clock of the last cycle
    duration_ms REAL,
    series INTEGER,
    error TEXT,
    blob TEXT                      -- kind-specific extra state (JSON), e.g. EWMA baselines
);
CREATE TABLE IF NOT EXISTS alerts (   -- every series that is pending or firing (or has an
    rule TEXT NOT NULL,               -- EWMA baseline worth keeping: see blob)
    key TEXT NOT NULL,
    host TEXT NOT NULL,
    labels TEXT NOT NULL,
    status TEXT NOT NULL,             -- pending | firing
    active_since INTEGER,
    fired_at INTEGER,
    clearing_since INTEGER,
    value REAL,
    wm INTEGER,
    last_data INTEGER,
    notified INTEGER NOT NULL DEFAULT 0,
    fingerprint TEXT NOT NULL,
    alert_labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (rule, key)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    host TEXT NOT NULL,
    labels TEXT NOT NULL,
    from_status TEXT NOT NULL,
    status TEXT NOT NULL,             -- pending | firing | resolved | inactive
    at_ms INTEGER NOT NULL,           -- sample time of the transition
    created_ms INTEGER NOT NULL,      -- wall clock when recorded
    value REAL,
    starts_at INTEGER,
    ends_at INTEGER,
    historical INTEGER NOT NULL,
    silenced INTEGER NOT NULL,
    notified INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL,
    annotations TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_at ON history (at_ms);
CREATE INDEX IF NOT EXISTS history_rule_host ON history (rule, host, at_ms);
CREATE INDEX IF NOT EXISTS history_created ON history (created_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    history_id INTEGER NOT NULL,
    receiver TEXT NOT NULL,           -- a [[receiver]] name, or "mqtt"
    rule TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body TEXT NOT NULL,               -- the alert object (webhook) or payload (mqtt), JSON
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending', -- pending | delivered | dropped
    delivered_ms INTEGER,
    delivery_id INTEGER,
    UNIQUE (history_id, receiver)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (receiver, state, id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    receiver TEXT NOT NULL,
    group_key TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    sent_ms INTEGER NOT NULL,
    alerts INTEGER NOT NULL,
    status_code INTEGER
);
CREATE TABLE IF NOT EXISTS receiver_state (
    receiver TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_ms INTEGER NOT NULL,
    ends_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS holes (
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (rule, key, from_ms)
);
"""


# --- records: one per table row ---------------------------------------------------------------

class _Record:
    """A row as a dataclass: its fields are the table's columns (``id`` is the database's)."""

    TABLE: ClassVar[str]
    KEY: ClassVar[tuple[str, ...]] = ()  # the primary key, for ``upsert_sql``
    JSON: ClassVar[frozenset[str]] = frozenset()  # columns holding JSON text
    BOOL: ClassVar[frozenset[str]] = frozenset()  # columns holding 0/1

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "id"]  # type: ignore[arg-type]

    @classmethod
    def insert_sql(cls) -> str:
        names = cls.columns()
        return (f"INSERT INTO {cls.TABLE} ({', '.join(names)}) "
                f"VALUES ({', '.join('?' * len(names))})")

    @classmethod
    def upsert_sql(cls) -> str:
        """Insert, or replace the row with the same ``KEY``."""
        rest = [n for n in cls.columns() if n not in cls.KEY]
        return (f"{cls.insert_sql()} ON CONFLICT ({', '.join(cls.KEY)}) DO UPDATE SET "
                + ", ".join(f"{n}=excluded.{n}" for n in rest))

    @classmethod
    def row_of(cls, record: _Record) -> tuple[Any, ...]:
        """The values of ``cls``'s columns in ``record`` (one of ``cls`` or of a subclass that
        carries more), JSON columns encoded."""
        values = ((n, getattr(record, n)) for n in cls.columns())
        return tuple(json.dumps(v) if n in cls.JSON and v is not None
                     else int(v) if n in cls.BOOL else v for n, v in values)

    @classmethod
    def from_row(cls, row: Any) -> Self:
        out: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            value = row[f.name]
            if f.name in cls.JSON and value is not None:
                value = json.loads(value)
            elif f.name in cls.BOOL:
                value = bool(value)
            out[f.name] = value
        return cls(**out)


@dataclass(frozen=True, slots=True)
class AlertRecord(_Record):
    """A series that is pending or firing, with its timers (``alerts``)."""

    TABLE: ClassVar[str] = "alerts"
    KEY: ClassVar[tuple[str, ...]] = ("rule", "key")
    JSON: ClassVar[frozenset[str]] = frozenset({"labels", "alert_labels", "annotations"})
    BOOL: ClassVar[frozenset[str]] = frozenset({"notified"})

    rule: str
    key: str
    host: str
    labels: dict[str, str]
    status: str  # pending | firing
    active_since: int | None
    fired_at: int | None
    clearing_since: int | None
    value: float | None
    wm: int | None
    last_data: int | None
    notified: bool
    fingerprint: str
    alert_labels: dict[str, str]
    annotations: dict[str, str]
    updated_ms: int


@dataclass(slots=True)
class HistoryRecord(_Record):
    """One recorded transition (``history``); ``id`` is set once stored. The engine's
    ``Transition`` is one of these with the alert's labels."""

    TABLE: ClassVar[str] = "history"
    JSON: ClassVar[frozenset[str]] = frozenset({"labels", "annotations"})
    BOOL: ClassVar[frozenset[str]] = frozenset({"historical", "silenced", "notified"})

    rule: str
    key: str
    host: str
    labels: dict[str, str]
    from_status: str
    status: str
    at_ms: int
    created_ms: int
    value: float | None
    starts_at: int | None
    ends_at: int | None
    historical: bool
    silenced: bool
    notified: bool
    reason: str
    fingerprint: str
    annotations: dict[str, str]
    id: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxRecord(_Record):
    """One message body queued for one receiver (``outbox``; delivery state is the store's)."""

    TABLE: ClassVar[str] = "outbox"

    history_id: int
    receiver: str
    rule: str
    fingerprint: str
    idempotency_key: str
    body: str  # JSON text, sent as it is
    created_ms: int


@dataclass(frozen=True, slots=True)
class RuleProgress(_Record):
    """How far a rule got and how its last evaluation went (``rule_state``)."""

    TABLE: ClassVar[str] = "rule_state"
    KEY: ClassVar[tuple[str, ...]] = ("rule",)
    JSON: ClassVar[frozenset[str]] = frozenset({"blob"})

    rule: str
    kind: str
    signature: str
    watermark: int
    last_eval_ms: int | None
    duration_ms: float | None
    series: int | None
    error: str | None
    blob: dict[str, Any] | None  # kind-specific state, e.g. EWMA baselines


@dataclass(frozen=True, slots=True)
class HoleRecord(_Record):
    """A stretch of a series still waiting for back-filled data (``holes``)."""

    TABLE: ClassVar[str] = "holes"
    KEY: ClassVar[tuple[str, ...]] = ("rule", "key", "from_ms")
    JSON: ClassVar[frozenset[str]] = frozenset({"body"})

    rule: str
    key: str
    from_ms: int
    body: dict[str, Any]


class CycleWrite:
    """What one evaluation cycle writes, all in the transaction of ``AlertStore.cycle()``."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def add_history(self, record: HistoryRecord) -> int:
        """Store a transition; returns its id (the outbox rows refer to it)."""
        cursor = self._db.execute(f"{HistoryRecord.insert_sql()} RETURNING id",
                                  HistoryRecord.row_of(record))
        return int(cursor.fetchone()[0])

    def add_outbox(self, records: Iterable[OutboxRecord]) -> None:
        self._db.executemany(OutboxRecord.insert_sql(), [OutboxRecord.row_of(r) for r in records])

    def put_alerts(self, records: Iterable[AlertRecord]) -> None:
        """Insert or replace (by rule and key) the state of active series."""
        self._db.executemany(AlertRecord.upsert_sql(), [AlertRecord.row_of(r) for r in records])

    def delete_alerts(self, rule: str, keys: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM alerts WHERE rule=? AND key=?",
                             [(rule, k) for k in keys])

    def forget_rule(self, rule: str, *, progress: bool) -> None:
        """Drop a removed or redefined rule's alerts and holes (and its progress)."""
        self._db.execute("DELETE FROM alerts WHERE rule=?", (rule,))
        self._db.execute("DELETE FROM holes WHERE rule=?", (rule,))
        if progress:
            self._db.execute("DELETE FROM rule_state WHERE rule=?", (rule,))

    def save_progress(self, progress: RuleProgress) -> None:
        self._db.execute(RuleProgress.upsert_sql(), RuleProgress.row_of(progress))

    def replace_holes(self, rule: str, holes: Iterable[HoleRecord]) -> None:
        self._db.execute("DELETE FROM holes WHERE rule=?", (rule,))
        self._db.executemany(HoleRecord.upsert_sql(), [HoleRecord.row_of(h) for h in holes])


class AlertStore:
    """The alert state at ``location``: a SQLite file path, or a ``postgresql://`` URL (the
    collectors' shared database; ``wait``: keep trying while it cannot be reached)."""

    def __init__(self, location: str | Path, *, wait: bool = False) -> None:
        self.backend: AlertBackend = (
            PostgresBackend(str(location), wait=wait) if is_postgres_url(location)
            else SQLiteBackend(location, _SCHEMA))
        # write transactions committed through this store: the key of what readers keep
        # (http/alerts_cache.py); only exact if no one else writes (``shared`` is False)
        self.writes = 0
        with self.transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('engine_id', ?), ('schema', ?) "
                       "ON CONFLICT (key) DO NOTHING",
                       (uuid.uuid4().hex[:12], str(SCHEMA_VERSION)))
        # the first half of every idempotency key: one per state, whoever writes it
        self.engine_id: str = str(self.query(
            "SELECT value FROM meta WHERE key='engine_id'")[0][0])

    @property
    def shared(self) -> bool:
        """Whether other collectors use this state too (PostgreSQL)."""
        return self.backend.shared

    def close(self) -> None:
        self.backend.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction: committed at the end, rolled back on an exception."""
        try:
            with self.backend.transaction() as db:
                yield db
        finally:  # after the commit: a reader that saw the old count may have read the new
            self.writes += 1  # rows (and misses next time), none sees the new count early

    @contextlib.contextmanager
    def cycle(self) -> Iterator[CycleWrite]:
        """One evaluation cycle's writes: committed together, or (on an exception) none."""
        with self.transaction() as db:
            yield CycleWrite(db)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A read for diagnostics and tests; the program's own reads have methods below. Rows
        read by column name or index (``sqlite3.Row``, or ``backends.Row``)."""
        return self.backend.query(sql, params)

    # --- state, progress, history -------------------------------------------------------------

    def rule_progress(self) -> dict[str, RuleProgress]:
        return {r["rule"]: RuleProgress.from_row(r)
                for r in self.query("SELECT * FROM rule_state")}

    def alerts(self, *, rule: str | None = None, host: str | None = None,
               status: str | None = None) -> list[AlertRecord]:
        """Active series (every one, or those matching the filters), by rule and key."""
        where, params = _filters((("rule=?", rule), ("host=?", host), ("status=?", status)))
        return [AlertRecord.from_row(r) for r in self.query(
            f"SELECT * FROM alerts{where} ORDER BY rule, key", params)]

    def alerts_page(self, *, after: tuple[str, str] | None = None, limit: int,
                    rule: str | None = None, host: str | None = None,
                    status: str | None = None) -> list[AlertRecord]:
        """At most ``limit`` active series by rule and key, those after the ``(rule, key)`` of
        the last one of the previous page (a keyset page: the primary key serves it, and an
        alert that comes or goes between two pages never shifts the others)."""
        where, params = _filters((("rule=?", rule), ("host=?", host), ("status=?", status)))
        if after is not None:
            where += (" AND" if where else " WHERE") + " (rule, key) > (?, ?)"
            params += list(after)
        return [AlertRecord.from_row(r) for r in self.query(
            f"SELECT * FROM alerts{where} ORDER BY rule, key LIMIT ?", [*params, limit])]

    def alert_counts(self, *, rule: str | None = None, host: str | None = None,
                     status: str | None = None) -> list[tuple[str, str, int]]:
        """``(rule, status, count)`` of the active series matching the filters, by rule."""
        where, params = _filters((("rule=?", rule), ("host=?", host), ("status=?", status)))
        return [(r["rule"], r["status"], int(r["n"])) for r in self.query(
            f"SELECT rule, status, count(*) AS n FROM alerts{where} GROUP BY rule, status "
            "ORDER BY rule, status", params)]

    def rule_health(self, rule: str) -> dict[str, Any]:
        """``AlertEngine.rule_health`` of ``rule`` as stored by the engine that evaluates it."""
        rows = self.query(
            "SELECT last_eval_ms, duration_ms, series, error, watermark, "
            "(SELECT count(*) FROM alerts WHERE rule=?) AS active, "
            "(SELECT count(*) FROM holes WHERE rule=?) AS holes "
            "FROM rule_state WHERE rule=?", (rule, rule, rule))
        if not rows:
            return {"last_eval_ms": None, "duration_ms": None, "series": 0, "error": None,
                    "watermark_ms": -1, "active": 0, "holes": 0}
        r = rows[0]
        return {"last_eval_ms": r["last_eval_ms"], "duration_ms": r["duration_ms"],
                "series": r["series"] or 0, "error": r["error"], "watermark_ms": r["watermark"],
                "active": int(r["active"]), "holes": int(r["holes"])}

    def holes(self) -> list[HoleRecord]:
        return [HoleRecord.from_row(r)
                for r in self.query("SELECT * FROM holes ORDER BY rule, from_ms")]

    def history(self, *, rule: str | None = None, host: str | None = None,
                since_ms: int | None = None, until_ms: int | None = None,
                status: str | None = None, limit: int = 1000) -> list[HistoryRecord]:
        """Transitions by sample time (``since_ms <= at_ms < until_ms``), newest first."""
        where, params = _filters((("rule=?", rule), ("host=?", host), ("at_ms>=?", since_ms),
                                  ("at_ms<?", until_ms), ("status=?", status)))
        return [HistoryRecord.from_row(r) for r in self.query(
            f"SELECT * FROM history{where} ORDER BY at_ms DESC, id DESC LIMIT ?",
            [*params, limit])]

    def history_page(self, *, since_ms: int, until_ms: int, after: tuple[int, int] | None = None,
                     rule: str | None = None, host: str | None = None,
                     status: str | None = None, limit: int = 1000) -> list[HistoryRecord]:
        """Transitions with ``since_ms <= at_ms < until_ms``, oldest first, those after the
        ``(at_ms, id)`` of the last row of the previous page: a long history page by page
        (the export, http/export.py)."""
        where, params = _filters((("rule=?", rule), ("host=?", host), ("status=?", status),
                                  ("at_ms>=?", since_ms), ("at_ms<?", until_ms)))
        if after is not None:  # a row-value comparison: the index on at_ms still serves it
            where += " AND (at_ms, id) > (?, ?)"
            params += list(after)
        return [HistoryRecord.from_row(r) for r in self.query(
            f"SELECT * FROM history{where} ORDER BY at_ms, id LIMIT ?", [*params, limit])]

    def resolutions_since(self, created_ms: int) -> list[HistoryRecord]:
        """Firing -> resolved transitions recorded at or after ``created_ms`` (wall clock),
        oldest first (Alertmanagers are sent them again for a while)."""
        return [HistoryRecord.from_row(r) for r in self.query(
            "SELECT * FROM history WHERE status='resolved' AND from_status='firing' "
            "AND created_ms>=? ORDER BY id", (created_ms,))]

    # --- silences ---------------------------------------------------------------------------

    def silences(self, now_ms: int | None = None, include_expired: bool = False,
                 ) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM silences ORDER BY created_ms")
        out = []
        for r in rows:
            if not include_expired and now_ms is not None and r["ends_ms"] <= now_ms:
                continue
            out.append({"id": r["id"], "matchers": json.loads(r["matchers"]),
                        "starts_ms": r["starts_ms"], "ends_ms": r["ends_ms"],
                        "created_by": r["created_by"], "comment": r["comment"],
                        "created_ms": r["created_ms"], "updated_ms": r["updated_ms"]})
        return out

    def add_silence(self, matchers: list[dict[str, Any]], starts_ms: int, ends_ms: int,
                    created_by: str, comment: str, now_ms: int) -> str:
        sid = uuid.uuid4().hex
        with self.transaction() as db:
            db.execute("INSERT INTO silences (id, matchers, starts_ms, ends_ms, created_by, "
                       "comment, created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,?)",
                       (sid, json.dumps(matchers), starts_ms, ends_ms, created_by, comment,
                        now_ms, now_ms))
        return sid

    def expire_silence(self, sid: str, now_ms: int) -> bool:
        with self.transaction() as db:
            row = db.execute("SELECT ends_ms FROM silences WHERE id=?", (sid,)).fetchone()
            if row is None:
                return False
            if row["ends_ms"] > now_ms:
                db.execute("UPDATE silences SET ends_ms=?, updated_ms=? WHERE id=?",
                           (now_ms, now_ms, sid))
        return True

    # --- outbox -----------------------------------------------------------------------------

    def pending_receivers(self) -> list[str]:
        return [r[0] for r in self.query(
            "SELECT DISTINCT receiver FROM outbox WHERE state='pending'")]

    def pending_rows(self, receiver: str, limit: int) -> list[Any]:
        """The oldest ``limit`` rows not yet delivered to ``receiver``, in order."""
        return self.query("SELECT * FROM outbox WHERE receiver=? AND state='pending' "
                          "ORDER BY id LIMIT ?", (receiver, limit))

    def oldest_pending(self, receiver: str) -> Any | None:
        rows = self.query("SELECT * FROM outbox WHERE receiver=? AND state='pending' "
                          "ORDER BY id LIMIT 1", (receiver,))
        return rows[0] if rows else None

    def group_rows(self, receiver: str, first: Any, group_wait_ms: int,
                   limit: int) -> list[Any]:
        """The message that starts with ``first``: pending rows of the same receiver and rule
        created within ``group_wait_ms`` of it, in id order, at most one per fingerprint."""
        rows = self.query(
            "SELECT * FROM outbox WHERE receiver=? AND state='pending' AND rule=? AND id>=? "
            "AND created_ms<=? ORDER BY id LIMIT ?",
            (receiver, first["rule"], first["id"], first["created_ms"] + group_wait_ms,
             limit * 4))
        out: list[Any] = []
        seen: set[str] = set()
        for r in rows:
            if r["fingerprint"] in seen:
                break  # the next transition of an alert already in this message waits
            seen.add(r["fingerprint"])
            out.append(r)
            if len(out) >= limit:
                break
        return out

    def mark_delivered(self, ids: list[int], receiver: str, group_key: str,
                       idempotency_key: str, now_ms: int, status_code: int | None,
                       state: str = "delivered") -> None:
        """Record the delivery and mark its rows, in one transaction."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO deliveries (receiver, group_key, idempotency_key, sent_ms, alerts, "
                "status_code) VALUES (?,?,?,?,?,?) ON CONFLICT (idempotency_key) DO UPDATE SET "
                "sent_ms=excluded.sent_ms RETURNING id",
                (receiver, group_key, idempotency_key, now_ms, len(ids), status_code))
            delivery_id = cur.fetchone()[0]
            db.executemany("UPDATE outbox SET state=?, delivered_ms=?, delivery_id=?, "
                           "attempts=attempts+1 WHERE id=? AND state='pending'",
                           [(state, now_ms, delivery_id, i) for i in ids])
            db.execute("DELETE FROM receiver_state WHERE receiver=?", (receiver,))

    def record_failure(self, receiver: str, ids: list[int], error: str, now_ms: int,
                       initial_ms: int, max_ms: int) -> int:
        """One more failed attempt: back off exponentially. Returns the next attempt time."""
        with self.transaction() as db:
            row = db.execute("SELECT failures FROM receiver_state WHERE receiver=?",
                             (receiver,)).fetchone()
            failures = (row["failures"] if row else 0) + 1
            delay = min(max_ms, initial_ms * 2 ** min(failures - 1, 40))
            next_attempt = now_ms + delay
            db.execute("INSERT INTO receiver_state (receiver, failures, next_attempt_ms, "
                       "last_error) VALUES (?,?,?,?) ON CONFLICT (receiver) DO "
                       "UPDATE SET failures=excluded.failures, next_attempt_ms=excluded."
                       "next_attempt_ms, last_error=excluded.last_error",
                       (receiver, failures, next_attempt, error[:500]))
            db.executemany("UPDATE outbox SET attempts=attempts+1 WHERE id=?",
                           [(i,) for i in ids])
        return next_attempt

    def next_attempt_ms(self, receiver: str) -> int:
        rows = self.query("SELECT next_attempt_ms FROM receiver_state WHERE receiver=?",
                          (receiver,))
        return int(rows[0][0]) if rows else 0

    def drop_receiver_rows(self, receivers_kept: set[str], now_ms: int) -> int:
        """Pending rows for receivers that no longer exist are dropped (not delivered)."""
        with self.transaction() as db:
            names = [r[0] for r in db.execute(
                "SELECT DISTINCT receiver FROM outbox WHERE state='pending'")]
            gone = [n for n in names if n not in receivers_kept]
            count = 0
            for name in gone:
                count += db.execute("UPDATE outbox SET state='dropped', delivered_ms=? "
                                    "WHERE receiver=? AND state='pending'",
                                    (now_ms, name)).rowcount
        return count

    def prune(self, before_ms: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM outbox WHERE state!='pending' AND delivered_ms<?",
                       (before_ms,))
            db.execute("DELETE FROM history WHERE created_ms<? AND id NOT IN "
                       "(SELECT history_id FROM outbox)", (before_ms,))
            db.execute("DELETE FROM deliveries WHERE sent_ms<?", (before_ms,))
            db.execute("DELETE FROM silences WHERE ends_ms<?", (before_ms,))


def _filters(clauses: Iterable[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """`` WHERE a=? AND b=?`` and its parameters, for the clauses whose value is not None."""
    given = [(clause, value) for clause, value in clauses if value is not None]
    if not given:
        return "", []
    return " WHERE " + " AND ".join(c for c, _ in given), [v for _, v in given]
