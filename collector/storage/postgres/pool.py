"""A psycopg connection pool with the collector's fault handling, for every part of the
collector that keeps something in PostgreSQL (the store, ``database.py``; the alerting engine's
state, ``alerting/backends.py``).

``PooledDatabase._open_pool`` makes the pool and runs a first step on it (the migrations),
retrying while the server cannot be reached if asked to (the collector's start: a database
still starting, or down for a moment, is a transient fault). ``_connection()`` checks a
connection out; while the server is unreachable every request fails at once with
``StorageUnavailable`` (one real try per ``RETRY_DOWN_S``), so a caller does not wait a connect
timeout each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from edgemon.collector.storage.base import StorageUnavailable

__all__ = ["PooledDatabase", "where"]

log = logging.getLogger("edgemon.collector.storage")

RETRY_DOWN_S = 1.0  # while the server is unreachable: one real try per second
# How long the pool's own reconnect attempts go on (1 s, 2 s, 4 s apart) before it stops and
# leaves the next one to the next request (one per RETRY_DOWN_S). psycopg_pool's default (5
# minutes) doubles the gap without bound: after an outage of a minute the pool slept 30 s or
# more before its next try, and the collector stored nothing for that long after the server was
# back (measured: 12-17 s after a 5-40 s outage with the default, < 0.2 s with this).
POOL_RECONNECT_S = 5.0


class PooledDatabase:
    """A ``psycopg_pool.ConnectionPool`` (autocommit connections) and its outage state."""

    url: str
    pool: ConnectionPool
    connect_timeout_s: float
    _down_until: float = 0.0  # monotonic time before which requests fail at once
    _down_reason: str = ""

    def _open_pool(self, url: str, *, name: str, pool_size: int, connect_timeout_s: float,
                   wait: bool, configure: Callable[[psycopg.Connection[Any]], None] | None,
                   first: Callable[[], None]) -> None:
        """Open the pool and run ``first()`` on it. ``wait``: if the server cannot be reached,
        retry (with a back-off up to 30 s) until it can, instead of raising."""
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._down_until = 0.0
        self._down_reason = ""
        delay = 1.0
        while True:
            # a new pool for every attempt: a closed one cannot be opened again
            self.pool = ConnectionPool(
                url, min_size=1, max_size=max(2, pool_size), open=False, name=name,
                kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
                configure=configure, check=ConnectionPool.check_connection,
                timeout=connect_timeout_s, reconnect_timeout=POOL_RECONNECT_S)
            try:
                self.pool.open(wait=True, timeout=connect_timeout_s)
                first()
                return
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self.pool.close()
                if not wait:
                    raise StorageUnavailable(f"PostgreSQL at {where(url)}: {exc}") from exc
                log.warning("PostgreSQL at %s unavailable (%s); trying again in %.0f s",
                            where(url), str(exc).strip()[:200], delay)
                time.sleep(delay)
                delay = min(30.0, delay * 2)
            except BaseException:
                self.pool.close()
                raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (see the module's doc for what happens while the server is
        unreachable)."""
        if time.monotonic() < self._down_until:
            raise StorageUnavailable(f"PostgreSQL unavailable: {self._down_reason}")
        conn: psycopg.Connection[Any] | None = None
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            self._went_down(exc)
            raise StorageUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        except psycopg.OperationalError as exc:
            if conn is None or conn.broken or conn.closed:
                self._went_down(exc)
                raise StorageUnavailable(f"PostgreSQL unavailable: {exc}") from exc
            raise
        self._down_until = 0.0

    def _went_down(self, exc: BaseException) -> None:
        if not self._down_until:
            log.warning("PostgreSQL at %s unavailable: %s", where(self.url),
                        str(exc).strip()[:200])
        self._down_reason = str(exc).strip()[:200]
        self._down_until = time.monotonic() + RETRY_DOWN_S


def where(url: str) -> str:
    """Host, port and database of ``url``, without user or password (for logs)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparsable URL)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
