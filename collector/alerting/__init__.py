"""Alerting for the edgemon collector: rules over stored metrics, state and history in SQLite,
notifications through a durable outbox (Alertmanager-compatible webhooks, MQTT).

Wiring (see README.md)::

    service = AlertingService(storage, "/var/lib/edgemon/alerts.db", rules_path=path_or_None,
                              publish=lambda topic, payload: client.publish(topic, payload, 1),
                              executor=reader_pool)
    app.add_routes(service.routes())             # before the app starts
    await service.start()                        # evaluation loop + delivery worker
    ...
    await service.stop()
"""

from __future__ import annotations

import importlib
from typing import Any

from edgemon.collector.alerting.alertmanager import AlertmanagerNotifier
from edgemon.collector.alerting.engine import AlertEngine, CycleReport
from edgemon.collector.alerting.evaluate import (
    SeriesData,
    evaluate_disk_eta,
    evaluate_host_down,
    evaluate_series,
    from_arrays,
    from_results,
)
from edgemon.collector.alerting.notify import (
    MQTT_TOPIC_PREFIX,
    DeliveryWorker,
    alert_topic,
    webhook_payload,
)
from edgemon.collector.alerting.rules import (
    DEFAULT_RULES_PATH,
    RulesError,
    RuleSet,
    check_rules,
    load_rules,
    parse_rules,
)
from edgemon.collector.alerting.state import SeriesTable
from edgemon.collector.alerting.transitions import Transition

__all__ = [
    "DEFAULT_RULES_PATH",
    "MQTT_TOPIC_PREFIX",
    "OPENAPI_PATHS",
    "OPENAPI_SCHEMAS",
    "AlertEngine",
    "AlertingService",
    "AlertmanagerNotifier",
    "CycleReport",
    "DeliveryWorker",
    "RuleSet",
    "RulesError",
    "SeriesData",
    "SeriesTable",
    "Transition",
    "add_routes",
    "alert_topic",
    "check_rules",
    "evaluate_disk_eta",
    "evaluate_host_down",
    "evaluate_series",
    "from_arrays",
    "from_results",
    "load_rules",
    "merge_openapi",
    "parse_rules",
    "routes",
    "webhook_payload",
]

# The service and the HTTP side import this package's modules; importing them here eagerly
# made ``import edgemon.collector.http.alerts_api`` (before this package) circular. They load
# on first use instead (PEP 562), so both import orders work.
_LAZY = {
    "AlertingService": "edgemon.collector.alerting.service",
    "OPENAPI_PATHS": "edgemon.collector.http.alerts_api",
    "OPENAPI_SCHEMAS": "edgemon.collector.http.alerts_api",
    "add_routes": "edgemon.collector.http.alerts_api",
    "merge_openapi": "edgemon.collector.http.alerts_api",
    "routes": "edgemon.collector.http.alerts_api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

