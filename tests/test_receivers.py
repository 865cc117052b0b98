"""Direct receivers through the durable outbox: Slack and Teams incoming-webhook shapes against
local aiohttp receivers, e-mail against a local SMTP server (aiosmtpd) with STARTTLS and
implicit TLS and authentication; each receiver down then up gets every message exactly once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from edgemon.collector.alerting import AlertEngine, DeliveryWorker, RulesError, parse_rules
from edgemon.collector.alerting.memstore import InMemoryGridStorage
from edgemon.common.clock import now_ms
from tests.support.broker import free_port
from tests.support.waiting import DistinctClock, wait_until_async

FLEET_CA = Path(__file__).resolve().parents[1] / "packaging" / "fleet-ca.sh"
LINK = "https://edgemon.example"


class ChatHook:
    """An incoming webhook: records every JSON body; 503 while ``down``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.down = False
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> ChatHook:
        app = web.Application()
        app.router.add_post("/hook/{secret}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/T000-B000-XXXX"

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.down:
            return web.Response(status=503)
        self.bodies.append(await request.json())
        return web.Response(text="ok")  # Slack answers "ok", Teams 200/202


class Mailbox:
    """Messages an SMTP server accepted."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content,
                                                      policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def _authenticate(_server: Any, _session: Any, _envelope: Any, mechanism: str,
                  data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"edgemon", b"s3")
    return AuthResult(success=ok, handled=False)


class Certs:
    def __init__(self, root: Path) -> None:
        def ca(*args: str) -> None:
            subprocess.run(["bash", str(FLEET_CA), "-d", str(root), *args], check=True,
                           capture_output=True)
        ca("init")
        ca("server", "127.0.0.1", "localhost")
        self.ca = root / "ca.crt"
        self.crt = root / "servers" / "127.0.0.1.crt"
        self.key = root / "servers" / "127.0.0.1.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("smtp-ca"))


def smtp_server(mailbox: Mailbox, port: int, certs: Certs, implicit_tls: bool) -> Controller:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.crt, certs.key)
    if implicit_tls:
        # the whole connection is TLS (aiosmtpd only counts STARTTLS for auth_require_tls)
        return Controller(mailbox, hostname="127.0.0.1", port=port, ssl_context=context,
                          authenticator=_authenticate, auth_require_tls=False)
    return Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=context,
                      require_starttls=True, authenticator=_authenticate,
                      auth_require_tls=True)


def rules(receivers: str, extra: str = "") -> str:
    return f"""[settings]
group_wait = "0s"
retry_initial = "50ms"
retry_max = "200ms"
external_url = "{LINK}"

{receivers}

[[rule]]
name = "host-down"
kind = "host_down"
severity = "critical"
no_data_for = "1h"
annotations = {{ summary = "{{host}} is down" }}
{extra}
"""


def fire_and_resolve(store: InMemoryGridStorage, engine: AlertEngine) -> None:
    store.set_status("web-01", False, now_ms())
    engine.run_cycle()  # firing
    store.set_status("web-01", True, now_ms())
    store.set_last_seen("web-01", now_ms())
    engine.run_cycle()  # resolved


def pending(engine: AlertEngine) -> int:
    return int(engine.store.query("SELECT count(*) FROM outbox WHERE state='pending'")[0][0])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_slack_and_teams_messages_after_an_outage_once_each(tmp_path: Path) -> None:
    async def main() -> None:
        slack, teams = await ChatHook().start(), await ChatHook().start()
        slack.down = teams.down = True
        store = InMemoryGridStorage()
        engine = AlertEngine(store, tmp_path / "a.db", clock_ms=DistinctClock(), rules=parse_rules(
            rules(f'[[receiver]]\nname = "chat"\ntype = "slack"\nurl = "{slack.url()}"\n\n'
                  f'[[receiver]]\nname = "ms"\ntype = "teams"\nurl = "{teams.url()}"\n'
                  'title = "{status}: {rule} on {count} host(s)"\n')))
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            fire_and_resolve(store, engine)
            await wait_until_async(lambda: slack.attempts >= 2 and teams.attempts >= 2, 10,
                                   "failed attempts while the receivers are down")
            assert slack.bodies == [] and teams.bodies == [] and pending(engine) == 4
            slack.down = teams.down = False
            await wait_until_async(lambda: pending(engine) == 0, 10, "delivery")
            await asyncio.sleep(0.3)  # several worker polls: nothing more goes out
        finally:
            await worker.stop()
            engine.close()
            await slack.stop()
            await teams.stop()
        assert len(slack.bodies) == 2 and len(teams.bodies) == 2
        fired, resolved = slack.bodies
        assert fired["text"] == "[FIRING] host-down (1)"
        assert resolved["text"] == "[RESOLVED] host-down (1)"
        assert fired["blocks"][0] == {"type": "header", "text": {
            "type": "plain_text", "text": "[FIRING] host-down (1)"}}
        line = fired["blocks"][1]["text"]
        assert line["type"] == "mrkdwn" and "web-01: web-01 is down" in line["text"]
        assert "since 20" in line["text"] and " UTC" in line["text"]
        assert f"{LINK}/edgemon/api/v1/alerts/history?rule=host-down&host=web-01" in line["text"]
        card_msg = teams.bodies[0]
        assert card_msg["type"] == "message"
        attachment = card_msg["attachments"][0]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
        assert card["body"][0]["text"] == "FIRING: host-down on 1 host(s)"
        assert card["body"][0]["color"] == "Attention"
        assert teams.bodies[1]["attachments"][0]["content"]["body"][0]["color"] == "Good"
        assert card["actions"][0]["url"].startswith(f"{LINK}/edgemon/api/v1/alerts/history")

    asyncio.run(main())


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_email_after_an_smtp_outage_exactly_once(tmp_path: Path, certs: Certs,
                                                 security: str) -> None:
    port = free_port()
    mailbox = Mailbox()
    password = tmp_path / "smtp.password"
    password.write_text("s3\n")
    password.chmod(0o600)

    async def main() -> None:
        store = InMemoryGridStorage()
        engine = AlertEngine(store, tmp_path / "a.db", clock_ms=DistinctClock(), rules=parse_rules(
            rules(f'[[receiver]]\nname = "mail"\ntype = "email"\nto = ["ops@example.org"]\n'
                  f'from = "edgemon@collector.example"\nsmtp_host = "127.0.0.1"\n'
                  f'smtp_port = {port}\nsmtp_security = "{security}"\n'
                  f'smtp_ca_file = "{certs.ca}"\nusername = "edgemon"\n'
                  f'password_file = "{password}"\ntimeout = "3s"\n')))
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        server: Controller | None = None
        try:
            fire_and_resolve(store, engine)  # nothing listens on the port yet
            await wait_until_async(lambda: worker.failed_attempts >= 2, 10,
                                   "failed attempts while the SMTP server is down")
            assert pending(engine) == 2
            server = smtp_server(mailbox, port, certs, implicit_tls=security == "tls")
            await asyncio.to_thread(server.start)
            await wait_until_async(lambda: pending(engine) == 0, 15, "delivery")
            await asyncio.sleep(0.3)
        finally:
            await worker.stop()
            engine.close()
            if server is not None:
                await asyncio.to_thread(server.stop)

    asyncio.run(main())
    assert len(mailbox.messages) == 2
    first, second = mailbox.messages
    assert first["Subject"] == "[FIRING] host-down (1)"
    assert second["Subject"] == "[RESOLVED] host-down (1)"
    assert first["To"] == "ops@example.org" and first["From"] == "edgemon@collector.example"
    assert mailbox.envelopes[0] == ("edgemon@collector.example", ["ops@example.org"])
    body = first.get_content()
    assert "web-01: web-01 is down" in body and LINK in body
    assert first["Message-ID"] != second["Message-ID"]
    assert first["Message-ID"].endswith("@collector.example>")


def test_wrong_smtp_password_is_retried_not_dropped(tmp_path: Path, certs: Certs) -> None:
    port = free_port()
    mailbox = Mailbox()

    async def main() -> None:
        store = InMemoryGridStorage()
        engine = AlertEngine(store, tmp_path / "a.db", clock_ms=DistinctClock(), rules=parse_rules(
            rules(f'[[receiver]]\nname = "mail"\ntype = "email"\nto = ["ops@example.org"]\n'
                  f'smtp_host = "127.0.0.1"\nsmtp_port = {port}\n'
                  f'smtp_ca_file = "{certs.ca}"\nusername = "edgemon"\npassword = "wrong"\n')))
        server = smtp_server(mailbox, port, certs, implicit_tls=False)
        await asyncio.to_thread(server.start)
        worker = DeliveryWorker(engine, poll_s=0.05)
        await worker.start()
        try:
            store.set_status("web-01", False, now_ms())
            engine.run_cycle()
            await wait_until_async(lambda: worker.failed_attempts >= 2, 10, "failed logins")
            assert pending(engine) == 1 and mailbox.messages == []
            error = engine.store.query("SELECT last_error FROM receiver_state")[0][0]
            assert "535" in error or "Authentication" in error
        finally:
            await worker.stop()
            engine.close()
            await asyncio.to_thread(server.stop)

    asyncio.run(main())


def test_receiver_settings_are_checked() -> None:
    with pytest.raises(RulesError, match=r"receiver 'mail'.*needs 'to'"):
        parse_rules(rules('[[receiver]]\nname = "mail"\ntype = "email"\n'))
    with pytest.raises(RulesError, match=r"receiver 'chat'.*needs 'url'"):
        parse_rules(rules('[[receiver]]\nname = "chat"\ntype = "slack"\n'))
    with pytest.raises(RulesError, match=r"unknown field \{value2\}"):
        parse_rules(rules('[[receiver]]\nname = "chat"\ntype = "slack"\nurl = "http://x/y"\n'
                          'text = "{value2}"\n'))
