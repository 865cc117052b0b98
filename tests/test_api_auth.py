"""HTTP API security: bearer tokens and roles, limits, CORS, file modes, HTTPS, no secrets in logs.

Fast tests drive create_app with the security middlewares through aiohttp's test client; two
tests run a real collector process (with a real broker) and the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.app import CollectorService, StartupError, tls_context
from edgemon.collector.config import CollectorConfig, ConfigError, HttpConfig, load_config
from edgemon.collector.http.api import create_app
from edgemon.collector.http.auth import add_cors, security_middlewares
from edgemon.collector.http.tokens import TokenStore, create_token, parse_token, revoke_token
from edgemon.common.private_files import InsecureFileMode, check_not_world_accessible
from tests.support.broker import Broker
from tests.support.fake_storage import MemoryStorage
from tests.support.processes import Collector

ORIGIN = "https://grafana.example"


async def echo_handler(request: web.Request) -> web.Response:
    """A POST endpoint that reads its body, as the silences endpoint does."""
    return web.json_response({"bytes": len(await request.read())})


class Api:
    """An app with the collector's security wiring and a token file in ``tmp_path``."""

    def __init__(self, tmp_path: Path, **http: Any) -> None:
        self.http = HttpConfig(**http)
        self.tokens_path = tmp_path / "tokens.json"
        self.store = TokenStore(self.tokens_path)
        self.read_token = self.new_token("grafana", "read")
        self.admin_token = self.new_token("ops", "admin")
        self.store.load()

    def new_token(self, name: str, role: str) -> str:
        return create_token(self.tokens_path, name, role)[1]

    def app(self) -> web.Application:
        app = create_app(MemoryStorage(), metrics=lambda: "edgemon_up 1\n",
                         extra_routes=[web.post("/edgemon/api/v1/echo", echo_handler)],
                         middlewares=security_middlewares(self.http, self.store),
                         client_max_size=self.http.max_body_bytes)
        add_cors(app, self.http.cors_origins)
        return app

    def run(self, test: Callable[[TestClient], Awaitable[None]]) -> None:
        async def main() -> None:
            async with TestClient(TestServer(self.app())) as client:
                await test(client)

        asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_and_json(resp: Any) -> tuple[int, Any]:
    text = await resp.text()
    return resp.status, json.loads(text) if resp.content_type == "application/json" else text


# --- tokens and roles -----------------------------------------------------------------------------

def test_no_token_bad_header_or_unknown_token_is_401_with_a_way_to_get_one(tmp_path: Path) -> None:
    api = Api(tmp_path)
    forged = f"edm_{parse_token(api.read_token)[0]}_{'A' * 43}"  # type: ignore[index]

    async def test(client: TestClient) -> None:
        for headers, challenge in [({}, 'Bearer realm="edgemon"'),
                                   ({"Authorization": "Basic dXNlcjpwdw=="}, "invalid_request"),
                                   (bearer("not-a-token"), "invalid_token"),
                                   (bearer(forged), "invalid_token")]:
            resp = await client.get("/edgemon/api/v1/hosts", headers=headers)
            status, doc = await status_and_json(resp)
            assert status == 401, doc
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert challenge in resp.headers["WWW-Authenticate"]
            assert "edgemon-collector token create" in doc["error"]
            assert "Authorization: Bearer" in doc["error"]
            assert forged not in doc["error"] and "not-a-token" not in doc["error"]
        resp = await client.get("/edgemon/api/v1/hosts", headers=bearer(api.read_token))
        assert resp.status == 200

    api.run(test)


def test_read_token_reads_but_only_admin_changes(tmp_path: Path) -> None:
    api = Api(tmp_path)

    async def test(client: TestClient) -> None:
        for path in ("/edgemon/api/v1/hosts", "/edgemon/api/v1/openapi.json"):
            assert (await client.get(path, headers=bearer(api.read_token))).status == 200
        resp = await client.head("/edgemon/api/v1/hosts", headers=bearer(api.read_token))
        assert resp.status == 200
        resp = await client.post("/edgemon/api/v1/echo", data=b"{}", headers=bearer(api.read_token))
        status, doc = await status_and_json(resp)
        assert status == 403
        assert "role read" in doc["error"] and "needs an admin token" in doc["error"]
        assert "insufficient_scope" in resp.headers["WWW-Authenticate"]
        resp = await client.post("/edgemon/api/v1/echo", data=b"{}",
                                 headers=bearer(api.admin_token))
        assert await status_and_json(resp) == (200, {"bytes": 2})
        # admin implies read
        resp = await client.get("/edgemon/api/v1/hosts", headers=bearer(api.admin_token))
        assert resp.status == 200

    api.run(test)


def test_new_and_revoked_tokens_count_from_the_next_request(tmp_path: Path) -> None:
    api = Api(tmp_path)

    async def test(client: TestClient) -> None:
        late = api.new_token("late", "read")  # created while the app runs
        assert (await client.get("/edgemon/api/v1/hosts", headers=bearer(late))).status == 200
        revoke_token(api.tokens_path, parse_token(late)[0])  # type: ignore[index]
        resp = await client.get("/edgemon/api/v1/hosts", headers=bearer(late))
        status, doc = await status_and_json(resp)
        assert status == 401 and "was revoked" in doc["error"]
        resp = await client.get("/edgemon/api/v1/hosts", headers=bearer(api.read_token))
        assert resp.status == 200

    api.run(test)


def test_token_file_readable_by_others_refuses_every_token_until_fixed(tmp_path: Path) -> None:
    api = Api(tmp_path)

    async def test(client: TestClient) -> None:
        api.tokens_path.chmod(0o644)
        resp = await client.get("/edgemon/api/v1/hosts", headers=bearer(api.admin_token))
        status, doc = await status_and_json(resp)
        assert status == 401 and "token file is unusable" in doc["error"]
        assert api.store.error is not None and f"chmod 600 {api.tokens_path}" in api.store.error
        api.tokens_path.chmod(0o640)  # group access is fine
        resp = await client.get("/edgemon/api/v1/hosts", headers=bearer(api.admin_token))
        assert resp.status == 200

    api.run(test)
    api.tokens_path.chmod(0o604)
    with pytest.raises(InsecureFileMode, match=r"mode 0604"):
        TokenStore(api.tokens_path).load()


def test_token_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    api = Api(tmp_path)
    text = api.tokens_path.read_text()
    for token in (api.read_token, api.admin_token):
        assert parse_token(token)[1] not in text  # type: ignore[index]
    assert oct(api.tokens_path.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(text)
    assert [(t["name"], t["role"], t["revoked"]) for t in doc["tokens"]] == [
        ("grafana", "read", False), ("ops", "admin", False)]
    with pytest.raises(ValueError, match="--role: one of read, admin"):
        create_token(api.tokens_path, "x", "root")


def test_health_is_open_and_metrics_closed_unless_public(tmp_path: Path) -> None:
    async def closed(client: TestClient) -> None:
        for path in ("/healthz", "/readyz"):
            assert (await client.get(path)).status == 200
        assert (await client.get("/metrics")).status == 401
        resp = await client.get("/metrics", headers=bearer(api.read_token))
        assert resp.status == 200 and "edgemon_up 1" in await resp.text()

    async def public(client: TestClient) -> None:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/edgemon/api/v1/hosts")).status == 401  # only /metrics opens

    api = Api(tmp_path / "closed")
    api.run(closed)
    Api(tmp_path / "public", public_metrics=True).run(public)


def test_auth_none_needs_no_token(tmp_path: Path) -> None:
    async def test(client: TestClient) -> None:
        assert (await client.get("/edgemon/api/v1/hosts")).status == 200
        assert (await client.post("/edgemon/api/v1/echo", data=b"x")).status == 200

    Api(tmp_path, auth="none").run(test)


def test_presented_tokens_never_reach_the_log(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    api = Api(tmp_path)
    revoked = api.new_token("gone", "admin")
    revoke_token(api.tokens_path, parse_token(revoked)[0])  # type: ignore[index]
    pasted = "hunter2-my-mqtt-password"

    async def test(client: TestClient) -> None:
        for token in (api.read_token, revoked, pasted, f"edm_{'0' * 12}_{'B' * 43}"):
            await client.post("/edgemon/api/v1/echo", data=b"{}", headers=bearer(token))
            await client.get("/edgemon/api/v1/hosts", headers=bearer(token))

    with caplog.at_level(logging.DEBUG):
        api.run(test)
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "http request refused" in logged  # failures are logged ...
    for secret in (api.read_token, revoked, pasted, "B" * 43):  # ... without what was presented
        assert secret not in logged
    assert parse_token(revoked)[1] not in logged  # type: ignore[index]


# --- limits ---------------------------------------------------------------------------------------

def test_body_and_query_limits(tmp_path: Path) -> None:
    api = Api(tmp_path, max_body_bytes=2048, max_query_bytes=300)
    admin = bearer(api.admin_token)

    async def chunks(size: int) -> Any:
        for _ in range(size // 512):
            yield b"x" * 512

    async def test(client: TestClient) -> None:
        assert await status_and_json(
            await client.post("/edgemon/api/v1/echo", data=b"x" * 2048, headers=admin)) == \
            (200, {"bytes": 2048})
        status, doc = await status_and_json(
            await client.post("/edgemon/api/v1/echo", data=b"x" * 2049, headers=admin))
        assert status == 413 and "2048 bytes (http.max_body_bytes)" in doc["error"]
        # no Content-Length: refused while the body is read
        status, doc = await status_and_json(
            await client.post("/edgemon/api/v1/echo", data=chunks(4096), headers=admin))
        assert status == 413 and "http.max_body_bytes" in doc["error"]
        status, doc = await status_and_json(
            await client.get("/edgemon/api/v1/hosts?x=" + "a" * 400, headers=admin))
        assert status == 414 and "http.max_query_bytes" in doc["error"]

    async def crowded(client: TestClient) -> None:
        many = "&".join(f"p{i}=1" for i in range(101))
        status, doc = await status_and_json(
            await client.get("/edgemon/api/v1/hosts?" + many, headers=bearer(roomy.admin_token)))
        assert status == 400 and "101 query parameters" in doc["error"]

    api.run(test)
    roomy = Api(tmp_path / "roomy")
    roomy.run(crowded)


# --- CORS -----------------------------------------------------------------------------------------

def test_no_cors_headers_by_default(tmp_path: Path) -> None:
    api = Api(tmp_path)

    async def test(client: TestClient) -> None:
        resp = await client.get("/edgemon/api/v1/hosts",
                                headers={"Origin": ORIGIN, **bearer(api.read_token)})
        assert resp.status == 200
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        resp = await client.options("/edgemon/api/v1/hosts", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert resp.status == 401
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]

    api.run(test)


def test_cors_only_for_configured_origins(tmp_path: Path) -> None:
    api = Api(tmp_path, cors_origins=[ORIGIN])

    async def test(client: TestClient) -> None:
        resp = await client.get("/edgemon/api/v1/hosts",
                                headers={"Origin": ORIGIN, **bearer(api.read_token)})
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Origin" in resp.headers["Vary"]
        resp = await client.get("/edgemon/api/v1/hosts", headers={"Origin": ORIGIN})
        assert resp.status == 401  # the browser may read why
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        resp = await client.get("/edgemon/api/v1/hosts", headers={"Origin": "https://evil.example",
                                                          **bearer(api.read_token)})
        assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await client.options("/edgemon/api/v1/silences", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert resp.status == 204  # preflights carry no token
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        resp = await client.options("/edgemon/api/v1/silences", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers

    api.run(test)


# --- configuration --------------------------------------------------------------------------------

def test_http_config_validation(tmp_path: Path) -> None:
    cfg = HttpConfig()
    assert (cfg.auth, cfg.public_metrics, cfg.cors_origins, cfg.max_body_bytes) == \
        ("token", False, (), 65536)
    path = tmp_path / "c.toml"
    path.write_text('[http]\ncors_origins = ["https://ok.example", "https://bad.example/"]\n'
                    'tls_cert_file = "/x.pem"\nauth = "basic"\n')
    with pytest.raises(ConfigError, match=r"http\.cors_origins") as err:
        load_config(path, environ={})
    text = str(err.value)
    assert f"{path}:2: http.cors_origins:" in text and "scheme://host[:port]" in text
    assert f"{path}:1: http.tls_key_file:" in text and "both tls_cert_file and tls_key_file" in text
    assert f"{path}:4: http.auth:" in text
    env = {"EDGEMON_COLLECTOR_HTTP_CORS_ORIGINS": "https://a.example, http://b.example:3000"}
    assert load_config(None, environ=env).http.cors_origins == \
        ("https://a.example", "http://b.example:3000")


def test_start_warns_how_to_create_a_token_when_there_is_none(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = CollectorConfig.model_validate({"storage": {"path": tmp_path / "data" / "e.db"}})
    with caplog.at_level(logging.WARNING):
        CollectorService(config)._http_security()
    assert any("no API tokens" in r.getMessage() and "edgemon-collector token create"
               in r.getMessage() for r in caplog.records)


def test_file_mode_check(tmp_path: Path) -> None:
    path = tmp_path / "secret file.toml"
    path.write_text("")
    for mode in (0o600, 0o640, 0o660):
        path.chmod(mode)
        check_not_world_accessible(path, "configuration file")
    path.chmod(0o644)
    with pytest.raises(InsecureFileMode, match=r"mode 0644") as err:
        check_not_world_accessible(path, "configuration file")
    assert f"chmod 600 '{path}'" in str(err.value) and "chmod 640" in str(err.value)
    check_not_world_accessible(tmp_path / "missing", "configuration file")  # the caller's case


def test_cli_refuses_a_config_others_can_read(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text('[mqtt]\npassword = "pw"\nusername = "c"\n')
    config.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMON_COLLECTOR_")}
    for command in ("check-config", "run"):
        result = subprocess.run([sys.executable, "-m", "edgemon.collector.cli", command, "-c",
                                 str(config)], capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 2, result
        assert "mode 0644" in result.stderr and f"chmod 600 {config}" in result.stderr
    config.chmod(0o640)
    result = subprocess.run([sys.executable, "-m", "edgemon.collector.cli", "check-config", "-c",
                             str(config)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr


def test_openapi_describes_the_bearer_scheme(tmp_path: Path) -> None:
    api = Api(tmp_path)

    async def test(client: TestClient) -> None:
        doc = await (await client.get("/edgemon/api/v1/openapi.json",
                                      headers=bearer(api.read_token))).json()
        assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        assert doc["security"] == [{"bearerAuth": []}]
        assert doc["paths"]["/healthz"]["get"]["security"] == []

    api.run(test)


# --- real processes -------------------------------------------------------------------------------

def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made by openssl, as an admin would)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = directory / "collector.crt", directory / "collector.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def test_tls_context_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    key.chmod(0o644)
    http = HttpConfig(tls_cert_file=cert, tls_key_file=key)
    with pytest.raises(StartupError, match=rf"chmod 600 {key}"):
        tls_context(http)
    key.chmod(0o600)
    assert tls_context(http) is not None
    with pytest.raises(StartupError, match="not a PEM certificate and its private key"):
        tls_context(HttpConfig(tls_cert_file=key, tls_key_file=key))


def test_real_collector_tokens_roles_revocation_and_no_secrets_in_debug_log(
        tmp_path: Path) -> None:
    mqtt_password = "mqtt-Pa55word-that-must-not-leak"
    broker = Broker(tmp_path / "broker").start()
    collector = Collector(tmp_path / "collector", broker,
                          mqtt_extra=f'username = "edgemon-collector"\n'
                                     f'password = "{mqtt_password}"\n',
                          extra='\n[log]\nlevel = "debug"\n')
    try:
        collector.start()  # made an admin token with the CLI first
        assert collector.token is not None
        reader = collector.create_token("grafana", "read")  # while running: no restart
        status, headers, body = collector.request("GET", "/edgemon/api/v1/hosts", token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert "edgemon-collector token create" in json.loads(body)["error"]
        assert collector.request("GET", "/edgemon/api/v1/hosts", token=reader)[0] == 200
        status, _, body = collector.request("POST", "/edgemon/api/v1/rules/reload", token=reader)
        assert status == 403 and "needs an admin token" in json.loads(body)["error"]
        assert collector.request("POST", "/edgemon/api/v1/rules/reload")[0] == 200  # admin
        assert collector.request("GET", "/healthz", token=None)[0] == 200
        assert collector.request("GET", "/metrics", token=None)[0] == 401
        assert collector.request("GET", "/metrics", token=reader)[0] == 200
        status, _, body = collector.request("POST", "/edgemon/api/v1/silences", body=b"x" * 70_000)
        assert status == 413 and "max_body_bytes" in json.loads(body)["error"]
        reader_id = parse_token(reader)[0]  # type: ignore[index]
        collector.token_cli("revoke", reader_id)
        status, _, body = collector.request("GET", "/edgemon/api/v1/hosts", token=reader)
        assert status == 401 and "revoked" in json.loads(body)["error"]
        listed = json.loads(collector.token_cli("list", "--json").stdout)
        assert {t["id"]: t["revoked"] for t in listed}[reader_id] is True
        assert "sha256" not in json.dumps(listed) and reader not in json.dumps(listed)
        assert collector.terminate() == 0
    finally:
        collector.kill()
        broker.kill()
    log = collector.output()
    levels = {json.loads(line)["level"] for line in log.splitlines() if line.startswith("{")}
    assert "debug" in levels  # the log really was at debug level
    assert "http request refused" in log and reader_id in log
    for secret in (mqtt_password, collector.token, reader, parse_token(reader)[1]):  # type: ignore[index]
        assert secret not in log


def test_real_collector_over_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    key.chmod(0o600)
    broker = Broker(tmp_path / "broker").start()
    collector = Collector(tmp_path / "collector", broker,
                          extra=f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')
    collector.tls_ca = cert
    try:
        collector.start()  # ready over HTTPS, verified against the certificate
        assert collector.get("/edgemon/api/v1/hosts") == {"hosts": []}
        assert collector.request("GET", "/edgemon/api/v1/hosts", token=None)[0] == 401
        assert "http api listening on https://" in collector.output()
        collector.tls_ca = None  # plain HTTP to the TLS port: no answer
        with pytest.raises(OSError, match=r"reset|closed|aborted|EOF|Remote end"):
            collector.get("/healthz")
        assert collector.terminate() == 0
    finally:
        collector.kill()
        broker.kill()
