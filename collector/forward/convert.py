"""Stored batches -> remote-write requests: the payload as stored is read with storage's own
reader (``storage.batches.read_batch``), values are scaled back to floats (value / 10**scale,
the number the API serves), and the samples of one series across the batches of a request are
merged into one ``TimeSeries`` (labels sent once per request, not once per batch), in time
order, a timestamp sent twice by overlapping batches taken from the later batch.

The work per sample is numpy's: each series entry of a batch is named by a request-local
series number (its labels' encoded bytes, ``LabelCache``, looked up once per entry), the
samples of the request are sorted by (series, time, arrival) in one ``lexsort``, and
``remote_write.encode_columns`` writes them out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemon.collector.forward.remote_write import encode_columns, label_fields, series_labels
from edgemon.collector.storage.base import ForwardBatch
from edgemon.collector.storage.batches import UnreadableBatch, read_batch

__all__ = ["LabelCache", "Request", "encode_batches", "encode_groups", "group", "to_requests"]


@dataclass
class Request:
    """One remote-write request: the encoded body and what it covers."""

    body: bytes
    samples: int
    batches: list[ForwardBatch]
    last_seq: int
    unreadable: int = 0  # samples of batches storage cannot read (skipped, like quarantine)
    series: int = field(default=0)


class LabelCache:
    """A series' remote-write label fields (``remote_write.label_fields``) by (host, metric,
    label keys, label values): built once per series, not once per batch (bounded: cleared
    when full)."""

    def __init__(self, external: Mapping[str, str], limit: int = 200_000) -> None:
        self.external = dict(external)
        self.limit = limit
        self._cache: dict[tuple[Any, ...], bytes] = {}

    def get(self, host: str, name: str, keys: tuple[str, ...], values: tuple[str, ...]
            ) -> bytes:
        key = (host, name, keys, values)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self.limit:
                self._cache.clear()
            hit = self._cache[key] = label_fields(series_labels(
                name, host, dict(zip(keys, values, strict=True)), self.external))
        return hit


def _columns_of(batch: ForwardBatch, labels: LabelCache, series: dict[bytes, int],
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(series number, timestamp, value) of each sample of ``batch``; new series numbered in
    ``series`` (label fields -> number) in the order they first appear."""
    cols = read_batch(batch.payload)
    counts = np.diff(cols.bounds)
    sizes = counts.tolist()
    numbers = np.zeros(len(sizes), np.int64)
    divisor = np.ones(len(sizes))
    for metric in cols.metrics:
        divisor[metric.first:metric.end] = 10.0 ** metric.scale
        keys = tuple(metric.keys)
        for entry in range(metric.first, metric.end):
            if sizes[entry]:
                fields = labels.get(batch.host, metric.name, keys, tuple(cols.labels[entry]))
                numbers[entry] = series.setdefault(fields, len(series))
    return (np.repeat(numbers, counts), cols.ts,
            cols.values / np.repeat(divisor, counts))


def encode_batches(batches: Sequence[ForwardBatch], labels: LabelCache) -> Request:
    """One request holding every sample of ``batches``."""
    series: dict[bytes, int] = {}
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    unreadable = 0
    for batch in batches:
        try:
            parts.append(_columns_of(batch, labels, series))
        except UnreadableBatch:
            unreadable += batch.samples
    if parts:
        number, ts, values = (np.concatenate(c) for c in zip(*parts, strict=True))
    else:
        number, ts, values = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    order = np.lexsort((np.arange(len(ts)), ts, number))  # by series, time, then arrival
    number, ts, values = number[order], ts[order], values[order]
    last = np.ones(len(ts), bool)  # of its (series, timestamp): the later batch's sample
    last[:-1] = (number[:-1] != number[1:]) | (ts[:-1] != ts[1:])
    number, ts, values = number[last], ts[last], values[last]
    starts = np.searchsorted(number, np.arange(len(series) + 1)).tolist()
    body = encode_columns(list(series), starts, ts, values)
    return Request(body, len(ts), list(batches), batches[-1].seq, unreadable, len(series))


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
