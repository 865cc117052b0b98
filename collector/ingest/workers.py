"""A pool of ingest worker processes: ``Examiner.examine`` (decode, validate, resolve, screen,
re-encode) off the interpreter that runs the MQTT loop and stores, so that both cores work.

Each worker is a process of its own (started by a ``forkserver``: the collector has threads, so
never by a plain fork) with a duplex pipe to the collector, and one thread of the collector
talks to it: the thread takes a chunk of messages from its queue, sends it, waits for the
``Facts`` of each and hands them to the event loop. The workers share nothing and keep no state
but caches (decoded catalogues, screened metric heads); everything per host that must be shared
(the cardinality bound, the catalogues the storage keeps) stays with the collector, which passes
what a worker needs with the message (``examine.py``).

A worker that dies (a payload that crashes the decoder's C code, the kernel's OOM killer, a kill)
or does not answer within ``HANG_SECONDS`` is (killed and) started again by its thread; each
message of the chunk it held is then examined once more, alone, on the new worker. A message
that kills a worker a second time is answered ``Facts(kind="reject", reason="worker_crash")``
(PUBACKed and counted, not acknowledged to its agent, which keeps the batch and sends it again
later); nothing else is lost or refused. For ``QUARANTINE_SECONDS`` after that, the host's
messages are answered the same way without being examined: a host sending poison cannot keep
the workers restarting (its agent sends them again later: nothing of it is lost either).
``restarts`` and ``crashed`` count both for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import queue
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from edgemon.collector.ingest.examine import Examiner, Facts
from edgemon.protocol import ProtocolError, parse_topic

__all__ = ["HANG_SECONDS", "Task", "WorkerPool"]

log = logging.getLogger("edgemon.collector.ingest.workers")

HANG_SECONDS: Final = 10.0  # no answer to one chunk for this long: the worker is stuck
QUARANTINE_SECONDS: Final = 60.0  # a host whose message killed a worker twice: not examined
MAX_QUARANTINED: Final = 10_000
CHUNK: Final = 16  # messages per chunk at most: a crash costs a chunk's re-examination
_WORKER_MODULE: Final = "edgemon.collector.ingest.workers"


@dataclass(frozen=True, slots=True)
class Task:
    """One message to examine, with what the collector knows that the worker does not."""

    topic: str
    payload: bytes
    received_ms: int
    refused: dict[int, str] | None = None  # series hashes the cardinality bound refused
    supplied: dict[tuple[str, str], bytes | None] | None = None  # stored catalogues asked for
    # stored batches asked for as bases: (host, instance, seq) -> payload
    supplied_bases: dict[tuple[str, str, int], bytes | None] | None = None
    budget: float | None = None  # bytes its host may have resolved in this round (examine.py)
    round: int = 0
    # metric names to project an accepted batch on (``Facts.projected``; one object for a
    # whole chunk: pickled once)
    project: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Setup:
    future_tolerance_seconds: int
    past_tolerance_days: float
    max_series: int
    max_new_per_hour: int
    salt: bytes


class _Died(Exception):
    pass


def _serve(conn: Connection, setup: _Setup) -> None:
    """A worker process: examine every chunk received until the pipe closes."""
    examiner = Examiner(setup.future_tolerance_seconds, setup.past_tolerance_days,
                        max_series=setup.max_series, max_new_per_hour=setup.max_new_per_hour,
                        salt=setup.salt)
    examine = examiner.examine
    conn.send(os.getpid())
    while True:
        try:
            chunk: list[Task] = conn.recv()
        except (EOFError, OSError):
            return
        conn.send([examine(t.topic, t.payload, t.received_ms, refused=t.refused,
                           supplied=t.supplied, supplied_bases=t.supplied_bases,
                           budget=t.budget, round_=t.round, project=t.project)
                   for t in chunk])


class _Slot:
    """One worker process and the thread of the collector that talks to it."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: Any = None
        self.conn: Connection | None = None
        self.busy = False  # a chunk is out to the worker
        self.thread = threading.Thread(target=self._run, name=f"edgemon-ingest-worker-{index}",
                                       daemon=True)

    def start(self) -> None:
        """Start (or start again) the worker process; returns once it answered."""
        self.stop_process()
        ours, theirs = mp.Pipe(duplex=True)
        proc = self.pool.context.Process(target=self.pool.serve, args=(theirs, self.pool.setup),
                                         name=f"edgemon-ingest-worker-{self.index}", daemon=True)
        proc.start()
        theirs.close()
        self.proc, self.conn = proc, ours
        if not ours.poll(60.0):
            raise RuntimeError("an ingest worker process did not start within 60 s")
        ours.recv()

    def stop_process(self) -> None:
        proc, conn = self.proc, self.conn
        self.proc = self.conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
            proc.close()

    def _run(self) -> None:
        while True:
            job = self.pool.jobs[self.index].get()
            if job is None:
                return
            chunk, future, loop = job
            try:
                facts = self._examine(chunk)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, future, None, exc)
                continue
            loop.call_soon_threadsafe(_settle, future, facts, None)

    def _examine(self, chunk: list[Task]) -> list[Facts]:
        try:
            return self._call(chunk)
        except _Died as died:
            self._restart(died)
        out = []
        for task in chunk:  # each once more, alone: only what kills a worker again is refused
            try:
                out.extend(self._call([task]))
            except _Died as died:
                self.pool.crashed += 1
                crashed = _crashed(task, f"an ingest worker died examining it twice ({died})")
                self.pool.quarantine(crashed.host)
                out.append(crashed)
                self._restart(died)
        return out

    def _call(self, chunk: list[Task]) -> list[Facts]:
        conn, proc = self.conn, self.proc
        if conn is None or proc is None:
            raise _Died("no worker process")
        hang_s = self.pool.hang_seconds
        try:
            conn.send(chunk)
            self.busy = True
            deadline = time.monotonic() + hang_s
            while not conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if not proc.is_alive():
                    raise _Died(f"exit status {proc.exitcode}")
                if time.monotonic() >= deadline:
                    raise _Died(f"no answer within {hang_s:g} s")
            facts: list[Facts] = conn.recv()
        except (EOFError, OSError) as exc:
            proc.join(1.0)
            raise _Died(f"exit status {proc.exitcode}" if proc.exitcode is not None
                        else repr(exc)) from None
        except Exception as exc:  # e.g. an answer that does not unpickle: start afresh
            raise _Died(repr(exc)[:200]) from None
        finally:
            self.busy = False
        return facts

    def _restart(self, died: _Died) -> None:
        self.pool.restarts += 1
        log.error("ingest worker %d died (%s): starting it again; each message it held is "
                  "examined once more, alone", self.index, died)
        while True:
            try:
                self.start()
                return
            except Exception:
                log.exception("could not start ingest worker %d; trying again in 1 s",
                              self.index)
                time.sleep(1.0)


def _slot_of(task: Task, slots: int) -> int:
    """The worker of a task's host: stable within a run (a topic with no host: worker 0)."""
    host = _host(task)
    return 0 if host is None else zlib.crc32(host.encode("utf-8", "surrogatepass")) % slots


def _host(task: Task) -> str | None:
    try:
        return parse_topic(task.topic).host
    except ProtocolError:
        return None


def _crashed(task: Task, detail: str) -> Facts:
    return Facts("reject", _host(task), reason="worker_crash", detail=detail)


def _settle(future: asyncio.Future[list[Facts]], facts: list[Facts] | None,
            exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(facts or [])


class WorkerPool:
    """``workers`` worker processes examining messages; ``examine`` keeps the order given."""

    def __init__(self, workers: int, *, future_tolerance_seconds: int, past_tolerance_days: float,
                 max_series: int, max_new_per_hour: int,
                 serve: Callable[[Connection, Any], None] = _serve,
                 hang_seconds: float = HANG_SECONDS) -> None:
        self.serve = serve  # a worker process's body (tests wrap it: a poison payload)
        self.hang_seconds = hang_seconds
        self.salt = secrets.token_bytes(16)
        self.setup = _Setup(future_tolerance_seconds, past_tolerance_days, max_series,
                            max_new_per_hour, self.salt)
        self.context = mp.get_context("forkserver")
        self.context.set_forkserver_preload([_WORKER_MODULE])
        # one queue per worker: a host's messages always go to the same one (``_slot_of``), in
        # order, so its examiner holds the bases that host's based batches go on from
        self.jobs: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(workers)]
        self.slots = [_Slot(self, i) for i in range(workers)]
        self.restarts = 0  # worker processes started again after dying or hanging
        self.crashed = 0  # messages that killed a worker twice (rejected "worker_crash")
        self.quarantined: dict[str | None, float] = {}  # host -> until (time.monotonic)
        self._started = False

    def start(self) -> None:
        """Start the worker processes (blocking: a thread's job)."""
        for slot in self.slots:
            slot.start()
            slot.thread.start()
        self._started = True

    @property
    def started(self) -> bool:
        return self._started

    def quarantine(self, host: str | None) -> None:
        """Examine nothing of ``host`` for ``QUARANTINE_SECONDS`` (any thread)."""
        now = time.monotonic()
        held = self.quarantined
        if len(held) >= MAX_QUARANTINED:
            held = {h: t for h, t in held.items() if t > now}
        held[host] = now + QUARANTINE_SECONDS
        self.quarantined = held

    def _held(self, task: Task, now: float) -> Facts | None:
        until = self.quarantined.get(_host(task))
        if until is None or until <= now:
            return None
        return _crashed(task, "not examined: a message of this host killed an ingest worker "
                        f"twice less than {QUARANTINE_SECONDS:.0f} s ago")

    def pids(self) -> list[int]:
        return [slot.proc.pid for slot in self.slots if slot.proc is not None]

    async def examine(self, tasks: Sequence[Task]) -> list[Facts]:
        """The ``Facts`` of each task, in order (each host's tasks to its worker, in chunks)."""
        if not tasks:
            return []
        if self.quarantined:
            now = time.monotonic()
            held = [self._held(t, now) for t in tasks]
            if any(held):
                rest = iter(await self.examine([t for t, h in zip(tasks, held, strict=True)
                                                if h is None]))
                return [h if h is not None else next(rest) for h in held]
            if all(t <= now for t in self.quarantined.values()):
                self.quarantined = {}
        loop = asyncio.get_running_loop()
        routed: list[list[int]] = [[] for _ in self.slots]
        for i, task in enumerate(tasks):
            routed[_slot_of(task, len(self.slots))].append(i)
        futures, parts = [], []
        for index, which in enumerate(routed):
            for k in range(0, len(which), CHUNK):
                part = which[k:k + CHUNK]
                future: asyncio.Future[list[Facts]] = loop.create_future()
                self.jobs[index].put(([tasks[i] for i in part], future, loop))
                futures.append(future)
                parts.append(part)
        out: list[Any] = [None] * len(tasks)
        for part, facts in zip(parts, await asyncio.gather(*futures), strict=True):
            for i, f in zip(part, facts, strict=True):
                out[i] = f
        return out

    def close(self) -> None:
        """Stop the threads and the worker processes (blocking)."""
        self._started = False
        for jobs in self.jobs:
            jobs.put(None)
        for slot in self.slots:
            if slot.thread.is_alive():
                slot.thread.join(HANG_SECONDS + 5)
            slot.stop_process()
