"""The PromQL engine on a real SQLite store: limits, errors, tiers, label mapping, exact values.

(Agreement with Prometheus itself: tests/test_promql_conformance.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemon.collector.promql.engine import Engine, QueryLimits
from edgemon.collector.promql.errors import BadData, ExecutionError, QueryTimeout, Unsupported
from edgemon.collector.promql.labels import series_labels
from edgemon.collector.promql.model import InstantVector
from edgemon.collector.promql.source import SampleSource, tier_for_step
from edgemon.collector.storage import open_storage
from edgemon.collector.storage.base import IngestItem, Storage
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch
from tests.support import promdata

HOUR = 3_600_000
END = 1_780_012_800_000  # a day boundary
START = END - 2 * HOUR

BYTES = MetricDef("net_bytes_total", COUNTER, "bytes", 0, ("iface",))
ODD = MetricDef("odd_labels", GAUGE, "", 0, ("host", "__secret", "zone"))
BOOT = MetricDef("system_boot_time_seconds", GAUGE, "seconds")


def _store_linear(storage: Storage) -> None:
    """``net_bytes_total{host="lin"}``: +10 per second sampled every 10 s exactly, with one
    reset; ``odd_labels`` with label names Prometheus reserves."""
    builder = BatchBuilder()
    value = 0
    for i in range(360):
        t = START + i * 10_000
        value = 0 if i == 200 else value + 100
        builder.add(t, BYTES, ("eth0",), value)
        builder.add(t, ODD, ("agent-host", "s", ""), i)
        builder.add(t, BOOT, (), START // 1000 - 86_400)
    payload = encode(builder.build(host="lin", instance="i", seq=0, sent_ms=END))
    storage.store_batches([IngestItem(validate_batch(decode(payload)), payload, END, False)])


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    path: Path = tmp_path_factory.mktemp("promql") / "edgemon.db"
    store = open_storage(path)
    promdata.fill(store, START, END, hosts=promdata.HOSTS[:3])
    _store_linear(store)
    return store


@pytest.fixture
def engine(storage: Storage) -> Engine:
    return Engine(storage)


def _vector(result: object) -> dict[tuple[tuple[str, str], ...], np.ndarray]:
    value = result.value  # type: ignore[attr-defined]
    assert isinstance(value, InstantVector)
    return {labels: np.where(value.present[i], value.values[i], np.nan)
            for i, labels in enumerate(value.labels)}


def test_rate_and_increase_of_a_known_counter_are_exact(engine: Engine) -> None:
    t = START + 150 * 10_000  # samples exactly at the window's ends: no extrapolation
    got = _vector(engine.instant_query('rate(net_bytes_total{host="lin"}[1m])', t))
    assert next(iter(got.values()))[0] == pytest.approx(10.0, rel=1e-12)
    over_reset = _vector(engine.instant_query('increase(net_bytes_total[2m])',
                                              START + 205 * 10_000))
    # 12 intervals of +100, but the one ending in the reset counts the new value (0)
    assert next(iter(over_reset.values()))[0] == pytest.approx(1100.0, rel=1e-12)
    resets = _vector(engine.instant_query("resets(net_bytes_total[1h])", START + 3_590_000))
    assert next(iter(resets.values()))[0] == 1


def test_reserved_agent_labels_are_exported_not_overwritten(engine: Engine) -> None:
    got = _vector(engine.instant_query("odd_labels", START + 3_590_000))
    (labels,) = got
    assert dict(labels) == {"__name__": "odd_labels", "host": "lin",
                            "exported_host": "agent-host", "exported_secret": "s"}
    assert series_labels("m", "h", {"__name__": "x"}) == (
        ("__name__", "m"), ("exported_name", "x"), ("host", "h"))


@pytest.mark.parametrize(("query", "construct"), [
    ("rate(load1[5m:1m])", "subquery"),
    ("max_over_time(rate(net_bytes_total[1m])[10m:1m])", "subquery"),
    ("histogram_quantile(0.9, load1)", "function histogram_quantile()"),
    ("holt_winters(load1[10m], 0.5, 0.5)", "function holt_winters()"),
    ("limitk(2, load1)", "aggregation limitk()"),
])
def test_unsupported_constructs_are_named(engine: Engine, query: str, construct: str) -> None:
    with pytest.raises(Unsupported, match=construct.replace("(", r"\(").replace(")", r"\)")):
        engine.instant_query(query, END)


@pytest.mark.parametrize(("query", "message"), [
    ("", "no expression found"),
    ("load1{", "parse error"),
    ('{host=~".*"}', "at least one non-empty matcher"),
    ("sum(load1[5m])", "parse error"),
    ('label_replace(load1, "1bad", "x", "host", ".*")', "invalid destination label"),
])
def test_bad_expressions_are_bad_data(engine: Engine, query: str, message: str) -> None:
    with pytest.raises((BadData, ExecutionError), match=message):
        engine.instant_query(query, END)


def test_range_query_limits_resolution_and_types(engine: Engine) -> None:
    with pytest.raises(BadData, match="exceeded maximum resolution of 11,000 points"):
        engine.range_query("load1", START, START + 11_000 * 1000, 1000)
    engine.range_query("load1", START, START + 10_999 * 1000, 1000)  # just inside
    with pytest.raises(BadData, match='invalid expression type "range vector"'):
        engine.range_query("load1[5m]", START, END, 60_000)
    with pytest.raises(BadData, match="zero or negative"):
        engine.range_query("load1", START, END, 0)


def test_series_and_sample_limits(storage: Storage) -> None:
    few = Engine(storage, QueryLimits(max_series=2))
    with pytest.raises(ExecutionError, match="more than 2 series"):
        few.instant_query("cpu_usage_percent", END)
    few.instant_query('load1{host="web-01"}', END)
    small = Engine(storage, QueryLimits(max_samples=500))
    with pytest.raises(ExecutionError, match="too many samples"):
        small.range_query("avg_over_time(load1[1h])", START, END, 60_000)


def test_deadline_is_enforced(storage: Storage) -> None:
    hurried = Engine(storage, QueryLimits(timeout_s=1e-9))
    with pytest.raises(QueryTimeout, match="timed out"):
        hurried.range_query("sum(rate(network_received_bytes_total[5m]))", START, END, 15_000)


def test_timeout_parameter_only_lowers_the_limit(engine: Engine) -> None:
    with pytest.raises(QueryTimeout):
        engine.instant_query("load1", END, timeout_s=1e-9)
    engine.instant_query("load1", END, timeout_s=10_000)  # capped at the limit, not refused


def test_the_step_chooses_the_tier(engine: Engine) -> None:
    assert [tier_for_step(s) for s in (1000, 14 * 60_000, 15 * 60_000, 6 * HOUR)] == [
        "raw", "raw", "1m", "1h"]
    fine = engine.range_query('timestamp(load1{host="web-01"})', START, END, 60_000)
    coarse = engine.range_query('timestamp(load1{host="web-01"})', START, END, 30 * 60_000)
    fine_ts = next(iter(_vector(fine).values()))
    coarse_ts = next(iter(_vector(coarse).values()))
    # raw samples carry the agent's own times; 1-minute buckets end at a minute's last ms
    assert not np.all(np.round(fine_ts[~np.isnan(fine_ts)] * 1000) % 60_000 == 59_999)
    assert np.all(np.round(coarse_ts[~np.isnan(coarse_ts)] * 1000) % 60_000 == 59_999)


def test_catalogue_is_cached_for_its_ttl(storage: Storage, tmp_path: Path) -> None:
    store = open_storage(tmp_path / "one.db")
    clock = [0.0]
    engine = Engine(store, source=SampleSource(store, ttl_s=5, monotonic=lambda: clock[0]))
    assert engine.label_values("__name__", []) == []
    promdata.fill(store, START, START + 60_000, hosts=promdata.HOSTS[:1])
    assert engine.label_values("__name__", []) == []  # cached
    clock[0] = 6.0
    assert "load1" in engine.label_values("__name__", [])


def test_node_exporter_aliases(engine: Engine) -> None:
    t = END - 60_000
    native = _vector(engine.instant_query('load1{host="web-01"}', t))
    alias = _vector(engine.instant_query('node_load1{instance="web-01", job="node"}', t))
    assert list(alias) == [(("__name__", "node_load1"), ("host", "web-01"),
                            ("instance", "web-01"), ("job", "node"))]
    assert next(iter(alias.values()))[0] == next(iter(native.values()))[0]
    rx = _vector(engine.instant_query('rate(node_network_receive_bytes_total{device="eth0"}'
                                      '[5m])', t))
    assert sorted(dict(k)["instance"] for k in rx) == ["db-01", "web-01", "web-02"]
    fs = _vector(engine.instant_query('node_filesystem_avail_bytes{mountpoint="/"}', t))
    assert len(fs) == 3
    info = _vector(engine.instant_query("node_uname_info", START + 3_590_000))
    assert [(dict(k)["nodename"], v[0]) for k, v in info.items()] == [("lin", 1.0)]
    assert engine.metadata("node_uname_info")["node_uname_info"][0]["type"] == "gauge"
    assert engine.metadata("node_load1")["node_load1"][0]["type"] == "gauge"
    assert "node_load1" in engine.label_values("__name__", [])
    # aliases are extra names: the stored series are selected once
    assert len(_vector(engine.instant_query('{__name__=~"load1", host="web-01"}', t))) == 1


def test_series_labels_and_metadata(engine: Engine) -> None:
    found = engine.find_series(['load1{host=~"web-.*"}', "memory_total_bytes{host='db-01'}"],
                               START, END)
    assert [dict(e.labels) for e in found] == [
        {"__name__": "load1", "host": "web-01"}, {"__name__": "load1", "host": "web-02"},
        {"__name__": "memory_total_bytes", "host": "db-01"}]
    assert engine.label_names(['cpu_usage_percent']) == ["__name__", "cpu", "host"]
    assert engine.label_values("host", ["load1"]) == ["db-01", "web-01", "web-02"]
    assert engine.label_values("host", [], START, START + 1000) == ["db-01", "lin", "web-01",
                                                                    "web-02"]
    with pytest.raises(BadData, match="invalid label name"):
        engine.label_values("1x", [])
    meta = engine.metadata()
    assert meta["net_bytes_total"] == [{"type": "counter", "help": "edgemon agent counter in "
                                        "bytes", "unit": "bytes"}]
    assert list(engine.metadata(limit=2)) == sorted(meta)[:2]


def test_node_exporter_aliases_of_the_newer_families() -> None:
    from edgemon.collector.promql.aliases import alias_labels, aliases_of

    [cpu] = aliases_of("cpu_seconds_total")  # rate(node_cpu_seconds_total{mode="idle"}[5m])
    assert cpu.name == "node_cpu_seconds_total" and cpu.constant is None
    assert alias_labels(cpu, "web-01", {"cpu": "0", "mode": "idle"}) == {
        "cpu": "0", "mode": "idle", "instance": "web-01", "job": "node"}
    assert [a.name for a in aliases_of("kernel_context_switches_total")] == [
        "node_context_switches_total"]
    assert [a.name for a in aliases_of("file_descriptors_allocated")] == ["node_filefd_allocated"]
