"""Stored batch payloads -> flat numpy columns (series index, timestamp, value, arrival order).

Payloads in the ``batches`` table were validated on arrival (``protocol.schema``), so they are
unpacked here without the pydantic model: zstd, msgpack, then one vectorised cumsum for all
timestamps and one for all values of many batches at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from itertools import accumulate, chain
from typing import Any

import msgpack
import numpy as np
import zstandard

from edgemon.protocol.codec import dictionary

__all__ = ["Resolve", "flatten", "rescale", "unpack"]

_local = threading.local()
_I64 = np.int64

# (host_id, name, kind, unit, scale, label_keys) -> (table, miss) or None to skip the metric.
# ``table`` maps a tuple of label values to (series index, the series' scale); ``miss(labels)``
# is called for label values not in the table (it may add them) and returns the same or None to
# skip that entry.
Table = dict[tuple[str, ...], tuple[int, int]]
Resolve = Callable[[int, str, str, str, int, list[str]],
                   "tuple[Table, Callable[[tuple[str, ...]], tuple[int, int] | None]] | None"]


def _decompressor(dict_id: int) -> zstandard.ZstdDecompressor:
    cache: dict[int, zstandard.ZstdDecompressor] | None = getattr(_local, "dctx", None)
    if cache is None:
        cache = _local.dctx = {}
    d = cache.get(dict_id)
    if d is None:
        # Frames name the published dictionary they were compressed with (protocol.codec).
        d = cache[dict_id] = (zstandard.ZstdDecompressor(dict_data=dictionary(dict_id))
                              if dict_id else zstandard.ZstdDecompressor())
    return d


def unpack(payload: bytes) -> dict[str, Any]:
    """The batch map of a payload stored after validation (no limit checks again)."""
    dict_id = zstandard.get_frame_parameters(payload).dict_id
    packed = _decompressor(dict_id).decompress(payload)
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


def rescale(values: np.ndarray, from_scale: int, to_scale: int) -> np.ndarray:
    """Integers kept to ``from_scale`` decimals as integers kept to ``to_scale`` (rounding half
    to even when digits are dropped)."""
    if from_scale == to_scale:
        return values
    if to_scale > from_scale:
        with np.errstate(over="ignore"):
            return values * _I64(10 ** (to_scale - from_scale))
    div = 10 ** (from_scale - to_scale)
    q, r = np.divmod(values, div)
    up = (2 * r > div) | ((2 * r == div) & (q % 2 == 1))
    return q + up


def flatten(batches: Iterable[tuple[int, int, dict[str, Any]]], resolve: Resolve,
            names: set[str] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(series index, timestamp, value, order) of every sample of ``batches``.

    ``batches`` yields (host_id, order, unpacked batch); ``order`` (e.g. the row id) tells which
    of two samples with the same series and timestamp arrived last. Metrics not in ``names``
    (when given) are skipped before any per-entry work."""
    seg_sid: list[int] = []
    seg_t: list[int] = []  # index of the entry's first timestamp in the global time column
    seg_at: list[int] = []  # index of the entry's first value in ``flat``
    fixes: list[tuple[int, int, int]] = []  # (segment, from scale, to scale)
    flat: list[int] = []
    times: list[int] = []
    batch_len: list[int] = []
    batch_order: list[int] = []
    batch_segs: list[int] = []
    for host_id, order, batch in batches:
        t = batch["t"]
        base = len(times)
        times.extend(t)
        batch_len.append(len(t))
        batch_order.append(order)
        first_seg = len(seg_sid)
        # one table per metric, then every entry of the batch in a few comprehensions
        finders = []
        entries: list[Any] = []
        for name, kind, unit, scale, keys, metric_entries in batch["metrics"]:
            if names is not None and name not in names:
                continue
            found = resolve(host_id, name, kind, unit, scale, keys)
            if found is not None:
                finders.append((found, scale, len(metric_entries)))
                entries += metric_entries
        if entries:
            labels = [tuple(e[0]) for e in entries]
            hits: list[Any] = []
            scales: list[int] = []
            at = 0
            for (table, miss), scale, n in finders:
                part = [table.get(k) for k in labels[at:at + n]]
                if None in part:
                    part = [h if h is not None else miss(k)
                            for h, k in zip(part, labels[at:at + n], strict=True)]
                hits += part
                scales += [scale] * n
                at += n
            if None in hits:  # entries the resolver skips
                keep = [i for i, h in enumerate(hits) if h is not None]
                entries = [entries[i] for i in keep]
                hits = [hits[i] for i in keep]
                scales = [scales[i] for i in keep]
            if any(h[1] != sc for h, sc in zip(hits, scales, strict=True)):
                fixes += [(len(seg_sid) + i, sc, h[1])
                          for i, (h, sc) in enumerate(zip(hits, scales, strict=True))
                          if h[1] != sc]
            seg_sid += [h[0] for h in hits]
            seg_t += [base + e[1] for e in entries]
            lens = [len(e[2]) for e in entries]
            if lens:  # the resolver may have skipped every entry of this batch
                seg_at += accumulate(lens[:-1], initial=len(flat))
            flat += chain.from_iterable(e[2] for e in entries)
        batch_segs.append(len(seg_sid) - first_seg)
    if not flat:
        empty = np.empty(0, dtype=_I64)
        return empty, empty, empty, empty
    n = len(flat)
    with np.errstate(over="ignore"):
        # Timestamps and values are delta-coded per batch / per entry: one global cumsum, then
        # subtract the running total at each start (modulo 2**64, hence exact).
        tcum = np.cumsum(np.array(times, dtype=_I64))
        blen = np.array(batch_len, dtype=_I64)
        bends = np.cumsum(blen)
        tbase = np.repeat(np.r_[_I64(0), tcum[bends[:-1] - 1]], blen)
        abs_times = tcum - tbase
        starts = np.array(seg_at, dtype=_I64)
        first = np.zeros(n, dtype=bool)
        first[starts] = True
        seg = np.cumsum(first) - 1  # entry of each value
        vcum = np.cumsum(np.array(flat, dtype=_I64))
        values = vcum - np.r_[_I64(0), vcum[starts[1:] - 1]][seg]
    within = np.arange(n, dtype=_I64) - starts[seg]
    ts = abs_times[np.array(seg_t, dtype=_I64)[seg] + within]
    sid = np.array(seg_sid, dtype=_I64)[seg]
    order = np.repeat(np.array(batch_order, dtype=_I64), np.array(batch_segs))[seg]
    for k, from_scale, to_scale in fixes:
        s = int(starts[k])
        e = int(starts[k + 1]) if k + 1 < starts.size else n
        values[s:e] = rescale(values[s:e], from_scale, to_scale)
    return sid, ts, values, order
