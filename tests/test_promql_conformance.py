"""PromQL conformance against a real Prometheus holding the same samples.

A deterministic fleet (tests/support/promdata.py) is stored by edgemon's storage, exported as
OpenMetrics, back-filled into a Prometheus TSDB with ``promtool tsdb create-blocks-from
openmetrics``, and served by Debian's ``prometheus`` while a real collector serves the stored
data. Every expression of tests/promql_battery.txt goes to both over HTTP, as instant queries
at three times and as range queries with three steps; answers must be equal: same status, same
series, same timestamps, values within 1e-9 relative (NaN equals NaN), and for instant
``sort``/``sort_desc``/``topk``/``bottomk`` the same order.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgemon.collector.promql.openmetrics import write_openmetrics
from edgemon.collector.storage import open_storage
from tests.support import promdata
from tests.support.broker import Broker
from tests.support.processes import Collector
from tests.support.prometheus import Prometheus, available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="Debian's prometheus package missing "
                                                         "(packaging/dev-env.sh installs it)")]

BATTERY = Path(__file__).with_name("promql_battery.txt")
MINUTE = 60_000
HOUR = 60 * MINUTE
RELATIVE = 1e-9
ORDERED = ("sort(", "sort_desc(", "topk(", "bottomk(")


def battery() -> list[tuple[str, bool]]:
    """(expression, whether it must be refused): expressions after a "# errors" comment must
    be errors on both sides."""
    out, refused = [], False
    for line in (raw.strip() for raw in BATTERY.read_text().splitlines()):
        if line.startswith("# errors"):
            refused = True
        elif line and not line.startswith("#"):
            out.append((line, refused))
    return out


def get(base: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())  # type: ignore[no-any-return]


class Pair:
    def __init__(self, edgemon: str, prometheus: str, start_ms: int, end_ms: int) -> None:
        self.edgemon, self.prometheus = edgemon, prometheus
        self.start, self.end = start_ms, end_ms

    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        s, e = self.start, self.end
        instants = [("query", {"time": t / 1000})
                    for t in (e - 1_234_567, e - 37 * MINUTE + 5, s + 20 * MINUTE)]
        ranges = [("query_range", {"start": a / 1000, "end": b / 1000, "step": step / 1000})
                  for a, b, step in ((s, e, MINUTE), (s + 123_456, e - 5_000, 17_000),
                                     (s - 10 * MINUTE, e + 10 * MINUTE, 5 * MINUTE))]
        return instants + ranges


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    work = tmp_path_factory.mktemp("conformance")
    broker = Broker(work / "broker").start()
    collector = Collector(work / "collector", broker, extra='auth = "none"')
    end = int(time.time() * 1000) // 1000 * 1000
    start = end - 3 * HOUR
    store = open_storage(collector.db)
    promdata.fill(store, start, end)
    exported = work / "fleet.om"
    with exported.open("w") as out:
        written = write_openmetrics(store, out, start - HOUR, end + HOUR)
    store.close()
    assert written > 50_000
    data = Prometheus.backfill(exported, work / "tsdb")
    prometheus = Prometheus(work / "prometheus", data_dir=data).start()
    collector.start()
    try:
        yield Pair(f"http://127.0.0.1:{collector.http_port}", prometheus.url, start, end)
    finally:
        collector.terminate()
        prometheus.stop()
        broker.kill()


def _close(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
        return (math.isnan(x) and math.isnan(y)) or x == y
    return abs(x - y) <= RELATIVE * max(abs(x), abs(y))


def difference(mine: dict[str, Any], theirs: dict[str, Any], ordered: bool) -> str | None:
    """What differs between two API answers (None: equal)."""
    if mine["status"] != theirs["status"]:
        return f"status {mine['status']} vs {theirs['status']}: {mine.get('error')} | " \
               f"{theirs.get('error')}"
    if mine["status"] == "error":
        return None
    a, b = mine["data"], theirs["data"]
    if a["resultType"] != b["resultType"]:
        return f"result type {a['resultType']} vs {b['resultType']}"
    if a["resultType"] in ("scalar", "string"):
        ok = a["result"][0] == b["result"][0] and _close(a["result"][1], b["result"][1])
        return None if ok else f"{a['result']} vs {b['result']}"
    key = lambda s: json.dumps(s["metric"], sort_keys=True)  # noqa: E731
    ours, prom = {key(s): s for s in a["result"]}, {key(s): s for s in b["result"]}
    if set(ours) != set(prom):
        return (f"series only in edgemon: {sorted(set(ours) - set(prom))[:3]}, only in "
                f"Prometheus: {sorted(set(prom) - set(ours))[:3]}")
    if ordered and [key(s) for s in a["result"]] != [key(s) for s in b["result"]]:
        return "order differs"
    for k, s in ours.items():
        pa = s.get("values") or [s["value"]]
        pb = prom[k].get("values") or [prom[k]["value"]]
        if [p[0] for p in pa] != [p[0] for p in pb]:
            return f"{k}: timestamps differ ({len(pa)} vs {len(pb)} points)"
        for x, y in zip(pa, pb, strict=True):
            if not _close(x[1], y[1]):
                return f"{k} at {x[0]}: {x[1]} vs {y[1]}"
    return None


def test_battery_is_large_and_unique() -> None:
    exprs = [expr for expr, _ in battery()]
    assert len(exprs) >= 60
    assert len(set(exprs)) == len(exprs)


def test_every_battery_expression_matches_prometheus(pair: Pair) -> None:
    jobs = [(expr, refused, path, params) for expr, refused in battery()
            for path, params in pair.requests()]

    def compare(job: tuple[str, bool, str, dict[str, Any]]) -> str | None:
        expr, refused, path, params = job
        params = {**params, "query": expr}
        ours = get(pair.edgemon, path, params)
        found = difference(ours, get(pair.prometheus, path, params),
                           ordered=path == "query" and expr.startswith(ORDERED))
        if found is None and refused and ours["status"] != "error":
            found = "expected an error on both sides"
        return None if found is None else f"{expr!r} {path} {params}: {found}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(compare, jobs) if f is not None]
    assert not failures, f"{len(failures)} of {len(jobs)} differ:\n" + "\n".join(failures[:20])
