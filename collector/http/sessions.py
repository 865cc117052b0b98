"""Dashboard sessions: a person pastes an API token once, the browser keeps a session cookie.

The cookie carries only a random session id (256 bits); the server keeps the session (the
token's id, name and role, when it was made and last used) in memory, keyed by the SHA-256 of
that id, so nothing in memory or in a log can be replayed as a cookie. The token itself is never
stored and never appears in a URL. The cookie is ``HttpOnly`` (scripts cannot read it),
``SameSite=Strict`` (no other site's page can make the browser send it) and ``Secure`` over
HTTPS (then also named with the ``__Host-`` prefix: no Domain, Path=/).

A session authenticates exactly like its token (same role) for as long as the token stays
active: revoking the token ends its sessions at their next request. A session ends after
``idle_ms`` without a request, ``max_age_ms`` after sign-in, or at sign-out. Sessions live in
memory only: a collector restart signs everybody out (pasting the token again signs in). At most
``max_sessions`` are kept; beyond that the least recently used one is dropped.

State-changing requests made with a session cookie must carry an ``Origin`` header naming this
server (``same_origin``): with SameSite=Strict this keeps cross-site request forgery out even
in browsers that ignore SameSite.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from aiohttp import web

from edgemon.collector.http.tokens import Role, Token, TokenStore
from edgemon.common.clock import now_ms

__all__ = [
    "COOKIE",
    "SECURE_COOKIE",
    "Session",
    "SessionStore",
    "same_origin",
]

COOKIE = "edgemon_session"
SECURE_COOKIE = "__Host-edgemon_session"  # browsers only accept it with Secure, Path=/, no Domain
DEFAULT_IDLE_MS = 12 * 3_600_000
DEFAULT_MAX_AGE_MS = 7 * 86_400_000
DEFAULT_MAX_SESSIONS = 10_000
_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    token_id: str
    token_name: str
    role: Role
    created_ms: int
    last_used_ms: int

    def expires_ms(self, idle_ms: int, max_age_ms: int) -> int:
        return min(self.last_used_ms + idle_ms, self.created_ms + max_age_ms)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Sessions by id (thread-safe: the event loop and the read pool may both look)."""

    def __init__(self, tokens: TokenStore, *, idle_ms: int = DEFAULT_IDLE_MS,
                 max_age_ms: int = DEFAULT_MAX_AGE_MS,
                 max_sessions: int = DEFAULT_MAX_SESSIONS,
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self.tokens = tokens
        self.idle_ms = idle_ms
        self.max_age_ms = max_age_ms
        self.max_sessions = max_sessions
        self._clock = clock_ms
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def _now(self) -> int:
        return int(self._clock())

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: Token) -> tuple[str, Session]:
        """A new session for ``token`` (already verified): (the cookie's id, the session)."""
        session_id = secrets.token_urlsafe(_ID_BYTES)
        now = self._now()
        session = Session(token.id, token.name, token.role, now, now)
        with self._lock:
            self._sessions[_key(session_id)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, session

    def lookup(self, session_id: str) -> Session | None:
        """The live session for a cookie value (touched: its idle time restarts), or None when
        unknown, expired, or its token is no longer active (revoked, or the file unusable)."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        now = self._now()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now >= session.expires_ms(self.idle_ms, self.max_age_ms):
                del self._sessions[key]
                return None
        if not any(t.id == session.token_id for t in self.tokens.active_tokens()):
            self.end(session_id)
            return None
        touched = replace(session, last_used_ms=now)
        with self._lock:
            if key in self._sessions:
                self._sessions[key] = touched
                self._sessions.move_to_end(key)
        return touched

    def end(self, session_id: str) -> bool:
        """Sign out: forget the session. False when there was none."""
        with self._lock:
            return self._sessions.pop(_key(session_id), None) is not None

    def expire_idle(self) -> int:
        """Drop expired sessions (also done lazily on lookup); how many went."""
        now = self._now()
        with self._lock:
            gone = [k for k, s in self._sessions.items()
                    if now >= s.expires_ms(self.idle_ms, self.max_age_ms)]
            for k in gone:
                del self._sessions[k]
        return len(gone)

    # --- cookies ------------------------------------------------------------------------------

    @staticmethod
    def cookie_value(request: web.Request) -> str | None:
        return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)

    def from_request(self, request: web.Request) -> Session | None:
        value = self.cookie_value(request)
        return self.lookup(value) if value else None

    def set_cookie(self, request: web.Request, response: web.StreamResponse,
                   session_id: str) -> None:
        secure = request.secure
        response.set_cookie(SECURE_COOKIE if secure else COOKIE, session_id, path="/",
                            max_age=self.max_age_ms // 1000, httponly=True, secure=secure,
                            samesite="Strict")

    @staticmethod
    def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
        for name in (SECURE_COOKIE, COOKIE):
            if name in request.cookies:
                response.del_cookie(name, path="/", secure=name == SECURE_COOKIE,
                                    httponly=True, samesite="Strict")


def same_origin(request: web.Request) -> bool:
    """Whether the request's ``Origin`` names this server (scheme included over HTTPS).

    A request without Origin is refused: every browser sends it on POST and DELETE, and only a
    browser carries cookies on its own."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return False
    if request.secure and parts.scheme != "https":
        return False
    host = request.headers.get("Host", "")
    default = {"http": 80, "https": 443}[parts.scheme]
    return _netloc(parts.netloc, default) == _netloc(host, default)


def _netloc(value: str, default_port: int) -> str:
    value = value.strip().lower()
    if value.endswith(f":{default_port}"):
        value = value[: -len(f":{default_port}")]
    return value
