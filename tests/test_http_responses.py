"""The API's error middleware: a client error is a 400, a storage that is unreachable for now
(a PostgreSQL outage) a 503 the client may retry, anything else a 500 that hides the bug."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.http.responses import BadRequest, errors_middleware
from edgemon.collector.storage.base import StorageUnavailable


async def _statuses() -> dict[str, tuple[int, dict[str, str], dict[str, object]]]:
    async def bad(_request: web.Request) -> web.Response:
        raise BadRequest("parameter 'x' is wrong")

    async def down(_request: web.Request) -> web.Response:
        raise StorageUnavailable("connection refused")

    async def bug(_request: web.Request) -> web.Response:
        raise KeyError("secret detail")

    app = web.Application(middlewares=[errors_middleware])
    app.add_routes([web.get("/bad", bad), web.get("/down", down), web.get("/bug", bug)])
    out = {}
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path in ("/bad", "/down", "/bug"):
            response = await client.get(path)
            out[path] = (response.status, dict(response.headers), await response.json())
    return out


def test_storage_unavailable_is_a_503_to_retry_and_a_bug_a_500_that_says_nothing() -> None:
    got = asyncio.run(_statuses())
    assert got["/bad"][0] == 400 and "parameter 'x'" in str(got["/bad"][2]["error"])
    status, headers, body = got["/down"]
    assert status == 503 and int(headers["Retry-After"]) > 0
    assert "storage unavailable" in str(body["error"])
    status, _, body = got["/bug"]
    assert status == 500 and "secret" not in str(body)
