"""Who runs the singleton work: one leader among the collectors sharing a store.

The singleton work (storage retention and compaction, alert evaluation and notification,
forwarding cursors once they exist) must run on one collector at a time. ``Leadership`` is
what the collector asks: ``is_leader()`` before every step of such work, and listeners told
when leadership is gained or lost (from the leadership's own thread; marshal onto the event
loop yourself).

* ``AlwaysLeader``: one collector on its own store (SQLite): always the leader.
* ``PostgresLeader`` (pg_leader.py): a PostgreSQL session advisory lock.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from edgemon.common.clock import now_ms

__all__ = ["AlwaysLeader", "Leadership", "Listener"]

log = logging.getLogger("edgemon.collector.cluster")

Listener = Callable[[bool], None]  # called with True when leadership is gained, False when lost


class Leadership(ABC):
    """Leader election for one collector. ``start()`` once, ``stop()`` at shutdown."""

    kind: str = ""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self.changes = 0  # times leadership was gained or lost
        self.since_ms: int | None = None  # when the current role began (wall clock)

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None:
        """Give leadership up (if held) and stop contending; listeners hear ``False``."""

    @abstractmethod
    def is_leader(self) -> bool:
        """Whether this collector may run singleton work now (cheap: call it before every step)."""

    @property
    def role(self) -> str:
        return "leader" if self.is_leader() else "follower"

    def add_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        """What /edgemon/api/v1/cluster shows about the election."""
        return {"kind": self.kind, "role": self.role, "since_ms": self.since_ms,
                "changes": self.changes}

    def _changed(self, leader: bool) -> None:
        """Record a change and tell the listeners (never raises)."""
        self.changes += 1
        self.since_ms = now_ms()
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(leader)
            except Exception:
                log.exception("leadership listener failed")


class AlwaysLeader(Leadership):
    """A collector alone on its store: the leader from start to stop."""

    kind = "single"

    def __init__(self) -> None:
        super().__init__()
        self._leading = False

    def start(self) -> None:
        if not self._leading:
            self._leading = True
            self._changed(True)

    def stop(self) -> None:
        if self._leading:
            self._leading = False
            self._changed(False)

    def is_leader(self) -> bool:
        return self._leading
