"""The collector's MQTT side: a paho-mqtt 2.x client feeding a bounded inbox on the event loop.

Delivery contract (see protocol SPEC §5):

* Persistent session (``clean_session=False``, stable client id): while the collector is down the
  broker queues QoS 1 batches for it.
* ``manual_ack=True``: paho does not PUBACK on receipt. The ingest pipeline calls ``ack()`` only
  after the message's batch is committed (or after a garbage message was rejected and counted), so
  a crash before the commit leaves the message unacknowledged and the broker delivers it again.
* Back-pressure: the paho network thread hands each message to the event loop through ``Inbox``,
  which holds at most ``queue_max`` messages / ``queue_max_bytes`` bytes that are received but not
  yet acknowledged. A message that does not fit is *refused*: not queued, not acknowledged. From
  then on every new message is refused until everything held has been stored and acknowledged;
  then the connection is dropped on purpose so that the broker, resuming the persistent session,
  delivers the refused (unacknowledged) messages again. Memory never grows beyond the bound, and
  nothing is lost. (With Mosquitto's default ``max_inflight_messages`` of 20 the broker never has
  more than 20 unacknowledged messages out to us, so with the default queue size this path is
  the safety net, not the normal flow.)
* PUBACKs carry the message id of the connection the message arrived on; a message received on an
  earlier connection is never acknowledged on a later one (the broker re-sent it; its re-sent copy
  is the one acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgemon.collector.config import MqttConfig
from edgemon.collector.ingest.rate_limit import RateLimiter, message_cost
from edgemon.collector.ingest.rejects import Rejects
from edgemon.common.clock import now_ms
from edgemon.protocol import ProtocolError, ack_topic, encode_ack, parse_topic, subscriptions
from edgemon.protocol.limits import MAX_COMPRESSED_BYTES

__all__ = ["Inbox", "MqttIngest", "RawMessage", "now_ms"]

log = logging.getLogger("edgemon.collector.mqtt")

# A message bigger than any valid payload is not kept in memory: it is rejected by size.
MAX_KEPT_PAYLOAD = MAX_COMPRESSED_BYTES


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as received; ``payload`` is empty when ``size`` exceeds any valid payload."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received_ms: int
    generation: int  # which connection it arrived on (PUBACK only on that one)
    size: int


class Inbox:
    """Bounded hand-off from the paho thread to the event loop, counted until released.

    ``offer`` (any thread) admits a message only if the messages and bytes *held* (queued or being
    stored, not yet released) stay within the bounds; ``release`` (after the PUBACK) frees them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_messages: int,
                 max_bytes: int) -> None:
        self._loop = loop
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._held = 0
        self._held_bytes = 0
        self._closed = False
        self._queue: deque[RawMessage] = deque()
        self._ready = asyncio.Event()

    def offer(self, msg: RawMessage) -> bool:
        with self._lock:
            if self._closed:
                return False
            if self._held >= self.max_messages or (
                    self._held and self._held_bytes + len(msg.payload) > self.max_bytes):
                return False
            self._held += 1
            self._held_bytes += len(msg.payload)
        try:
            self._loop.call_soon_threadsafe(self._put, msg)
        except RuntimeError:  # the loop is closed: we are shutting down
            self.release([msg])
            return False
        return True

    def _put(self, msg: RawMessage) -> None:
        self._queue.append(msg)
        self._ready.set()

    async def get_many(self, limit: int, timeout: float | None = None) -> list[RawMessage]:
        """Up to ``limit`` queued messages; waits up to ``timeout`` for the first ([] if none)."""
        if not self._queue:
            if self.closed:
                return []
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        out: list[RawMessage] = []
        while self._queue and len(out) < limit:
            out.append(self._queue.popleft())
        return out

    def release(self, msgs: list[RawMessage]) -> None:
        with self._lock:
            self._held -= len(msgs)
            self._held_bytes -= sum(len(m.payload) for m in msgs)

    def close(self) -> None:
        """Refuse every new message from now on; wake a waiting ``get_many``."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def held(self) -> int:
        return self._held

    @property
    def held_bytes(self) -> int:
        return self._held_bytes


class MqttIngest:
    """Owns the paho client: connect with back-off, subscribe, hand messages over, ack, publish."""

    def __init__(self, config: MqttConfig, inbox: Inbox) -> None:
        self.config = config
        self.inbox = inbox
        self.generation = 0
        self.received = 0
        self.refused = 0  # not acknowledged for lack of room: the broker delivers them again
        self.refused_stopping = 0  # not acknowledged because we are shutting down
        self.redelivery_reconnects = 0
        self.ack_publish_failures = 0
        self.stale_acks_skipped = 0
        self.rate_limited = 0  # acknowledged and dropped: over their host's rate limit
        self.rate_limiter: RateLimiter | None = None  # see use_rate_limit
        self._rate_rejects: Rejects | None = None
        self._connected = False
        self._subscribed = False
        self._refusing = False  # refused something: refuse everything until drained, reconnect
        self._kicked = False
        self._pending_publishes: deque[mqtt.MQTTMessageInfo] = deque()
        self._publish_lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if config.tls:
            self._use_tls(client)
        # Back-off 0.25 s doubling to the maximum; short at first so the deliberate reconnect
        # after a refusal (see after_release) costs little. paho accepts float delays.
        client.reconnect_delay_set(min_delay=0.25,  # type: ignore[arg-type]
                                   max_delay=config.reconnect_max_seconds)
        client.max_queued_messages_set(10_000)  # outgoing agent acks while disconnected
        client.on_connect = self._on_connect
        if not config.tls:
            client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.enable_logger(logging.getLogger("edgemon.collector.paho"))
        logging.getLogger("edgemon.collector.paho").setLevel(logging.WARNING)
        self.client = client

    # --- lifecycle (event loop thread) ---------------------------------------------------------

    def _use_tls(self, client: mqtt.Client) -> None:
        """TLS with verification (part of ``__init__``); a TLS failure is logged with a hint."""
        import sys

        from edgemon.collector.broker.auth import apply_client_tls, tls_failure_hint

        cfg = self.config
        apply_client_tls(client, ca_file=cfg.ca_file, cert_file=cfg.cert_file,
                         key_file=cfg.key_file)

        def on_connect_fail(client_: mqtt.Client, userdata: Any) -> None:
            # paho calls this inside its ``except OSError``: the exception is still current
            hint = tls_failure_hint(sys.exc_info()[1], ca_key="mqtt.ca_file", host_key="mqtt.host")
            if hint is not None:
                log.error("cannot connect to mqtts://%s:%d: %s", cfg.host, cfg.port, hint)
            self._on_connect_fail(client_, userdata)

        client.on_connect_fail = on_connect_fail

    def start(self) -> None:
        log.info("connecting to %s://%s:%d as %r", "mqtts" if self.config.tls else "mqtt",
                 self.config.host, self.config.port, self.config.client_id)
        self.client.connect_async(self.config.host, self.config.port,
                                  keepalive=self.config.keepalive)
        self.client.loop_start()

    def stop_accepting(self) -> None:
        """Refuse (leave unacknowledged) every message from now on: shutting down."""
        self.inbox.close()

    def close(self, timeout: float = 5.0) -> None:
        """Flush agent acks still being published, disconnect cleanly, stop the network thread.

        Blocking; run it in a thread. PUBACKs already queued go out before the DISCONNECT.
        """
        deadline = time.monotonic() + timeout
        with self._publish_lock:
            pending = list(self._pending_publishes)
            self._pending_publishes.clear()
        for info in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._connected:
                break
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(remaining)
        self.client.disconnect()
        self.client.loop_stop()
        self._connected = self._subscribed = False

    @property
    def ready(self) -> bool:
        """Connected and subscribed: messages can flow."""
        return self._connected and self._subscribed

    # --- called by the ingest pipeline after a commit (event loop thread) ----------------------

    def ack(self, msg: RawMessage) -> bool:
        """PUBACK ``msg`` if it arrived on the current connection; False if it cannot be."""
        if msg.qos == 0:
            return True
        if msg.generation != self.generation or not self._connected:
            self.stale_acks_skipped += 1
            return False
        self.client.ack(msg.mid, msg.qos)
        return True

    def publish_ack(self, host: str, instance: str, seqs: list[int], *,
                    rejected: list[int] | None = None, reason: str = "") -> bool:
        """Tell the agent which of its batches are durably stored, or refused for good (QoS 1)."""
        payload = encode_ack(instance=instance, seqs=seqs, rejected=rejected, reason=reason)
        info = self.client.publish(ack_topic(host), payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.ack_publish_failures += 1
            log.warning("could not queue ack for %s: %s", host, mqtt.error_string(info.rc))
            return False
        with self._publish_lock:
            self._pending_publishes.append(info)
            while self._pending_publishes and (self._pending_publishes[0].is_published()
                                               or len(self._pending_publishes) > 10_000):
                self._pending_publishes.popleft()
        return True

    def after_release(self) -> None:
        """Once everything held is acknowledged after a refusal, reconnect to get redelivery."""
        if not self._refusing or self._kicked or self.inbox.held or self.inbox.closed:
            return
        self._kicked = True
        self.redelivery_reconnects += 1
        log.warning("inbox drained after refusing %d message(s): reconnecting so the broker "
                    "delivers them again", self.refused)
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # paho sees a lost connection and reconnects

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any,
                    reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.error("mqtt broker refused the connection: %s", reason_code)
            return
        self.generation += 1
        self._refusing = False
        self._kicked = False
        self._connected = True
        log.info("connected to mqtt broker (session present: %s)",
                 bool(getattr(flags, "session_present", False)))
        client.subscribe([(topic, 1) for topic in subscriptions()])

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        log.warning("cannot connect to mqtt://%s:%d; retrying with back-off",
                    self.config.host, self.config.port)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason_code: Any, _properties: Any) -> None:
        was = self._connected
        self._connected = self._subscribed = False
        if was:
            log.warning("disconnected from mqtt broker: %s", reason_code)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reason_codes: list[Any], _properties: Any) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused subscriptions %s: %s", subscriptions(), failed)
            return
        self._subscribed = True
        log.info("subscribed to %s", ", ".join(subscriptions()))

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        try:
            self._handle(message)
        except Exception:  # never let an exception kill paho's network thread
            log.exception("failed to hand over an mqtt message")

    # --- per-host rate limit (``use_rate_limit``), applied in ``_handle`` -------------------------

    def use_rate_limit(self, limiter: RateLimiter, rejects: Rejects) -> None:
        """Drop messages over their host's limit before queueing them, counted in ``rejects``
        as ``rate_limited``. Call before ``start``."""
        self.rate_limiter, self._rate_rejects = limiter, rejects

    def _over_rate_limit(self, topic: str, payload: bytes, size: int) -> bool:
        """Whether the message's host (from the topic) is over its rate limit."""
        limiter = self.rate_limiter
        if limiter is None:
            return False
        try:
            host: str | None = parse_topic(topic).host
        except ProtocolError:
            host = None  # bad topics share one bucket (and are rejected by the pipeline)
        if limiter.allow(host or "_unknown", message_cost(payload, size)):
            return False
        self.rate_limited += 1
        if self._rate_rejects is not None:
            self._rate_rejects.record("rate_limited", host, "over the host's rate limit; the "
                                      "agent sends the batch again after its ack timeout")
        return True

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        payload = message.payload
        size = len(payload)
        if size > MAX_KEPT_PAYLOAD:
            payload = b""
        msg = RawMessage(topic=topic, payload=payload, mid=message.mid, qos=message.qos,
                         retain=bool(message.retain), received_ms=now_ms(),
                         generation=self.generation, size=size)
        if self.inbox.closed:
            self.refused_stopping += 1
            return
        if self._over_rate_limit(topic, payload, size):
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)  # PUBACK now: dropped, not redelivered
            return
        if self._refusing or not self.inbox.offer(msg):
            if self.inbox.closed:
                self.refused_stopping += 1
                return
            if not self._refusing:
                log.warning("inbox full (%d messages, %d bytes held): refusing messages until "
                            "it drains", self.inbox.held, self.inbox.held_bytes)
            self._refusing = True
            self.refused += 1
