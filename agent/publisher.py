"""MQTT side of the agent (paho-mqtt 2.x): connection, birth and Last Will, acks in, batches out.

paho's network thread (``loop_start``) connects and reconnects; paho's own back-off doubles
without jitter, so after every lost connection or failed attempt we set its delay to a fresh
"full jitter" value (``reconnect_delay``: base 1 s, cap ``broker.reconnect_max_seconds``)
through the public ``reconnect_delay_set``. A fleet that lost its broker then does not
reconnect in lock-step. The session is persistent (``clean_session=False``, stable client id):
the broker keeps our ack subscription, and the acks sent to it, while we are away.

Callbacks run on paho's thread: they only flip flags, count, and hand ack payloads to the main
loop through ``acks`` (a ``queue.Queue``), waking it with ``wake``. SQLite is never touched here.
Collector presence (``edgemon/v1/_collectors/+/state``, read-only) goes to ``self.presence``.
Birth, Last Will and the clean-stop death message carry ``last_seq()``, the newest sequence
number this instance has sealed (the Last Will's is the one at the time it was set: on every
connection attempt).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from edgemon.agent.config import BrokerConfig
from edgemon.agent.lean_paho import has_tls, import_paho
from edgemon.agent.presence import CollectorPresence
from edgemon.common import mqtt_client
from edgemon.common.clock import now_ms
from edgemon.common.logs import Throttle
from edgemon.protocol import ack_topic, encode_status, status_topic
from edgemon.protocol.presence import COLLECTOR_STATE_FILTER

__all__ = ["Publisher", "connect_error", "idle_wake", "reconnect_delay"]

mqtt = import_paho()  # lean (lean_paho.py); with ssl unless `edgemon-agent run` said no TLS

log = logging.getLogger("edgemon.agent.mqtt")

BACKOFF_BASE, BACKOFF_CAP = 1.0, 60.0
NOT_AUTHORISED = (134, 135)  # CONNACK: bad user name or password, not authorised
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def connect_error(exc: BaseException | None) -> tuple[str, bool]:
    """Why connecting failed, for the log, and whether it is a TLS failure (an error, not a
    passing outage): paho calls ``on_connect_fail`` inside its ``except OSError``."""
    return mqtt_client.connect_failure(exc, ca_key="broker.ca_file", host_key="broker.host",
                                       port_key="broker.port")


def idle_wake(keepalive: float) -> float:
    """Seconds paho's network thread may sleep without traffic: a quarter of the keep-alive,
    never less than paho's own 1 s."""
    return max(1.0, keepalive / 4)


def reconnect_delay(attempt: int, rand: Callable[[], float] = random.random, *,
                    base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 = first): uniform in [0, min(cap, base·2ⁿ)].

    Kept at least 50 ms so a flapping broker never makes a busy loop.
    """
    return mqtt_client.reconnect_delay(attempt, rand, base=base, cap=cap)


class Publisher:
    """One persistent MQTT session for this host's topics."""

    def __init__(self, broker: BrokerConfig, *, host_id: str, instance: str,
                 birth: dict[str, Any], acks: queue.Queue[bytes], wake: threading.Event,
                 max_inflight: int, rand: Callable[[], float] = random.random,
                 last_seq: Callable[[], int | None] = lambda: None) -> None:
        self.broker = broker
        self.instance = instance
        self.status_topic = status_topic(host_id)
        self.ack_topic = ack_topic(host_id)
        self.presence = CollectorPresence()
        self._birth = birth
        self._last_seq = last_seq
        self._acks = acks
        self._wake = wake
        self._rand = rand
        self.connected = False
        self.connections = 0
        self.publish_errors = 0
        self._attempt = 0
        self._closing = False
        self._throttle = Throttle(60.0)
        self._unconfirmed: dict[int, mqtt.MQTTMessageInfo] = {}  # mid -> not yet PUBACKed
        self._lock = threading.Lock()
        if broker.tls and not has_tls():  # a bug: `run` imports paho for the configuration
            raise RuntimeError("broker.tls is set but paho was imported without ssl")
        # credentials, verified TLS (chain and broker.host), TCP_NODELAY
        client = mqtt_client.make_client(
            broker.client_id, clean_session=False, username=broker.username,
            password=broker.password, tls=broker.tls, ca_file=broker.ca_file,
            cert_file=broker.cert_file, key_file=broker.key_file)
        if not broker.tls and broker.password is not None and broker.host not in LOOPBACK:
            log.warning("the broker password goes over the network in clear text; set "
                        "broker.tls = true (see packaging/SECURITY.md)",
                        extra={"broker": f"{broker.host}:{broker.port}"})
        client.max_inflight_messages_set(max_inflight)
        # Bounded memory: the sender keeps at most max_inflight unacknowledged batches, each
        # possibly republished once while paho still holds it, plus status messages.
        client.max_queued_messages_set(max_inflight * 3 + 4)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        if log.isEnabledFor(logging.DEBUG):
            client.enable_logger(logging.getLogger("edgemon.agent.paho"))
        self._set_will(client)
        self._client = client

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(0, self.connections - 1)

    def start(self) -> None:
        """Connect in the background; returns at once (the broker may well be down)."""
        client = self._client
        # loop_start runs loop_forever in paho's thread, whose select() times out every second
        # by default just to check the keep-alive: 3,600 idle wake-ups an hour, a fifth of the
        # agent's CPU at 10 s. Traffic (acks, PUBACKs) and our publishes (paho's socket pair)
        # wake it at once anyway; the keep-alive needs a look only every keepalive / 4 (a ping
        # then goes out at most a quarter late, far inside the broker's 1.5 x keepalive).
        client.loop_forever = functools.partial(client.loop_forever,  # type: ignore[method-assign]
                                                timeout=idle_wake(self.broker.keepalive))
        client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
        client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue ``payload`` at QoS 1; False if paho refused it (then count a publish error)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN still queues the message in paho's session: it goes out on reconnect.
            self.publish_errors += 1
            if (suppressed := self._throttle()) is not None:
                log.warning("publish refused: %s", mqtt.error_string(info.rc),
                            extra={"topic": topic, "suppressed": suppressed})
            return False
        with self._lock:
            if not _published(info):
                self._unconfirmed[info.mid] = info
        return True

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the broker to PUBACK everything published."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [i for i in self._unconfirmed.values() if not _published(i)]
                self._unconfirmed = {i.mid: i for i in pending}
            if not pending or not self.connected:
                return not pending
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                pending[0].wait_for_publish(min(remaining, 0.1))
            except (RuntimeError, ValueError):  # lost the connection meanwhile: asked above
                time.sleep(min(remaining, 0.1))  # the network thread reconnects; not a state wait

    def stop(self, timeout: float = 2.0) -> None:
        """Publish the retained offline status, disconnect cleanly, stop the network thread."""
        if self.connected:
            info = self._client.publish(
                self.status_topic, encode_status(online=False, instance=self.instance,
                                                 timestamp_ms=now_ms(), reason="shutdown",
                                                 last_seq=self._last_seq()),
                qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False

    # ---- paho callbacks (network thread) -----------------------------------------------------

    def _set_will(self, client: mqtt.Client) -> None:
        # Retained, so a reader that subscribes later still learns the agent is gone. Its ts is
        # when the session carrying it was set up; the broker sends it when that session dies.
        client.will_set(self.status_topic,
                        encode_status(online=False, instance=self.instance,
                                      timestamp_ms=now_ms(), reason="connection_lost",
                                      last_seq=self._last_seq()),
                        qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            hint = ("; check broker.username (= host_id) and broker.password, made by "
                    "edgemon-collector broker-auth add-host" if reason.value in NOT_AUTHORISED
                    else "")
            log.error("broker refused the connection: %s%s", reason, hint,
                      extra={"broker": f"{self.broker.host}:{self.broker.port}"})
            return
        self._attempt = 0
        self.connections += 1
        self.presence.reset()  # the retained states arrive right after the subscription
        client.subscribe([(self.ack_topic, 1), (COLLECTOR_STATE_FILTER, 1)])
        client.publish(self.status_topic,
                       encode_status(online=True, instance=self.instance,
                                     timestamp_ms=now_ms(), last_seq=self._last_seq(),
                                     **self._birth),
                       qos=1, retain=True)
        self.connected = True
        log.info("connected to the broker", extra={
            "broker": f"{self.broker.host}:{self.broker.port}",
            "session_present": bool(getattr(flags, "session_present", False))})
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        reason, is_tls = connect_error(sys.exc_info()[1])
        self._schedule_retry(client, f"cannot connect to the broker: {reason}",
                             level=logging.ERROR if is_tls else logging.WARNING)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was_connected, self.connected = self.connected, False
        self._wake.set()
        if self._closing:
            return
        if was_connected:
            self._throttle = Throttle(60.0)  # a new outage: say so at once
        self._schedule_retry(client, f"connection lost: {reason}" if was_connected
                             else f"connection failed: {reason}")

    def _schedule_retry(self, client: mqtt.Client, message: str, *,
                        level: int = logging.WARNING) -> None:
        cap = self.broker.reconnect_max_seconds
        delay = reconnect_delay(self._attempt, self._rand, base=min(BACKOFF_BASE, cap), cap=cap)
        self._attempt += 1
        client.reconnect_delay_set(delay, delay)  # resets paho's doubling; we do our own
        self._set_will(client)
        if (suppressed := self._throttle()) is not None:
            log.log(level, "%s; retrying in %.1f s", message, delay, extra={
                "broker": f"{self.broker.host}:{self.broker.port}", "attempt": self._attempt,
                "suppressed": suppressed})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.ack_topic:
            self._acks.put(message.payload)
        elif mqtt.topic_matches_sub(COLLECTOR_STATE_FILTER, message.topic):
            self.presence.update(message.topic, message.payload, retained=bool(message.retain))
        else:
            return
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._lock:
            self._unconfirmed.pop(mid, None)


def _published(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker has PUBACKed ``info``; paho raises instead of answering when the
    message was queued while disconnected (it goes out on reconnect): that is "not yet"."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False
