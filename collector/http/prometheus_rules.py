"""edgemon's alerting state in the shapes of Prometheus's ``/api/v1/rules`` and ``/alerts``.

edgemon rules are not PromQL; each rule's ``query`` is the closest PromQL expression (threshold
and rate rules, disk_full_eta as ``predict_linear``) or, for host_down and anomaly rules, an
``edgemon:<kind>(...)`` description, so a client shows what the rule watches.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edgemon.collector.promql.numbers import format_exponent, format_value

__all__ = ["alerts_data", "rules_data"]

_OVER_TIME = {"avg": "avg_over_time", "min": "min_over_time", "max": "max_over_time",
              "sum": "sum_over_time", "count": "count_over_time", "last": "last_over_time"}
_ZERO_TIME = "0001-01-01T00:00:00Z"


def _iso(ms: int | None) -> str:
    if not ms:
        return _ZERO_TIME
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _duration(ms: int | None) -> str:
    """``5m``, ``1h30m``, ``90s`` (Prometheus's duration syntax)."""
    ms = int(ms or 0)
    if ms == 0:
        return "0s"
    parts = []
    for unit, width in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                        ("ms", 1)):
        if ms >= width:
            parts.append(f"{ms // width}{unit}")
            ms %= width
    return "".join(parts)


def _selector(rule: dict[str, Any]) -> str:
    matchers = [f'{k}="{v}"' for k, v in sorted((rule.get("match") or {}).items())]
    hosts = [h for h in rule.get("hosts") or [] if h != "*"]
    if hosts:
        pattern = "|".join(h.replace(".", "\\\\.").replace("*", ".*").replace("?", ".")
                           for h in hosts)
        matchers.append(f'host=~"{pattern}"')
    return f"{rule.get('metric', '')}{{{','.join(matchers)}}}"


def rule_expression(rule: dict[str, Any]) -> str:
    kind = rule.get("kind")
    if kind in ("threshold", "rate"):
        window = f"[{_duration(rule.get('window'))}]"
        if kind == "rate" or rule.get("rate"):
            inner = f"rate({_selector(rule)}{window})"
        elif rule.get("aggregation") == "p95":
            inner = f"quantile_over_time(0.95, {_selector(rule)}{window})"
        else:
            fn = _OVER_TIME.get(rule.get("aggregation", "avg"), "avg_over_time")
            inner = f"{fn}({_selector(rule)}{window})"
        return f"{inner} {rule.get('op', '>')} {format_value(float(rule.get('threshold', 0)))}"
    if kind == "disk_full_eta":
        seconds = int(rule.get("within", 0)) // 1000
        return (f"predict_linear({_selector(rule)}[{_duration(rule.get('window'))}], "
                f"{seconds}) >= {format_value(float(rule.get('full_at', 100)))}")
    if kind == "host_down":
        return (f"edgemon:host_down(no_data_for={_duration(rule.get('no_data_for'))}, "
                f"on_death={str(bool(rule.get('on_death'))).lower()})")
    if kind == "anomaly":
        return (f"edgemon:anomaly({_selector(rule)}, step={_duration(rule.get('step'))}, "
                f"k={format_value(float(rule.get('k', 3)))})")
    return f"edgemon:{kind}"


def alert_doc(alert: dict[str, Any]) -> dict[str, Any]:
    value = alert.get("value")
    return {"labels": alert.get("alert_labels") or {},
            "annotations": alert.get("annotations") or {},
            "state": "firing" if alert.get("status") == "firing" else "pending",
            "activeAt": _iso(alert.get("active_since_ms")),
            "value": format_exponent(float(value)) if value is not None else "NaN"}


def alerts_data(active: list[dict[str, Any]]) -> dict[str, Any]:
    return {"alerts": [alert_doc(a) for a in active]}


def rules_data(rules: list[dict[str, Any]], active: list[dict[str, Any]], *, source: str,
               interval_ms: int, kind: str | None = None) -> dict[str, Any]:
    """One group ``edgemon`` holding every rule as an alerting rule (``kind``: Prometheus's
    ``type`` filter, alert or record; edgemon has no recording rules)."""
    if kind == "record":
        return {"groups": []}
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for a in active:
        by_rule.setdefault(str(a.get("rule")), []).append(a)
    out_rules = []
    total_s, last = 0.0, 0
    for rule in rules:
        health = rule.get("health") or {}
        alerts = [alert_doc(a) for a in by_rule.get(str(rule.get("name")), [])]
        states = {a["state"] for a in alerts}
        duration_s = (health.get("duration_ms") or 0) / 1000
        total_s += duration_s
        last = max(last, int(health.get("last_eval_ms") or 0))
        out_rules.append({
            "state": "firing" if "firing" in states else "pending" if states else "inactive",
            "name": rule.get("name"),
            "query": rule_expression(rule),
            "duration": int(rule.get("for") or 0) // 1000,
            "keepFiringFor": int(rule.get("keep_firing_for") or 0) // 1000,
            "labels": {**(rule.get("labels") or {}), "severity": rule.get("severity", "")},
            "annotations": rule.get("annotations") or {},
            "alerts": alerts,
            "health": ("unknown" if not health or not health.get("last_eval_ms") else
                       "err" if health.get("error") else "ok"),
            "lastError": health.get("error") or "",
            "evaluationTime": duration_s,
            "lastEvaluation": _iso(health.get("last_eval_ms")),
            "type": "alerting",
        })
    return {"groups": [{"name": "edgemon", "file": source, "rules": out_rules,
                        "interval": interval_ms / 1000, "limit": 0,
                        "evaluationTime": total_s, "lastEvaluation": _iso(last)}]}
