"""Which collectors say they are online (``protocol/presence.py``; SPEC.md, collector presence).

The publisher feeds every message on ``edgemon/v1/_collectors/+/state`` to ``CollectorPresence``
from paho's thread; the runner asks, from its own thread:

- ``publishing_allowed``: False only when presence has been seen and no collector says
  ``online`` (batches then stay in the buffer instead of going into the void). An agent that
  has seen no presence at all (an older collector, or a broker that lost its retained
  messages) publishes as before and relies on the ack timeout.
- ``take_came_online()``: True once after a collector came online when none was (or we had
  just reconnected and knew nothing yet): whatever we sent meanwhile may have reached nobody,
  so the runner re-sends everything unacknowledged at once. Not when a collector that is
  online announces itself again (its role changed: it does so several times around a
  restart) nor when a second one comes online beside one that is: what we sent reached the
  one online, and each needless re-send of a whole window lands in that host's inbox share
  at the collector on top of the window itself (over it, a batch is dropped and waits out
  the ack timeout). A collector that reconnects without its offline state being seen (a
  half-open connection taken over) is covered by its persistent session and the ack timeout.

Every (re)connection of the agent forgets what it knew (``reset``): the broker's retained
states arrive right after the subscription and tell the truth again.
"""

from __future__ import annotations

import logging
import threading

from edgemon.common.logs import Throttle
from edgemon.protocol import ProtocolError
from edgemon.protocol.presence import decode_collector_state, parse_collector_state_topic

__all__ = ["CollectorPresence"]

log = logging.getLogger("edgemon.agent.presence")


class CollectorPresence:
    """Collector id -> online, from retained and live presence messages (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._online: dict[str, bool] = {}
        self._came_online = False
        self.invalid_total = 0
        self._throttle = Throttle(60.0)

    def reset(self) -> None:
        """Connected (again): forget every state; the retained ones are about to arrive."""
        with self._lock:
            self._online.clear()

    def update(self, topic: str, payload: bytes, *, retained: bool) -> None:
        """One message on the presence filter. An empty payload clears a collector's state."""
        try:
            collector = parse_collector_state_topic(topic)
            state = decode_collector_state(payload) if payload else None
        except ProtocolError as exc:
            self.invalid_total += 1
            if (suppressed := self._throttle()) is not None:
                log.warning("ignoring an invalid collector presence message: %s", exc,
                            extra={"topic": topic[:200], "suppressed": suppressed})
            return
        with self._lock:
            was_online = any(self._online.values())
            if state is None:
                self._online.pop(collector, None)
            else:
                self._online[collector] = state.online
            now_online = any(self._online.values())
            if now_online and not was_online:
                self._came_online = True
        if was_online != now_online:
            if now_online:
                log.info("a collector is online", extra={"collector": collector})
            elif self._online:
                log.warning("no collector is online: batches stay in the buffer until one is",
                            extra={"collector": collector})

    @property
    def seen(self) -> bool:
        """Whether any collector has a known state (since the last connection)."""
        with self._lock:
            return bool(self._online)

    @property
    def publishing_allowed(self) -> bool:
        with self._lock:
            return not self._online or any(self._online.values())

    def online_collectors(self) -> list[str]:
        with self._lock:
            return sorted(c for c, online in self._online.items() if online)

    def take_came_online(self) -> bool:
        """Whether a collector came online since the last call (then re-send at once)."""
        with self._lock:
            came, self._came_online = self._came_online, False
        return came
