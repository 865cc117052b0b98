"""What the engine records and sends about one alert: ``Transition`` (a history row, and what
every notification is built from), the alert's identity (labels, fingerprint) and annotations.

An alert of a rule that was removed or redefined keeps the identity it was stored with, so its
resolution carries the labels and fingerprint its receivers were sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from edgemon.collector.alerting.state import FIRING, INACTIVE, PENDING, RawTransition
from edgemon.collector.alerting.store import HistoryRecord
from edgemon.collector.alerting.templates import render

__all__ = ["Identity", "Transition", "annotations", "fingerprint", "finite", "identity",
           "rule_identity", "transition"]

# (from, to) of the state machine -> the transition's status as history and receivers see it
_NAMES = {(INACTIVE, PENDING): "pending", (PENDING, FIRING): "firing",
          (INACTIVE, FIRING): "firing", (FIRING, INACTIVE): "resolved",
          (PENDING, INACTIVE): "inactive", (FIRING, FIRING): "firing"}
_STATUS = {INACTIVE: "inactive", PENDING: "pending", FIRING: "firing"}


@dataclass
class Transition(HistoryRecord):
    """One state change of one alert: its history row (``id`` once stored), and the alert's
    labels, which its notifications carry."""

    alert_labels: dict[str, str] = field(default_factory=dict)


class Identity(NamedTuple):
    alert_labels: dict[str, str]  # the series' labels, severity, the rule's labels, alertname
    fingerprint: str
    annotations: dict[str, str] | None = None  # as stored (a removed rule); None: rendered


def fingerprint(labels: dict[str, str]) -> str:
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(alert_labels: dict[str, str],
             stored_annotations: dict[str, str] | None = None) -> Identity:
    return Identity(alert_labels, fingerprint(alert_labels), stored_annotations)


def rule_identity(rule: Any, host: str, labels: dict[str, str]) -> Identity:
    """The identity of a series' alert under ``rule``."""
    return identity({**labels, "severity": rule.severity, **rule.labels,
                     "alertname": rule.name, "host": host})


def annotations(rule: Any, host: str, labels: dict[str, str],
                value: float | None) -> dict[str, str]:
    """The rule's annotation templates rendered for one series (a summary by default)."""
    templates = rule.annotations or {"summary": f"{rule.name} on {{host}}: {{value}}"}
    return {k: render(t, host=host, value=value, rule=rule.name, severity=rule.severity,
                      labels=labels, metric=rule.metric_name, threshold=rule.threshold_value)
            for k, t in templates.items()}


def finite(value: float | None) -> float | None:
    """``value`` as a float, None for None, NaN and infinities (JSON has none of them)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def transition(raw: RawTransition, *, rule: str, key: str, host: str, labels: dict[str, str],
               ident: Identity, rendered: dict[str, str], fired_at: int, active_since: int,
               replayed: bool, historical: bool, silenced: bool, now: int) -> Transition:
    """The ``Transition`` of a state-machine step, found at ``now``. ``fired_at`` and
    ``active_since``: the series' timers (-1: none); ``replayed``: found replaying a
    back-filled hole."""
    status = _NAMES[(raw.frm, raw.to)]
    if status == "firing":
        starts: int | None = fired_at if fired_at >= 0 and not replayed else raw.at_ms
    elif status == "resolved":
        starts = fired_at if fired_at >= 0 else None
    else:
        starts = active_since if active_since >= 0 else None
    ends = raw.at_ms if status in ("resolved", "inactive") else None
    return Transition(rule=rule, key=key, host=host, labels=labels,
                      from_status=_STATUS[raw.frm], status=status, at_ms=raw.at_ms,
                      created_ms=now, value=finite(raw.value), starts_at=starts, ends_at=ends,
                      historical=historical, silenced=silenced, notified=False,
                      reason=raw.reason, fingerprint=ident.fingerprint, annotations=rendered,
                      alert_labels=ident.alert_labels)
