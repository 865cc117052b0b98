"""The built-in web dashboard, served by the collector itself (same port, TLS and tokens).

Pages (plain HTML + ES modules from ``collector/dashboard/``, no build step, nothing from any
other host): ``/`` the fleet, ``/hosts/<host>`` one host's charts, ``/alerts`` alerts and
silences, ``/login`` sign-in. Without a session every page redirects to ``/login``; a person
pastes an API token there once and gets a session cookie (http/sessions.py) with the token's
role. The pages read the ordinary API with that cookie, plus:

- ``GET /edgemon/api/v1/fleet``: every host's state and current figures, sorted, filtered and
  paginated here (http/fleet.py keeps the figures in memory: no query per host);
- ``GET /edgemon/api/v1/hosts/{host}/charts``: every metric of a host over a range, aligned for
  charts, with gaps marked (http/charts.py);
- ``GET /edgemon/api/v1/live``: server-sent events, one stream per page (http/live.py);
- ``POST/GET/DELETE /edgemon/api/v1/session``: sign in, who am I, sign out.

Every response carries a strict Content-Security-Policy (no inline script or style, nothing
but this origin) and ``nosniff``; the pages put untrusted strings (host, metric, label,
annotation) into the document only as text.

The three signed-in pages repeat the same ~15 lines of ``<head>`` (charset, viewport, icon,
style sheet, the modules to preload) on purpose: each file is served byte for byte as it is on
disk (``load_assets``: ETag and gzip made once at start), so a page reads whole in an editor
and the server has no templating to get wrong. What they share beyond markup, the top bar and
sign-out, is drawn once, by ``js/common.js``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from edgemon.collector.http.alerts_api import every_active_alert
from edgemon.collector.http.api import error_response, json_response
from edgemon.collector.http.auth import AUTH_KEY, Principal
from edgemon.collector.http.charts import chart_document
from edgemon.collector.http.dashboard_params import host_param, parse_fleet_query, parse_range
from edgemon.collector.http.fleet import (
    COLUMNS,
    STALE_AFTER_MS,
    FleetState,
    FleetView,
    ObservedStorage,
    filter_rows,
)
from edgemon.collector.http.live import LiveHub
from edgemon.collector.http.sessions import SessionStore, same_origin
from edgemon.collector.http.tokens import TokenStore
from edgemon.collector.storage.base import Storage
from edgemon.common.clock import now_ms
from edgemon.protocol import ProtocolError, validate_host_id

__all__ = ["ASSETS_DIR", "CONTENT_SECURITY_POLICY", "Dashboard", "load_assets"]

log = logging.getLogger("edgemon.collector.http.dashboard")

ASSETS_DIR = Path(__file__).resolve().parent.parent / "dashboard"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
          ".txt": "text/plain; charset=utf-8"}
PAGES = {"/": "fleet.html", "/alerts": "alerts.html", "/login": "login.html"}
HOST_PAGE = "host.html"
SESSION_PATH = "/edgemon/api/v1/session"
SEED_SLICE = 2000  # hosts per seeding query: a read-pool job of a second or so, not minutes
FLEET_TICK_S = 2.0
MAX_TOKEN_CHARS = 256
FLEET_CACHE_ENTRIES = 256  # distinct fleet queries answered from memory per snapshot


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def load_assets(root: Path = ASSETS_DIR) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it (read once, gzipped once:
    only these paths are ever served, so no request can name another file)."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = _TYPES.get(path.suffix) or ("text/plain; charset=utf-8"
                                                   if path.name == "LICENSE" else None)
        if not path.is_file() or content_type is None:
            continue
        body = path.read_bytes()
        packed = gzip.compress(body, 9, mtime=0) if len(body) > 512 else None
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, packed, content_type, etag)
    return assets


class Dashboard:
    """The dashboard's state and routes; ``setup(app)`` adds them to the collector's app."""

    def __init__(self, storage: Storage, *, executor: Executor | None,
                 tokens: TokenStore | None, engine: Any = None,
                 clock_ms: Callable[[], int] = now_ms, stale_after_ms: int = STALE_AFTER_MS,
                 sessions: SessionStore | None = None, assets_dir: Path = ASSETS_DIR) -> None:
        self.storage = storage
        self.executor = executor
        self.tokens = tokens
        self.sessions = sessions or (SessionStore(tokens, clock_ms=clock_ms)
                                     if tokens is not None else None)
        self.engine = engine
        self.clock_ms = clock_ms
        self.state = FleetState()
        self.hub = LiveHub()
        self.state.listeners.append(self.hub.threadsafe_host_stored)
        self.view = FleetView(self.state, storage.hosts, self._firing, clock_ms,
                              stale_after_ms=stale_after_ms)
        self.assets = load_assets(assets_dir)
        self.seeding = True
        self._fleet_cache_of: object = None
        self._fleet_cache: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
        self._alerts_digest = ""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def auth_enabled(self) -> bool:
        return self.tokens is not None

    def observe(self, storage: Storage) -> Storage:
        """``storage`` for the ingest pipeline: what it stores also updates the fleet figures."""
        return ObservedStorage(storage, self.state)  # type: ignore[return-value]

    @staticmethod
    def is_public(method: str, path: str) -> bool:
        """Reachable without credentials: pages (they redirect to sign-in themselves), static
        files, and signing in or out."""
        if method not in ("GET", "HEAD"):
            return path == SESSION_PATH and method in ("POST", "DELETE")
        return path in PAGES or path.startswith(("/static/", "/hosts/")) or \
            path in ("/favicon.ico", SESSION_PATH)

    # --- wiring -------------------------------------------------------------------------------

    def setup(self, app: web.Application) -> None:
        app.router.add_routes([
            web.get("/", self.page), web.get("/alerts", self.page),
            web.get("/login", self.login_page), web.get("/hosts/{host}", self.host_page),
            web.get("/static/{path:.+}", self.static), web.get("/favicon.ico", self.favicon),
            web.post(SESSION_PATH, self.sign_in), web.get(SESSION_PATH, self.whoami),
            web.delete(SESSION_PATH, self.sign_out),
            web.get("/edgemon/api/v1/fleet", self.fleet),
            web.get("/edgemon/api/v1/hosts/{host}/charts", self.charts),
            web.get("/edgemon/api/v1/live", self.live),
        ])
        app.on_response_prepare.append(_security_headers)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self.hub.close)
        app.on_cleanup.append(self._stop)

    async def _start(self, _app: web.Application) -> None:
        self.hub.loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._seed(), name="edgemon-dashboard-seed"),
                       asyncio.create_task(self._fleet_ticker(), name="edgemon-dashboard-tick")]

    async def _stop(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _seed(self) -> None:
        """Fill the fleet figures from storage, a slice of hosts at a time."""
        try:
            names = [h.host for h in await self._call(self.storage.hosts)]
            for i in range(0, len(names), SEED_SLICE):
                await self._call(self.state.seed, self.storage, names[i:i + SEED_SLICE],
                                 self.clock_ms())
            await self._call(self.view.snapshot)  # the first page needs no wait
            log.info("dashboard fleet figures loaded from storage", extra={"hosts": len(names)})
        except Exception:
            log.exception("dashboard: loading fleet figures from storage failed; they fill in "
                          "as hosts send batches")
        finally:
            self.seeding = False

    async def _fleet_ticker(self) -> None:
        """While pages are open: counts per state and firing alerts, to every stream."""
        while True:
            await asyncio.sleep(FLEET_TICK_S)
            if not self.hub.streams:
                continue
            try:
                snap = await self._call(self.view.snapshot)
            except Exception:
                log.exception("dashboard: fleet snapshot failed")
                continue
            self.hub.fleet_changed({"counts": snap.counts, "total": len(snap.rows),
                                    "alerts": self._alerts_digest})

    def _firing(self) -> dict[str, int]:
        """Firing alerts per host (blocking; called by the fleet view every few seconds)."""
        if self.engine is None:
            return {}
        out: dict[str, int] = {}
        digest = hashlib.sha256()
        for a in every_active_alert(self.engine):
            digest.update(f"{a['fingerprint']}:{a['status']}:{a['silenced_by']}\n".encode())
            if a["status"] == "firing":
                out[a["host"]] = out.get(a["host"], 0) + 1
        self._alerts_digest = digest.hexdigest()[:16]
        return out

    # --- pages and files ----------------------------------------------------------------------

    def _signed_in(self, request: web.Request) -> bool:
        return not self.auth_enabled or request.get(AUTH_KEY) is not None

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not self._signed_in(request):
            return _to_sign_in(request)
        return self._asset(request, PAGES[request.path])

    async def host_page(self, request: web.Request) -> web.StreamResponse:
        try:
            validate_host_id(request.match_info["host"])
        except ProtocolError:
            return web.Response(status=404, text="no such page: a host id is 1-64 characters "
                                                 "of A-Z a-z 0-9 . _ -")
        if not self._signed_in(request):
            return _to_sign_in(request)
        return self._asset(request, HOST_PAGE)

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self._signed_in(request):
            raise web.HTTPSeeOther(_safe_next(request.query.get("next")))
        return self._asset(request, "login.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"]
        if name.endswith(".html") or name not in self.assets:
            return web.Response(status=404, text="not found")
        return self._asset(request, name)

    async def favicon(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request, "icon.svg")

    def _asset(self, request: web.Request, name: str) -> web.StreamResponse:
        asset = self.assets.get(name)
        if asset is None:
            return web.Response(status=404, text=f"{name} is missing from this installation")
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
                   "Content-Type": asset.content_type}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        body = asset.body
        if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    # --- sign-in ------------------------------------------------------------------------------

    async def sign_in(self, request: web.Request) -> web.Response:
        if self.sessions is None:
            return json_response({"auth": "none", "role": "admin"})
        if not same_origin(request):
            return error_response(403, "sign in from this server's own sign-in page (the "
                                       "Origin header must name this server)")
        if request.content_type != "application/json":
            return error_response(415, "send {\"token\": \"edm_...\"} as application/json")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "body: not valid JSON")
        text = body.get("token") if isinstance(body, dict) else None
        if not isinstance(text, str) or not 0 < len(text.strip()) <= MAX_TOKEN_CHARS:
            return error_response(400, "body: give {\"token\": \"edm_...\"}")
        token, why = self.sessions.tokens.verify(text.strip())
        if token is None:
            log.info("dashboard sign-in refused: %s", why, extra={"remote": request.remote})
            return error_response(401, f"not signed in: {why}")
        session_id, _ = self.sessions.create(token)
        log.info("dashboard sign-in", extra={"token_id": token.id, "role": token.role,
                                             "remote": request.remote})
        response = json_response(self._session_doc(Principal(token.role, token.name, token.id,
                                                             "session")))
        self.sessions.set_cookie(request, response, session_id)
        return response

    def _session_doc(self, who: Principal | None) -> dict[str, Any]:
        if not self.auth_enabled:
            return {"auth": "none", "signed_in": True, "role": "admin", "name": None,
                    "via": None}
        if who is None:
            return {"auth": "token", "signed_in": False, "role": None, "name": None,
                    "via": None}
        return {"auth": "token", "signed_in": True, "role": who.role, "name": who.name,
                "token_id": who.token_id, "via": who.via}

    async def whoami(self, request: web.Request) -> web.Response:
        return json_response(self._session_doc(request.get(AUTH_KEY)))

    async def sign_out(self, request: web.Request) -> web.Response:
        if self.sessions is None:
            return json_response({"signed_out": False, "auth": "none"})
        if not same_origin(request):
            return error_response(403, "sign out from this server's own pages (the Origin "
                                       "header must name this server)")
        value = self.sessions.cookie_value(request)
        ended = bool(value) and self.sessions.end(value or "")
        response = json_response({"signed_out": ended})
        self.sessions.clear_cookie(request, response)
        return response

    # --- the fleet ----------------------------------------------------------------------------

    async def fleet(self, request: web.Request) -> web.Response:
        """Answers are kept per snapshot (as JSON and gzip'd): many people looking at the
        same pages of the fleet cost one rendering each time the figures change."""
        key = parse_fleet_query(request.query)
        offset, limit, column, descending, row_filter = key
        snap = self.view.snapshot_nowait() or await self._call(self.view.snapshot)
        if self._fleet_cache_of is not snap:
            self._fleet_cache_of, self._fleet_cache = snap, {}
        answer = self._fleet_cache.get((*key, self.seeding))
        if answer is None:
            def render() -> tuple[bytes, bytes]:
                rows = filter_rows(snap.ordered(column, descending), row_filter)
                body = json.dumps({
                    "generated_ms": snap.generated_ms,
                    "stale_after_ms": self.view.stale_after_ms, "loading": self.seeding,
                    "total": len(snap.rows), "counts": snap.counts, "matched": len(rows),
                    "offset": offset, "limit": limit, "sort": column,
                    "order": "desc" if descending else "asc", "hosts": rows[offset:offset + limit],
                }, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
                return body, gzip.compress(body, 5, mtime=0)

            answer = await self._call(render)
            if len(self._fleet_cache) < FLEET_CACHE_ENTRIES:
                self._fleet_cache[(*key, self.seeding)] = answer
        body, packed = answer
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=packed, content_type="application/json",
                                headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return web.Response(body=body, content_type="application/json",
                            headers={"Vary": "Accept-Encoding"})

    # --- one host's charts --------------------------------------------------------------------

    async def charts(self, request: web.Request) -> web.Response:
        host = host_param(request.match_info["host"])
        start, end, step = parse_range(request.query, self.clock_ms())
        body = await self._call(chart_document, self.storage, host, start, end, step)
        if body is None:
            return error_response(404, f"unknown host {host!r}")
        return _compressed(request, web.Response(body=body, content_type="application/json"))

    # --- live ---------------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        for key in request.query:
            if key != "host":
                return error_response(400, f"parameter '{key}': unknown parameter")
        host = request.query.get("host")
        if host is not None:
            host = host_param(host)
        if self.hub.full():
            return error_response(503, "too many live streams open; try again later")
        who: Principal | None = request.get(AUTH_KEY)
        cookie = self.sessions.cookie_value(request) if self.sessions else None
        header = request.headers.get("Authorization", "")

        async def still_allowed() -> bool:
            if who is None:  # auth = "none"
                return True
            if who.via == "session":
                assert self.sessions is not None
                return self.sessions.lookup(cookie or "") is not None
            assert self.tokens is not None
            return self.tokens.verify(header.partition(" ")[2].strip())[0] is not None

        first = []
        fig = self.state.figures(host) if host else None
        if host and fig is not None:
            first.append(("host", {"host": host, "newest_sample_ms": fig.newest_ms,
                                   "last_seen_ms": fig.received_ms}))
        return await self.hub.serve(request, host, still_allowed, first)


# --- responses ---------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (never //other.host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target \
            or any(ord(c) < 32 for c in target):
        return "/"
    return target


def _to_sign_in(request: web.Request) -> web.Response:
    target = request.path_qs if request.path != "/" else ""
    location = "/login" + (f"?next={quote(target, safe='/')}" if target else "")
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _compressed(request: web.Request, response: web.Response) -> web.Response:
    if "gzip" in request.headers.get("Accept-Encoding", "") and \
            len(response.body or b"") > 2048:  # type: ignore[arg-type]
        response.enable_compression()
    return response


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# --- OpenAPI -----------------------------------------------------------------------------------

def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
OPENAPI_PATHS: dict[str, Any] = {
    "/edgemon/api/v1/fleet": {"get": {
        "summary": "Every host's state (online, stale, offline) and current figures: CPU, "
                   "memory, fullest disk, network rate, firing alerts, agent back-log, dropped "
                   "samples, clock offset; sorted, filtered and paginated by the server",
        "tags": ["dashboard"],
        "parameters": [
            _q("offset", "rows to skip", {"type": "integer", "minimum": 0, "default": 0}),
            _q("limit", "rows to return", {"type": "integer", "minimum": 1, "maximum": 1000,
                                           "default": 100}),
            _q("sort", "column", {"type": "string", "enum": list(COLUMNS), "default": "host"}),
            _q("order", "asc or desc; rows without a value come last either way",
               {"type": "string", "enum": ["asc", "desc"]}),
            _q("q", "host name contains this (case-insensitive), or matches it as a glob"),
            _q("host", "only this host (exact id)"),
            _q("state", "comma-separated states: online, stale, offline"),
            {"name": "min.{column}", "in": "query", "required": False,
             "description": "only rows whose numeric column is at least this",
             "schema": {"type": "number"}},
            {"name": "max.{column}", "in": "query", "required": False,
             "description": "only rows whose numeric column is at most this",
             "schema": {"type": "number"}}],
        "responses": {"200": _JSON_OK, "400": {"description": "bad parameter"}}}},
    "/edgemon/api/v1/hosts/{host}/charts": {"get": {
        "summary": "Every metric of one host over a range on one time axis (counters as "
                   "per-second rates; null where there is no value; breaks marked by a null row)",
        "tags": ["dashboard"],
        "parameters": [{"name": "host", "in": "path", "required": True,
                        "schema": {"type": "string"}},
                       _q("start", "default end - 1h"), _q("end", "default now"),
                       _q("step", "default about (end - start) / 300")],
        "responses": {"200": _JSON_OK, "400": {"description": "bad parameter"},
                      "404": {"description": "unknown host"}}}},
    "/edgemon/api/v1/live": {"get": {
        "summary": "Server-sent events: host (the watched host stored a batch), fleet (counts "
                   "changed), signed-out; a keep-alive comment every 15 s",
        "tags": ["dashboard"], "parameters": [_q("host", "watch this host")],
        "responses": {"200": {"description": "text/event-stream"},
                      "503": {"description": "too many streams open"}}}},
    SESSION_PATH: {
        "get": {"summary": "Whether and as whom this request is signed in (signed_in, role, "
                           "name, via: session or bearer)", "tags": ["dashboard"],
                "security": [], "responses": {"200": _JSON_OK}},
        "post": {"summary": "Sign in with an API token: sets an HttpOnly, SameSite=Strict "
                            "session cookie (Origin must be this server)",
                 "tags": ["dashboard"], "security": [],
                 "requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"type": "object", "required": ["token"],
                                "properties": {"token": {"type": "string"}}}}}},
                 "responses": {"200": _JSON_OK, "401": {"description": "invalid token"},
                               "403": {"description": "cross-origin"}}},
        "delete": {"summary": "Sign out: the session ends, the cookie is cleared",
                   "tags": ["dashboard"], "security": [],
                   "responses": {"200": _JSON_OK, "403": {"description": "cross-origin"}}}},
}


def merge_openapi(document: dict[str, Any]) -> dict[str, Any]:
    document.setdefault("paths", {}).update(OPENAPI_PATHS)
    return document


__all__ += ["OPENAPI_PATHS", "merge_openapi"]
