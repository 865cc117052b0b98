"""Forwarding over TLS with basic auth to a real VictoriaMetrics (``-tls``, ``-httpAuth.*``): the
receiver's certificate is checked against ``ca_file``; a wrong password (401) is a configuration
fault, retried, never skipped: once the password file holds the right one, every sample arrives,
once."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgemon.collector.forward.metrics import ForwardMetrics
from edgemon.common.clock import now_ms
from tests.support.forwarding import Fleet, Running, config
from tests.support.tsdb import VICTORIA, VictoriaMetrics
from tests.support.waiting import wait_until
from tests.test_forward_durable import caught_up, open_store, position
from tests.test_receivers import Certs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(VICTORIA is None, reason="victoria-metrics missing")]


def test_a_wrong_password_waits_for_the_fix_over_tls(tmp_path: Path) -> None:
    certs = Certs(tmp_path / "ca")
    vm = VictoriaMetrics(tmp_path / "vm", tls=(certs.ca, certs.crt, certs.key),
                         basic_auth=("edgemon", "right")).start()
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    storage = open_store(tmp_path)
    fleet = Fleet(hosts=2)
    items = fleet.batches(now_ms() // 1000 * 1000 - 600_000, 4)
    try:
        assert vm.write_url.startswith("https://")
        with Running(storage, config(vm.write_url, username="edgemon", password_file=secret,
                                     ca_file=certs.ca)) as run:
            storage.store_batches(items)
            counters = run.service.forwarders[0].counters
            wait_until(lambda: counters.failures.get("401", 0) >= 3, 30, "401 answers retried")
            p = position(storage)
            assert (p.sent, p.rejected, p.skipped) == (0, 0, 0)
            assert p.pending_samples == fleet.total()
            registry = CollectorRegistry()
            registry.register(ForwardMetrics(run.service.status))  # type: ignore[arg-type]

            def metrics() -> str:
                return generate_latest(registry).decode()
            wait_until(lambda: 'edgemon_collector_forward_pending_samples{receiver="rx"} '
                       f"{float(fleet.total())}" in metrics(), 10, "the queue in /metrics")
            text = metrics()
            [failures] = [line for line in text.splitlines() if line.startswith(
                'edgemon_collector_forward_failures_total{reason="401",receiver="rx"}')]
            assert float(failures.split()[-1]) >= 3
            [lag] = [line for line in text.splitlines()
                     if line.startswith('edgemon_collector_forward_lag_seconds{receiver="rx"}')]
            assert float(lag.split()[-1]) > 0
            assert 'edgemon_collector_forward_samples_rejected_total{receiver="rx"} 0.0' in text
            secret.write_text("right\n")  # the operator fixes it: read again at each request
            wait_until(lambda: caught_up(storage), 30, "everything forwarded")
        p = position(storage)
        assert (p.sent, p.rejected, p.skipped) == (fleet.total(), 0, 0)
        assert vm.export('{fleet="test"}') == fleet.want()
    finally:
        storage.close()
        vm.terminate()
