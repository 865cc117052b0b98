"""Leader election through a PostgreSQL session advisory lock.

Each collector keeps one dedicated connection (autocommit, straight to PostgreSQL: a pooler in
transaction mode would hand the session, and its lock, to someone else) and asks
``pg_try_advisory_lock(key)`` every ``check_s`` seconds. The session that holds the lock keeps it
until it ends: PostgreSQL releases it when the connection closes, the backend is terminated
(``pg_terminate_backend``) or the server restarts.

States: **follower** (no lock) -> **pending** (lock taken, waiting one lease) -> **leader**.
The holder re-checks every ``check_s`` that its backend still holds the lock (``pg_locks``);
each successful check, started at monotonic time ``t``, extends its lease to ``t + lease_s``.

Never two leaders, and what bounds the half-dead window:

* ``is_leader()`` is true only before the lease ends, on this process's own monotonic clock: a
  leader whose checks hang (a half-dead connection: partition, frozen middlebox, stalled
  server) stops leading ``lease_s`` after its last good check began, without any reply. A
  watcher thread then tells the listeners and shuts the socket under the blocked check.
* The lock can be freed while its holder still believes in it (the backend terminated, the
  server restarted, the server's keepalive gave up on a peer that is merely slow). A check that
  began before the lock was freed may still have succeeded, so the old holder may lead until
  at most ``lease_s`` after the lock was freed. Therefore a collector that takes the lock
  *waits* ``lease_s`` (measured from when ``pg_try_advisory_lock`` returned, which is after the
  lock was freed) before it leads. The old holder's lease is over by then. This needs every
  collector of the group to use the same ``lease_s`` (and monotonic clocks that run at the same
  rate; they do, to parts per million).
* Work is gated at step granularity (callers check ``is_leader()`` before every step): a step
  that began just before the lease ended may finish after it. Steps are short (a maintenance
  step, one evaluation cycle, one delivery attempt); their effects must be idempotent
  (notifications carry idempotency keys; storage maintenance runs in transactions).

Take-over time after the leader dies: PostgreSQL notices the dead session (at once when the
process dies or its backend is terminated: the kernel closes the socket; for a silent peer,
within the server-side ``tcp_keepalives_idle + tcp_keepalives_interval x tcp_keepalives_count``
or ``tcp_user_timeout`` set on this session) + up to ``check_s`` until a follower asks again +
``lease_s`` waiting + up to ``check_s`` to the next check that promotes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from edgemon.collector.cluster.leader import Leadership

__all__ = ["PostgresLeader", "lock_key"]

log = logging.getLogger("edgemon.collector.cluster")

FOLLOWER, PENDING, LEADER = "follower", "pending", "leader"

# Is our backend holding the advisory lock? pg_try_advisory_lock(bigint) shows in pg_locks as
# classid = high 32 bits, objid = low 32 bits, objsubid = 1.
_HOLDING = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND objsubid = 1 "
            "AND classid::bigint = ((%(key)s::bigint >> 32) & 4294967295) "
            "AND objid::bigint = (%(key)s::bigint & 4294967295)")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    digest = hashlib.sha256(f"edgemon.collector.leader:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLeader(Leadership):
    """Contend for leadership of ``name`` through the database at ``url`` (a libpq URL)."""

    kind = "postgresql"

    def __init__(self, url: str, *, name: str = "edgemon", collector_id: str = "",
                 check_s: float = 1.0, lease_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if lease_s < 2 * check_s:
            raise ValueError("lease_s must be at least twice check_s")
        self.url = url
        self.name = name
        self.key = lock_key(name)
        self.collector_id = collector_id
        self.check_s = check_s
        self.lease_s = lease_s
        self.clock = clock
        self.acquisitions = 0  # times the lock was taken
        self.lease_expiries = 0  # times leadership ended because no check succeeded in time
        self.check_failures = 0  # checks or connections that failed
        self.checks = 0  # checks that found the lock still ours
        self._state = FOLLOWER
        self._lease_until = 0.0
        self._pending_until = 0.0
        self._epoch = 0  # bumped by every step-down: a check begun before it counts for nothing
        self._mutex = threading.Lock()
        self._conn: Any = None
        self._conn_lock = threading.Lock()  # closing vs. shutting the socket from the watcher
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._outage_logged = False

    # --- the interface --------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._run, "edgemon-leader"), (self._watch, "edgemon-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop leading at once, then release the lock (close the session)."""
        self._stop.set()
        self._step_down("stopping", expired=False)
        self._shutdown_socket()
        for thread in self._threads:
            thread.join(timeout)
        self._close()

    def is_leader(self) -> bool:
        with self._mutex:
            return self._state == LEADER and self.clock() < self._lease_until

    def status(self) -> dict[str, Any]:
        with self._mutex:
            state, left = self._state, max(0.0, self._lease_until - self.clock())
        doc = super().status()
        doc.update({"state": state if state != LEADER or left > 0 else FOLLOWER,
                    "lock": self.name, "lease_seconds": self.lease_s,
                    "check_seconds": self.check_s,
                    "lease_left_seconds": round(left, 3) if state != FOLLOWER else None,
                    "acquisitions": self.acquisitions, "checks": self.checks,
                    "lease_expiries": self.lease_expiries,
                    "check_failures": self.check_failures})
        return doc

    # --- the checking thread --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self.clock()
            try:
                self._round(began)
            except Exception as exc:  # psycopg.Error, OSError, or a bug: never kill the thread
                self.check_failures += 1
                self._lost_connection(exc)
            self._stop.wait(max(0.0, self.check_s - (self.clock() - began)))

    def _round(self, began: float) -> None:
        with self._mutex:
            state, epoch = self._state, self._epoch
        if self._conn is None:
            self._conn = self._connect()
        if state == FOLLOWER:
            got = self._conn.execute("SELECT pg_try_advisory_lock(%s::bigint)",
                                     (self.key,)).fetchone()
            done = self.clock()
            if not got or not got[0]:
                return
            with self._mutex:
                if self._epoch != epoch or self._stop.is_set():
                    raise ConnectionAbortedError("stepped down while taking the lock")
                self._state = PENDING
                self._lease_until = began + self.lease_s
                self._pending_until = done + self.lease_s
            self.acquisitions += 1
            log.info("took the leader lock %r; leading in %.1f s (one lease, so that a previous "
                     "leader has stopped)", self.name, self.lease_s,
                     extra={"lock": self.name, "key": self.key})
            return
        row = self._conn.execute(_HOLDING, {"key": self.key}).fetchone()
        if not row or row[0] != 1:
            raise ConnectionAbortedError("our session no longer holds the leader lock")
        gained = False
        with self._mutex:
            if self._epoch != epoch or self._state == FOLLOWER:
                raise ConnectionAbortedError("stepped down during the check")
            if began >= self._lease_until:
                raise ConnectionAbortedError("the lease ran out before the check began")
            self._lease_until = began + self.lease_s
            self.checks += 1
            if self._state == PENDING and self.clock() >= self._pending_until:
                self._state = LEADER
                gained = True
        if gained:
            log.info("leading (lock %r)", self.name, extra={"lock": self.name})
            self._changed(True)

    def _connect(self) -> Any:
        import psycopg

        idle = max(1, int(self.lease_s / 2))
        options = (f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval=1 "
                   f"-c tcp_keepalives_count=3 -c tcp_user_timeout={int(self.lease_s * 1000)} "
                   f"-c statement_timeout={int(self.lease_s * 1000)}")
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(2, int(self.lease_s)),
            application_name=f"edgemon-leader {self.collector_id}"[:63],
            keepalives=1, keepalives_idle=idle, keepalives_interval=1, keepalives_count=3,
            tcp_user_timeout=int(self.lease_s * 1000), options=options)
        if self._outage_logged:
            log.info("leader election: connected to PostgreSQL again")
            self._outage_logged = False
        return conn

    def _lost_connection(self, exc: BaseException) -> None:
        was = self._step_down(f"leader lock check failed: {exc}", expired=False)
        self._close()
        if not self._stop.is_set() and (was or not self._outage_logged):
            self._outage_logged = True
            log.warning("leader election: %s; %s", _one_line(exc),
                        "stopped leading" if was == LEADER else "retrying",
                        extra={"lock": self.name})

    def _close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- the lease watcher ----------------------------------------------------------------

    def _watch(self) -> None:
        tick = min(0.25, max(0.02, self.check_s / 4))
        while not self._stop.wait(tick):
            with self._mutex:
                expired = self._state != FOLLOWER and self.clock() >= self._lease_until
            if expired:
                was = self._step_down("lease expired", expired=True)
                if was is not None:
                    log.warning("leader lease expired: no check of the leader lock succeeded "
                                "for %.1f s (database unreachable or slow); %s", self.lease_s,
                                "stopped leading" if was == LEADER else "not taking over",
                                extra={"lock": self.name})
                self._shutdown_socket()  # unblock a hanging check; the session is dropped

    # --- shared -----------------------------------------------------------------------------

    def _step_down(self, why: str, *, expired: bool) -> str | None:
        """Become a follower; the state we left (None if we were one). Listeners hear it."""
        with self._mutex:
            was = self._state
            if was == FOLLOWER:
                return None
            self._state = FOLLOWER
            self._lease_until = 0.0
            self._epoch += 1
            if expired:
                self.lease_expiries += 1
        log.debug("leader election: step down from %s (%s)", was, why)
        if was == LEADER:
            self._changed(False)
        return was

    def _shutdown_socket(self) -> None:
        """Break the connection under a blocked query (the checking thread then reconnects)."""
        with self._conn_lock:
            conn = self._conn
            if conn is None:
                return
            with contextlib.suppress(Exception):
                sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
