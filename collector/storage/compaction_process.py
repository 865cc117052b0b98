"""Storage maintenance (compaction, rollups, retention, quarantine) in a process of its own,
supervised by the collector.

The collector's interpreter runs the MQTT loop, ingest and HTTP; compaction decoding stored
batches and building chunks in the same interpreter took about a third of its time (the GIL).
``CompactionProcess`` runs ``MaintenanceRunner`` in a child process (``spawn``: a fresh
interpreter, no inherited threads or connections) with its own connection to the store: SQLite
through its own connection on the same file (WAL; the two writers are serialised by SQLite's
lock, each waiting up to ``busy_timeout``), PostgreSQL through its own small pool (the advisory
write lock serialises them). Every compaction transaction is bounded (``txn_samples``), so the
ingest writer never waits long for the lock.

The parent keeps the face ``/metrics`` reads (``runs``, ``errors``, ``stats``, ``gauges``,
``sizes_interval``): the child reports after every round over a pipe. The parent passes the
child what only it knows, several times a second: whether this collector leads (``should_run``)
and whether messages wait to be stored (``busy``), plus the ids of pending batches its readers
found unreadable (to quarantine). A child that dies (crash, OOM kill) is counted as a failed
round, logged and started again with back-off (1 s, doubling to 30 s); the collector never exits
for it. Whatever the child was doing is rolled back by the store (every step is transactions
that write their results and remove their inputs together). ``stop()`` lets the round in
progress finish, then ends the child.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from edgemon.collector.storage.base import Storage, StorageStats
from edgemon.collector.storage.maintenance import MaintenanceRunner, StorageGauges

__all__ = ["CompactionProcess"]

FORGET_INTERVAL_S = 10.0
log = logging.getLogger("edgemon.collector.storage.maintenance")

POLL = 0.1  # seconds between the supervisor's looks at the child and the flags
RESTART_MIN, RESTART_MAX = 1.0, 30.0  # back-off before starting a dead child again
STOP_WAIT = 20.0  # seconds a stopping child gets to finish its round before it is killed
# SQLite: the child's connections commit without an fsync of their own (WAL mode). Ingest's
# commits stay FULL, and each one's fsync of the WAL covers compaction's earlier frames too; a
# power loss can only roll back the newest compaction/retention transactions, whole, which
# leaves their batches pending to be compacted again (collector/STORAGE.md, Durability).
COMPACTION_SYNCHRONOUS = "NORMAL"


class CompactionProcess:
    """Call ``start()`` once the storage is open and ``stop()`` before closing it.

    ``target`` and ``options`` open the store in the child (``storage.open_storage``);
    ``storage`` is the parent's own handle on the same store (its cache of decoded pending
    batches is pruned of compacted ones, and readers' unreadable notes are passed on)."""

    def __init__(self, target: str, options: dict[str, Any], storage: Storage, *,
                 interval: float = 10.0, busy: Callable[[], bool] = lambda: False,
                 should_run: Callable[[], bool] = lambda: True,
                 backlog_interval: float = 10.0, sizes_interval: float = 120.0,
                 log_level: str | None = None) -> None:
        self.target = target
        self.options = options
        self.storage = storage
        self.interval = interval
        self.busy = busy
        self.should_run = should_run
        self.backlog_interval = backlog_interval
        self.sizes_interval = sizes_interval
        self.log_level = log_level or logging.getLevelName(logging.getLogger().level)
        self.runs = 0  # rounds finished (in any child)
        self.errors = 0  # rounds that failed, and children that died
        self.restarts = 0
        self.stats = StorageStats()
        self.gauges = StorageGauges()
        self.pid: int | None = None  # the running child's
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._next_forget = 0.0  # monotonic time of the next pruning of the parent's caches

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="edgemon-compaction",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the child's round in progress finish (or kill it after ``STOP_WAIT``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def refresh_gauges(self, *, force: bool = False) -> None:
        """The child refreshes the gauges after its rounds; nothing to do here."""

    # -- the supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        backoff = RESTART_MIN
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                clean = self._run_child()
            except Exception:
                log.exception("storage compaction process failed to start")
                clean = False
            if self._stop.is_set():
                break
            if not clean:
                self.errors += 1
            if time.monotonic() - began > 60:
                backoff = RESTART_MIN
            log.warning("storage compaction process ended; starting it again in %.0f s",
                        backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(RESTART_MAX, backoff * 2)
            self.restarts += 1

    def _run_child(self) -> bool:
        """Start a child and serve it until it ends or we stop; whether it ended cleanly."""
        reports, child_end = self._ctx.Pipe(duplex=False)
        notes_in, notes = self._ctx.Pipe(duplex=False)
        stop = self._ctx.Event()
        leading = self._ctx.Value("b", 0, lock=False)
        busy = self._ctx.Value("b", 0, lock=False)
        # the child waits for SQLite's write lock (the number of that wait; 0: it does not).
        # Not on PostgreSQL: its advisory lock queues waiters, so the writer need not wait.
        waiting = self._ctx.Value("i", 0, lock=False)
        # and the other way round: the collector's writer waits for it (``_ingest_write``)
        writer = self._ctx.Value("i", 0, lock=False)
        self._flags(leading, busy)
        if not _is_postgres(self.target):
            self.storage.compaction_waits = lambda: waiting.value  # type: ignore[attr-defined]
            self.storage.writer_flag = writer  # type: ignore[attr-defined]
        proc = self._ctx.Process(
            target=child_main, name="edgemon-compaction", daemon=True,
            args=(self.target, self.options, child_end, notes_in, stop, leading, busy, waiting,
                  writer, self.interval, self.backlog_interval, self.sizes_interval,
                  self.log_level))
        proc.start()
        child_end.close()
        notes_in.close()
        self.pid = proc.pid
        log.info("storage compaction process started", extra={"pid": proc.pid})
        deadline = float("inf")  # set when we stop
        try:
            while proc.is_alive() or reports.poll():
                if self._stop.is_set() and not stop.is_set():
                    stop.set()
                    deadline = time.monotonic() + STOP_WAIT
                if time.monotonic() > deadline:
                    log.warning("storage compaction process did not stop: killed")
                    proc.kill()
                self._flags(leading, busy)
                self._pass_notes(notes)
                if reports.poll(POLL):
                    try:
                        self._report(reports.recv())
                    except (EOFError, OSError):
                        proc.join(1.0)
                        break
            proc.join()
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
            waiting.value = 0  # a child killed while it waited: the writer need not wait
            reports.close()
            notes.close()
            self.pid = None
        if proc.exitcode != 0:
            log.error("storage compaction process died", extra={"exitcode": proc.exitcode})
        return proc.exitcode == 0

    def _flags(self, leading: Any, busy: Any) -> None:
        try:
            leading.value = int(bool(self.should_run()) and not self._stop.is_set())
            busy.value = int(bool(self.busy()))
        except Exception:
            log.exception("reading the maintenance flags failed")

    def _pass_notes(self, notes: Connection) -> None:
        """Ids of pending batches the parent's readers found unreadable: quarantined by the
        child's next step."""
        noted_set = getattr(self.storage, "_unreadable", None)
        lock = getattr(self.storage, "_unreadable_lock", None)
        if not noted_set or lock is None:
            return
        with lock:
            noted = sorted(noted_set)
            noted_set.clear()
        # the child gone: its successor's compaction meets them anyway
        with contextlib.suppress(OSError):
            notes.send(noted)

    def _report(self, report: tuple[bool, StorageStats, StorageGauges]) -> None:
        ok, stats, gauges = report
        if ok:
            self.runs += 1
        else:
            self.errors += 1
        # the writer's counters are this process's, the rest the child's
        counted = getattr(self.storage, "counted", None)
        writer = {k: v for k, v in (counted() if counted is not None else {}).items()
                  if k.startswith("writer_")}
        self.stats = replace(stats, compaction={**stats.compaction, **writer}) \
            if writer else stats
        self.gauges = gauges
        forget = getattr(self.storage, "forget_compacted", None)
        # Pruning the parent's caches of decoded pending batches is memory hygiene only (a
        # query uses an entry only for a batch it read as still pending), and it reads the
        # identity of every cached batch: at most once per FORGET_INTERVAL_S, not per round
        # (the profile of a sustained ingest run put it first, at 9 % of the collector's CPU).
        now = time.monotonic()
        if forget is not None and now >= self._next_forget:
            self._next_forget = now + FORGET_INTERVAL_S
            try:
                forget()
            except Exception:
                log.exception("pruning the cache of pending batches failed")


def child_main(target: str, options: dict[str, Any], reports: Connection, notes: Connection,
               stop: Any, leading: Any, busy: Any, waiting: Any, writer: Any, interval: float,
               backlog_interval: float,
               sizes_interval: float, log_level: str) -> None:
    """The compaction process: open the store, run maintenance rounds, report each one."""
    import signal

    from edgemon.collector.storage import open_storage
    from edgemon.common.logs import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the collector decides when we stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    setup_logging(log_level.lower() if log_level.isalpha() else "info")
    parent = multiprocessing.parent_process()

    def alive() -> bool:
        return parent is None or parent.is_alive()

    storage = None
    delay = RESTART_MIN
    while storage is None:  # a store that is down: wait for it, but stop when told to
        if stop.is_set() or not alive():
            os._exit(0)
        try:
            storage = open_storage(target, **{**options, "wait": False}) \
                if _is_postgres(target) \
                else open_storage(target, **{**options, "synchronous": COMPACTION_SYNCHRONOUS})
        except Exception as exc:
            log.warning("compaction process: cannot open the storage (%s); trying again in "
                        "%.0f s", str(exc).strip()[:200], delay)
            stop.wait(delay)
            delay = min(RESTART_MAX, delay * 2)
    # while the collector has messages waiting, leave the write lock free after each
    # compaction transaction as long as it was held (``SQLStore._give_way``)
    storage.give_way = lambda: bool(busy.value)  # type: ignore[attr-defined]
    # and while it waits for the lock, the collector's writer leaves it free (``waiting``)
    if not _is_postgres(target):
        storage.waiting_flag = waiting  # type: ignore[attr-defined]
        # and it gives way only while that writer waits for the lock (``SQLStore._take_turn``)
        storage.writer_waits = lambda: writer.value  # type: ignore[attr-defined]
    try:
        def should_run() -> bool:
            return bool(leading.value) and not stop.is_set()

        def take_notes() -> None:
            noted: list[int] = []
            while notes.poll():
                noted += notes.recv()
            if noted:
                with storage._unreadable_lock:  # type: ignore[attr-defined]
                    storage._unreadable.update(noted)  # type: ignore[attr-defined]

        runner = MaintenanceRunner(storage, interval=interval, busy=lambda: bool(busy.value),
                                   backlog_interval=backlog_interval,
                                   sizes_interval=sizes_interval, should_run=should_run,
                                   idle_pause=0.0, busy_pause=0.0)
        while not stop.is_set() and alive():
            try:
                take_notes()
            except (EOFError, OSError):
                break
            more = False
            if should_run():
                errors = runner.errors
                more = runner.run_round()
                try:
                    reports.send((runner.errors == errors, runner.stats, runner.gauges))
                except OSError:
                    break  # the collector is gone
            if not more:
                stop.wait(interval if should_run() else min(interval, 1.0))
    finally:
        storage.close()
    os._exit(0)  # no atexit work inherited from the parent's modules


def _is_postgres(target: str) -> bool:
    return str(target).startswith(("postgresql:", "postgres:"))
