"""The agent's main loop: sample every interval into the buffer, seal, publish, apply acks.

One thread does all of it (SQLite included); paho's network thread only hands acks over through
a queue and wakes the loop. Ticks are scheduled on the monotonic clock (``start + k·interval``,
no drift; missed ticks are skipped, not bunched) and stamped with the wall clock in ms.
SIGTERM/SIGINT finish the current cycle, seal what is pending, publish it, publish the offline
status and disconnect; a second signal kills the process the default way. SIGHUP re-reads the
configuration: the log level applies at once, other changes are logged as needing a restart.

Under systemd (``Type=notify``) the runner sends READY=1 once the buffer is open (not when the
broker answers: it must buffer while the broker is away), WATCHDOG=1 while the loop turns, and
STOPPING=1 on the way out (``sdnotify``).
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgemon.agent import __version__, selfmetrics
from edgemon.agent.buffer import Buffer
from edgemon.agent.buffer_store import BufferStore
from edgemon.agent.config import AgentConfig, ConfigError, as_dict, family_cycles
from edgemon.agent.families import FAMILIES, Collect, Reading, Unavailable, cycle
from edgemon.agent.publisher import Publisher
from edgemon.agent.sender import Sender
from edgemon.common import sdnotify
from edgemon.common.clock import now_ms
from edgemon.common.logs import Throttle
from edgemon.protocol import ProtocolError, decode_ack
from edgemon.protocol.catalogue import encode_catalogue
from edgemon.protocol.topics import catalogue_topic

__all__ = ["Runner", "new_instance_id"]

log = logging.getLogger("edgemon.agent")
SHUTDOWN_ACK_WAIT_SECONDS = 3.0
CATALOGUE_REDECLARE_MAX = 3600.0  # seconds between declarations nobody acknowledges, at most


def new_instance_id() -> str:
    """12 random hex characters: a new one on every start of the agent."""
    return os.urandom(6).hex()


def _make_collectors(names: tuple[str, ...]) -> dict[str, Collect]:
    collectors: dict[str, Collect] = {}
    for name in names:
        try:
            collectors[name] = FAMILIES[name]()
        except Unavailable as exc:  # a property of this host: said once, no traceback
            log.warning("family %s is not available on this host: %s", name, exc,
                        extra={"family": name})
        except Exception:
            log.exception("family %s cannot start; sampling the others", name,
                          extra={"family": name})
    return collectors


class Runner:
    """The agent: ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT) and returns 0."""

    def __init__(self, config: AgentConfig, *,
                 collectors: Mapping[str, Collect] | None = None,
                 instance: str | None = None, memory_cycles: int = 60,
                 reload_config: Callable[[], AgentConfig] | None = None) -> None:
        self.config = config
        self._reload_config = reload_config
        self.instance = instance or new_instance_id()
        self.collectors = dict(collectors) if collectors is not None else None
        settings = config.buffer
        self._wake = threading.Event()
        self._acks: queue.Queue[bytes] = queue.Queue()
        self._stopping = False
        self._reload_requested = False
        self._watchdog = sdnotify.watchdog_interval()
        self._watchdog_sent = float("-inf")
        self.store = BufferStore(
            lambda first_seq: Buffer.open(
                settings.path, host=config.host_id, instance=self.instance,
                max_bytes=settings.max_bytes, max_age_seconds=settings.max_age_hours * 3600,
                first_seq=first_seq),
            memory_cycles=memory_cycles)
        interval = config.interval_seconds
        self.publisher = Publisher(
            config.broker, host_id=config.host_id, instance=self.instance,
            birth={"interval_s": int(interval) if interval.is_integer() else interval,
                   "agent_version": __version__},
            acks=self._acks, wake=self._wake, max_inflight=settings.max_inflight,
            last_seq=lambda: self.store.last_sealed_seq)
        self.sender = Sender(
            self.store, self.publisher.publish, host_id=config.host_id,
            live_window=2 * interval * config.batch_cycles,
            ack_timeout=settings.ack_timeout_seconds,
            backfill_per_second=settings.backfill_batches_per_second,
            max_inflight=settings.max_inflight)
        self.catalogue_topic = catalogue_topic(config.host_id)
        # the catalogue declared last: id, when (monotonic), seconds until it is declared again
        self._declared: tuple[str, float, float] | None = None
        self.cycles = 0
        self._family_cycles = family_cycles(config)  # [intervals]; fixed until a restart
        self._unsealed = 0
        self._cycle_seconds: float | None = None
        self._throttles: dict[str, Throttle] = {}

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stopping = True
        self._wake.set()

    def run(self) -> int:
        restore = self._install_signals()
        try:
            if self.collectors is None:
                self.collectors = _make_collectors(self.config.families)
            log.info("agent starting", extra={
                "host_id": self.config.host_id, "instance": self.instance,
                "version": __version__, "buffer": str(self.config.buffer.path),
                "broker": f"{self.config.broker.host}:{self.config.broker.port}",
                "families": list(self.collectors)})
            start_ms = now_ms()
            self.store.seal(start_ms)  # cycles a previous run left unsealed
            self.store.enforce_budget(start_ms)
            self.publisher.start()
            buffer_state = "open" if self.store.buffer is not None else "unavailable"
            sdnotify.notify(f"READY=1\nSTATUS=sampling every {self.config.interval_seconds:g} s;"
                            f" buffer {buffer_state}")
            # What start-up made (modules, families, clients) lives as long as the agent: out of
            # the cyclic collector's way, its full collections walk only what cycles make.
            gc.collect()
            gc.freeze()
            try:
                self._loop()
            finally:
                self._shutdown()
                gc.unfreeze()  # a runner inside a larger process (tests) gives them back
        finally:
            restore()
        return 0

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        interval = self.config.interval_seconds
        start = time.monotonic()
        tick = 0
        while not self._stopping:
            now = time.monotonic()
            self._feed_watchdog(now)
            if self._reload_requested:
                self._reload()
            next_tick = start + tick * interval
            if now >= next_tick:
                self._cycle()
                behind = int((time.monotonic() - start) / interval) + 1
                if behind > tick + 2:
                    self._warn("late", "sampling fell behind; skipped %d cycles",
                               behind - tick - 1)
                tick = max(tick + 1, behind)
                next_tick = start + tick * interval
            self._exchange()
            due = next_tick
            if self._may_publish():
                due = min(due, self.sender.next_due())
            if self._watchdog is not None:
                due = min(due, self._watchdog_sent + self._watchdog / 3)
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()

    def _cycle(self) -> None:
        started = time.monotonic()
        ts_ms = now_ms()
        readings: list[Reading] = []
        every = self._family_cycles
        with cycle():  # the families reading /proc/stat share one read of it
            for name, collect in (self.collectors or {}).items():
                if self.cycles % every.get(name, 1):
                    continue  # [intervals]: this family is sampled every N cycles, from the first
                try:
                    readings += collect()
                except Exception as exc:
                    self._warn(f"family:{name}", "family %s failed: %r", name, exc)
        readings += selfmetrics.readings(self._health(), ts_ms)
        self.store.append(ts_ms, readings)
        self.cycles += 1
        self._unsealed += 1
        if self._unsealed >= self.config.batch_cycles:
            for ref in self.store.seal(ts_ms):
                log.debug("sealed a batch", extra={"seq": ref.seq, "samples": ref.samples})
            self._unsealed = 0
        dropped = self.store.enforce_budget(ts_ms)
        if dropped:
            stats = self.store.stats()
            self._warn("dropped", "buffer over its budget: dropped the %d oldest samples "
                       "(%d in total)", dropped, stats.dropped_samples_total)
        self._cycle_seconds = time.monotonic() - started

    def _exchange(self) -> None:
        """Apply received acks; re-send at once what is in flight if a collector came online;
        publish what is due (unless no collector is listening)."""
        self._apply_acks()
        if self.publisher.presence.take_came_online():
            resent = self.sender.resend_unacknowledged()
            log.info("a collector is online: publishing the unacknowledged batches now",
                     extra={"in_flight": resent,
                            "collectors": self.publisher.presence.online_collectors()})
        if self._may_publish():
            self._declare_catalogue()
            self.sender.pump()

    def _declare_catalogue(self) -> None:
        """Publish the newest series catalogue (retained) until a collector acknowledges it;
        until then batches naming it go inline (SPEC.md §9). Again after the ack timeout,
        doubling up to an hour (a collector that keeps no catalogues never acknowledges one)."""
        newest = self.store.newest_catalogue()
        if newest is None or newest[1]:
            return
        ident = newest[0]
        now = time.monotonic()
        wait = self.config.buffer.ack_timeout_seconds
        if self._declared is not None and self._declared[0] == ident:
            if now - self._declared[1] < self._declared[2]:
                return
            wait = min(CATALOGUE_REDECLARE_MAX, 2 * self._declared[2])
        metrics = self.store.catalogue_metrics(ident)
        if metrics is None:
            return
        payload = encode_catalogue(host=self.config.host_id, instance=self.instance,
                                   metrics=metrics, ident=ident)
        if self.publisher.publish(self.catalogue_topic, payload, retain=True):
            self._declared = (ident, now, wait)
            log.debug("declared a series catalogue", extra={"catalogue": ident})

    def _may_publish(self) -> bool:
        """Connected, and a collector is listening (or nothing is known about collectors)."""
        return self.publisher.connected and self.publisher.presence.publishing_allowed

    def _apply_acks(self) -> None:
        """Delete (or drop and count) what the collector acknowledged since the last call."""
        while True:
            try:
                payload = self._acks.get_nowait()
            except queue.Empty:
                break
            try:
                ack = decode_ack(payload)
            except ProtocolError as exc:
                self._warn("bad_ack", "ignoring an invalid acknowledgement: %s", exc)
                continue
            if ack.catalogues:
                self.store.catalogues_acked(ack.catalogues)
                self._declared = None  # should one be unknown again later: declare it at once
            if ack.bases:
                self.store.bases_acked(ack.instance, ack.acked)
            self.sender.forget(self.store.ack(ack.instance, ack.acked, now_ms()))
            if ack.rejected:
                ids, samples, inline = self.store.reject(ack.instance, ack.rejected, ack.reason)
                self.sender.forget(ids)
                if inline:  # refused in the referencing form: due again now, inline
                    self.sender.forget(inline)
                    self._declared = None
                    log.info("the collector refused %d batches naming a catalogue (%s): "
                             "sending them inline", len(inline), ack.reason or "no reason",
                             extra={"instance": ack.instance})
                if ids:
                    log.error("the collector refused %d batches (%d samples, counted as dropped):"
                              " %s", len(ids), samples, ack.reason or "no reason given",
                              extra={"instance": ack.instance})

    def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("agent stopping", extra={"instance": self.instance, "cycles": self.cycles})
        self.store.seal(now_ms())
        self._exchange()
        if self._may_publish():
            self.publisher.drain(2.0)
            # Give the collector a moment to acknowledge what it just received, so a clean stop
            # leaves no stored batch behind in the buffer (it would only be re-sent, harmlessly).
            deadline = time.monotonic() + SHUTDOWN_ACK_WAIT_SECONDS
            while self.sender.inflight and time.monotonic() < deadline:
                self._wake.wait(0.05)
                self._wake.clear()
                self._exchange()  # acks in; a batch whose ack timed out goes out again
        self.publisher.stop()
        self._exchange()  # acks that arrived meanwhile
        self.store.close()
        log.info("agent stopped", extra={"instance": self.instance})

    def _feed_watchdog(self, now: float) -> None:
        """WATCHDOG=1 about three times per WatchdogSec, from the loop itself: a hung family
        or disk stops it and systemd restarts us."""
        if self._watchdog is not None and now - self._watchdog_sent >= self._watchdog / 3:
            sdnotify.notify("WATCHDOG=1")
            self._watchdog_sent = now

    def _reload(self) -> None:
        self._reload_requested = False
        if self._reload_config is None:
            return
        sdnotify.notify("RELOADING=1")
        try:
            new = self._reload_config()
        except ConfigError as exc:
            log.error("reload: the configuration is invalid; keeping the running one:\n%s", exc)
        else:
            logging.getLogger().setLevel(new.log.level.upper())
            log.debug("reload: configuration read", extra={"config": as_dict(new)})
            changed = [key for key, value in new._asdict().items()
                       if key != "log" and value != getattr(self.config, key)]
            self.config = self.config._replace(log=new.log)
            log.info("reload: log level %s", new.log.level, extra={"restart_needed": changed})
            if changed:
                log.warning("reload: %s changed; restart the agent to apply",
                            ", ".join(changed))
        sdnotify.notify("READY=1")

    def _request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    # ---- helpers ---------------------------------------------------------------------------

    def _health(self) -> selfmetrics.AgentHealth:
        return selfmetrics.AgentHealth(
            cycle_seconds=self._cycle_seconds,
            buffer=self.store.stats(),
            memory_cycles=self.store.memory_depth,
            reconnects=self.publisher.reconnects,
            buffer_recoveries=self.store.recoveries_total,
            buffer_errors=self.store.errors_total,
            publish_errors=self.publisher.publish_errors)

    def _warn(self, key: str, message: str, *args: Any) -> None:
        throttle = self._throttles.setdefault(key, Throttle(60.0))
        if (suppressed := throttle()) is not None:
            log.warning(message, *args, extra={"suppressed": suppressed})

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        stops = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.getsignal(sig) for sig in (*stops, signal.SIGHUP)}

        def on_stop(signum: int, frame: Any) -> None:
            for sig in stops:  # a second signal stops us the hard way
                signal.signal(sig, signal.SIG_DFL)
            self.stop()

        for sig in stops:
            signal.signal(sig, on_stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self._request_reload())

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore
