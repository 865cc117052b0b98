"""The dashboard's server side against a real aiohttp server on loopback and a real SQLite store:
sessions and their cookie, CSRF checks, pages and static files, the fleet summary, host charts,
live events, and the in-memory fleet figures. The pages themselves run in tests of a real
browser (test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgemon.collector.alerting import AlertEngine, parse_rules
from edgemon.collector.alerting import routes as alert_routes
from edgemon.collector.config import HttpConfig
from edgemon.collector.http.api import create_app
from edgemon.collector.http.auth import security_middlewares
from edgemon.collector.http.charts import align
from edgemon.collector.http.dashboard import CONTENT_SECURITY_POLICY, Dashboard, merge_openapi
from edgemon.collector.http.fleet import MAX_LABELLED, FleetState, FleetView
from edgemon.collector.http.live import LiveHub, Stream
from edgemon.collector.http.sessions import SessionStore
from edgemon.collector.http.tokens import TokenStore, create_token, revoke_token
from edgemon.collector.storage.base import HostInfo, IngestItem, SeriesResult, StoreResult
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode, to_scaled
from edgemon.protocol.schema import validate_batch
from tests.support.waiting import wait_until

CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 2, ("cpu",))
MEMORY = MetricDef("memory_usage_percent", GAUGE, "percent", 2)
DISK = MetricDef("disk_usage_percent", GAUGE, "percent", 2, ("mount", "device", "fstype"))
RX = MetricDef("network_received_bytes_total", COUNTER, "bytes", 0, ("iface",))
TX = MetricDef("network_sent_bytes_total", COUNTER, "bytes", 0, ("iface",))
BACKLOG = MetricDef("agent_buffer_samples", GAUGE, "")
DROPPED = MetricDef("agent_dropped_samples_total", COUNTER, "")
SEC = 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def batch(host: str, seq: int, samples: list[tuple[int, MetricDef, tuple[str, ...], float]], *,
          instance: str = "inst-1", received_ms: int | None = None) -> IngestItem:
    b = BatchBuilder()
    for ts, metric, labels, value in samples:
        b.add(ts, metric, labels, to_scaled(value, metric.scale))
    sent = max(ts for ts, *_ in samples) + 100
    payload = encode(b.build(host=host, instance=instance, seq=seq, sent_ms=sent))
    return IngestItem(validate_batch(decode(payload)), payload, received_ms or sent + 50, False)


def host_samples(t0: int, cycles: int, *, cpu: float, memory: float, disks: dict[str, float],
                 rx_per_s: float, interval: int = 10 * SEC, rx_from: float = 1e6) -> list[Any]:
    out: list[Any] = []
    for i in range(cycles):
        ts = t0 + i * interval
        out += [(ts, CPU, ("total",), cpu), (ts, CPU, ("0",), cpu / 2), (ts, MEMORY, (), memory),
                (ts, RX, ("eth0",), rx_from + rx_per_s * i * interval / SEC),
                (ts, TX, ("eth0",), 500 + i * 10), (ts, BACKLOG, (), 7), (ts, DROPPED, (), 3)]
        out += [(ts, DISK, (mount, "/dev/x", "ext4"), pct) for mount, pct in disks.items()]
    return out


class Stack:
    """A collector-like app: SQLite, tokens, alerting, the dashboard, on a loopback port."""

    def __init__(self, tmp: Path, client: TestClient, dashboard: Dashboard,
                 storage: SQLiteStorage, tokens: Path, admin: str, read: str) -> None:
        self.tmp, self.client, self.dashboard, self.storage = tmp, client, dashboard, storage
        self.tokens, self.admin, self.read = tokens, admin, read
        self.origin = f"http://{client.host}:{client.port}"
        self.ingest = dashboard.observe(storage)

    async def store(self, *items: IngestItem) -> list[StoreResult]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.ingest.store_batches, list(items))

    async def sign_in(self, token: str, origin: str | None = "") -> Any:
        headers = {"Origin": self.origin if origin == "" else origin} if origin is not None \
            else {}
        return await self.client.post("/edgemon/api/v1/session", json={"token": token},
                                      headers=headers)


def with_stack(tmp_path: Path, test: Callable[[Stack], Awaitable[None]]) -> None:
    async def main() -> None:
        storage = SQLiteStorage(tmp_path / "edgemon.db")
        tokens_path = tmp_path / "tokens.json"
        admin = create_token(tokens_path, "ops", "admin")[1]
        read = create_token(tokens_path, "viewer", "read")[1]
        tokens = TokenStore(tokens_path)
        tokens.load()
        engine = AlertEngine(storage, tmp_path / "alerts.db", rules=parse_rules(
            '[[rule]]\nname = "cpu-high"\nkind = "threshold"\nmetric = "cpu_usage_percent"\n'
            "threshold = 80\n"))
        dashboard = Dashboard(storage, executor=None, tokens=tokens, engine=engine)
        http = HttpConfig()
        app = create_app(storage, extra_routes=alert_routes(engine),
                         extend_openapi=merge_openapi,
                         middlewares=security_middlewares(http, tokens,
                                                          sessions=dashboard.sessions,
                                                          public=dashboard.is_public))
        dashboard.setup(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            await test(Stack(tmp_path, client, dashboard, storage, tokens_path, admin, read))
        finally:
            await client.close()
            engine.close()
            storage.close()

    asyncio.run(main())


def cookie_of(response: Any) -> str:
    return response.headers["Set-Cookie"]


# --- pages, assets, headers -----------------------------------------------------------------------

def test_pages_need_a_session_and_assets_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        c = s.client
        for path, target in (("/", "/login"), ("/alerts", "/login?next=/alerts"),
                             ("/hosts/web-01?range=24h",
                              "/login?next=/hosts/web-01%3Frange%3D24h")):
            r = await c.get(path, allow_redirects=False)
            assert (r.status, r.headers["Location"]) == (303, target), path
            assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        login = await c.get("/login")
        assert login.status == 200 and "text/html" in login.headers["Content-Type"]
        html = await login.text()
        assert "<script>" not in html and "style=" not in html and "http" not in \
            html.replace('http-equiv', '')
        assert re.findall(r'<script[^>]*src="([^"]+)"', html) == ["/static/js/login.js"]
        js = await c.get("/static/js/fleet.js", headers={"Accept-Encoding": "gzip"})
        assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
        assert js.headers["Content-Encoding"] == "gzip"
        assert js.headers["X-Content-Type-Options"] == "nosniff"
        again = await c.get("/static/js/fleet.js", headers={"If-None-Match": js.headers["ETag"]})
        assert again.status == 304
        uplot = await c.get("/static/vendor/uplot/uPlot.esm.js")
        assert uplot.status == 200 and "(v1.6.32)" in await uplot.text()
        assert (await c.get("/static/vendor/uplot/LICENSE")).status == 200
        for bad in ("/static/../http/dashboard.py", "/static/fleet.html", "/static/nope.js",
                    "/static/%2e%2e/app.py"):
            r = await c.get(bad)  # the client may normalise "..": then it needs a token
            assert r.status in (401, 404) and "__future__" not in await r.text(), bad
        api = await c.get("/edgemon/api/v1/fleet")
        assert api.status == 401 and api.headers["Content-Security-Policy"]
        assert (await c.get("/hosts/bad%20host")).status == 404

    with_stack(tmp_path, test)


def test_no_page_or_script_loads_anything_from_another_host() -> None:
    root = Path(__file__).resolve().parent.parent / "collector" / "dashboard"
    for path in [*root.glob("*.html"), *root.glob("js/*.js"), root / "style.css"]:
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path
        assert not re.search(r"(fetch|EventSource|import)\(\s*[\"'`](https?:)?//", text), path
        assert "innerHTML" not in text and "outerHTML" not in text, path
        assert "insertAdjacentHTML" not in text and "document.write" not in text, path
        if path.suffix == ".html":
            assert "<script>" not in text and " style=" not in text and "<style" not in text, path


# --- sessions ----------------------------------------------------------------------------------

def test_a_session_cookie_is_strict_and_acts_with_its_tokens_role(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        c = s.client
        r = await s.sign_in(s.read)
        assert r.status == 200, await r.text()
        cookie = cookie_of(r)
        assert re.match(r"edgemon_session=[A-Za-z0-9_-]{43};", cookie)
        for attribute in ("HttpOnly", "Path=/", "SameSite=Strict"):
            assert attribute in cookie
        assert "Secure" not in cookie  # plain HTTP here; HTTPS sets Secure and __Host-
        assert s.read not in cookie and s.read.split("_", 2)[2] not in cookie
        assert (await r.json())["role"] == "read"
        me = await (await c.get("/edgemon/api/v1/session")).json()
        assert (me["signed_in"], me["role"], me["name"], me["via"]) == \
            (True, "read", "viewer", "session")
        assert (await c.get("/edgemon/api/v1/fleet")).status == 200
        page = await c.get("/", allow_redirects=False)
        assert page.status == 200
        silence = {"matchers": [{"name": "host", "value": "h1"}], "duration": "1h"}
        refused = await c.post("/edgemon/api/v1/silences", json=silence,
                               headers={"Origin": s.origin})
        assert refused.status == 403 and "needs an admin token" in \
            (await refused.json())["error"]
        # an admin session may, from this origin only
        c.session.cookie_jar.clear()
        assert (await s.sign_in(s.admin)).status == 200
        made = await c.post("/edgemon/api/v1/silences", json=silence,
                            headers={"Origin": s.origin})
        assert made.status == 201, await made.text()
        port = s.client.port
        for origin in (None, "http://evil.example", "null", f"http://127.0.0.1:{port + 1}",
                       f"http://localhost:{port}", s.origin + "/x",
                       f"http://127.0.0.1.evil:{port}"):
            headers = {} if origin is None else {"Origin": origin}
            forged = await c.post("/edgemon/api/v1/silences", json=silence, headers=headers)
            assert forged.status == 403, origin
            assert "Origin" in (await forged.json())["error"]
        # a bearer token needs no Origin (no browser sends it by itself)
        c.session.cookie_jar.clear()
        bearer = await c.post("/edgemon/api/v1/silences", json=silence,
                              headers={"Authorization": f"Bearer {s.admin}"})
        assert bearer.status == 201

    with_stack(tmp_path, test)


def test_sign_out_and_revocation_end_the_session(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        c = s.client
        r = await s.sign_in(s.admin)
        value = r.cookies["edgemon_session"].value
        assert (await c.get("/edgemon/api/v1/fleet")).status == 200
        assert (await c.delete("/edgemon/api/v1/session")).status == 403  # no Origin
        out = await c.delete("/edgemon/api/v1/session", headers={"Origin": s.origin})
        assert out.status == 200 and (await out.json())["signed_out"] is True
        assert "edgemon_session=\"\"" in cookie_of(out) or "Max-Age=0" in cookie_of(out)
        replay = await c.get("/edgemon/api/v1/fleet", cookies={"edgemon_session": value})
        assert replay.status == 401
        c.session.cookie_jar.clear()
        await s.sign_in(s.read)
        assert (await c.get("/edgemon/api/v1/fleet")).status == 200
        revoke_token(s.tokens, s.read.split("_")[1])
        assert (await c.get("/edgemon/api/v1/fleet")).status == 401
        assert (await (await c.get("/edgemon/api/v1/session")).json())["signed_in"] is False

    with_stack(tmp_path, test)


def test_sign_in_refuses_bad_tokens_other_origins_and_forms(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        c = s.client
        wrong = await s.sign_in("edm_000000000000_" + "A" * 43)
        assert wrong.status == 401 and "unknown token" in (await wrong.json())["error"]
        assert "Set-Cookie" not in wrong.headers
        assert (await s.sign_in(s.admin, origin="http://evil.example")).status == 403
        assert (await s.sign_in(s.admin, origin=None)).status == 403
        form = await c.post("/edgemon/api/v1/session", data={"token": s.admin},
                            headers={"Origin": s.origin})
        assert form.status == 415
        for body in ({"token": ""}, {"token": "x" * 300}, {"token": 5}, ["x"]):
            bad = await c.post("/edgemon/api/v1/session", json=body,
                               headers={"Origin": s.origin})
            assert bad.status == 400, body
        assert (await c.get("/login", allow_redirects=False)).status == 200
        await s.sign_in(s.read)
        for target, where in (("/alerts", "/alerts"), ("//evil.example/x", "/"),
                              ("https://evil.example", "/"), ("/\\evil.example", "/")):
            r = await c.get("/login", params={"next": target}, allow_redirects=False)
            assert (r.status, r.headers["Location"]) == (303, where), target

    with_stack(tmp_path, test)


def test_sessions_expire_idle_and_old_and_the_oldest_give_way(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "t", "read")[0]
    tokens = TokenStore(path)
    tokens.load()
    clock = [1_000_000]
    store = SessionStore(tokens, idle_ms=1000, max_age_ms=5000, max_sessions=3,
                         clock_ms=lambda: clock[0])
    sid, _ = store.create(token)
    clock[0] += 900
    assert store.lookup(sid) is not None  # used: idle time starts again
    clock[0] += 900
    assert store.lookup(sid) is not None
    clock[0] += 1001
    assert store.lookup(sid) is None and len(store) == 0
    sid, _ = store.create(token)
    for _ in range(6):
        clock[0] += 800
        assert store.lookup(sid) is not None
    clock[0] += 800
    assert store.lookup(sid) is None  # 5 s after sign-in, however busy
    ids = [store.create(token)[0] for _ in range(4)]
    assert len(store) == 3 and store.lookup(ids[0]) is None and store.lookup(ids[3])
    assert store.lookup("") is None and store.lookup("x" * 500) is None


# --- fleet figures ----------------------------------------------------------------------------

def test_fleet_figures_follow_stored_batches() -> None:
    state = FleetState()
    t0 = now_ms() - 60 * SEC
    first = batch("h1", 0, host_samples(t0, 3, cpu=40, memory=55.5,
                                          disks={"/": 30, "/data": 91.25}, rx_per_s=1000))
    state.observe([first], [StoreResult("h1", "inst-1", 0, True, 0)])
    fig = state.figures("h1")
    assert fig is not None and fig.cpu is not None and fig.memory is not None
    assert (fig.cpu[1], fig.memory[1]) == (40.0, 55.5)
    assert {m: v for m, (_, v) in fig.disks.items()} == {"/": 30.0, "/data": 91.25}
    assert fig.net[("network_received_bytes_total", "eth0")].rate == pytest.approx(1000.0)
    assert fig.newest_ms == t0 + 20 * SEC
    # one more sample: the rate spans the batches; a counter reset counts from zero
    nxt = batch("h1", 1, [(t0 + 30 * SEC, RX, ("eth0",), 1_000_000 + 2000 * 10 + 40_000),
                          (t0 + 30 * SEC, TX, ("eth0",), 100)])
    state.observe([nxt], [StoreResult("h1", "inst-1", 1, True, 0)])
    assert fig.net[("network_received_bytes_total", "eth0")].rate == pytest.approx(4000.0)
    assert fig.net[("network_sent_bytes_total", "eth0")].rate == pytest.approx(10.0)
    # back-fill older than what is known changes nothing; a duplicate is not looked at
    old = batch("h1", 2, host_samples(t0 - 600 * SEC, 2, cpu=99, memory=99, disks={"/": 99},
                                      rx_per_s=1))
    state.observe([old, old], [StoreResult("h1", "inst-1", 2, True, 0),
                               StoreResult("h1", "inst-1", 2, False, 0)])
    assert (fig.cpu[1], fig.disks["/"][1]) == (40.0, 30.0)
    dup = batch("h1", 3, host_samples(t0 + 60 * SEC, 1, cpu=1, memory=1, disks={}, rx_per_s=1))
    state.observe([dup], [StoreResult("h1", "inst-1", 3, False, 0)])
    assert fig.cpu[1] == 40.0
    # a host storage forgot goes once it has been quiet for a while
    state.forget_except(set(), 3_600_000, now_ms())
    assert state.figures("h1") is fig
    state.forget_except({"h1"}, 0, now_ms() + 10**9)
    assert state.figures("h1") is fig
    state.forget_except(set(), 3_600_000, now_ms() + 2 * 3_600_000)
    assert state.figures("h1") is None


def test_the_head_a_worker_sends_gives_the_fleet_the_figures_of_the_whole_batch() -> None:
    """``BatchHead`` (what an ingest worker hands the collector) keeps of each watched metric
    only what ``FleetState`` takes (the newest value; of the CPU, the total alone, not one entry
    per core): the figures are those of the whole batch."""
    from dataclasses import replace

    from edgemon.collector.ingest.examine import BatchHead

    t0 = now_ms() - 60 * SEC
    samples = host_samples(t0, 3, cpu=40, memory=55.5, disks={"/": 30, "/data": 91.25},
                           rx_per_s=1000)
    samples += [(t0 + 20 * SEC, CPU, (str(core),), 99) for core in range(1, 8)]
    whole, cut = FleetState(), FleetState()
    item = batch("h1", 0, samples)
    head = BatchHead.of(item.batch)
    assert [len(m[5]) for m in head.metrics if m[0] == CPU.name] == [1]
    result = [StoreResult("h1", "inst-1", 0, True, 0)]
    whole.observe([item], result)
    cut.observe([replace(item, batch=head)], result)  # type: ignore[arg-type]
    a, b = whole.copy()["h1"], cut.copy()["h1"]
    # (a counter's rate within its first batch needs the sample before the last, which the head
    # does not carry: from the next batch on, the rate spans the two batches)
    assert replace(a, net={k: (c.ts, c.value) for k, c in a.net.items()}) == \
        replace(b, net={k: (c.ts, c.value) for k, c in b.net.items()})
    assert a.cpu is not None and a.cpu[1] == 40.0


def test_a_host_with_thousands_of_mounts_costs_only_a_bounded_table() -> None:
    state = FleetState()
    ts = now_ms()
    many = batch("noisy", 0, [(ts, DISK, (f"/m{i}", "d", "x"), i % 100) for i in range(1000)]
                 + [(ts, RX, (f"if{i}",), i) for i in range(1000)])
    state.observe([many], [StoreResult("noisy", "inst-1", 0, True, 0)])
    fig = state.figures("noisy")
    assert fig is not None
    assert len(fig.disks) == MAX_LABELLED and len(fig.net) == 2 * MAX_LABELLED


def test_after_the_first_snapshot_no_request_waits_for_a_refresh() -> None:
    now = now_ms()
    hosts = [HostInfo("h1", True, "i", now, now, 1)]

    def slow_hosts() -> list[HostInfo]:
        time.sleep(0.3)  # as storage.hosts() on a big, busy store
        return list(hosts)

    view = FleetView(FleetState(), slow_hosts, dict, now_ms, hosts_max_age_s=0)
    first = view.snapshot()
    assert [r["host"] for r in first.rows] == ["h1"] and first.counts["online"] == 1
    hosts.append(HostInfo("h2", False, "i", now, now, 1))
    started = time.monotonic()
    assert view.snapshot() is first and time.monotonic() - started < 0.2
    wait_until(lambda: len(view.snapshot().rows) == 2, 10, "the refresh in the background")
    assert view.snapshot().counts == {"online": 1, "stale": 0, "offline": 1}


async def _fleet(s: Stack, query: str = "") -> Any:
    r = await s.client.get(f"/edgemon/api/v1/fleet{query}",
                           headers={"Authorization": f"Bearer {s.admin}"})
    assert r.status == 200, await r.text()
    return await r.json()


def test_the_fleet_summary_sorts_filters_and_pages_on_the_server(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        now = now_ms()
        items = []
        for i, (cpu, mem) in enumerate(((10, 20), (95, 50), (50, 90), (70, 10))):
            items.append(batch(f"web-{i:02d}", 0, host_samples(
                now - 30 * SEC, 3, cpu=cpu, memory=mem, disks={"/": 10 * i}, rx_per_s=100 * i)))
        await s.store(*items)
        loop = asyncio.get_running_loop()
        for i in range(4):
            await loop.run_in_executor(None, s.ingest.record_status, f"web-{i:02d}", "inst-1",
                                       i != 3, now - 60 * SEC, now - 60 * SEC)
        old = batch("db-01", 0, host_samples(now - 3_600 * SEC, 2, cpu=5, memory=5, disks={},
                                             rx_per_s=1))
        await s.store(old)
        s.dashboard.view.hosts_max_age_s = 0
        s.dashboard.view.background = False  # each answer reflects what was just stored
        doc = await _fleet(s)
        assert doc["total"] == 5 and doc["counts"] == {"online": 3, "stale": 1, "offline": 1}
        rows = {r["host"]: r for r in doc["hosts"]}
        assert [r["host"] for r in doc["hosts"]] == ["db-01", "web-00", "web-01", "web-02",
                                                     "web-03"]
        assert rows["web-01"]["cpu_percent"] == 95 and rows["web-02"]["memory_percent"] == 90
        assert rows["web-02"]["disk_percent"] == 20 and rows["web-02"]["disk_mount"] == "/"
        assert rows["web-02"]["net_rx_bytes_per_s"] == pytest.approx(200)
        assert rows["web-00"]["backlog_samples"] == 7 and rows["web-00"]["dropped_samples"] == 3
        assert (rows["db-01"]["state"], rows["web-03"]["state"]) == ("stale", "offline")
        top = await _fleet(s, "?sort=cpu_percent&order=desc&limit=2")
        assert [r["host"] for r in top["hosts"]] == ["web-01", "web-03"]
        assert top["matched"] == 5 and top["limit"] == 2
        page2 = await _fleet(s, "?sort=cpu_percent&order=desc&limit=2&offset=2")
        assert [r["host"] for r in page2["hosts"]] == ["web-02", "web-00"]
        busy = await _fleet(s, "?min.cpu_percent=50&max.memory_percent=60&state=online,offline")
        assert [r["host"] for r in busy["hosts"]] == ["web-01", "web-03"]
        assert [r["host"] for r in (await _fleet(s, "?q=WEB-0[12]"))["hosts"]] == \
            ["web-01", "web-02"]
        assert [r["host"] for r in (await _fleet(s, "?q=db"))["hosts"]] == ["db-01"]
        assert [r["host"] for r in (await _fleet(s, "?host=web-0"))["hosts"]] == []
        assert [r["host"] for r in (await _fleet(s, "?host=web-02"))["hosts"]] == ["web-02"]
        stale = await _fleet(s, "?state=stale&sort=memory_percent")
        assert [r["host"] for r in stale["hosts"]] == ["db-01"]
        no_cpu = await _fleet(s, "?sort=clock_offset_ms&order=asc")
        assert len(no_cpu["hosts"]) == 5  # hosts without a value still listed, last
        for bad, word in (("sort=colour", "'sort'"), ("order=up", "'order'"),
                          ("limit=0", "'limit'"), ("min.host=3", "'min.host'"),
                          ("min.cpu_percent=nan", "finite"), ("state=gone", "'state'"),
                          ("colour=red", "'colour'"), ("offset=-1", "'offset'"),
                          ("limit=5&limit=6", "more than once"), ("host=a/b", "'host'")):
            r = await s.client.get(f"/edgemon/api/v1/fleet?{bad}",
                                   headers={"Authorization": f"Bearer {s.admin}"})
            assert r.status == 400 and word in (await r.json())["error"], bad

    with_stack(tmp_path, test)


def test_fleet_figures_are_loaded_from_storage_at_start(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "e.db")
    try:
        now = now_ms()
        storage.store_batches([batch("h1", 0, host_samples(now - 50 * SEC, 4, cpu=33, memory=44,
                                                           disks={"/": 12, "/b": 60},
                                                           rx_per_s=500))])
        state = FleetState()
        state.seed(storage, ["h1"], now)
        fig = state.figures("h1")
        assert fig is not None and fig.cpu is not None and fig.memory is not None
        assert (fig.cpu[1], fig.memory[1]) == (33, 44)
        assert max(v for _, v in fig.disks.values()) == 60
        assert fig.net[("network_received_bytes_total", "eth0")].rate == pytest.approx(500)
    finally:
        storage.close()


# --- charts -------------------------------------------------------------------------------------

def test_host_charts_share_one_axis_rate_counters_and_break_at_gaps(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        t0 = (now_ms() // 60_000 - 30) * 60_000
        before = host_samples(t0, 6, cpu=20, memory=30, disks={"/": 5}, rx_per_s=100)
        after = host_samples(t0 + 600 * SEC, 6, cpu=25, memory=35, disks={"/": 6}, rx_per_s=100,
                             rx_from=1e6 + 100 * 600)
        await s.store(batch("h1", 0, before), batch("h1", 1, after))
        r = await s.client.get(f"/edgemon/api/v1/hosts/h1/charts?start={t0}&end={t0 + 1200_000}"
                               "&step=10s", headers={"Authorization": f"Bearer {s.read}"})
        assert r.status == 200, await r.text()
        doc = await r.json()
        metrics = {m["name"]: m for m in doc["metrics"]}
        assert set(metrics) == {"cpu_usage_percent", "memory_usage_percent",
                                "disk_usage_percent", "network_received_bytes_total",
                                "network_sent_bytes_total", "agent_buffer_samples",
                                "agent_dropped_samples_total"}
        x = doc["x"]
        assert x == sorted(x) and doc["step_ms"] == 10_000
        mem = metrics["memory_usage_percent"]["series"][0]["values"]
        assert len(mem) == len(x)
        hole = [i for i, v in enumerate(mem) if v is None]
        assert len(hole) == 1 and x[hole[0] - 1] < t0 + 600_000 <= x[hole[0] + 1]  # the break
        assert [v for v in mem if v is not None] == [30.0] * 6 + [35.0] * 6
        rx = metrics["network_received_bytes_total"]
        assert rx["rate"] is True and rx["kind"] == "counter"
        rates = [v for v in rx["series"][0]["values"] if v is not None]
        assert rates and all(v == pytest.approx(100) for v in rates[1:])
        cpu = {json.dumps(s["labels"]) for s in metrics["cpu_usage_percent"]["series"]}
        assert cpu == {'{"cpu": "0"}', '{"cpu": "total"}'}
        assert doc["newest_sample_ms"] == t0 + 650 * SEC
        auth = {"Authorization": f"Bearer {s.read}"}
        assert (await s.client.get("/edgemon/api/v1/hosts/nope/charts", headers=auth)).status \
            == 404
        for bad in ("start=soon", "start=now&end=now-1h", "step=1ms", "start=now-900d",
                    "colour=red"):
            assert (await s.client.get(f"/edgemon/api/v1/hosts/h1/charts?{bad}",
                                       headers=auth)).status == 400, bad

    with_stack(tmp_path, test)


def test_align_leaves_non_finite_values_empty() -> None:
    from edgemon.collector.http.charts import ChartMetric

    metric = ChartMetric("m", "gauge", "")
    result = SeriesResult("h", "m", {}, "gauge", "", [(0, 1.0), (1000, float("nan")),
                                                      (2000, float("inf")), (3000, 2.0)])
    doc = align([(metric, [result], None), (ChartMetric("n", "gauge", ""), None, "too big")],
                1000)
    assert doc["x"] == [0, 1000, 2000, 3000]
    assert doc["metrics"][0]["series"][0]["values"] == [1.0, None, None, 2.0]
    assert doc["metrics"][1]["error"] == "too big"


# --- live ---------------------------------------------------------------------------------------

def test_live_events_tell_a_watching_page_about_new_batches(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        await s.sign_in(s.read)
        ts = now_ms()
        await s.store(batch("h1", 0, host_samples(ts - 5000, 1, cpu=1, memory=1, disks={},
                                                  rx_per_s=1)))
        stream = await s.client.get("/edgemon/api/v1/live?host=h1")
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        first = await _event(stream, "host")
        assert first["newest_sample_ms"] == ts - 5000
        await s.store(batch("h1", 1, host_samples(ts, 1, cpu=2, memory=2, disks={},
                                                  rx_per_s=1)))
        event = await _event(stream, "host")
        assert event == {"host": "h1", "newest_sample_ms": ts, "last_seen_ms": ts + 150}
        assert len(s.dashboard.hub.streams) == 1
        stream.close()
        await asyncio.wait_for(_until(lambda: not s.dashboard.hub.streams, s), 10)
        bad = await s.client.get("/edgemon/api/v1/live?host=a/b")
        assert bad.status == 400
        s.dashboard.hub.max_streams = 0
        assert (await s.client.get("/edgemon/api/v1/live")).status == 503

    with_stack(tmp_path, test)


async def _event(response: Any, kind: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        current = None
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                current = line[7:]
            elif line.startswith("data: ") and current == kind:
                return json.loads(line[6:])  # type: ignore[no-any-return]
    return await asyncio.wait_for(read(), 10)


async def _until(check: Callable[[], bool], s: Stack) -> None:
    while not check():
        await s.client.get("/healthz")  # lets the server notice the closed stream
        await asyncio.sleep(0.05)


def test_a_stream_keeps_only_the_newest_notice_of_each_kind() -> None:
    async def main() -> None:
        stream = Stream("h1")
        for i in range(10_000):  # a reader that never reads: memory stays flat
            stream.offer("host", {"n": i})
            stream.offer("fleet", {"n": -i})
        assert stream.take() == [("host", {"n": 9999}), ("fleet", {"n": -9999})]
        assert stream.take() == [] and not stream.wake.is_set()
        hub = LiveHub()
        hub.fleet_changed({"counts": 1})
        hub.threadsafe_host_stored("nobody-watches", 1, 2)  # no loop, no watcher: nothing

    asyncio.run(main())


def test_the_openapi_document_describes_the_dashboard_routes(tmp_path: Path) -> None:
    async def test(s: Stack) -> None:
        r = await s.client.get("/edgemon/api/v1/openapi.json",
                               headers={"Authorization": f"Bearer {s.read}"})
        paths = (await r.json())["paths"]
        for path in ("/edgemon/api/v1/fleet", "/edgemon/api/v1/hosts/{host}/charts",
                     "/edgemon/api/v1/live", "/edgemon/api/v1/session"):
            assert path in paths, path
        assert set(paths["/edgemon/api/v1/session"]) == {"get", "post", "delete"}

    with_stack(tmp_path, test)


def test_without_auth_the_pages_open_and_sign_in_is_not_needed(tmp_path: Path) -> None:
    async def main() -> None:
        storage = SQLiteStorage(tmp_path / "e.db")
        dashboard = Dashboard(storage, executor=None, tokens=None)
        app = create_app(storage, middlewares=security_middlewares(HttpConfig(auth="none"), None))
        dashboard.setup(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            assert (await client.get("/", allow_redirects=False)).status == 200
            login = await client.get("/login", allow_redirects=False)
            assert (login.status, login.headers["Location"]) == (303, "/")
            me = await (await client.get("/edgemon/api/v1/session")).json()
            assert (me["auth"], me["role"]) == ("none", "admin")
        finally:
            await client.close()
            storage.close()

    asyncio.run(main())
