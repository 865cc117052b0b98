"""Remote-write 1.0 to real receivers (Debian's victoria-metrics and prometheus on loopback): every
sample sent is found there with the same value and millisecond timestamp; a receiver that is
down is retried, one that refuses for good (4xx) is skipped and counted; Prometheus refuses
samples older than its head (no out-of-order window by default) while VictoriaMetrics takes
back-filled history."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest

from edgemon.collector.config import ForwardConfig
from edgemon.collector.forward.client import Outcome, RemoteWriteClient
from edgemon.collector.forward.remote_write import decode, encode, series_labels
from edgemon.common.clock import now_ms
from tests.support.tsdb import PROMETHEUS, VICTORIA, Prometheus, Tsdb, VictoriaMetrics

pytestmark = pytest.mark.slow

Series = list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]


def fleet(start_ms: int, hosts: int = 3, points: int = 50, step_ms: int = 1000,
          awkward: bool = False) -> Series:
    """Values as edgemon stores them (decimal-scaled: percentages with 3 decimals, byte
    counters up to 2^53); ``awkward``: also tiny, huge and negative floats with 17 digits."""
    rng = random.Random(7)
    out: Series = []
    for h in range(hosts):
        for name, labels in (("cpu_usage_percent", {"cpu": "total"}),
                             ("disk_usage_percent", {"mount": "/", "device": "sda1"})):
            choices = [lambda: round(rng.uniform(0, 100), 3), lambda: 0.0, lambda: 100.0,
                       lambda: float(rng.randrange(2 ** 40))]
            if awkward:
                choices += [lambda: rng.uniform(-1e-9, 1e-9), lambda: 1e300,
                            lambda: -42.0, lambda: 0.1 + 0.2]
            samples = [(start_ms + i * step_ms + h, rng.choice(choices)())
                       for i in range(points)]
            out.append((series_labels(name, f"host-{h}", labels, {"fleet": "test"}), samples))
    return out


async def send(url: str, series: Series) -> tuple[Outcome, RemoteWriteClient]:
    async with aiohttp.ClientSession() as session:
        client = RemoteWriteClient(ForwardConfig(url=url, name="t"), session)
        return await client.post(encode(series)), client


def expected(series: Series) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    return {tuple(labels): sorted(samples) for labels, samples in series}


def test_encoding_round_trip() -> None:
    series = fleet(1_700_000_000_000, hosts=2, points=5)
    assert decode(encode(series)) == [(list(lb), list(s)) for lb, s in series]
    labels = series_labels("m", "h", {"zone": "a", "host": "spoofed"}, {"zone": "ext", "dc": "1"})
    assert labels == [("__name__", "m"), ("dc", "1"), ("host", "h"), ("zone", "a")]


@pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")
def test_victoria_metrics_has_every_sample_exactly(tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path / "vm").start()
    try:
        recent = fleet(now_ms() // 1000 * 1000 - 120_000)
        old = fleet(now_ms() - 20 * 86_400_000, hosts=1)  # back-filled history: 20 days ago
        for batch in (recent, old):
            outcome, _ = asyncio.run(send(vm.write_url, batch))
            assert outcome is Outcome.CONFIRMED
        found = vm.export('{fleet="test"}')
        want = expected(recent)
        for key, samples in expected(old).items():
            want[key] = sorted(want.get(key, []) + samples)
        assert found == want
    finally:
        vm.terminate()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing")
def test_prometheus_has_every_recent_sample_and_refuses_old_ones(tmp_path: Path) -> None:
    prom = Prometheus(tmp_path / "prom").start()
    try:
        start = now_ms() // 1000 * 1000 - 60_000
        recent = fleet(start, points=40, awkward=True)  # float64 kept bit for bit
        outcome, _ = asyncio.run(send(prom.write_url, recent))
        assert outcome is Outcome.CONFIRMED
        end = start + 40 * 1000 + 10
        found = {}
        for name in ("cpu_usage_percent", "disk_usage_percent"):
            found.update(prom.samples(f'{name}{{fleet="test"}}', start, end))
        assert found == expected(recent)
        # older than the head and no out-of-order window: refused for good (400), counted
        outcome, client = asyncio.run(send(prom.write_url, fleet(start - 7 * 86_400_000, 1)))
        assert outcome is Outcome.REJECTED
        assert client.failures == {"400": 1} and "out of bounds" in client.last_error
    finally:
        prom.terminate()


@pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")
def test_receiver_down_is_retried_not_skipped(tmp_path: Path) -> None:
    vm: Tsdb = VictoriaMetrics(tmp_path / "vm")
    outcome, client = asyncio.run(send(vm.write_url, fleet(now_ms() - 60_000, 1, 3)))
    assert outcome is Outcome.RETRY and client.failures == {"network": 1}
    vm.start()
    try:
        outcome, _ = asyncio.run(send(vm.write_url + "/nonexistent", fleet(now_ms(), 1, 3)))
        assert outcome in (Outcome.REJECTED, Outcome.RETRY)
    finally:
        vm.terminate()


def test_forward_tables_are_validated(tmp_path: Path) -> None:
    from edgemon.collector.config import ConfigError, load_config

    path = tmp_path / "collector.toml"
    path.write_text('[[forward]]\nurl = "http://vm:8428/api/v1/write"\n'
                    'external_labels = { cluster = "a" }\n\n'
                    '[[forward]]\nurl = "http://prom:9090/api/v1/write"\n')
    cfg = load_config(path, environ={})
    assert [f.display_name for f in cfg.forward] == ["vm:8428", "prom:9090"]
    path.write_text('[[forward]]\nurl = "http://vm:8428/api/v1/write"\n\n'
                    '[[forward]]\nurl = "http://vm:8428/api/v1/write"\n'
                    'external_labels = { __name__ = "x" }\n')
    with pytest.raises(ConfigError, match=r"collector.toml:6: forward.1.external_labels"):
        load_config(path, environ={})
    path.write_text('forward = { url = "http://vm" }\n')
    with pytest.raises(ConfigError, match=r"must be an array of tables \(\[\[forward\]\]\)"):
        load_config(path, environ={})
