"""The pure part of writing blocks: samples -> sorted, deduplicated columns (L0) and every blob
of their blocks (times, chunks, masks), with no database at hand.

Compaction builds these before it takes the write lock (``compaction.py``: L0's prepare stage)
or inside it (the in-lock path, L1); either way the rows written are the same. Block ids are
only known once a block row is inserted, so a chunk names its block by its index here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemon.collector.storage import aggregate as agg
from edgemon.collector.storage.encoding import encode_chunks, encode_times_many
from edgemon.collector.storage.sql.layouts import Gathered

__all__ = ["BlockBlobs", "L0Samples", "encode_blocks", "sort_l0"]


@dataclass(frozen=True, slots=True)
class L0Samples:
    """The samples of one L0 transaction, deduplicated (the batch received last wins) and
    sorted by (host, window, series, ts); ``sid`` indexes ``ids`` (the series ids), ``bounds``
    and ``ends`` delimit each (host, window) block; ``first_last`` is (first ts, last ts,
    series id) of every series, for its row."""

    ids: np.ndarray
    sid: np.ndarray
    ts: np.ndarray
    val: np.ndarray
    host: np.ndarray
    win: np.ndarray
    bounds: list[int]
    ends: list[int]
    first_last: list[tuple[int, int, int]]


def sort_l0(g: Gathered, window_ms: int) -> L0Samples:
    """The samples ``g`` of one L0 transaction, as ``L0Samples``."""
    ids, local = np.unique(g.sid, return_inverse=True)  # local index, by series id
    sid, ts, val = agg.sort_dedupe(local.astype(np.int64), g.ts, g.val, g.order)
    hosts = np.zeros(ids.size, dtype=np.int64)
    hosts[local] = g.host
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    ends = np.r_[starts[1:], sid.size]
    first_last = list(zip(ts[starts].tolist(), ts[ends - 1].tolist(),
                          ids[sid[starts]].tolist(), strict=True))
    host, win = hosts[sid], ts - ts % window_ms
    idx = np.lexsort((ts, sid, win, host))
    sid, ts, val, host, win = sid[idx], ts[idx], val[idx], host[idx], win[idx]
    bounds = np.flatnonzero(np.r_[True, (host[1:] != host[:-1]) | (win[1:] != win[:-1])])
    block_ends = np.r_[bounds[1:], sid.size]
    return L0Samples(ids, sid, ts, val, host, win, bounds.tolist(), block_ends.tolist(),
                     first_last)


@dataclass(frozen=True, slots=True)
class BlockBlobs:
    """The rows of some blocks: per block (host, window, distinct timestamps, times blob) and
    per chunk (series id, window, index of its block in ``blocks``, data blob)."""

    blocks: list[tuple[int, int, int, bytes]]
    chunks: list[tuple[int, int, int, bytes]]

    @property
    def windows(self) -> set[int]:
        return {w for _, w, _, _ in self.blocks}


def encode_blocks(series_id: np.ndarray, ts: np.ndarray, val: np.ndarray, host: np.ndarray,
                  win: np.ndarray) -> BlockBlobs:
    """Blocks of samples sorted by (host, window, series, ts), one per (host, window): its
    timestamps once, then one chunk per series (with a mask of the block's timestamps it has,
    when not all). Every blob is built at once for all blocks (``encode_times_many``,
    ``encode_chunks``)."""
    block_start = np.r_[True, (host[1:] != host[:-1]) | (win[1:] != win[:-1])]
    block = np.cumsum(block_start) - 1  # block number of every sample
    first_of_block = np.flatnonzero(block_start)
    # each block's distinct timestamps, in order
    bidx = np.lexsort((ts, block))
    bt, bb = ts[bidx], block[bidx]
    distinct = np.r_[True, (bb[1:] != bb[:-1]) | (bt[1:] != bt[:-1])]
    times, times_block = bt[distinct], bb[distinct]
    t_starts = np.flatnonzero(np.r_[True, times_block[1:] != times_block[:-1]])
    t_ends = np.r_[t_starts[1:], times.size]
    n_times = t_ends - t_starts
    times_blobs = encode_times_many(times, t_starts, t_ends)
    blocks = list(zip(host[first_of_block].tolist(), win[first_of_block].tolist(),
                      n_times.tolist(), times_blobs, strict=True))
    starts = np.flatnonzero(block_start | np.r_[True, series_id[1:] != series_id[:-1]])
    ends = np.r_[starts[1:], series_id.size]
    chunk_block = block[starts]
    masks: list[bytes | None] = [None] * starts.size
    for i in np.flatnonzero(ends - starts != n_times[chunk_block]).tolist():
        b, s, e = int(chunk_block[i]), int(starts[i]), int(ends[i])
        bits = np.zeros(int(n_times[b]), dtype=bool)
        bits[np.searchsorted(times[t_starts[b]:t_ends[b]], ts[s:e])] = True
        masks[i] = np.packbits(bits).tobytes()
    blobs = encode_chunks(val, starts, ends, masks)
    chunks = list(zip(series_id[starts].tolist(), win[starts].tolist(), chunk_block.tolist(),
                      blobs, strict=True))
    return BlockBlobs(blocks, chunks)
