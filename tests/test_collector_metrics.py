"""The collector's own /metrics: what a Prometheus operator expects, checked by the real
``promtool check metrics`` and scraped by a real Prometheus; storage sizes per tier that follow
compaction; labelled counters present (0) from the start; no storage read per scrape."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgemon.collector.http.metrics import (
    REJECT_REASONS,
    SERIES_REJECT_REASONS,
    STORAGE_PARTS,
    CollectorMetrics,
)
from edgemon.collector.ingest.pipeline import IngestStats
from edgemon.collector.ingest.rejects import Rejects
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.maintenance import MaintenanceRunner
from tests.support import promdata
from tests.support.broker import Broker
from tests.support.processes import Collector
from tests.support.prometheus import PROMTOOL, Prometheus, available
from tests.support.storages import Stores
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
HOUR, DAY = 3_600_000, 86_400_000
needs_prometheus = pytest.mark.skipif(not available(), reason="Debian's prometheus package "
                                      "missing (packaging/dev-env.sh installs it)")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}, parsed by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)


# --- unit: the families ------------------------------------------------------------------------

def test_every_literal_reject_reason_of_ingest_is_exported_from_the_start() -> None:
    """A reason added to protocol/ or collector/ingest/ without listing it in REJECT_REASONS
    would appear only after its first reject: rate() alerts written for it would miss it."""
    found: set[str] = set()
    for folder in (ROOT / "protocol", ROOT / "collector" / "ingest"):
        for path in folder.rglob("*.py"):
            text = path.read_text()
            found |= set(re.findall(r'reason="([a-z_]+)"', text))
            found |= set(re.findall(r'^    reason = "([a-z_]+)"', text, re.M))
            found |= set(re.findall(r'record\("([a-z_]+)"', text))
            found |= set(re.findall(r'return "([a-z_]+_timestamp)"', text))
            found |= set(re.findall(r'^UNKNOWN_CATALOGUE: Final = "([a-z_]+)"', text, re.M))
    found -= {"too_many_"}  # a prefix: "too_many_" + what overflowed, exported when it happens
    assert found - set(REJECT_REASONS) == set()
    assert {"rate_limited", "storage_error", "host_mismatch", "future_timestamp"} <= found
    series: set[str] = set()
    for path in (ROOT / "collector" / "ingest").rglob("*.py"):
        text = path.read_text()
        series |= set(re.findall(r'Refusal\("([a-z_]+)"', text))
        series |= set(re.findall(r'= "((?:new_)?series_limit)"', text))
        series |= set(re.findall(r'return "((?:negative|value)_[a-z_]+)"', text))
    assert series and series - set(SERIES_REJECT_REASONS) == set()


def test_fresh_collector_metrics_pass_promtool_and_have_zeroed_counters(tmp_path: Path) -> None:
    stats, rejects = IngestStats(), Rejects()
    metrics = CollectorMetrics()
    metrics.attach(stats=stats, rejects=rejects)
    text = metrics.text()
    check = promtool_check(text)
    assert check.returncode == 0 and check.stdout + check.stderr == "", check
    got = samples(text)
    for reason in REJECT_REASONS:
        assert got[("edgemon_collector_rejects_total", (("reason", reason),))] == 0
    for reason in SERIES_REJECT_REASONS:
        assert got[("edgemon_collector_series_rejects_total", (("reason", reason),))] == 0
    info = [k for k in got if k[0] == "edgemon_build_info"]
    assert len(info) == 1 and got[info[0]] == 1
    labels = dict(info[0][1])
    assert set(labels) == {"version", "revision", "python"} and labels["python"].startswith("3.")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):
        assert got[(name, ())] > 0, name
    # every family has HELP and TYPE
    for family in text_string_to_metric_families(text):
        assert f"# HELP {family.name}" in text or f"# HELP {family.name}_total" in text
    # a counter moves, and a reason not known in advance is added beside the zeroed ones
    rejects.record("host_mismatch", "h1")
    rejects.record("too_many_labels", "h1")
    got = samples(metrics.text())
    assert got[("edgemon_collector_rejects_total", (("reason", "host_mismatch"),))] == 1
    assert got[("edgemon_collector_rejects_total", (("reason", "too_many_labels"),))] == 1
    assert got[("edgemon_collector_host_rejects_total",
                (("host", "h1"), ("reason", "host_mismatch")))] == 1


def test_register_hook_adds_a_collector() -> None:
    from prometheus_client.core import GaugeMetricFamily

    class Queue:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            family = GaugeMetricFamily("edgemon_forward_queue_depth", "Batches waiting",
                                       labels=["target"])
            family.add_metric(["vm"], 7)
            yield family

    metrics = CollectorMetrics(process=False)
    queue = Queue()
    metrics.register(queue)  # type: ignore[arg-type]
    assert samples(metrics.text())[("edgemon_forward_queue_depth", (("target", "vm"),))] == 7
    metrics.unregister(queue)  # type: ignore[arg-type]
    assert "edgemon_forward_queue_depth" not in metrics.text()


def test_storage_bytes_follow_compaction_and_a_scrape_never_reads_the_storage(
        stores: Stores) -> None:
    """On SQLite and on PostgreSQL (the same bytes by part; the disk as each engine sees it)."""
    store = open_storage(stores.location)
    end = 1_700_000_000_000 - 1_700_000_000_000 % DAY + 2 * DAY
    promdata.fill(store, end - 2 * HOUR, end, hosts=promdata.HOSTS[:2])
    runner = MaintenanceRunner(store, clock_ms=lambda: end, sizes_interval=0,
                               backlog_interval=0)
    runner.refresh_gauges(force=True)
    metrics = CollectorMetrics(process=False)
    metrics.attach(maintenance=runner)
    before = samples(metrics.text())
    part = {p: before.get(("edgemon_storage_bytes", (("part", p),))) for p in STORAGE_PARTS}
    assert set(part) == set(STORAGE_PARTS) and None not in part.values()
    # the batches are as received: pending; nothing compacted yet
    assert part["pending"] > 0 and part["raw"] == part["1m"] == part["1h"] == 0
    assert before[("edgemon_storage_pending_batches", ())] > 0
    assert before[("edgemon_storage_compaction_lag_seconds", ())] > 0
    assert before[("edgemon_storage_disk_bytes", ())] >= part["pending"]
    store.compact_all(end + DAY)  # every window closed: merged and rolled up
    runner.clock_ms = lambda: end + DAY
    runner.refresh_gauges(force=True)
    after = samples(metrics.text())
    part = {p: after[("edgemon_storage_bytes", (("part", p),))] for p in STORAGE_PARTS}
    assert part["pending"] == 0 and part["raw"] > 0 and part["1m"] > 0 and part["1h"] > 0
    assert after[("edgemon_storage_pending_batches", ())] == 0
    assert after[("edgemon_storage_compaction_lag_seconds", ())] == 0
    # the figures are the maintenance thread's: a scrape with the storage closed still answers
    store.close()
    assert samples(metrics.text())[("edgemon_storage_bytes", (("part", "raw"),))] == part["raw"]
    assert promtool_check(metrics.text()).returncode == 0


# --- real processes ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    work = tmp_path_factory.mktemp("metrics")
    broker = Broker(work / "broker").start()
    collector = Collector(work / "collector", broker, extra='auth = "none"')
    end = int(time.time() * 1000)
    store = open_storage(collector.db)
    promdata.fill(store, end - HOUR, end, hosts=promdata.HOSTS[:2])
    store.close()
    collector.start()
    try:
        yield collector
    finally:
        collector.terminate()
        broker.kill()


@pytest.mark.slow
@needs_prometheus
def test_live_collector_metrics_pass_promtool(collector: Collector) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(collector.get("/metrics", raw=True).decode())

    # the maintenance thread's first round reads the sizes
    wait_until(lambda: ("edgemon_storage_bytes", (("part", "raw"),)) in scrape(), 30,
               "storage sizes in /metrics")
    text = collector.get("/metrics", raw=True).decode()
    check = promtool_check(text)
    assert check.returncode == 0 and check.stdout + check.stderr == "", check
    got = samples(text)
    assert got[("edgemon_collector_mqtt_connected", ())] == 1
    assert got[("edgemon_alert_notification_failures_total", (("receiver", "mqtt"),))] == 0
    # read in a thread at most every 10 s: there from the scrape after the first read
    wait_until(lambda: scrape().get(("edgemon_alert_outbox_pending", (("receiver", "mqtt"),)))
               == 0, 30, "outbox depth in /metrics")
    assert got[("process_open_fds", ())] > 0


@pytest.mark.slow
@needs_prometheus
def test_real_prometheus_scrapes_metrics_and_rate_works_from_the_start(
        collector: Collector, tmp_path: Path) -> None:
    target = f"127.0.0.1:{collector.http_port}"
    config = f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: edgemon
    static_configs: [{{targets: ['{target}']}}]
"""
    with Prometheus(tmp_path / "prometheus", config=config) as prom:
        def result(query: str) -> list[dict[str, object]]:
            return prom.api("query", query=query)["data"]["result"]  # type: ignore[no-any-return]

        wait_until(lambda: result('up{job="edgemon"} == 1'), 60, "edgemon scraped, up == 1")
        # rate() over every reject reason has a value (0) as soon as two scrapes exist
        wait_until(lambda: len(result("rate(edgemon_collector_rejects_total[5s])"))
                   >= len(REJECT_REASONS), 60, "rate() of every reject reason")
        assert all(float(s["value"][1]) == 0  # type: ignore[index]
                   for s in result("rate(edgemon_collector_rejects_total[5s])"))
        info = result("edgemon_build_info")
        assert len(info) == 1 and set(info[0]["metric"]) >= {  # type: ignore[call-overload]
            "version", "revision", "python"}
        assert result("process_cpu_seconds_total") and result("process_resident_memory_bytes")
        parts = {s["metric"]["part"] for s in result("edgemon_storage_bytes")}  # type: ignore
        assert parts == set(STORAGE_PARTS)
        targets = prom.api("targets")["data"]["activeTargets"]
        assert all(t["health"] == "up" and t["lastError"] == "" for t in targets), targets
