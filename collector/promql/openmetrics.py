"""Export stored samples as OpenMetrics text with timestamps, e.g. to back-fill a Prometheus:

    with open("fleet.om", "w") as out:
        write_openmetrics(storage, out, start_ms, end_ms)
    # promtool tsdb create-blocks-from openmetrics fleet.om ./data

Series are written family by family, each series' samples in time order (what
``promtool tsdb create-blocks-from openmetrics`` needs). Values are written with the shortest
text that reads back as the same double, so Prometheus holds exactly edgemon's numbers.
"""

from __future__ import annotations

from typing import TextIO

from edgemon.collector.promql.labels import METRIC_NAME, LabelMatcher, Labels
from edgemon.collector.promql.numbers import format_value
from edgemon.collector.promql.source import SampleSource
from edgemon.collector.storage.base import Storage

__all__ = ["write_openmetrics"]

_CHUNK_SERIES = 200
_MAX_SAMPLES_PER_READ = 50_000_000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(labels: Labels) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels if k != METRIC_NAME)
    return f"{{{inner}}}" if inner else ""


def write_openmetrics(storage: Storage, out: TextIO, start_ms: int, end_ms: int,
                      matchers: list[LabelMatcher] | None = None) -> int:
    """Write every sample in ``[start_ms, end_ms]`` (of series matching ``matchers``); the
    number of samples written."""
    source = SampleSource(storage, ttl_s=0)
    entries = [e for e in source.find(matchers or [], start_ms, end_ms) if not e.alias]
    families: dict[str, list] = {}
    for e in entries:
        families.setdefault(e.info.name, []).append(e)
    written = 0
    for name in sorted(families):
        group = sorted(families[name], key=lambda e: e.labels)
        kind = group[0].info.kind
        if kind == "counter" and name.endswith("_total"):
            out.write(f"# TYPE {name[:-len('_total')]} counter\n")
        elif kind == "gauge":
            out.write(f"# TYPE {name} gauge\n")
        for a in range(0, len(group), _CHUNK_SERIES):
            series = source.load(group[a:a + _CHUNK_SERIES], start_ms, end_ms, "raw",
                                 _MAX_SAMPLES_PER_READ)
            for i, labels in enumerate(series.labels):
                lo, hi = int(series.offsets[i]), int(series.offsets[i + 1])
                head = f"{name}{_label_text(labels)} "
                lines = [f"{head}{format_value(v)} {t // 1000}.{t % 1000:03d}\n"
                         for t, v in zip(series.ts[lo:hi].tolist(),
                                         series.values[lo:hi].tolist(), strict=True)]
                out.writelines(lines)
                written += hi - lo
    out.write("# EOF\n")
    return written
