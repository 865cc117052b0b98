"""HTTP API protection: bearer tokens with roles, request limits, CORS.

    app = create_app(..., middlewares=security_middlewares(http, store),
                     client_max_size=http.max_body_bytes)
    add_cors(app, http.cors_origins)

Access: ``/healthz`` and ``/readyz`` are open; ``/metrics`` needs a read token unless
``public_metrics``; everything else needs a read token for GET/HEAD and an admin token for any
other method, except the POSTs that only read (``READ_POST_PATHS``: Prometheus's query
endpoints, which Grafana and promtool send as form POSTs), which a read token may send.
Tokens travel only in ``Authorization: Bearer`` (RFC 6750 §2.1), never in a query string, and
the presented text is never logged.

The dashboard adds two things (``sessions``, ``public``): a session cookie (http/sessions.py)
authenticates like the token it was made from, and its state-changing requests must come from
this server's own pages (``Origin``); paths ``public(method, path)`` names (pages, static
assets, sign-in) are served without credentials. Whoever a request authenticated as is at
``request[AUTH_KEY]`` (also on public paths, when credentials came with them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from aiohttp import web

from edgemon.collector.config import HttpConfig
from edgemon.collector.http.responses import error_response
from edgemon.collector.http.sessions import SessionStore, same_origin
from edgemon.collector.http.tokens import CREATE_HINT, Role, TokenStore

__all__ = [
    "AUTH_KEY",
    "MAX_QUERY_PARAMS",
    "OPEN_PATHS",
    "READ_POST_PATHS",
    "Principal",
    "add_cors",
    "required_role",
    "security_middlewares",
]

log = logging.getLogger("edgemon.collector.http.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
READ_METHODS = frozenset({"GET", "HEAD"})
# POSTs that only read: Prometheus's API takes its queries as form POSTs too
# (collector/http/prometheus_api.py; Grafana and promtool POST first)
READ_POST_PATHS = frozenset({"/api/v1/query", "/api/v1/query_range", "/api/v1/series",
                             "/api/v1/labels", "/api/v1/query_exemplars"})
MAX_QUERY_PARAMS = 100
CORS_MAX_AGE_S = 600
_CHALLENGE = 'Bearer realm="edgemon"'
PublicPaths = Callable[[str, str], bool]


class Principal(NamedTuple):
    """Who a request authenticated as: the token's role and name, and how it came."""

    role: Role
    name: str
    token_id: str
    via: str  # "bearer" or "session"


# web.RequestKey came with aiohttp 3.12; a string key before that
AUTH_KEY: Any = (web.RequestKey("edgemon.auth", Principal)  # type: ignore[attr-defined]
                 if hasattr(web, "RequestKey") else "edgemon.auth")


def required_role(method: str, path: str, *, public_metrics: bool) -> Role | None:
    """The role a request needs, or None when it is open to anyone."""
    if path in OPEN_PATHS or (path == "/metrics" and public_metrics):
        return None
    if method in READ_METHODS or (method == "POST" and path in READ_POST_PATHS):
        return "read"
    return "admin"


def _unauthorized(message: str, error: str | None = None) -> web.Response:
    challenge = f'{_CHALLENGE}, error="{error}"' if error else _CHALLENGE
    return error_response(401, f"{message}. Send 'Authorization: Bearer <token>'; an "
                               f"administrator creates one with: {CREATE_HINT}",
                          headers={"WWW-Authenticate": challenge})


def auth_middleware(store: TokenStore, *, public_metrics: bool,
                    sessions: SessionStore | None = None,
                    public: PublicPaths | None = None) -> Middleware:
    """401 without a valid token or session, 403 when its role is too low (RFC 6750 §3) or a
    session's state-changing request comes from another origin."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = required_role(request.method, request.path, public_metrics=public_metrics)
        if needed is not None and public is not None and public(request.method, request.path):
            needed = None
        header = request.headers.get("Authorization")
        if needed is None:
            principal = _identify(store, sessions, request, header)
            if principal is not None:
                request[AUTH_KEY] = principal
            return await handler(request)
        if header is None and sessions is not None:
            session = sessions.from_request(request)
            if session is not None:
                if request.method not in READ_METHODS and not same_origin(request):
                    log.info("http request refused: cross-origin with a session cookie",
                             extra={**_where(request), "origin": request.headers.get("Origin")})
                    return error_response(403, f"{request.method} {request.path} with a "
                                               "session cookie must come from this server's "
                                               "own pages (Origin header)")
                principal = Principal(session.role, session.token_name, session.token_id,
                                      "session")
                return await _with_role(request, handler, principal, needed)
        if header is None:
            log.debug("http request without a token", extra=_where(request))
            return _unauthorized("this endpoint needs an API token")
        scheme, _, text = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not text.strip():
            log.debug("http request with a non-bearer Authorization header", extra=_where(request))
            return _unauthorized("the Authorization header must be 'Bearer <token>'",
                                 "invalid_request")
        token, why = store.verify(text.strip())
        if token is None:
            log.info("http request refused: %s", why, extra=_where(request))
            return _unauthorized(f"invalid token: {why}", "invalid_token")
        return await _with_role(request, handler,
                                Principal(token.role, token.name, token.id, "bearer"), needed)

    return middleware


async def _with_role(request: web.Request, handler: Handler, principal: Principal,
                     needed: Role) -> web.StreamResponse:
    if principal.role != "admin" and needed != "read":
        log.info("http request refused: role %s, needs %s", principal.role, needed,
                 extra={**_where(request), "token_id": principal.token_id})
        return error_response(
            403, f"token {principal.token_id} ({principal.name!r}) has the role "
                 f"{principal.role}; {request.method} {request.path} needs an {needed} token "
                 f"(create one with: edgemon-collector token create --name NAME "
                 f"--role {needed} -c <collector.toml>)",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope"'})
    request[AUTH_KEY] = principal
    return await handler(request)


def _identify(store: TokenStore, sessions: SessionStore | None, request: web.Request,
              header: str | None) -> Principal | None:
    """Who is asking for a public path, if anyone valid (never refuses, never logs)."""
    if header is not None:
        scheme, _, text = header.strip().partition(" ")
        token = store.verify(text.strip())[0] if scheme.lower() == "bearer" else None
        return None if token is None else Principal(token.role, token.name, token.id, "bearer")
    session = sessions.from_request(request) if sessions is not None else None
    if session is None:
        return None
    return Principal(session.role, session.token_name, session.token_id, "session")


def _where(request: web.Request) -> dict[str, Any]:
    return {"method": request.method, "path": request.path, "remote": request.remote}


def limits_middleware(*, max_body_bytes: int, max_query_bytes: int) -> Middleware:
    """413 for a body over ``max_body_bytes``, 414/400 for a long or crowded query string."""

    def too_large() -> web.Response:  # built only when needed: every request passes here
        return error_response(413, f"request body over the limit of {max_body_bytes} bytes "
                                   "(http.max_body_bytes)")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        query = request.rel_url.raw_query_string
        if len(query) > max_query_bytes:
            return error_response(414, f"query string of {len(query)} bytes is over the limit "
                                       f"of {max_query_bytes} (http.max_query_bytes)")
        if len(request.query) > MAX_QUERY_PARAMS:
            return error_response(400, f"{len(request.query)} query parameters are more than "
                                       f"the {MAX_QUERY_PARAMS} accepted")
        if request.content_length is not None and request.content_length > max_body_bytes:
            return too_large()
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:  # a chunked body, caught while it was read
            return too_large()

    return middleware


def preflight_middleware(origins: Sequence[str]) -> Middleware:
    """Answer CORS preflight requests (OPTIONS + Origin + Access-Control-Request-Method) from
    the allowed origins before authentication: browsers send no credentials with them."""
    allowed = frozenset(origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = request.headers.get("Origin")
        if origin not in allowed:
            return error_response(403, f"origin {str(origin)[:100]!r} is not allowed "
                                       "(http.cors_origins)")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, HEAD, POST, DELETE",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S)})

    return middleware


def add_cors(app: web.Application, origins: Sequence[str]) -> None:
    """Add CORS headers to every response (errors too) for requests from ``origins``.

    Without origins, nothing: no response carries any Access-Control-* header."""
    if not origins:
        return
    allowed = frozenset(origins)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
        response.headers.add("Vary", "Origin")

    app.on_response_prepare.append(on_prepare)


def security_middlewares(http: HttpConfig, store: TokenStore | None, *,
                         sessions: SessionStore | None = None,
                         public: PublicPaths | None = None) -> list[Middleware]:
    """The middlewares for ``http`` (outermost first); ``store`` is None when auth is off.
    ``sessions`` and ``public``: the dashboard's (see the module's docstring)."""
    middlewares: list[Middleware] = []
    if http.cors_origins:
        middlewares.append(preflight_middleware(http.cors_origins))
    if http.auth == "token":
        if store is None:
            raise ValueError("http.auth = 'token' needs a TokenStore")
        middlewares.append(auth_middleware(store, public_metrics=http.public_metrics,
                                           sessions=sessions, public=public))
    middlewares.append(limits_middleware(max_body_bytes=http.max_body_bytes,
                                         max_query_bytes=http.max_query_bytes))
    return middlewares
