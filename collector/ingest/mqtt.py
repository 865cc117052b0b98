"""The collector's MQTT side: a paho-mqtt 2.x client feeding a bounded inbox on the event loop.

Delivery contract (see protocol SPEC §5):

* Persistent session (``clean_session=False``, stable client id): while the collector is down the
  broker queues QoS 1 batches for it.
* ``manual_ack=True``: paho does not PUBACK on receipt. A message handed to ingest is PUBACKed
  only after its batch is committed (or after it was rejected and counted), so a crash before the
  commit leaves it unacknowledged and the broker delivers it again. **Every other message is
  PUBACKed at once** whatever became of it (over its host's rate limit, a probe, an error while
  handing it over): the broker's in-flight window for this client can never fill with messages
  nobody will acknowledge. PUBACKing a dropped batch loses nothing: the end-to-end ack, not the
  PUBACK, is what an agent waits for, and it sends the batch again.
* Back-pressure: the paho network thread hands each message to the event loop through ``Inbox``,
  which holds at most ``queue_max`` messages / ``queue_max_bytes`` bytes that are received but not
  yet acknowledged. A message that does not fit is *refused*: not queued, not acknowledged. From
  then on every new message is refused until everything held has been stored and acknowledged;
  then the connection is dropped on purpose so that the broker, resuming the persistent session,
  delivers the refused (unacknowledged) messages again. Memory never grows beyond the bound, and
  nothing is lost. (The broker never has more than ``max_inflight_messages`` unacknowledged
  messages out to us, so with the default queue size this path is the safety net, not the
  normal flow.)
* PUBACKs carry the message id of the connection the message arrived on; a message received on an
  earlier connection is never acknowledged on a later one (the broker re-sent it; its re-sent copy
  is the one acknowledged).
* Never exit on a transport error: publishing an agent ack, PUBACKing and reconnecting tolerate a
  lost connection at any instant. An ack published while disconnected stays in paho's queue and
  goes out after the reconnect; one paho cannot queue is dropped and counted (the agent sends its
  batch again; de-duplication makes that safe).
* Reconnects wait a "full jitter" delay (``common.mqtt_client.reconnect_delay`` between
  ``reconnect_min_seconds`` and ``reconnect_max_seconds``), so collectors and agents that lost
  the same broker do not come back in lock-step. An outage is logged once, at WARNING, when it
  starts, and at INFO when it ends; failed attempts in between at DEBUG (TLS and refused
  credentials, which an operator must fix, at ERROR).
* Presence (protocol/presence.py): once subscribed the collector publishes its ``online`` state,
  retained, QoS 1; the Last Will sets it ``offline``; a clean stop publishes ``offline`` itself.
  The state carries the collector's ``role`` (leader or follower, collector/cluster/) when it
  has one, published again when the role changes (``announce``).
* Several collectors (``shared_group``, [cluster]): the data filters are MQTT 5 shared
  subscriptions ``$share/<group>/...``, so the broker gives each message to one collector of
  the group; each collector keeps its own persistent session, which the broker drops
  ``session_expiry_s`` after the collector went away (then the others get its share). Agent
  acks go to the agent's own topic, so whichever collector stored a batch acknowledges it.
* The delivery stall detector (``stall.py``) watches for a lost PUBLISH or PUBACK that MQTT
  would only repair at the next reconnect; on a stall it logs, shows it in /readyz and /metrics,
  and reconnects.
* A flood stays with its sender (``flood_guard.py``, ``subscriptions.py``): a host sending far
  beyond any agent's rate is left out of the subscriptions for a while, so that the broker drops
  its messages instead of queueing them ahead of every other host's; then one reconnect repairs
  whatever the broker lost while its queue for us was full.

Why ~600 lines in one module: ``MqttIngest`` is one paho client's state (connection
generation, pending PUBACKs, subscriptions, presence) shared by paho's network thread and the
event loop under one publish lock; the contract above is about how those callbacks interleave,
and reads best in one place. The parts with state of their own are already apart: ``inbox.py``,
``stall.py``, ``flood_guard.py``, ``subscriptions.py``, ``rate_limit.py``, ``rejects.py``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgemon.collector.config import MqttConfig
from edgemon.collector.ingest.flood_guard import FloodGuard
from edgemon.collector.ingest.inbox import Inbox, RawMessage
from edgemon.collector.ingest.rate_limit import RateLimiter, message_cost
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.ingest.stall import StallDetector, StallState, probe_topic
from edgemon.collector.ingest.subscriptions import Subscriptions
from edgemon.common import mqtt_client
from edgemon.common.clock import now_ms
from edgemon.common.logs import Throttle
from edgemon.protocol import ProtocolError, ack_topic, parse_topic
from edgemon.protocol.limits import MAX_COMPRESSED_BYTES
from edgemon.protocol.presence import collector_state_topic, encode_collector_state
from edgemon.protocol.status import encode_acks

__all__ = ["Inbox", "MqttIngest", "RawMessage", "now_ms"]

log = logging.getLogger("edgemon.collector.mqtt")

# A message bigger than any valid payload is not kept in memory: it is rejected by size.
MAX_KEPT_PAYLOAD = MAX_COMPRESSED_BYTES

# MQTT 5 Session Expiry Interval "never" (what clean_session=False means in MQTT 3.1.1)
SESSION_NEVER_EXPIRES = 0xFFFFFFFF

# What becomes of a received message (MqttIngest._handle)
HANDED_OVER, DROPPED, REFUSED = "handed_over", "dropped", "refused"


class MqttIngest:
    """Owns the paho client: connect with back-off, subscribe, hand messages over, ack, publish,
    announce presence, watch for stalls, leave flooding hosts out (flood_guard.py)."""

    WATCH_INTERVAL = 0.25  # seconds between watcher rounds (stall checks, probes, floods)
    REPAIR_DELAY = 0.5  # seconds from leaving a flooder out to the repairing reconnect
    QUEUED_PUBLISHES = 10_000  # paho's bound on our publishes waiting (acks while disconnected)

    def __init__(self, config: MqttConfig, inbox: Inbox, *,
                 rand: Callable[[], float] = random.random, shared_group: str | None = None,
                 session_expiry_s: int = 30) -> None:
        self.config = config
        self.inbox = inbox
        self.shared_group = shared_group or None
        self.session_expiry_s = session_expiry_s
        # This collector's role (collector/cluster/), shown in its presence; None: none.
        self.role: Callable[[], str | None] = lambda: None
        self.collector_id = config.presence_id
        self.state_topic = collector_state_topic(self.collector_id)
        self.probe_topic = probe_topic(self.collector_id)
        self.generation = 0
        self.received = 0
        self.refused = 0  # not acknowledged for lack of room: the broker delivers them again
        self.refused_stopping = 0  # not acknowledged because we are shutting down
        self.redelivery_reconnects = 0
        self.stall_reconnects = 0
        self.flood_repairs = 0  # reconnects made right after leaving a flooding host out
        self.ack_publish_failures = 0  # acks paho could not even queue: dropped (agents resend)
        self.acks_queued_offline = 0  # acks published while disconnected: sent after reconnect
        self.stale_acks_skipped = 0
        self.handover_errors = 0  # unexpected errors handing a message over (PUBACKed, dropped)
        self.rate_limited = 0  # acknowledged and dropped: over their host's rate limit
        self.rate_limiter: RateLimiter | None = None  # see use_rate_limit
        self.stall = StallDetector(config.stall_seconds)
        self.flood = FloodGuard(trigger=config.flood_trigger_per_second,
                                quarantine_s=config.flood_quarantine_seconds)
        # Hosts recently heard from (set by the collector): while a host floods, the collector
        # subscribes to these hosts' topics by name instead of the wildcards.
        self.known_hosts: Callable[[], Iterable[str]] = lambda: ()
        # Storage is failing: messages held un-PUBACKed are back-pressure, not a stall. Set by
        # the collector to ask its ingest pipeline.
        self.holding_expected: Callable[[], bool] = lambda: False
        self._rate_rejects: Rejects | None = None
        self._rand = rand
        self._attempt = 0
        self._connected = False
        self._subscribed = False
        self._closing = False
        self._outage_since: float | None = time.monotonic()  # not connected yet
        self._outage_logged = False
        self._error_throttle = Throttle(60.0)
        self._refusing = False  # refused something: refuse everything until drained, reconnect
        self._kicked = False
        self._pending: dict[int, mqtt.MQTTMessageInfo] = {}  # our QoS 1 publishes, by mid
        self._publish_lock = threading.Lock()
        self._wake = threading.Event()  # the watcher's: stopping, or a host started flooding
        self._stopping = False
        self._watcher: threading.Thread | None = None
        self._initial_subscribes: set[int] = set()  # SUBSCRIBE mids to wait for after connecting
        self._repair_at: float | None = None  # reconnect then (see _guard_floods)
        self._probe_warned = False
        client = mqtt_client.make_client(
            config.client_id, clean_session=False, username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            tls=config.tls, ca_file=config.ca_file, cert_file=config.cert_file,
            key_file=config.key_file, manual_ack=True,
            protocol=mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311)
        client.max_queued_messages_set(self.QUEUED_PUBLISHES)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        if log.isEnabledFor(logging.DEBUG):  # paho logs every lost connection at ERROR
            client.enable_logger(logging.getLogger("edgemon.collector.paho"))
        self.client = client
        self.subscriptions = Subscriptions(client, self.probe_topic, isolated=self.flood.isolated,
                                           known_hosts=lambda: self.known_hosts(),
                                           share=self.shared_group)
        self._set_will()
        self._schedule_retry()

    # --- lifecycle (event loop thread) ---------------------------------------------------------

    def start(self) -> None:
        log.info("connecting to %s://%s:%d as %r", "mqtts" if self.config.tls else "mqtt",
                 self.config.host, self.config.port, self.config.client_id)
        if self.config.protocol == "5":
            # clean_start False on every connection: resume the session (what the broker holds
            # for us) whether this is the first connection of the process or a reconnect
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s if self.shared_group \
                else SESSION_NEVER_EXPIRES
            self.client.connect_async(self.config.host, self.config.port,
                                      keepalive=self.config.keepalive, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(self.config.host, self.config.port,
                                      keepalive=self.config.keepalive)
        self.client.loop_start()
        self._watcher = threading.Thread(target=self._watch, name="edgemon-mqtt-watch",
                                         daemon=True)
        self._watcher.start()

    def stop_accepting(self) -> None:
        """Refuse (leave unacknowledged) every message from now on: shutting down."""
        self.inbox.close()

    def close(self, timeout: float = 5.0) -> None:
        """Say ``offline``, flush our publishes (agent acks), disconnect cleanly, stop the
        network thread. Blocking (run it in a thread); never raises for a lost connection.
        PUBACKs already queued go out before the DISCONNECT."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        if self._connected and self.flood.isolated():
            self.subscriptions.restore_wildcards()  # the session as a next run expects it
        if self._connected:
            self._publish(self.state_topic, self._state(online=False), retain=True)
        self._closing = True
        while self._connected and self._unconfirmed() and time.monotonic() < deadline:
            time.sleep(0.01)  # paho's thread sends them; a PUBACK each ends the wait
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        self._connected = self._subscribed = False

    @property
    def ready(self) -> bool:
        """Connected and subscribed: messages can flow."""
        return self._connected and self._subscribed

    @property
    def stalled(self) -> str | None:
        """The reason of a delivery stall in progress (see stall.py), or None."""
        return self.stall.state().stalled

    def stall_state(self) -> StallState:
        return self.stall.state()

    # --- called by the ingest pipeline after a commit (event loop thread) ----------------------

    def ack(self, msg: RawMessage) -> bool:
        """PUBACK ``msg`` if it arrived on the current connection; False if it cannot be."""
        if msg.qos == 0:
            return True
        self.stall.pubacked(msg.generation, msg.mid)
        if msg.generation != self.generation or not self._connected:
            self.stale_acks_skipped += 1
            return False
        return self._puback(msg.mid, msg.qos)

    def publish_ack(self, host: str, instance: str, seqs: list[int], *,
                    rejected: list[int] | None = None, reason: str = "",
                    catalogues: list[str] | None = None, bases: bool = False) -> bool:
        """Tell the agent which of its batches are durably stored, or refused for good (QoS 1).

        Never raises for a transport problem: an ack published while disconnected is sent after
        the reconnect; one that cannot even be queued is dropped, counted and False. Many seqs
        (a held ack, ``backpressure.py``) go out in as many messages as an agent's limit on
        ranges per ack needs (``encode_acks``)."""
        topic = ack_topic(host)
        sent = [self._publish(topic, payload) for payload in encode_acks(
            instance=instance, seqs=seqs, rejected=rejected, reason=reason,
            catalogues=catalogues, bases=bases)]
        return all(sent)

    def publish_alert(self, topic: str, payload: bytes) -> None:
        """Publish an alert transition (QoS 1); raises ``ConnectionError`` if paho could not
        queue it, so the alert outbox tries again later."""
        if not self._publish(topic, payload):
            raise ConnectionError("the MQTT client's queue is full; the broker is unreachable")

    def after_release(self) -> None:
        """Once everything held is acknowledged after a refusal, reconnect to get redelivery."""
        if not self._refusing or self._kicked or self.inbox.held or self.inbox.closed:
            return
        self._kicked = True
        self.redelivery_reconnects += 1
        log.warning("inbox drained after refusing %d message(s): reconnecting so the broker "
                    "delivers them again", self.refused)
        self._drop_connection()

    # --- publishing and PUBACKs (any thread) ---------------------------------------------------

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1; True if paho took it (now, or for after the reconnect)."""
        try:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
        except (ValueError, RuntimeError, OSError) as exc:  # paho refuses the arguments
            self.ack_publish_failures += 1
            self._log_error("cannot publish to %s: %r", topic, exc)
            return False
        if info.rc == mqtt.MQTT_ERR_NO_CONN:  # paho keeps it and sends it after the reconnect
            self.acks_queued_offline += 1
            return True
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.ack_publish_failures += 1
            self._log_error("cannot queue a publish to %s: %s (dropped; an agent sends its batch "
                            "again)", topic, mqtt.error_string(info.rc))
            return False
        with self._publish_lock:
            self._pending[info.mid] = info
        self.stall.published(info.mid)
        # Its PUBACK may have come before we noted it (``on_publish`` found nothing to forget):
        # look at this one only; scanning every pending publish here cost O(pending) per ack.
        if info.is_published():
            with self._publish_lock:
                self._pending.pop(info.mid, None)
            self.stall.confirmed(info.mid)
        return True

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any,
                    _properties: Any) -> None:
        with self._publish_lock:
            self._pending.pop(mid, None)
        self.stall.confirmed(mid)

    def _prune_pending(self) -> None:
        """Forget publishes the broker has confirmed (``on_publish`` may run before ``_publish``
        noted the mid; ``is_published`` is safe here: only SUCCESS infos are kept)."""
        with self._publish_lock:
            done = [mid for mid, info in self._pending.items() if info.is_published()]
            for mid in done:
                del self._pending[mid]
        for mid in done:
            self.stall.confirmed(mid)

    def _unconfirmed(self) -> int:
        self._prune_pending()
        return len(self._pending)

    def _puback(self, mid: int, qos: int) -> bool:
        try:
            return self.client.ack(mid, qos) == mqtt.MQTT_ERR_SUCCESS
        except (OSError, ValueError, RuntimeError):  # the connection went away meanwhile
            return False

    def _drop_connection(self) -> None:
        """Close the socket under paho: it sees a lost connection and reconnects (resuming the
        persistent session, so the broker re-sends what it had in flight to us, and paho
        re-sends our unconfirmed publishes)."""
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # --- presence and the stall watcher --------------------------------------------------------

    def _state(self, *, online: bool) -> bytes:
        return encode_collector_state(self.collector_id, online=online, ts_ms=now_ms(),
                                      role=self.role() if online else None)

    def announce(self) -> None:
        """Publish our ``online`` state again (the role changed); nothing before subscribing
        (the state goes out then anyway). Any thread."""
        if self.ready and not self._closing:
            self._publish(self.state_topic, self._state(online=True), retain=True)

    def _set_will(self) -> None:
        # Retained: a reader subscribing later still learns we are gone. Its ts is when the
        # session carrying it was set up; the broker sends it when that session dies.
        self.client.will_set(self.state_topic, self._state(online=False), qos=1, retain=True)

    def _watch(self) -> None:
        """The watcher thread: probe a quiet connection, detect stalls and floods, act."""
        while True:
            self._wake.wait(self.WATCH_INTERVAL)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._guard_floods()
                self._watch_once()
            except Exception:  # the watcher must outlive any bug in one round
                self._log_error("delivery watcher round failed", exc_info=True)

    def _guard_floods(self) -> None:
        """Leave hosts that started flooding out of the subscriptions; let back who served
        their time (flood_guard.py)."""
        new, released = self.flood.tick()
        for host in new:
            log.warning("host %s floods (over %d messages/s beyond its rate limit): not "
                        "subscribed to its topics for %.0f s, so the broker drops its messages "
                        "instead of queueing them before everyone else's", host,
                        self.flood.trigger, self.flood.isolated().get(host, 0.0),
                        extra={"host": host})
        for host in released:
            log.info("host %s let back in (its flood quarantine is over)", host,
                     extra={"host": host})
        if self._repair_at is not None and time.monotonic() >= self._repair_at:
            # The flood is kept out now. Before it was, the broker may have dropped packets it
            # counts as in flight (see stall.py; its UNSUBACK too): reconnect once, so that both
            # sides re-send them now rather than after a stall is detected.
            self._repair_at = None
            self.flood_repairs += 1
            self._drop_connection()
            return
        if not (new or released) or not self._connected:
            return  # on_connect subscribes as the isolation stands
        if new:
            self._repair_at = time.monotonic() + self.REPAIR_DELAY
        self.subscriptions.update()

    def _watch_once(self) -> None:
        if not self.ready or self._closing:
            return
        if not self.stall.probing and not self._probe_warned:
            self._probe_warned = True
            log.warning("the broker does not deliver the delivery probes on %s (its ACL predates "
                        "them?): the stall detector watches without probes; regenerate the ACL "
                        "(edgemon-collector broker-auth regenerate DIR, then reload mosquitto)",
                        self.probe_topic)
        self._prune_pending()
        if self.stall.probe_due():
            self._publish(self.probe_topic, str(now_ms()).encode())
        reason = self.stall.check(holding_expected=self.holding_expected())
        if reason is None:
            return
        state = self.stall.state()
        self.stall_reconnects += 1
        log.warning("mqtt delivery stalled (%s): reconnecting so the broker and we re-send what "
                    "is in flight", reason, extra={
                        "reason": reason, "bound_seconds": self.stall.bound_s,
                        "oldest_unacked_seconds": _rounded(state.oldest_unacked_s),
                        "oldest_unconfirmed_publish_seconds":
                            _rounded(state.oldest_unconfirmed_s),
                        "silence_seconds": _rounded(state.silence_s),
                        "inbox_held": self.inbox.held})
        self._drop_connection()

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any,
                    reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            # bad credentials, not authorised, client id refused: the operator must act
            self._log_error("mqtt broker refused the connection: %s; check [mqtt] username "
                            "and password (made by edgemon-collector broker-auth)", reason_code)
            self._schedule_retry()
            return
        self.generation += 1
        self._attempt = 0
        self._refusing = False
        self._kicked = False
        self._connected = True
        self.stall.connected(self.generation)
        session = bool(getattr(flags, "session_present", False))
        if self._outage_since is not None and self._outage_logged:
            log.info("reconnected to the mqtt broker after %.1f s (session present: %s)",
                     time.monotonic() - self._outage_since, session)
        else:
            log.info("connected to mqtt broker (session present: %s)", session)
        self._outage_since, self._outage_logged = None, False
        self._error_throttle = Throttle(60.0)
        self._initial_subscribes = self.subscriptions.on_connect(session_present=session)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception is still current
        cfg = self.config
        reason, is_tls = mqtt_client.connect_failure(sys.exc_info()[1], ca_key="mqtt.ca_file",
                                                     host_key="mqtt.host", port_key="mqtt.port")
        where = f"{'mqtts' if cfg.tls else 'mqtt'}://{cfg.host}:{cfg.port}"
        if is_tls:
            self._log_error("cannot connect to %s: %s", where, reason)
        elif not self._outage_logged:
            self._outage_logged = True
            log.warning("cannot connect to %s: %s; retrying with back-off (%.2g to %d s, "
                        "jittered); logged once per outage", where, reason,
                        cfg.reconnect_min_seconds, cfg.reconnect_max_seconds)
        else:
            log.debug("cannot connect to %s: %s", where, reason)
        self._schedule_retry()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason_code: Any, _properties: Any) -> None:
        was = self._connected
        self._connected = self._subscribed = False
        self.stall.disconnected()
        if self._closing:
            return
        if was:
            self._outage_since = time.monotonic()
            self._outage_logged = not self._kicked and self.stall.state().stalled is None
            if self._outage_logged:
                log.warning("lost the connection to the mqtt broker (%s); reconnecting with "
                            "back-off; messages not yet stored are delivered again",
                            reason_code)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        """Jittered delay for paho's next attempt, and a Will with a fresh timestamp."""
        cfg = self.config
        delay = mqtt_client.reconnect_delay(self._attempt, self._rand,
                                            base=cfg.reconnect_min_seconds,
                                            cap=cfg.reconnect_max_seconds)
        self._attempt += 1
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        with contextlib.suppress(ValueError):  # will_set refuses only while connected
            self._set_will()

    def _on_subscribe(self, client: mqtt.Client, _userdata: Any, mid: int,
                      reason_codes: list[Any], _properties: Any) -> None:
        refused = self.subscriptions.refused(mid, reason_codes)
        essential = [t for t in refused if t != self.probe_topic]
        if self.probe_topic in refused:
            self.stall.probing = False  # an ACL generated before probes existed
        if essential:
            self._log_error("broker refused %d subscription(s) (%s ...); check the broker's ACL "
                            "for the collector user", len(essential),
                            self.subscriptions.shown(essential[0]))
        if mid not in self._initial_subscribes:
            return
        self._initial_subscribes.discard(mid)
        if essential:
            self._initial_subscribes.clear()  # not ready: it would receive nothing from them
        if self._initial_subscribes or essential:
            return
        self._subscribed = True
        isolated = self.flood.isolated()
        log.info("subscribed to %s", ", ".join([*map(self.subscriptions.shown,
                                                     self.subscriptions.wildcards()),
                                                 self.probe_topic])
                 if not isolated else f"{len(self.subscriptions.topics)} topics, leaving out "
                 f"{len(isolated)} flooding host(s)")
        self._publish(self.state_topic, self._state(online=True), retain=True)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        fate = DROPPED
        try:
            fate = self._handle(message)
        except Exception:  # never let an exception kill paho's network thread
            self.handover_errors += 1
            self._log_error("failed to hand over an mqtt message (acknowledged and dropped)",
                            exc_info=True)
        finally:
            # Whatever was neither handed to ingest nor refused for redelivery is PUBACKed
            # now: nothing may occupy the broker's in-flight window for ever.
            if fate == DROPPED and message.qos > 0:
                self._puback(message.mid, message.qos)

    def _log_error(self, msg: str, *args: Any, exc_info: bool = False) -> None:
        if (suppressed := self._error_throttle()) is not None:
            log.error(msg, *args, exc_info=exc_info, extra={"suppressed": suppressed})

    # --- per-host rate limit (``use_rate_limit``), applied in ``_handle`` -------------------------

    def use_rate_limit(self, limiter: RateLimiter, rejects: Rejects) -> None:
        """Drop messages over their host's limit before queueing them, counted in ``rejects``
        as ``rate_limited``. Call before ``start``."""
        self.rate_limiter, self._rate_rejects = limiter, rejects

    def charge(self, host: str, size: int) -> None:
        """Charge ``host``'s rate limit ``size`` more bytes: what resolving a batch that names a
        catalogue cost beyond its frame (``Facts.charge``); no limit, no charge."""
        if self.rate_limiter is not None:
            self.rate_limiter.charge(host, size)

    def _over_rate_limit(self, host: str | None, payload: bytes, size: int) -> bool:
        """Whether the message's ``host`` (None: a bad topic) is over its rate limit; every
        message also counts towards its host's flood check."""
        if host is not None and self.flood.received(host):
            self._wake.set()  # a new flooder: the watcher leaves it out at once
        limiter = self.rate_limiter
        if limiter is None or limiter.allow(host or "_unknown", message_cost(payload, size)):
            return False
        self._count_rate_limited(host, "over the host's rate limit; the agent sends the batch "
                                 "again after its ack timeout")
        return True

    def _count_rate_limited(self, host: str | None, detail: str) -> None:
        self.rate_limited += 1
        if self._rate_rejects is not None:
            self._rate_rejects.record("rate_limited", host, detail)

    def _handle(self, message: mqtt.MQTTMessage) -> str:
        """What becomes of ``message``: ``HANDED_OVER`` (ingest PUBACKs it once stored),
        ``DROPPED`` (PUBACK it now) or ``REFUSED`` (no PUBACK: the broker delivers it again)."""
        self.received += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        self.stall.received(probe=topic == self.probe_topic)
        if topic == self.probe_topic:
            return DROPPED
        payload = message.payload
        size = len(payload)
        if size > MAX_KEPT_PAYLOAD:
            payload = b""
        if self.inbox.closed:
            self.refused_stopping += 1
            return REFUSED  # left for the broker to deliver to the next run
        try:
            host: str | None = parse_topic(topic).host  # checked: it may reach the rejects
        except ProtocolError:
            host = None  # bad topics share one bucket (and are rejected by the pipeline)
        if self._over_rate_limit(host, payload, size):
            return DROPPED  # counted; its agent sends the batch again
        if self.inbox.over_share(topic):  # room kept for the other hosts (inbox.py)
            self._count_rate_limited(host, "the host holds its share of the "
                                     "inbox; the agent sends the batch again after its ack "
                                     "timeout")
            return DROPPED
        msg = RawMessage(topic=topic, payload=payload, mid=message.mid, qos=message.qos,
                         retain=bool(message.retain), received_ms=now_ms(),
                         generation=self.generation, size=size)
        if not self._refusing and self.inbox.offer(msg):
            if msg.qos > 0:  # QoS 0 needs no PUBACK
                self.stall.handed_over(msg.generation, msg.mid)
            return HANDED_OVER
        if self.inbox.closed:
            self.refused_stopping += 1
            return REFUSED
        if not self._refusing:
            log.warning("inbox full (%d messages, %d bytes held): refusing messages until it "
                        "drains", self.inbox.held, self.inbox.held_bytes)
        self._refusing = True
        self.refused += 1
        return REFUSED


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
