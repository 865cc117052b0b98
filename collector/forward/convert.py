"""Stored batches -> remote-write series: the payload as stored is read with storage's own
reader (``storage.batches.read_batch``), values are scaled back to floats (value / 10**scale,
the number the API serves), and the entries of one series across the batches of a request are
merged into one ``TimeSeries`` (labels sent once per request, not once per batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemon.collector.forward.remote_write import encode, series_labels
from edgemon.collector.storage.base import ForwardBatch
from edgemon.collector.storage.batches import UnreadableBatch, read_batch

__all__ = ["LabelCache", "Request", "encode_batches", "encode_groups", "group", "to_requests"]

Labels = tuple[tuple[str, str], ...]


@dataclass
class Request:
    """One remote-write request: the encoded body and what it covers."""

    body: bytes
    samples: int
    batches: list[ForwardBatch]
    last_seq: int
    unreadable: int = 0  # samples of batches storage cannot read (skipped, like quarantine)
    series: int = field(default=0)


Points = list[tuple[int, float]]


class LabelCache:
    """Remote-write labels by (host, metric, label keys, label values): built once per series,
    not once per batch (bounded: cleared when full)."""

    def __init__(self, external: Mapping[str, str], limit: int = 200_000) -> None:
        self.external = dict(external)
        self.limit = limit
        self._cache: dict[tuple[Any, ...], Labels] = {}

    def get(self, host: str, name: str, keys: tuple[str, ...], values: tuple[str, ...]
            ) -> Labels:
        key = (host, name, keys, values)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self.limit:
                self._cache.clear()
            hit = self._cache[key] = tuple(series_labels(
                name, host, dict(zip(keys, values, strict=True)), self.external))
        return hit


def _series_of(batch: ForwardBatch, labels: LabelCache, out: dict[Labels, Points]) -> None:
    cols = read_batch(batch.payload)
    bounds = cols.bounds.tolist()
    divisor = np.ones(len(bounds) - 1)
    for metric in cols.metrics:
        divisor[metric.first:metric.end] = 10.0 ** metric.scale
    values = (cols.values / np.repeat(divisor, np.diff(cols.bounds))).tolist()
    times = cols.ts.tolist()
    for metric in cols.metrics:
        keys = tuple(metric.keys)
        for entry in range(metric.first, metric.end):
            lo, hi = bounds[entry], bounds[entry + 1]
            if lo == hi:
                continue
            key = labels.get(batch.host, metric.name, keys, tuple(cols.labels[entry]))
            points = list(zip(times[lo:hi], values[lo:hi], strict=True))
            have = out.get(key)
            if have is None:
                out[key] = points
            elif have[-1][0] < points[0][0]:
                have.extend(points)
            else:  # overlapping batches: in time order, a timestamp twice -> the later batch
                merged = dict(have)
                merged.update(points)
                out[key] = sorted(merged.items())


def encode_batches(batches: Sequence[ForwardBatch], labels: LabelCache) -> Request:
    """One request holding every sample of ``batches``."""
    series: dict[Labels, Points] = {}
    unreadable = 0
    for batch in batches:
        try:
            _series_of(batch, labels, series)
        except UnreadableBatch:
            unreadable += batch.samples
    samples = sum(map(len, series.values()))
    return Request(encode(series.items()), samples, list(batches), batches[-1].seq, unreadable,
                   len(series))


def group(batches: Sequence[ForwardBatch], max_samples: int) -> list[list[ForwardBatch]]:
    """Whole batches in groups of at most ``max_samples`` samples (a larger batch alone)."""
    out: list[list[ForwardBatch]] = []
    n = 0
    for batch in batches:
        if not out or (out[-1] and n + batch.samples > max_samples):
            out.append([])
            n = 0
        out[-1].append(batch)
        n += batch.samples
    return out


def to_requests(batches: Sequence[ForwardBatch], max_samples: int,
                labels: LabelCache) -> list[Request]:
    """Requests of at most ``max_samples`` samples (``group``), encoded here."""
    return [encode_batches(g, labels) for g in group(batches, max_samples)]


_CACHES: dict[tuple[tuple[str, str], ...], LabelCache] = {}


def encode_groups(groups: list[list[ForwardBatch]], external: tuple[tuple[str, str], ...],
                  ) -> list[tuple[bytes, int, int, int]]:
    """For a worker process: (body, samples, unreadable samples, series) of each group; the
    label cache stays in the worker, one per set of external labels."""
    labels = _CACHES.get(external)
    if labels is None:
        labels = _CACHES[external] = LabelCache(dict(external))
    out = []
    for g in groups:
        r = encode_batches(g, labels)
        out.append((r.body, r.samples, r.unreadable, r.series))
    return out
