"""Wiring and lifecycle: storage, MQTT, the ingest worker, HTTP, periodic maintenance.

Start order: HTTP security (token file, TLS key: a problem stops the start with exit 2) ->
storage (opened in the writer thread, which does every ingest write from then on)
-> forwarding (``[[forward]]``) -> ingest worker + storage maintenance (its own thread) -> MQTT
-> HTTP. Stop (SIGTERM/SIGINT, or ``stop()``): refuse new MQTT messages (left unacknowledged:
the broker keeps them for our persistent session) -> store and acknowledge everything already
queued -> stop forwarding (cursors kept) -> let a running maintenance round finish -> flush
agent acks and disconnect -> stop HTTP -> close storage.

Singleton work (storage maintenance, alert evaluation and notification) runs only while this
collector leads (collector/cluster/): always on its own SQLite store; among collectors sharing
a PostgreSQL store, on the one holding the leader lock. Leadership is given up at stop, after
that work has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from edgemon.collector.alerting.service import AlertingService
from edgemon.collector.alerting.store import AlertStore
from edgemon.collector.cluster import AlwaysLeader, Leadership
from edgemon.collector.cluster import status as cluster_status
from edgemon.collector.config import (
    CollectorConfig,
    HttpConfig,
    StorageConfig,
    cluster_problems,
    is_shared_store,
)
from edgemon.collector.forward.metrics import ForwardMetrics
from edgemon.collector.forward.service import STATUS_KEY as FORWARD_STATUS_KEY
from edgemon.collector.forward.service import ForwardService
from edgemon.collector.http import dashboard, export
from edgemon.collector.http.alerts_api import merge_openapi
from edgemon.collector.http.api import create_app
from edgemon.collector.http.auth import add_cors, security_middlewares
from edgemon.collector.http.metrics import CollectorMetrics
from edgemon.collector.http.prometheus_api import routes as prometheus_routes
from edgemon.collector.http.tokens import (
    CREATE_HINT,
    TokenFileError,
    TokenStore,
    default_tokens_path,
)
from edgemon.collector.ingest.mqtt import Inbox, MqttIngest
from edgemon.collector.ingest.pipeline import IngestPipeline
from edgemon.collector.ingest.rate_limit import limiter_from_config
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage.base import Storage
from edgemon.collector.storage.compaction_process import CompactionProcess
from edgemon.collector.storage.maintenance import MaintenanceRunner
from edgemon.common import sdnotify
from edgemon.common.private_files import InsecureFileMode, check_not_world_accessible

__all__ = ["CollectorService", "StartupError", "default_storage_spec", "open_default_storage",
           "run"]

log = logging.getLogger("edgemon.collector")
LEADING_RETRY_SECONDS = 5.0  # after a failed start or pause of the singleton work

StorageFactory = Callable[[StorageConfig], Storage]
LeadershipFactory = Callable[[CollectorConfig], Leadership]


class StartupError(Exception):
    """A setting the collector cannot start with; the message says what to fix."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The server TLS context for ``tls_cert_file`` + ``tls_key_file`` (None: plain HTTP)."""
    if http.tls_cert_file is None or http.tls_key_file is None:
        return None
    try:
        check_not_world_accessible(http.tls_key_file, "TLS private key (http.tls_key_file)")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except ssl.SSLError as exc:
        raise StartupError(f"http.tls_cert_file {http.tls_cert_file} and http.tls_key_file "
                           f"{http.tls_key_file}: not a PEM certificate and its private key "
                           f"({exc.reason or exc})") from None
    except InsecureFileMode as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"http.tls_cert_file/tls_key_file: cannot read "
                           f"{exc.filename or http.tls_cert_file}: {exc.strerror or exc}") from None
    return context


def default_storage_spec(config: StorageConfig) -> tuple[str, dict[str, Any]]:
    """(URL or file path, options) of the store ``open_default_storage`` opens (the
    compaction process opens it the same way)."""
    path = Path(config.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    day_ms = 86_400_000
    options: dict[str, Any] = {"raw_retention_ms": config.retention_raw_days * day_ms,
                                 "rollup_1m_retention_ms": config.retention_1m_days * day_ms,
                                 "rollup_1h_retention_ms": config.retention_1h_days * day_ms,
                                 "pending_cache_mb": config.pending_cache_mb}
    if config.url:
        return config.url, {"wait": True, **options}
    return str(path), options


def open_default_storage(config: StorageConfig) -> Storage:
    """PostgreSQL at ``config.url`` (waiting for it if it is down), else the embedded SQLite
    backend at ``config.path`` (its directory is created)."""
    from edgemon.collector.storage import open_storage

    target, options = default_storage_spec(config)
    return open_storage(target, **options)  # type: ignore[no-any-return]


def default_leadership(config: CollectorConfig) -> Leadership:
    """Always the leader on an embedded store; a PostgreSQL advisory lock on a shared one."""
    if not is_shared_store(config.storage):
        return AlwaysLeader()
    from edgemon.collector.cluster.pg_leader import PostgresLeader

    cluster = config.cluster
    url = str(getattr(config.storage, "url", None) or config.storage.path)
    return PostgresLeader(url, collector_id=config.mqtt.presence_id,
                          check_s=cluster.leader_check_seconds,
                          lease_s=cluster.leader_lease_seconds)


class CollectorService:
    """The collector in this process (MQTT ingest, storage, HTTP API, alerting): call
    ``start()``, later ``stop()`` (or ``run()`` until a stop event)."""

    def __init__(self, config: CollectorConfig, *,
                 storage_factory: StorageFactory = open_default_storage,
                 leadership_factory: LeadershipFactory = default_leadership) -> None:
        self.config = config
        self.storage_factory = storage_factory
        self.leadership_factory = leadership_factory
        self.leadership: Leadership | None = None
        self.cluster: cluster_status.ClusterStatus | None = None
        self._leading_lock = asyncio.Lock()  # serialises starting/pausing the singleton work
        self._leading_retry: asyncio.TimerHandle | None = None  # after a failed start or pause
        self.storage: Storage | None = None
        self.storage_open = False
        self.rejects = Rejects()
        self.inbox: Inbox | None = None
        self.mqtt: MqttIngest | None = None
        self.pipeline: IngestPipeline | None = None
        self.http_port: int | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgemon-writer")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="edgemon-reader")
        # Compaction in its own thread: the writer thread only stores and acknowledges.
        self.maintenance: MaintenanceRunner | None = None
        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopped = False
        self.alerting: AlertingService | None = None
        self.tokens: TokenStore | None = None
        self.dashboard: dashboard.Dashboard | None = None
        # /metrics; other parts add theirs with self.metrics.register(a prometheus-client
        # Collector), e.g. forwarding queues
        self.metrics = CollectorMetrics()
        self.forward: ForwardService | None = None

    def _http_security(self) -> ssl.SSLContext | None:
        """Load the token file and the TLS key (before anything else starts); warn about an
        API that is open, or that carries tokens in clear text, beyond this machine."""
        http = self.config.http
        where = f"{http.host}:{http.port}"
        tls = tls_context(http)
        if http.auth == "none":
            if not _is_loopback(http.host):
                log.warning("http.auth = 'none' on %s: anyone who can reach it reads the fleet's "
                            "data and changes alerting; set auth = 'token'", where)
            return tls
        self.tokens = TokenStore(default_tokens_path(http.tokens_path, self.config.storage.path))
        try:
            self.tokens.load()
        except (OSError, TokenFileError) as exc:
            raise StartupError(str(exc)) from None
        if not self.tokens.active_tokens():
            log.warning("no API tokens in %s yet: every request but /healthz and /readyz gets "
                        "401. Create one with: %s", self.tokens.path, CREATE_HINT)
        if tls is None and not _is_loopback(http.host):
            log.warning("the HTTP API on %s carries bearer tokens in clear text: set "
                        "http.tls_cert_file and http.tls_key_file, or put a TLS proxy in front",
                        where)
        return tls

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        where = (cfg.storage.url.rpartition("@")[2].partition("?")[0] if cfg.storage.url
                 else cfg.storage.path)
        log.info("starting collector", extra={"storage": str(where),  # no user nor password
                                               "mqtt": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                                               "http": f"{cfg.http.host}:{cfg.http.port}",
                                               "http_auth": cfg.http.auth})
        problems = cluster_problems(cfg)
        if problems:
            raise StartupError("; ".join(f"{s}.{k}: {m}" for s, k, m in problems))
        tls = self._http_security()
        self.storage = await loop.run_in_executor(self._writer, self.storage_factory,
                                                  cfg.storage)
        self.storage_open = True
        leadership = self.leadership = self.leadership_factory(cfg)
        # before ingest: batches stored from now on are in the forwarding log. Forwarding is
        # singleton work: only the leader sends (``_follow_leadership``); alone on a store we
        # lead from the start (AlwaysLeader says so only once started, below)
        self.forward = ForwardService(cfg.forward, self.storage, leading=lambda: (
            leadership.kind == AlwaysLeader.kind or leadership.is_leader()))
        await self.forward.start()
        self.metrics.register(ForwardMetrics(self.forward.status))
        self.dashboard = dashboard.Dashboard(self.storage, executor=self._readers,
                                             tokens=self.tokens)
        self.inbox = Inbox(loop, max_messages=cfg.ingest.queue_max,
                           max_bytes=cfg.ingest.queue_max_bytes,
                           host_share=cfg.ingest.queue_max_per_host)
        self.mqtt = MqttIngest(cfg.mqtt, self.inbox, shared_group=cfg.cluster.shared_group,
                               session_expiry_s=cfg.cluster.session_expiry_seconds)
        self.cluster = cluster_status.ClusterStatus(
            leadership, collector_id=cfg.mqtt.presence_id, shared_group=cfg.cluster.shared_group,
            store="postgresql" if is_shared_store(cfg.storage) else "sqlite")
        self.metrics.register(self.cluster)
        self.mqtt.role = lambda: leadership.role
        leadership.add_listener(lambda _leader: loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self._follow_leadership())))
        self.mqtt.use_rate_limit(limiter_from_config(cfg.ingest), self.rejects)
        self.pipeline = IngestPipeline(storage=self.dashboard.observe(self.storage),
                                       inbox=self.inbox, mqtt=self.mqtt,
                                       config=cfg.ingest, writer=self._writer,
                                       rejects=self.rejects)
        # storage failing: messages held un-PUBACKed are back-pressure, not a delivery stall
        self.mqtt.holding_expected = lambda: self.pipeline is not None and \
            not self.pipeline.storage_ok
        # the hosts whose batches were stored lately: subscribed by name during a flood
        self.mqtt.known_hosts = lambda: list(self.pipeline.stats.host_last_received_ms) \
            if self.pipeline is not None else []
        self._worker = asyncio.create_task(self.pipeline.run(), name="edgemon-ingest")
        inbox = self.inbox
        if cfg.storage.compaction_process and self.storage_factory is open_default_storage:
            # compaction in a process of its own (storage/compaction_process.py)
            target, options = default_storage_spec(cfg.storage)
            if cfg.storage.url:
                options["pool_size"] = 2
            self.maintenance = CompactionProcess(  # type: ignore[assignment]
                target, options, self.storage, interval=cfg.storage.maintain_interval_seconds,
                busy=lambda: inbox.queued > 0, should_run=leadership.is_leader)
        else:
            self.maintenance = MaintenanceRunner(self.storage,
                                                 interval=cfg.storage.maintain_interval_seconds,
                                                 busy=lambda: inbox.queued > 0,
                                                 should_run=leadership.is_leader)
        self.maintenance.start()
        self.metrics.attach(stats=self.pipeline.stats, rejects=self.rejects, inbox=self.inbox,
                            mqtt=self.mqtt, storage_open=lambda: self.storage_open,
                            maintenance=self.maintenance,
                            backpressure=self.pipeline.backpressure)
        leadership.start()
        self.mqtt.start()
        if cfg.alerting.enabled:
            self.alerting = await loop.run_in_executor(self._readers, self._open_alerting)
            self.dashboard.engine = self.alerting.engine
            self.metrics.attach(alerting=self.alerting)
        app = create_app(self.storage, executor=self._readers, metrics=self.metrics_text,
                         ready=self.readiness,
                         extra_routes=[*(self.alerting.routes() if self.alerting else ()),
                                       *export.routes(self.alerting.engine
                                                      if self.alerting else None),
                                       *self.cluster.routes(),
                                       *self.forward.routes(),
                                       *prometheus_routes(self.storage, alerting=(
                                           self.alerting.engine if self.alerting else None))],
                         extend_openapi=self._openapi,
                         middlewares=security_middlewares(
                             cfg.http, self.tokens, sessions=self.dashboard.sessions,
                             public=self.dashboard.is_public),
                         client_max_size=cfg.http.max_body_bytes,
                         host_limits=self.pipeline.series_limits.snapshot)
        self.dashboard.setup(app)
        app[FORWARD_STATUS_KEY] = self.forward.status
        add_cors(app, cfg.http.cors_origins)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.http.host, cfg.http.port, ssl_context=tls)
        await site.start()
        addresses = self._runner.addresses  # the real port when the configured one was 0
        self.http_port = int(addresses[0][1]) if addresses else cfg.http.port
        log.info("http api listening on %s://%s:%d", "https" if tls else "http", cfg.http.host,
                 self.http_port)
        log.info("dashboard on %s://%s:%d/", "https" if tls else "http", cfg.http.host,
                 self.http_port)
        await self._follow_leadership()
        sdnotify.notify(f"READY=1\nSTATUS=api on {cfg.http.host}:{self.http_port}")
        interval = sdnotify.watchdog_interval()
        if interval:
            self._watchdog = asyncio.create_task(self._watchdog_loop(interval))

    def _openapi(self, document: dict[str, Any]) -> dict[str, Any]:
        if self.alerting is not None:
            document = merge_openapi(document)
        document = cluster_status.merge_openapi(dashboard.merge_openapi(document))
        return export.merge_openapi(document)

    async def _follow_leadership(self) -> None:
        """Run the singleton work (alert evaluation and notification, forwarding) while
        leading, pause it otherwise, and say the role in our presence. Maintenance asks
        ``is_leader`` itself."""
        if self.leadership is None:
            return
        async with self._leading_lock:
            leading = self.leadership.is_leader() and not self._stopped
            failed = False
            alerting = self.alerting
            if alerting is not None and leading != alerting.running:
                try:
                    await (alerting.start() if leading else alerting.pause())
                except Exception:
                    failed = True
                    log.exception("could not %s alert evaluation; trying again in %.0f s",
                                  "start" if leading else "pause", LEADING_RETRY_SECONDS)
                log.info("alert evaluation and notification %s (%s)",
                         "running" if leading else "paused", self.leadership.role)
            forward = self.forward
            if forward is not None and leading != forward.running:
                try:
                    await (forward.resume() if leading else forward.pause())
                except Exception:  # e.g. the database dropped the connection at that moment
                    failed = True
                    log.exception("could not %s forwarding; trying again in %.0f s",
                                  "start" if leading else "pause", LEADING_RETRY_SECONDS)
                if forward.receivers:
                    log.info("forwarding %s (%s)", "running" if forward.running else "paused",
                             self.leadership.role)
            if self.mqtt is not None:
                self.mqtt.announce()
            if failed and not self._stopped:
                self._retry_leading()

    def _retry_leading(self) -> None:
        """Run ``_follow_leadership`` again soon: a start or pause that failed on a transient
        fault (storage, network) must not leave the singleton work stopped (or running) until
        leadership next changes."""
        if self._leading_retry is not None:
            self._leading_retry.cancel()
        loop = asyncio.get_running_loop()
        self._leading_retry = loop.call_later(
            LEADING_RETRY_SECONDS, lambda: asyncio.ensure_future(self._follow_leadership()))

    def _open_alerting(self) -> AlertingService:
        """The alert engine over our storage; transitions also go out on MQTT (QoS 1)."""
        cfg = self.config.alerting
        assert self.storage is not None and self.mqtt is not None
        state: Path | AlertStore = (cfg.state_path
                                    or Path(self.config.storage.path).parent / "alerts.db")
        if is_shared_store(self.config.storage):  # one alert state for the whole group
            state = AlertStore(self.config.storage.url, wait=True)
            if cfg.state_path:
                log.warning("alerting.state_path is ignored: with storage.url the alert state "
                            "is in that PostgreSQL database (schema alerting)")
        if not cfg.external_url and (cfg.alertmanagers or _is_loopback(self.config.http.host)):
            log.warning("alerting.external_url is not set: links in notifications use %s; set "
                        "it to the address people reach the API at", self.config.external_url())
        return AlertingService(self.storage, state, rules_path=cfg.rules_path,
                               publish=self.mqtt.publish_alert, executor=self._readers,
                               external_url=self.config.external_url(),
                               alertmanagers=cfg.alertmanagers,
                               resend_delay_ms=int(cfg.resend_delay_seconds * 1000),
                               should_run=self._leading)

    def _leading(self) -> bool:
        """Asked before every step of singleton work (an alert cycle, a notification)."""
        return self.leadership is not None and self.leadership.is_leader()

    async def _watchdog_loop(self, interval: float) -> None:
        """WATCHDOG=1 twice per interval, only while the ingest worker keeps turning (it turns at
        least once a second when idle; a writer stuck in storage stops it)."""
        while True:
            await asyncio.sleep(interval / 2)
            if self.pipeline is not None and time.monotonic() - self.pipeline.heartbeat < interval:
                sdnotify.notify("WATCHDOG=1")

    async def reload(self) -> None:
        """SIGHUP: re-read the alert rules (a bad file keeps the old rules and says why).

        Other settings (broker, storage, HTTP) take effect at the next restart."""
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            if self.alerting is not None:
                loop = asyncio.get_running_loop()
                rules = await loop.run_in_executor(self._readers,
                                                   self.alerting.engine.reload_rules)
                log.info("alert rules reloaded", extra={"rules": len(rules.rules)})
        except Exception as exc:
            log.error("alert rules not reloaded, keeping the old ones: %s", exc)
        finally:
            sdnotify.notify("READY=1")

    def readiness(self) -> dict[str, bool | str]:
        """/readyz: every bool must be true; ``mqtt_stall`` names a delivery stall (stall.py)."""
        storage_ok = self.pipeline is None or self.pipeline.storage_ok
        stalled = self.mqtt.stalled if self.mqtt else None
        checks: dict[str, bool | str] = {"mqtt": bool(self.mqtt and self.mqtt.ready),
                                         "mqtt_delivery": stalled is None,
                                         "storage": self.storage_open and storage_ok}
        if stalled is not None:
            checks["mqtt_stall"] = stalled
        held = self.pipeline.backpressure.seen.hosts_held if self.pipeline is not None else 0
        if held:  # not a failed check: the back-log is over its budget, its fillers wait
            checks["ingest_backpressure"] = f"acks of {held} host(s) held: samples due for " \
                "compaction over [ingest] backlog_budget_samples"
        return checks

    def metrics_text(self) -> str:
        return self.metrics.text()

    @property
    def worker(self) -> asyncio.Task[None] | None:
        return self._worker

    async def stop(self) -> None:
        """Drain and shut down cleanly. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        sdnotify.notify("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._leading_retry is not None:
            self._leading_retry.cancel()
        log.info("stopping: no new messages; storing and acknowledging what is queued")
        if self.alerting is not None:
            async with self._leading_lock:
                try:
                    await self.alerting.stop()
                except Exception:
                    log.exception("stopping alerting failed")
        if self.mqtt is not None:
            self.mqtt.stop_accepting()
        if self.pipeline is not None:
            self.pipeline.stop()
        if self._worker is not None:
            try:
                await self._worker
            except Exception:
                log.exception("ingest worker failed")
        if self.forward is not None:  # cursors kept; a request in flight is sent again
            try:
                await self.forward.stop()
            except Exception:
                log.exception("stopping forwarding failed")
        if self.maintenance is not None:  # before the storage closes: a round finishes first
            await loop.run_in_executor(None, self.maintenance.stop)
        if self.leadership is not None:  # the singleton work has stopped: let another lead
            await loop.run_in_executor(None, self.leadership.stop)
        if self.mqtt is not None:
            await loop.run_in_executor(None, self.mqtt.close)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.storage is not None:
            self.storage_open = False
            try:
                await loop.run_in_executor(self._writer, self.storage.close)
            except Exception:
                log.exception("closing storage failed")
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=False, cancel_futures=True)
        queued = self.inbox.queued if self.inbox else 0
        log.info("collector stopped", extra={"left_unacknowledged": queued})

    async def run(self, stop: asyncio.Event) -> int:
        """Start, serve until ``stop`` is set (or the worker dies), stop. Exit status."""
        try:
            await self.start()
        except StartupError as exc:
            log.error("collector failed to start: %s", exc)
            await self._stop_quietly()
            return 2  # a configuration problem: restarting will not help
        except Exception:
            log.exception("collector failed to start")
            await self._stop_quietly()
            return 1
        assert self._worker is not None
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stop_wait, self._worker},
                                     return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if self._worker in done:
            exc = self._worker.exception()
            log.error("ingest worker stopped unexpectedly: %r", exc)
            status = 1
        stop_wait.cancel()
        await self.stop()
        return status

    async def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()


async def _main(config: CollectorConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    collector = CollectorService(config)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(collector.reload()))
    return await collector.run(stop)


def run(config: CollectorConfig) -> int:
    """Run the collector on uvloop until SIGTERM/SIGINT; the process exit status."""
    import uvloop

    from edgemon.collector.gc_policy import tune_gc

    tune_gc()  # ingest builds and drops millions of small lists a second (gc_policy.py)
    return uvloop.run(_main(config))
