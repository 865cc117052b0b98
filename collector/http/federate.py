"""``GET /federate?match[]=<selector>``: the latest sample of every matching series (within the
5-minute lookback), in the Prometheus text format 0.0.4 with timestamps, so an existing
Prometheus can scrape the fleet's current values from one collector:

    scrape_configs:
      - job_name: edgemon
        metrics_path: /federate
        params: {"match[]": ['{__name__=~".+"}']}
        static_configs: [{targets: ["collector:9400"]}]

Like Prometheus: families sorted by name, each ``# TYPE <name> untyped``; a bad selector is a
400 with the parser's message in plain text; no ``match[]``, no series.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from edgemon.collector.http.api import EXECUTOR_KEY
from edgemon.collector.promql.engine import Engine, parse_selector
from edgemon.collector.promql.errors import PromQLError
from edgemon.collector.promql.labels import METRIC_NAME, Labels
from edgemon.collector.promql.numbers import format_sample
from edgemon.collector.promql.source import CatalogueEntry

__all__ = ["federate_handler", "federate_text"]

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def federate_text(engine: Engine, selectors: list[str], now_ms: int) -> str:
    """The exposition of the latest samples of ``selectors``' series at ``now_ms``."""
    lookback = engine.limits.lookback_ms
    found: dict[Labels, CatalogueEntry] = {}
    for text in selectors:
        for group in parse_selector(text):
            for e in engine.source.find(group, now_ms - lookback, now_ms):
                found[e.labels] = e
    entries = [found[k] for k in sorted(found, key=_family_order)]
    series = engine.source.load(entries, now_ms - lookback, now_ms, "raw",
                                engine.limits.max_samples)
    latest: dict[Labels, tuple[float, int]] = {}
    for i, labels in enumerate(series.labels):
        hi = int(series.offsets[i + 1])
        if hi > int(series.offsets[i]):
            latest[labels] = (float(series.values[hi - 1]), int(series.ts[hi - 1]))
    lines: list[str] = []
    family = None
    for labels in sorted(latest, key=_family_order):
        name = dict(labels).get(METRIC_NAME, "")
        if name != family:
            lines.append(f"# TYPE {name} untyped\n")
            family = name
        value, ts = latest[labels]
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels if k != METRIC_NAME)
        lines.append(f"{name}{{{inner}}} {format_sample(value)} {ts}\n")
    return "".join(lines)


def _family_order(labels: Labels) -> tuple[str, Labels]:
    return dict(labels).get(METRIC_NAME, ""), labels


def federate_handler(engine: Engine, clock_ms: Callable[[], int]
                     ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        selectors = request.query.getall("match[]", [])
        executor = request.app[EXECUTOR_KEY]
        try:
            text = await asyncio.get_running_loop().run_in_executor(
                executor, federate_text, engine, selectors, clock_ms())  # type: ignore
        except PromQLError as exc:
            return web.Response(text=f"{exc}\n", status=exc.status, content_type="text/plain")
        return web.Response(text=text, headers={"Content-Type": TEXT_FORMAT})

    return handler
