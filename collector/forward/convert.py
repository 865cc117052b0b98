"""Stored batches -> remote-write series: the payload as stored is read with storage's own
reader (``storage.batches.read_batch``), values are scaled back to floats (value / 10**scale,
the number the API serves), and the entries of one series across the batches of a request are
merged into one ``TimeSeries`` (labels sent once per request, not once per batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgemon.collector.forward.remote_write import encode, series_labels
from edgemon.collector.storage.base import ForwardBatch
from edgemon.collector.storage.batches import UnreadableBatch, read_batch

__all__ = ["Request", "to_requests"]

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


def _series_of(batch: ForwardBatch, external: Mapping[str, str],
               out: dict[Labels, list[tuple[np.ndarray, np.ndarray]]]) -> None:
    cols = read_batch(batch.payload)
    for metric in cols.metrics:
        divisor = 10.0 ** metric.scale
        for entry in range(metric.first, metric.end):
            lo, hi = int(cols.bounds[entry]), int(cols.bounds[entry + 1])
            if lo == hi:
                continue
            labels = tuple(series_labels(metric.name, batch.host,
                                         dict(zip(metric.keys, cols.labels[entry], strict=True)),
                                         external))
            values = cols.values[lo:hi] / divisor if metric.scale else \
                cols.values[lo:hi].astype(np.float64)
            out.setdefault(labels, []).append((cols.ts[lo:hi], values))


def encode_batches(batches: Sequence[ForwardBatch], external: Mapping[str, str]) -> Request:
    """One request holding every sample of ``batches``."""
    series: dict[Labels, list[tuple[np.ndarray, np.ndarray]]] = {}
    unreadable = 0
    for batch in batches:
        try:
            _series_of(batch, external, series)
        except UnreadableBatch:
            unreadable += batch.samples
    items = []
    samples = 0
    for labels, parts in series.items():
        ts = np.concatenate([p[0] for p in parts])
        vals = np.concatenate([p[1] for p in parts])
        if len(parts) > 1:
            order = np.argsort(ts, kind="stable")
            ts, vals = ts[order], vals[order]
            last = np.r_[ts[1:] != ts[:-1], True]  # a timestamp twice: the later batch wins
            ts, vals = ts[last], vals[last]
        samples += int(ts.size)
        items.append((labels, list(zip(ts.tolist(), vals.tolist(), strict=True))))
    return Request(encode(items), samples, list(batches), batches[-1].seq, unreadable,
                   len(items))


def to_requests(batches: Sequence[ForwardBatch], max_samples: int,
                external: Mapping[str, str]) -> list[Request]:
    """Whole batches grouped into requests of at most ``max_samples`` samples (a batch larger
    than that goes alone)."""
    out: list[Request] = []
    group: list[ForwardBatch] = []
    n = 0
    for batch in batches:
        if group and n + batch.samples > max_samples:
            out.append(encode_batches(group, external))
            group, n = [], 0
        group.append(batch)
        n += batch.samples
    if group:
        out.append(encode_batches(group, external))
    return out
