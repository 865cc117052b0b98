"""``GET /edgemon/api/v1/dictionaries[/{id}]``: the published zstd dictionaries (SPEC.md §2),
so a third-party reader can fetch one it lacks from the collector it already talks to, and
check it by its SHA-256, instead of copying it out of a source tree or an installed package.

The files are part of the protocol (``protocol/dictionaries/``): no host's data, bytes that
never change once published — so a dictionary is served with its digest as ETag and may be
cached for good.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from aiohttp import web

from edgemon.collector.http.responses import (
    error_doc,
    error_response,
    json_response,
    ok_doc,
    query_params,
)
from edgemon.protocol.codec import BASED_DICTIONARY_ID, DICTIONARY_ID, published_dictionaries

__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "PATH", "add_routes"]

PATH = "/edgemon/api/v1/dictionaries"
_USES = {DICTIONARY_ID: "inline and referencing batches, catalogues (SPEC.md §2, §9)",
         BASED_DICTIONARY_ID: "based batches (SPEC.md §9.1)"}


@cache
def _published() -> dict[int, tuple[bytes, str]]:
    return {i: (data, hashlib.sha256(data).hexdigest())
            for i, data in published_dictionaries().items()}


async def list_handler(request: web.Request) -> web.Response:
    query_params(request, ())
    return json_response({"dictionaries": [
        {"id": i, "size": len(data), "sha256": digest, "url": f"{PATH}/{i}",
         "used_for": _USES.get(i, "")}
        for i, (data, digest) in _published().items()]})


async def dictionary_handler(request: web.Request) -> web.Response:
    query_params(request, ())
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 9:
        return error_response(400, f"dictionary id {raw[:20]!r} is not a positive integer")
    found = _published().get(int(raw))
    if found is None:
        return error_response(404, f"no published dictionary {int(raw)}")
    data, digest = found
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable",
               "Content-Disposition": f'attachment; filename="{int(raw)}.zdict"',
               "X-Content-Type-Options": "nosniff"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type="application/octet-stream", headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, list_handler)
    app.router.add_get(PATH + "/{id}", dictionary_handler)


OPENAPI_SCHEMAS: dict[str, Any] = {
    "Dictionaries": {"type": "object", "properties": {"dictionaries": {
        "type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer", "minimum": 1, "description": "zstd Dictionary_ID"},
            "size": {"type": "integer"},
            "sha256": {"type": "string", "description": "hex digest of the file's bytes"},
            "url": {"type": "string"},
            "used_for": {"type": "string"}}}}}},
}

OPENAPI_PATHS: dict[str, Any] = {
    PATH: {"get": {
        "summary": "The published zstd dictionaries batches are compressed with (SPEC.md §2)",
        "responses": {"200": ok_doc("Dictionaries")}}},
    PATH + "/{id}": {"get": {
        "summary": "One dictionary's bytes (a standard zstd dictionary); never changes",
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 1}}],
        "responses": {
            "200": {"description": "the dictionary; ETag is its SHA-256",
                    "content": {"application/octet-stream": {"schema": {
                        "type": "string", "format": "binary"}}}},
            "304": {"description": "If-None-Match matched"},
            "400": error_doc("the id is not a positive integer"),
            "404": error_doc("no such dictionary")}}},
}
