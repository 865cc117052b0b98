"""Where the alerting engine keeps its state (``store.py`` holds the SQL, these the connection):

* ``SQLiteBackend``: its own SQLite file (``alerts.db`` beside an embedded store), one
  connection serialised by a lock (WAL, ``synchronous=FULL``);
* ``PostgresBackend``: the collectors' shared PostgreSQL database, schema ``alerting`` (made by
  the store's versioned migrations, ``storage/postgres/migrations.py``), through a pool of its
  own (``storage/postgres/pool.py``), so every collector of a group reads and writes one alert
  state, one outbox and one set of silences.

Both hand ``store.py`` a connection with ``execute``/``executemany`` taking ``?`` placeholders
and rows readable by column name and by index (``sqlite3.Row``, ``Row``). The SQL in
``store.py`` is the dialect both accept (``ON CONFLICT ... DO UPDATE``, ``RETURNING``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["AlertBackend", "PostgresBackend", "Row", "SQLiteBackend", "is_postgres_url"]

SCHEMA = "alerting"  # the PostgreSQL schema of the alert tables


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class AlertBackend(Protocol):
    shared: bool  # several collectors use the same state (only the leader writes cycles)
    where: str  # for logs and the API: a file path, or host:port/database

    def transaction(self) -> contextlib.AbstractContextManager[Any]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def close(self) -> None: ...


class SQLiteBackend:
    """One connection to ``path``, serialised by a lock: the cycle runs in a worker thread,
    the API and the delivery worker call from others. ``schema``: statements run at open."""

    shared = False

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                  timeout=30.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=OFF")
        with self.transaction() as db:
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()


class Row:
    """A result row readable as ``sqlite3.Row`` is: ``row["name"]``, ``row[0]``, ``keys()``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: str | int) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _rows(cursor: Any) -> Any:
    """psycopg row factory making ``Row``s."""
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(index, values)


class PostgresBackend:
    """The alert tables in the PostgreSQL database at ``url`` (schema ``alerting``, applied
    with the store's migrations). Each transaction checks a connection out of a small pool of
    its own; ``wait``: keep trying while the server cannot be reached (the collector's start)."""

    shared = True

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout_s: float = 10.0,
                 wait: bool = False) -> None:
        from edgemon.collector.storage.postgres.pool import PooledDatabase, where

        self.where = where(url)
        self._db = PooledDatabase()
        self._db._open_pool(url, name="edgemon-alerting", pool_size=pool_size,
                            connect_timeout_s=connect_timeout_s, wait=wait,
                            configure=self._configure, first=self._migrate)

    @staticmethod
    def _configure(conn: Any) -> None:
        conn.execute(f"SET search_path = {SCHEMA}")
        conn.row_factory = _rows

    def _migrate(self) -> None:
        from edgemon.collector.storage.postgres import migrations

        with self._db.pool.connection() as conn:
            conn.execute("RESET search_path")  # the store's tables are where it expects them
            try:
                migrations.apply(conn)
            finally:
                conn.execute(f"SET search_path = {SCHEMA}")

    def close(self) -> None:
        self._db.pool.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        from edgemon.collector.storage.postgres.database import PgConn

        with self._db._connection() as conn, conn.transaction():
            yield PgConn(conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        from edgemon.collector.storage.postgres.database import PgConn

        with self._db._connection() as conn:
            return PgConn(conn).execute(sql, params).fetchall()
