"""The delivery stall detector: notices when MQTT delivery has stopped although the connection
looks healthy, so that ``MqttIngest`` can say so and reconnect.

Why it exists. An MQTT 3.1.1 session re-sends an unacknowledged QoS 1 message only after a
reconnect. If a PUBLISH or a PUBACK is lost while the TCP connection stays up, the sender keeps
it "in flight" for ever, and once its in-flight window is full it sends nothing more. Mosquitto
2.0 drops *every* outgoing packet for a client whose queue of outgoing packets is full
(``max_queued_messages``; log line "Outgoing messages are being dropped for client ..."): under a
QoS 0 flood it dropped its own PUBLISHes to the collector (its window to us filled: nothing more
arrived) and its PUBACKs for the collector's acks (paho's window filled: no agent got an ack).
Both stalls were silent and permanent; a reconnect clears both (each side re-sends).

Three signs, each against the same bound (``stall_seconds``):

* ``puback_overdue``: a message handed to ingest on this connection has not been PUBACKed
  (stored, rejected or dropped) for longer than the bound, while storage works (when storage
  fails, holding messages is the intended back-pressure);
* ``broker_puback_overdue``: a QoS 1 message we published (an agent ack, presence, an alert, a
  probe) has had no PUBACK from the broker for longer than the bound;
* ``no_delivery``: nothing at all arrived for longer than the bound although we asked for
  something: while the connection is quiet the collector publishes a *probe* to a topic only it
  subscribes to (``edgemon/v1/_collectors/<id>/probe``) every third of the bound, and once right
  after connecting. The broker delivers it through the same queue as every host's batches, so a
  probe that does not come back means nothing else would either. No knowledge of which hosts are
  online is needed. A probe must prove itself first: Mosquitto accepts the subscription and the
  publish even when its ACL denies them (an ACL generated before probes existed) and then simply
  never delivers. Until one probe has come back, a missing probe counts as a stall once; the
  second time probing stops (``probing`` False) and the other two signs carry on alone.

Pure logic with an injected clock; thread-safe (paho's thread, the event loop and the watcher
call it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from edgemon.protocol.presence import COLLECTORS_LEVEL
from edgemon.protocol.topics import PREFIX

__all__ = ["REASONS", "StallDetector", "StallState", "probe_topic"]

REASONS: Final = ("puback_overdue", "broker_puback_overdue", "no_delivery")


def probe_topic(collector_id: str) -> str:
    """The topic of a collector's delivery probes (only that collector subscribes to it)."""
    return f"{PREFIX}/{COLLECTORS_LEVEL}/{collector_id}/probe"


@dataclass(frozen=True, slots=True)
class StallState:
    """Ages in seconds (None: nothing of the kind pending) and the current stall, if any."""

    oldest_unacked_s: float | None  # received, handed to ingest, not PUBACKed yet
    oldest_unconfirmed_s: float | None  # published by us, no PUBACK from the broker yet
    silence_s: float | None  # since the last message arrived (None: not connected)
    stalled: str | None  # a reason of REASONS while a stall lasts


class StallDetector:
    def __init__(self, bound_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_s = bound_s
        self.probe_every_s = bound_s / 3
        self.probing = True  # False: the broker refused the probe topic (an old ACL)
        self._probe_verified = False  # a probe has come back at least once
        self._probe_failures = 0  # no_delivery while no probe ever came back
        self._clock = clock
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[int, int], float] = OrderedDict()  # (generation, mid)
        self._unconfirmed: dict[int, float] = {}  # our publishes' mids
        self._generation = 0
        self._connected_at: float | None = None
        self._last_received = 0.0
        self._probe_sent: float | None = None
        self._stalled: str | None = None
        self._stalled_at = 0.0
        self._reconnected_since_stall = False
        self.stalls: dict[str, int] = dict.fromkeys(REASONS, 0)

    # --- fed by MqttIngest ----------------------------------------------------------------------

    def connected(self, generation: int) -> None:
        """A new connection: what older ones held cannot be PUBACKed any more (the broker sends
        it again), and the clock of our unconfirmed publishes starts again (paho re-sends)."""
        now = self._clock()
        with self._lock:
            self._generation = generation
            self._held.clear()
            self._unconfirmed = dict.fromkeys(self._unconfirmed, now)
            self._connected_at = self._last_received = now
            self._probe_sent = None
            self._reconnected_since_stall = self._stalled is not None

    def disconnected(self) -> None:
        with self._lock:
            self._connected_at = None
            self._probe_sent = None

    def received(self, *, probe: bool = False) -> None:
        """Any message arrived (``probe``: one of our probes). On a connection made after a
        stall was detected, that ends the stall: delivery works again."""
        now = self._clock()
        with self._lock:
            self._last_received = now
            self._probe_verified = self._probe_verified or probe
            self._probe_sent = None
            if self._stalled is not None and self._reconnected_since_stall:
                self._stalled = None

    def handed_over(self, generation: int, mid: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._held[(generation, mid)] = self._clock()

    def pubacked(self, generation: int, mid: int) -> None:
        with self._lock:
            self._held.pop((generation, mid), None)

    def published(self, mid: int) -> None:
        with self._lock:
            self._unconfirmed[mid] = self._clock()

    def confirmed(self, mid: int) -> None:
        with self._lock:
            self._unconfirmed.pop(mid, None)

    def unconfirmed(self) -> list[int]:
        with self._lock:
            return list(self._unconfirmed)

    # --- the watcher ----------------------------------------------------------------------------

    def probe_due(self) -> bool:
        """True (and remembered as sent) when a probe should go out now: connected, nothing
        received for a third of the bound, and no probe on its way."""
        now = self._clock()
        with self._lock:
            if not self.probing or self._connected_at is None or self._probe_sent is not None:
                return False
            if self._probe_verified and now - self._last_received < self.probe_every_s:
                return False  # (an unproven probe goes out at once: is it delivered at all?)
            self._probe_sent = now
            return True

    def check(self, *, holding_expected: bool = False) -> str | None:
        """The reason of a stall to act on now (counted), or None. A stall is reported again
        if it still holds one bound after it was reported (the reconnect did not help).
        ``holding_expected``: storage is failing, so held messages are back-pressure."""
        now = self._clock()
        with self._lock:
            if self._connected_at is None:
                return None
            if self._stalled is not None and now - self._stalled_at <= self.bound_s:
                return None
            reason = None
            if not holding_expected and self._overdue_held(now):
                reason = "puback_overdue"
            elif self._overdue_unconfirmed(now):
                reason = "broker_puback_overdue"
            elif self._probe_sent is not None and now - self._probe_sent > self.bound_s \
                    and now - self._last_received > self.bound_s:
                reason = "no_delivery"
                if not self._probe_verified:
                    self._probe_failures += 1
                    if self._probe_failures >= 2:  # the broker never delivers probes to us
                        self.probing, self._probe_sent, reason = False, None, None
                        if self._stalled == "no_delivery":  # that was the probe's fault
                            self._stalled = None
            if reason is not None:
                self._stalled, self._stalled_at = reason, now
                self._reconnected_since_stall = False
                self.stalls[reason] += 1
            return reason

    def state(self) -> StallState:
        now = self._clock()
        with self._lock:
            held = next(iter(self._held.values()), None)
            sent = min(self._unconfirmed.values(), default=None)
            return StallState(
                oldest_unacked_s=None if held is None else now - held,
                oldest_unconfirmed_s=None if sent is None else now - sent,
                silence_s=None if self._connected_at is None else now - self._last_received,
                stalled=self._stalled)

    def _overdue_held(self, now: float) -> bool:
        oldest = next(iter(self._held.values()), None)
        return oldest is not None and now - oldest > self.bound_s

    def _overdue_unconfirmed(self, now: float) -> bool:
        return any(now - t > self.bound_s for t in self._unconfirmed.values())
