"""Hardware sensors family, where present (psutil): temperatures, fan speeds and the battery.

Temperatures (``sensors_temperatures()``: Linux hwmon/thermal, FreeBSD) in degrees Celsius at
scale 1, labelled by chip and sensor label (the chip's reading index when the label is empty,
so two unlabelled readings of a chip stay apart); fans (``sensors_fans()``, Linux) in RPM; the
battery (``sensors_battery()``) as charge percent, whether mains power is plugged (1/0), and
seconds left when discharging (omitted when unknown or unlimited). A host with none of these
at start (most VMs and containers) makes ``make`` raise ``Unavailable``: the agent says so once
and does not walk /sys for them every cycle (0.2 ms each).
"""

from __future__ import annotations

import math
from typing import Any

import psutil

from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.protocol.batch import GAUGE, MetricDef

_SENSOR = ("chip", "sensor")
TEMPERATURE = MetricDef("sensor_temperature_celsius", GAUGE, "celsius", 1, _SENSOR)
FAN = MetricDef("sensor_fan_rpm", GAUGE, "rpm", 0, _SENSOR)
BATTERY_CHARGE = MetricDef("battery_charge_percent", GAUGE, "percent", 2)
BATTERY_PLUGGED = MetricDef("battery_power_plugged", GAUGE, "")
BATTERY_LEFT = MetricDef("battery_time_left_seconds", GAUGE, "seconds")

MAX_READINGS_PER_KIND = 64  # a bound on what one odd board can add to every batch


def _readings(metric: MetricDef, chips: dict[str, list[Any]], scale_value: Any) -> list[Reading]:
    out: list[Reading] = []
    for chip, entries in sorted(chips.items()):
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            label = (entry.label or str(i))[:64]
            if label in seen:
                label = f"{label}_{i}"
            seen.add(label)
            if isinstance(entry.current, int | float) and math.isfinite(entry.current):
                out.append((metric, (chip[:64], label), scale_value(entry.current)))
    return out[:MAX_READINGS_PER_KIND]


def collect(source: Any = psutil) -> list[Reading]:
    """What this host has among temperatures, fans and battery."""
    out: list[Reading] = []
    if hasattr(source, "sensors_temperatures"):
        out += _readings(TEMPERATURE, source.sensors_temperatures() or {},
                         lambda v: round(v, 1))
    if hasattr(source, "sensors_fans"):
        out += _readings(FAN, source.sensors_fans() or {}, lambda v: max(0, int(v)))
    battery = source.sensors_battery() if hasattr(source, "sensors_battery") else None
    if battery is not None:
        out.append((BATTERY_CHARGE, (), round(min(100.0, max(0.0, battery.percent)), 2)))
        if battery.power_plugged is not None:
            out.append((BATTERY_PLUGGED, (), int(bool(battery.power_plugged))))
        if isinstance(battery.secsleft, int) and battery.secsleft >= 0:
            out.append((BATTERY_LEFT, (), int(battery.secsleft)))
    return out


def make(source: Any = psutil) -> Collect:
    """A stateless collector bound to ``source``; ``Unavailable`` if it finds no sensor now."""
    if not collect(source):
        raise Unavailable("no temperature, fan or battery sensor (psutil found none)")
    return lambda: collect(source)
