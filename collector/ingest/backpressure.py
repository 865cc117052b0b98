"""Back-pressure on the compaction back-log: holds the agent acks of the hosts that fill it.

Why. Ingest stores each batch as a pending row and compaction (its own process) turns pending
rows into blocks. When batches arrive faster than compaction takes them (a fleet back-filling
after an outage, publishers sending as fast as acks return), the back-log grows without bound,
and every query and alert rule reading recent data decodes it. Agents are built to wait: each
keeps every sample in its own buffer and sends at most ``max_inflight`` batches it has no ack
for. Holding a host's acks therefore slows that host, and only that host.

What is measured: the *due* back-log, the samples compaction could take now but has not.
Compaction leaves a batch pending on purpose until it is ``compact_delay_ms`` old (60 s), unless
its host has ``step_samples`` pending (then it takes the host at once). So the whole pending
back-log is never below the ingest rate times that delay, however fast compaction is: a budget
on it would cap ingest at budget / delay. The due back-log is zero while compaction keeps up
and grows only when it falls behind. Per host it is all its pending samples when they reach
``step_samples``, else those of its batches received at or before now - ``compact_delay_ms``
(both settings the storage's own, read with the back-log: ``Storage.due_by_host``).

The rules ("a host can only hurt itself"):

* ``budget`` B: due samples the collector lets build up before it holds anything. While the
  total due is at most B nothing is held;
* above it, the *fair level* T is the water-filling level: the largest T with
  ``sum(min(due_h, T)) <= B``. Hosts at or below T are never held (a live host sending a batch
  a minute has a batch or two pending, due or not: far below T unless thousands of hosts all
  flood); the ack of a host above T is held. With one back-filler beside a quiet fleet only
  the back-filler is held; with a uniform overload every host is;
* a held ack is released (published) when its host falls to T or below, when the due back-log
  falls to B or below, or after ``max_hold_s`` (well under the agents' 60 s ``ack_timeout_seconds``,
  so an agent never sends a batch again because of a hold);
* held acks are small (host, instance, seqs) and bounded: past ``max_held_seqs`` held seqs an
  ack is published at once.

The batch itself is stored and PUBACKed as before: durability and exact de-duplication do not
change, only the agent's ack comes later. The due back-log per host comes from a periodic
query of the storage (``begin_poll``, then ``update``). Between queries, what this process
stores is added to each host's pending samples (``stored``), and to its due samples only when
the host is (then) due in full, at ``step_samples`` or more: a batch just stored is young, due
only once it is ``compact_delay_ms`` old, unless its host is taken whole. So between two queries
the figure never misses a stored sample that compaction could take at once (a batch stored
while a query ran may count twice), and only compaction lowers it; what it misses is the
batches that come of age since the query, at most one poll interval's worth (0.5 s near the
budget), seen by the next query. That lag is the only way it undercounts, and it is bounded.

Pure logic with an injected clock; used from the event loop only (not thread-safe), except
``seen``: the figures as of the last ``refresh``, one immutable object replaced whole, for
readers on other threads (``/metrics`` renders in an executor).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgemon.collector.storage.base import DueBacklog

__all__ = ["BackPressure", "Figures", "HeldAck", "fair_level"]

MAX_HELD_SEQS = 100_000  # held seqs at most (~100 bytes each): beyond, acks go out at once


def fair_level(pending: Iterable[int], budget: int) -> float:
    """The water-filling level: the largest T with ``sum(min(p, T) for p in pending) <= budget``
    (``math.inf`` when the whole of ``pending`` fits in ``budget``)."""
    values = sorted(pending)
    left = float(budget)
    n = len(values)
    for i, p in enumerate(values):
        share = left / (n - i)
        if p > share:  # this host and every larger one are cut at the same level
            return share
        left -= p
    return math.inf


@dataclass(slots=True)
class HeldAck:
    """The seqs of one (host, instance) whose ack is held, and since when."""

    host: str
    instance: str
    seqs: list[int]
    since: float


@dataclass(frozen=True, slots=True)
class Figures:
    """What ``/metrics`` and ``/readyz`` show (``BackPressure.seen``)."""

    budget_samples: int
    due_samples: int = 0
    pending_samples: int = 0
    fair_level_samples: float = math.inf
    acks_held: int = 0  # (host, instance) acks held now
    hosts_held: int = 0
    acks_held_total: int = 0
    acks_released_late_total: int = 0
    acks_over_cap_total: int = 0
    poll_seconds: float = 0.0


class BackPressure:
    def __init__(self, *, budget: int, max_hold_s: float, max_held_seqs: int = MAX_HELD_SEQS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.max_hold_s = max_hold_s
        self.max_held_seqs = max_held_seqs
        self._clock = clock
        # by host, as of the last poll plus what was stored since: pending samples, and of
        # them those due for compaction
        self._pending: dict[str, int] = {}
        self._due: dict[str, int] = {}
        self._since: dict[str, int] = {}  # host -> samples stored since the poll began
        self._step_samples: int | None = None  # the storage's, from the last poll
        self.pending_total = 0  # the whole back-log (for /metrics)
        self.due_total = 0  # the due back-log: what the budget is about
        self._level = math.inf
        self._stale = False  # the due back-log changed since the level was computed
        self._held: dict[tuple[str, str], HeldAck] = {}
        self.held_seqs = 0
        self.acks_held = 0  # acks held, ever (counter)
        self.acks_released_late = 0  # held acks released by the maximum hold (counter)
        self.acks_over_cap = 0  # acks published at once because too many were held (counter)
        self.poll_seconds = 0.0  # how long the last read of the back-log took
        self.seen = Figures(budget)  # for readers on other threads (``refresh``)

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    # --- what is due ----------------------------------------------------------------------------

    def begin_poll(self) -> None:
        """The storage is about to be read (``update`` follows)."""
        self._since = {}

    def update(self, backlog: DueBacklog | None) -> None:
        """The storage's back-log by host, as just read (with what was stored since
        ``begin_poll``: the read may not have seen it; young, it is due only with its host).
        None: the storage cannot tell; nothing is due (nothing is held) until it can."""
        if backlog is None:
            backlog = DueBacklog(0, {})
            self._step_samples = None
        else:
            self._step_samples = backlog.step_samples
        step = self._step_samples or math.inf
        pending: dict[str, int] = {}
        due: dict[str, int] = {}
        for host, (n, aged) in backlog.hosts.items():
            pending[host], due[host] = n, aged
        for host, n in self._since.items():
            pending[host] = pending.get(host, 0) + n
            due.setdefault(host, 0)
        for host, n in pending.items():
            if n >= step:  # compaction takes such a host whole, at once
                due[host] = n
        self._pending, self._due, self._since = pending, due, {}
        self.pending_total = sum(pending.values())
        self.due_total = sum(due.values())
        self._stale = True

    def stored(self, host: str, samples: int) -> None:
        """``samples`` of ``host`` were stored just now: pending, and due only if the host is
        now due in full (young batches are not)."""
        if not self.enabled:
            return
        n = self._pending[host] = self._pending.get(host, 0) + samples
        self._since[host] = self._since.get(host, 0) + samples
        self.pending_total += samples
        if self._step_samples is not None and n >= self._step_samples:
            self.due_total += n - self._due.get(host, 0)
            self._due[host] = n
            self._stale = True

    def poll_every(self, fast: float, slow: float) -> float:
        """Seconds until the next read of the storage: ``fast`` once the due back-log is over
        half its budget (holds start or end soon), else ``slow``."""
        return fast if self.due_total > self.budget / 2 else slow

    def level(self) -> float:
        """The fair level T now (``math.inf``: the due back-log is within the budget)."""
        if self.due_total <= self.budget:
            return math.inf
        if self._stale:
            self._level = fair_level(self._due.values(), self.budget)
            self._stale = False
        return self._level

    def over(self, host: str) -> bool:
        """Whether ``host``'s acks are to be held now: the due back-log is over the budget and
        the host's due samples over the fair level."""
        return self.enabled and self.due_total > self.budget and \
            self._due.get(host, 0) > self.level()

    # --- acks -----------------------------------------------------------------------------------

    def hold(self, host: str, instance: str, seqs: list[int]) -> bool:
        """True when the ack of ``seqs`` is held (publish it when ``due`` returns it); False:
        publish it now."""
        if not self.over(host):
            return False
        if self.held_seqs + len(seqs) > self.max_held_seqs:
            self.acks_over_cap += 1
            return False
        key = (host, instance)
        held = self._held.get(key)
        if held is None:
            self._held[key] = HeldAck(host, instance, list(seqs), self._clock())
        else:
            held.seqs.extend(seqs)
        self.held_seqs += len(seqs)
        self.acks_held += 1
        return True

    def due(self) -> list[HeldAck]:
        """The held acks to publish now (forgotten here)."""
        if not self._held:
            return []
        now = self._clock()
        out = []
        for key, held in list(self._held.items()):
            if not self.over(held.host):
                out.append(held)
            elif now - held.since >= self.max_hold_s:
                self.acks_released_late += 1
                out.append(held)
            else:
                continue
            del self._held[key]
            self.held_seqs -= len(held.seqs)
        return out

    def release_all(self) -> list[HeldAck]:
        """Every held ack (shutdown: the batches are stored; their agents get their acks)."""
        out = list(self._held.values())
        self._held.clear()
        self.held_seqs = 0
        return out

    # --- for /metrics ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Publish the figures now in ``seen`` (the event loop; read from any thread)."""
        self.seen = Figures(self.budget, self.due_total, self.pending_total, self.level(),
                            self.held_acks, self.hosts_held(), self.acks_held,
                            self.acks_released_late, self.acks_over_cap, self.poll_seconds)

    @property
    def held_acks(self) -> int:
        """(host, instance) acks held now."""
        return len(self._held)

    def hosts_held(self) -> int:
        return len({host for host, _ in self._held})
