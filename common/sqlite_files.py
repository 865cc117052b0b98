"""Reading an SQLite file that another process may be writing (the running agent's buffer, a
collector's store): a connection that cannot write, waiting for the writer's lock for a while.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["connect_read_only"]


def connect_read_only(path: str | Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """A read-only connection (URI ``mode=ro``: never creates the file, never writes it) in
    autocommit mode, which waits up to ``busy_timeout_ms`` for a lock held by a writer."""
    db = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True,
                         isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except BaseException:
        db.close()
        raise
    return db
