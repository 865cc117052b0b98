"""What the collector's MQTT session subscribes to: the wildcards of protocol §1, or, while a
host floods (flood_guard.py), every other known host's topics by name, plus its own probe topic
(stall.py). Changes subscribe first and unsubscribe after, so nothing wanted is missed in
between (an overlap only delivers duplicates, which ingest de-duplicates).

A persistent session outlives connections and processes: after a reconnect the broker may still
hold filters subscribed before (an UNSUBSCRIBE lost with the connection, or an earlier run's
filters). Every filter this process ever asked for, and the wildcards, are remembered, and those
not wanted now are unsubscribed on every resumed session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

from edgemon.protocol import backfill_topic, metrics_topic, status_topic, subscriptions
from edgemon.protocol.topics import catalogue_topic

__all__ = ["Subscriptions", "shared"]

TOPICS_PER_PACKET = 1000  # SUBSCRIBE/UNSUBSCRIBE packets stay far below max_packet_size
MAX_REMEMBERED = 100_000  # filters remembered for clean-up (hosts are bounded upstream)


def shared(group: str | None, topic: str) -> str:
    """``topic`` as the shared subscription of ``group`` (unchanged without a group)."""
    return f"$share/{group}/{topic}" if group else topic


class Subscriptions:
    def __init__(self, client: mqtt.Client, probe_topic: str, *,
                 isolated: Callable[[], Any], known_hosts: Callable[[], Iterable[str]],
                 share: str | None = None) -> None:
        self.client = client
        self.probe_topic = probe_topic
        self.isolated = isolated  # hosts left out now (a container of host ids)
        self.known_hosts = known_hosts
        self.share = share or None
        self.topics: set[str] = set()  # what the session is (or is being) subscribed to
        self._lock = threading.Lock()
        self._ever: set[str] = {*subscriptions(), *self.wildcards(), probe_topic}
        self._sent: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its filters, until the SUBACK

    def shown(self, topic: str) -> str:
        """``topic`` for the log: the group name is the collectors' secret (SCALING.md)."""
        return topic.replace(f"$share/{self.share}/", "$share/<group>/", 1) if self.share \
            else topic

    def wildcards(self) -> list[str]:
        """The protocol's wildcard filters, shared in a group."""
        return [shared(self.share, topic) for topic in subscriptions()]

    def wanted(self) -> set[str]:
        isolated = self.isolated()
        if not isolated:
            topics = set(self.wildcards())
        else:
            topics = {shared(self.share, topic) for host in list(self.known_hosts())
                      if host not in isolated
                      for topic in (metrics_topic(host), backfill_topic(host), status_topic(host),
                                    catalogue_topic(host))}
        topics.add(self.probe_topic)
        return topics

    def on_connect(self, *, session_present: bool) -> set[int]:
        """Subscribe as wanted now (and drop stale filters of a resumed session); the SUBSCRIBE
        mids whose SUBACKs make the collector ready."""
        wanted = self.wanted()
        with self._lock:
            stale = self._ever - wanted if session_present else set()
            self.topics = wanted
        mids = self._subscribe(wanted)
        self._unsubscribe(stale)
        return set(mids)

    def update(self) -> None:
        """The isolation changed: subscribe to what is wanted now, then drop the rest."""
        wanted = self.wanted()
        with self._lock:
            add, drop = wanted - self.topics, self.topics - wanted
            self.topics = wanted
        self._subscribe(add)
        self._unsubscribe(drop)

    def restore_wildcards(self) -> None:
        """Before a clean stop while isolating: leave the session as a next run expects it."""
        normal = {*self.wildcards(), self.probe_topic}
        with self._lock:
            drop = self.topics - normal
            self.topics = normal
        self._subscribe(set(self.wildcards()))
        self._unsubscribe(drop)

    def _subscribe(self, topics: set[str]) -> list[int]:
        with self._lock:
            if len(self._ever) < MAX_REMEMBERED:
                self._ever |= topics
        mids = []
        ordered = sorted(topics)
        for i in range(0, len(ordered), TOPICS_PER_PACKET):
            chunk = ordered[i:i + TOPICS_PER_PACKET]
            rc, mid = self.client.subscribe([(t, 1) for t in chunk])
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                mids.append(mid)
                with self._lock:
                    self._sent[mid] = chunk
        return mids

    def refused(self, mid: int, reason_codes: list[Any]) -> list[str]:
        """The filters of SUBSCRIBE ``mid`` that the broker refused (SUBACK in request order)."""
        with self._lock:
            chunk = self._sent.pop(mid, [])
        return [topic for topic, rc in zip(chunk, reason_codes, strict=False) if rc.is_failure]

    def _unsubscribe(self, topics: set[str]) -> None:
        ordered = sorted(topics)
        for i in range(0, len(ordered), TOPICS_PER_PACKET):
            self.client.unsubscribe(ordered[i:i + TOPICS_PER_PACKET])
