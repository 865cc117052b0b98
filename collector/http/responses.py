"""What every handler of the collector's HTTP API answers with: JSON documents, one error
schema (``{"error": "..."}``, plus ``"errors": [...]`` where there are several), and the one
exception that is the client's fault, ``BadRequest``.

``errors_middleware`` turns ``BadRequest`` into a 400 and aiohttp's own errors (404, 405, 413)
into the same schema; a storage that is unreachable for now (``StorageUnavailable``: a
PostgreSQL outage) into a 503 with ``Retry-After``, logged without a traceback at most every
``UNAVAILABLE_LOG_S``; anything else is a bug: a 500 that says nothing of it, with the traceback
in the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from edgemon.collector.storage.base import StorageUnavailable
from edgemon.common.logs import Throttle

__all__ = [
    "ERROR_SCHEMA",
    "JSON_CONTENT",
    "NOSNIFF",
    "BadRequest",
    "ParamError",
    "error_doc",
    "error_response",
    "errors_middleware",
    "json_response",
    "json_text",
    "ok_doc",
    "param_doc",
    "query_params",
]

log = logging.getLogger("edgemon.collector.http")
UNAVAILABLE_LOG_S = 60.0
RETRY_AFTER_S = 5
_unavailable_logs = Throttle(UNAVAILABLE_LOG_S)

JSON_CONTENT = "application/json"


class BadRequest(Exception):
    """The request is wrong; ``str()`` tells the client what to change (answered with 400)."""


class ParamError(BadRequest):
    """A query parameter is wrong: ``parameter 'NAME': what``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"parameter '{param}': {message}")
        self.param = param


# Host-sent text (label values, names) is untrusted: characters that end a <script> element or
# a JavaScript string when a document is embedded in a page are escaped, as Go's encoding/json
# does; ``nosniff`` keeps browsers from reading a JSON answer as anything else.
_JSON_HTML_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


def json_text(doc: Any) -> str:
    """``doc`` as compact, HTML-safe JSON; NaN and infinities are refused (JSON has none)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":"),
                      ensure_ascii=False).translate(_JSON_HTML_SAFE)


def json_response(doc: Any, status: int = 200, *,
                  headers: dict[str, str] | None = None) -> web.Response:
    """``doc`` as compact, HTML-safe JSON (``json_text``)."""
    return web.Response(text=json_text(doc), status=status, content_type=JSON_CONTENT,
                        headers={**NOSNIFF, **(headers or {})})


def error_response(status: int, message: str, *, errors: list[str] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The error schema: ``{"error": message}`` (and every problem in ``errors``)."""
    doc: dict[str, Any] = {"error": message}
    if errors is not None:
        doc["errors"] = errors
    return json_response(doc, status, headers=headers)


def query_params(request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters, each given at most once and each one of ``allowed``."""
    allowed = tuple(allowed)
    out: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            hint = f": use {', '.join(allowed)}" if allowed else ""
            raise BadRequest(f"unknown parameter '{key[:80]}'{hint}")
        if key in out:
            raise ParamError(key, "given more than once")
        out[key] = value
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_response(400, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != JSON_CONTENT:
            return error_response(exc.status, exc.reason)
        raise
    except StorageUnavailable as exc:  # a transient fault, not a bug: the client may retry
        held_back = _unavailable_logs()
        if held_back is not None:
            log.warning("%s %s: storage unavailable (%d such requests not logged): %s",
                        request.method, request.path, held_back, exc)
        return error_response(503, f"storage unavailable, try again: {exc}",
                              headers={"Retry-After": str(RETRY_AFTER_S)})
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error (see the collector's log)")


# --- OpenAPI -----------------------------------------------------------------------------------

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "string"},
                   "description": "every problem, where there are several (a rules file)"}}}


def ok_doc(ref: str, description: str = "OK") -> dict[str, Any]:
    """An OpenAPI response whose JSON body is the component schema ``ref``."""
    return {"description": description,
            "content": {JSON_CONTENT: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def error_doc(description: str) -> dict[str, Any]:
    """An OpenAPI error response: the ``Error`` schema."""
    return {"description": description,
            "content": {JSON_CONTENT: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def param_doc(name: str, description: str, schema: dict[str, Any] | None = None,
              required: bool = False, **extra: Any) -> dict[str, Any]:
    """An OpenAPI query parameter (a string unless ``schema`` says otherwise)."""
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}, **extra}
