"""One storage test, two backends: ``Stores`` opens the store a test works on, in SQLite (a file
in the test's temp directory) or PostgreSQL (a database of its own on the session's server).

``Stores.open(**opts)`` opens the same store again every time (a restart); ``Stores.sql`` reads
one value through the store's own read transaction, so a test can look at a table on either
backend with the same SQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemon.collector.storage.sql import SQLStorage

from .postgres import Postgres

BACKENDS = ("sqlite", "postgres")


class Stores:
    def __init__(self, backend: str, tmp_path: Path, postgres: Postgres | None = None) -> None:
        self.backend = backend
        self.path = tmp_path / "edgemon.db"
        self._postgres = postgres
        self._url: str | None = None

    @property
    def location(self) -> str:
        """The file path or the database URL of the store."""
        if self.backend == "sqlite":
            return str(self.path)
        if self._url is None:
            assert self._postgres is not None
            self._url = self._postgres.new_database()
        return self._url

    def open(self, *, mixin: type | None = None, **opts: Any) -> SQLStorage:
        """The store, as the backend's class (with ``mixin`` in front, if given)."""
        cls: type[SQLStorage]
        if self.backend == "sqlite":
            from edgemon.collector.storage.sqlite import SQLiteStorage

            cls = SQLiteStorage
        else:
            from edgemon.collector.storage.postgres import PostgresStorage

            cls = PostgresStorage
            opts.setdefault("pool_size", 4)
        if mixin is not None:
            cls = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {})
        return cls(self.location, **opts)

    @staticmethod
    def sql(storage: SQLStorage, statement: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row of ``statement`` (``?`` placeholders)."""
        with storage._read() as db:
            row = db.execute(statement, params).fetchone()
        return None if row is None else row[0]
