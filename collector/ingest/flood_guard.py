"""Keeps a flood with its sender at the broker: decides which hosts the collector stops
subscribing to, and for how long.

Why the rate limit alone is not enough. Mosquitto keeps one queue of outgoing packets per client.
When one host publishes faster than the collector can read (a single authenticated connection
writing as fast as the broker accepts far outruns a Python subscriber), that queue fills with the
flood and the broker drops whatever comes next for the collector: every other host's batches,
and even PUBACKs and PUBLISHes it counts as in flight ("Outgoing messages are being dropped for
client ..."). Dropping the flood after it arrived (the rate limiter) costs the collector little,
but the damage is done before it arrives. The only place to stop it is the subscription: while a
host floods, the collector subscribes to every other host's topics by name instead of
``edgemon/v1/+/...``, and the broker discards the flooding host's messages unread (unless some
other client subscribed to them).

The rules:

* a host is flooding when at least ``trigger`` of its messages arrive within one second: five
  times the default per-host rate limit (100/s), which an agent never comes near (it sends a
  batch a minute, back-fills at 10/s, and its bursts are bounded by its in-flight window). It
  is counted on arrival, before the rate limiter's burst allowance, because every moment counts:
  the broker's queue for the collector fills within milliseconds of a flood's start;
* it is left out for ``quarantine_s``, doubled for each repeat within an hour of the last one,
  at most ``max_quarantine_s``; then the wildcard subscriptions come back (and with them any
  host that appeared meanwhile: its agent held its batches). Whether the host still floods
  cannot be seen while it is left out, so the quarantine is long: a host that starts again is
  left out again at once, and each such return costs the others a moment of a full queue;
* this works on a secured broker only, where a host can publish on its own topics alone
  (packaging/SECURITY.md); on an open broker a flooder can use any host's name.

Pure logic with an injected clock; ``MqttIngest`` changes the subscriptions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["FloodGuard"]

REPEAT_WINDOW_S = 3600.0  # an offence within this long of the last one doubles the quarantine


class FloodGuard:
    def __init__(self, *, trigger: int, quarantine_s: float, max_quarantine_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.trigger = trigger
        self.quarantine_s = quarantine_s
        self.max_quarantine_s = max(max_quarantine_s, quarantine_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._counts: dict[str, int] = {}  # this second's messages, by host
        self._isolated: dict[str, float] = {}  # host -> when it is let back in
        self._offences: dict[str, tuple[int, float]] = {}  # host -> (count, last offence)
        self.isolations = 0

    @property
    def enabled(self) -> bool:
        return self.trigger > 0

    def received(self, host: str) -> bool:
        """Count one message of ``host``; True when it makes ``host`` a flooder (once per
        second at most: then call ``tick`` soon)."""
        if not self.enabled:
            return False
        with self._lock:
            if host in self._isolated:
                return False
            count = self._counts.get(host, 0) + 1
            self._counts[host] = count
            return count == self.trigger

    def tick(self) -> tuple[list[str], list[str]]:
        """(hosts to leave out from now on, hosts to let back in now)."""
        now = self._clock()
        with self._lock:
            new = [h for h, n in self._counts.items() if n >= self.trigger
                   and h not in self._isolated]
            for host in new:
                count, last = self._offences.get(host, (0, float("-inf")))
                count = count + 1 if now - last < REPEAT_WINDOW_S else 1
                self._offences[host] = (count, now)
                self._isolated[host] = now + min(self.max_quarantine_s,
                                                 self.quarantine_s * 2 ** (count - 1))
                self._counts.pop(host, None)
                self.isolations += 1
            released = [h for h, until in self._isolated.items() if until <= now]
            for host in released:
                del self._isolated[host]
            if now - self._window_start >= 1.0:
                self._window_start = now
                self._counts.clear()
            if len(self._offences) > 10_000:  # forget the oldest offenders: bounded memory
                for host, _ in sorted(self._offences.items(), key=lambda kv: kv[1][1])[:5_000]:
                    del self._offences[host]
        return new, released

    def isolated(self) -> dict[str, float]:
        """Hosts left out now, with the seconds until each is let back in."""
        now = self._clock()
        with self._lock:
            return {h: max(0.0, until - now) for h, until in self._isolated.items()}
