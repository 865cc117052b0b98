"""Compact, exact encodings of int64 columns: block timestamps, series chunks, rollup blocks.

Every column is turned into small unsigned integers (delta or delta-of-delta, then zigzag), cut
to the fewest little-endian bytes that hold the largest one, stored byte plane by byte plane
(all low bytes, then all second bytes, ...), and each blob is one zstd frame. Planes of
near-constant bytes compress to almost nothing. Arithmetic is modulo 2**64 (numpy int64 wraps),
so every round trip is exact for any int64, even when a difference overflows.

Layouts (before zstd; integers little-endian):

- times: ``u8 version | u32 n | i64 t0 | planes(zigzag(delta of delta))``
- chunk: ``u8 version | u8 mode | u32 n | i64 v0 | u8 has_mask | [packbits(mask over the block's
  times)] | planes(zigzag(delta or delta of delta))`` (mode 1 = delta, 2 = delta of delta)
- rollup: ``u8 version | u32 n | i64 window start | u8 width per column | planes per column``
  (see ``encode_rollups``)

where ``planes(u) = u8 width | width byte planes of n values``.
"""

from __future__ import annotations

import itertools
import struct
import threading

import numpy as np
import zstandard

__all__ = [
    "ROLLUP_COLUMNS",
    "cumsum_by_segment",
    "decode_chunks",
    "decode_rollups",
    "decode_times",
    "encode_chunks",
    "encode_rollups",
    "encode_times",
    "encode_times_many",
    "unzigzag",
    "zigzag",
]

_VERSION = 1
_TIMES_HEAD = struct.Struct("<BIq")
_CHUNK_HEAD = struct.Struct("<BBIqB")
_ROLLUP_HEAD = struct.Struct("<BIq")
_I64 = np.int64
_U64 = np.uint64

_local = threading.local()  # zstd contexts are not thread-safe: one set per thread


def _cctx(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def zigzag(x: np.ndarray) -> np.ndarray:
    """int64 -> uint64 with small magnitudes first (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...)."""
    x = np.asarray(x, dtype=_I64)
    return ((x << 1) ^ (x >> 63)).view(_U64)


def unzigzag(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=_U64)
    return (u >> _U64(1)).view(_I64) ^ (-(u & _U64(1)).view(_I64))


def _width_of(top: int) -> int:
    return (int(top).bit_length() + 7) // 8


def _planes(u: np.ndarray, width: int | None = None) -> bytes:
    """One width byte, then the low ``width`` byte planes of ``u`` (uint64, little-endian)."""
    if width is None:
        width = _width_of(u.max()) if u.size else 0
    if width == 0:
        return b"\x00"
    le = u.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)[:, :width]
    return bytes((width,)) + np.ascontiguousarray(le.T).tobytes()


def _unplanes(buf: memoryview, pos: int, n: int) -> tuple[np.ndarray, int]:
    width = buf[pos]
    pos += 1
    if width == 0:
        return np.zeros(n, dtype=_U64), pos
    out = np.zeros((n, 8), dtype=np.uint8)
    size = width * n
    out[:, :width] = np.frombuffer(buf[pos:pos + size], dtype=np.uint8).reshape(width, n).T
    return out.view("<u8").reshape(n).astype(_U64, copy=False), pos + size


def _diff(x: np.ndarray) -> np.ndarray:
    """[0, x1 - x0, x2 - x1, ...] (wrapping)."""
    out = np.empty_like(x)
    if x.size:
        out[0] = 0
        np.subtract(x[1:], x[:-1], out=out[1:])
    return out


# -- block timestamps ---------------------------------------------------------------------------

def encode_times(ts: np.ndarray, level: int = 3) -> bytes:
    """Strictly increasing timestamps shared by every series of one block."""
    ts = np.asarray(ts, dtype=_I64)
    if ts.size == 0:
        raise ValueError("a block needs at least one timestamp")
    head = _TIMES_HEAD.pack(_VERSION, ts.size, int(ts[0]))
    return _cctx(level).compress(head + _planes(zigzag(_diff(_diff(ts)))))


def decode_times(blob: bytes) -> np.ndarray:
    raw = memoryview(_dctx().decompress(blob))
    version, n, t0 = _TIMES_HEAD.unpack_from(raw, 0)
    if version != _VERSION:
        raise ValueError(f"unknown times version {version}")
    dod, _ = _unplanes(raw, _TIMES_HEAD.size, n)
    with np.errstate(over="ignore"):
        return np.cumsum(np.cumsum(unzigzag(dod))) + _I64(t0)


# -- series chunks ------------------------------------------------------------------------------

def encode_chunks(values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  masks: list[bytes | None], level: int = 3) -> list[bytes]:
    """One chunk per segment ``values[starts[i]:ends[i]]`` (one series each; segments are
    contiguous and in order, as ``np.flatnonzero`` of series changes gives them).

    ``masks[i]`` is ``np.packbits`` of which of the block's timestamps the series has, or None
    when it has all of them. Everything before zstd is computed for all segments at once (deltas,
    zigzag, widths, headers and byte planes laid out in one buffer: ``_pack_segments``); what is
    left per chunk is one zstd call.
    """
    values = np.asarray(values, dtype=_I64)
    if values.size == 0:
        return []
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    sizes = ends - starts
    dv, ddv = _seg_deltas(values, starts, ends)
    z1, z2 = zigzag(dv), zigzag(ddv)
    w1 = _byte_widths(np.maximum.reduceat(z1, starts))
    w2 = _byte_widths(np.maximum.reduceat(z2, starts))
    # Counters rising at a steady rate shrink under delta-of-delta; noisy gauges do not.
    mode2 = (sizes > 2) & (w2 < w1)
    seg = np.repeat(np.arange(starts.size), sizes)
    coded = np.where(mode2[seg], z2, z1)
    head = np.zeros(starts.size, dtype=np.dtype([("version", "u1"), ("mode", "u1"),
                                                 ("n", "<u4"), ("v0", "<i8"),
                                                 ("has_mask", "u1")]))
    head["version"], head["mode"], head["n"] = _VERSION, np.where(mode2, 2, 1), sizes
    head["v0"] = values[starts]
    head["has_mask"] = [m is not None for m in masks]
    return _pack_segments(head.view(np.uint8).reshape(starts.size, -1), masks, coded,
                          sizes, np.where(mode2, w2, w1), _cctx(level))


def _seg_deltas(x: np.ndarray, starts: np.ndarray, ends: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Delta and delta of delta of ``x`` inside each segment [starts[i], ends[i]) (both 0 at a
    segment's first row; the second row's delta of delta is its delta), wrapping."""
    with np.errstate(over="ignore"):
        d = _diff(x)
        d[starts] = 0
        dd = _diff(d)
        dd[starts] = 0
        second = starts + 1
        second = second[second < ends]
        dd[second] = d[second]
    return d, dd


def encode_times_many(ts: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      level: int = 3) -> list[bytes]:
    """``encode_times`` of every segment ``ts[starts[i]:ends[i]]`` (contiguous, in order, each
    strictly increasing and not empty), computed at once."""
    ts = np.asarray(ts, dtype=_I64)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    sizes = ends - starts
    if (sizes <= 0).any():
        raise ValueError("a block needs at least one timestamp")
    coded = zigzag(_seg_deltas(ts, starts, ends)[1])
    head = np.zeros(starts.size, dtype=np.dtype([("version", "u1"), ("n", "<u4"),
                                                 ("t0", "<i8")]))
    head["version"], head["n"], head["t0"] = _VERSION, sizes, ts[starts]
    widths = _byte_widths(np.maximum.reduceat(coded, starts))
    return _pack_segments(head.view(np.uint8).reshape(starts.size, -1), None, coded, sizes,
                          widths, _cctx(level))


def _pack_segments(heads: np.ndarray, extras: list[bytes | None] | None, coded: np.ndarray,
                   sizes: np.ndarray, widths: np.ndarray,
                   cctx: zstandard.ZstdCompressor) -> list[bytes]:
    """One zstd frame per segment of ``coded`` (uint64 rows of K columns, or a vector: K = 1;
    segments of ``sizes`` rows back to back): ``heads[i] | extras[i] | u8 widths[i, c] for each
    column | planes of column 0 | planes of column 1 ...`` where a column's planes are the low
    ``widths[i, c]`` bytes of its values in the segment, byte plane by byte plane (as
    ``_planes``). The bytes of all frames are laid out in one buffer with numpy; only the zstd
    call is per segment."""
    coded = coded.reshape(coded.shape[0], -1)
    n_cols = coded.shape[1]
    widths = widths.astype(np.int64).reshape(-1, n_cols)
    n_seg, head_len = heads.shape
    extra_len = np.zeros(n_seg, dtype=np.int64)
    if extras is not None:
        extra_len[:] = [len(x) if x else 0 for x in extras]
    body = head_len + extra_len  # where the width bytes go
    col_bytes = widths * sizes[:, None]  # bytes of each column's planes
    lengths = body + n_cols + col_bytes.sum(axis=1)
    offsets = np.zeros(n_seg + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), dtype=np.uint8)
    out[(offsets[:-1, None] + np.arange(head_len)).ravel()] = heads.ravel()
    if extras is not None:
        for i in np.flatnonzero(extra_len).tolist():
            at = int(offsets[i]) + head_len
            out[at:at + int(extra_len[i])] = np.frombuffer(extras[i], dtype=np.uint8)  # type: ignore[arg-type]
    out[((offsets[:-1] + body)[:, None] + np.arange(n_cols)).ravel()] = widths.ravel()
    # where each column's planes begin, per segment
    col_at = (offsets[:-1] + body + n_cols)[:, None] + np.cumsum(col_bytes, axis=1) - col_bytes
    seg = np.repeat(np.arange(n_seg), sizes)
    first = np.zeros(n_seg, dtype=np.int64)
    np.cumsum(sizes[:-1], out=first[1:])
    pos = np.arange(coded.shape[0], dtype=np.int64) - first[seg]  # row inside its segment
    n_of = sizes[seg]
    le = coded.astype("<u8", copy=False).view(np.uint8).reshape(-1, n_cols, 8)
    for c in range(n_cols):
        w_of = widths[seg, c]
        planes = col_at[seg, c] + pos
        for b in range(int(widths[:, c].max()) if n_seg else 0):
            keep = np.flatnonzero(w_of > b)
            out[planes[keep] + b * n_of[keep]] = le[keep, c, b]
    buf = memoryview(out.data)
    bounds = offsets.tolist()
    compress = cctx.compress
    return [compress(buf[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def decode_chunks(blobs: list[bytes], block_times: list[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timestamps, values, sizes) of many chunks at once, concatenated in order.

    Per chunk only the zstd call (and the bitmap of a chunk that lacks some of its block's
    timestamps); headers and byte planes are read for all chunks at once from one buffer."""
    n_blobs = len(blobs)
    if not n_blobs:
        e = np.empty(0, dtype=_I64)
        return e, e, np.zeros(0, dtype=np.int64)
    if len(block_times) != n_blobs:
        raise ValueError("one block's timestamps per chunk")
    decompress = _dctx().decompress
    raws = [decompress(blob) for blob in blobs]
    lengths = np.fromiter(map(len, raws), dtype=np.int64, count=n_blobs)
    if (lengths < _CHUNK_HEAD.size + 1).any():
        raise ValueError("chunk too short")
    offsets = np.zeros(n_blobs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buf = np.frombuffer(b"".join(raws), dtype=np.uint8)
    head = buf[(offsets[:-1, None] + np.arange(_CHUNK_HEAD.size)).ravel()].view(
        np.dtype([("version", "u1"), ("mode", "u1"), ("n", "<u4"), ("v0", "<i8"),
                  ("has_mask", "u1")]))
    if (head["version"] != _VERSION).any():
        bad = int(head["version"][head["version"] != _VERSION][0])
        raise ValueError(f"unknown chunk version {bad}")
    sizes = head["n"].astype(np.int64)
    ts_parts = list(block_times)
    pos = offsets[:-1] + _CHUNK_HEAD.size  # where each chunk's planes begin
    for i in np.flatnonzero(head["has_mask"]).tolist():
        bt = block_times[i]
        size = (bt.size + 7) // 8
        at = int(pos[i])
        bits = np.unpackbits(buf[at:at + size], count=bt.size).view(bool)
        ts_parts[i] = bt[bits]
        pos[i] += size
    if (np.fromiter(map(len, ts_parts), dtype=np.int64, count=n_blobs) != sizes).any():
        raise ValueError("chunk does not match its block's timestamps")
    widths = buf[pos].astype(np.int64)
    if (pos + 1 + widths * sizes > offsets[1:]).any() or (widths > 8).any():
        raise ValueError("chunk too short")
    seg = np.repeat(np.arange(n_blobs), sizes)
    starts = np.zeros(n_blobs, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    at = (pos + 1)[seg] + np.arange(seg.size, dtype=np.int64) - starts[seg]
    n_of, w_of = sizes[seg], widths[seg]
    u = np.zeros(seg.size, dtype=_U64)
    for byte in range(int(widths.max())):
        rows = np.flatnonzero(w_of > byte)
        u[rows] |= buf[at[rows] + byte * n_of[rows]].astype(_U64) << _U64(8 * byte)
    ts = np.concatenate(ts_parts)
    d = unzigzag(u)
    v0 = head["v0"].astype(_I64)
    mode2 = head["mode"] == 2
    with np.errstate(over="ignore"):
        if mode2.any():
            rows = mode2[seg]
            d = np.where(rows, cumsum_by_segment(d, starts, seg), d)
        values = cumsum_by_segment(d, starts, seg) + v0[seg]
    return ts, values, sizes


# -- rollup blocks ------------------------------------------------------------------------------

# One row per bucket; on disk each row is 9 columns, each zigzagged and cut to its own byte width
# (per blob). In memory every column is absolute. Stored: bucket index and last delta-coded
# across the blob's buckets; last_ts as the offset from the bucket start; max relative to last;
# first relative to last (0 for gauges, whose first_v is last_v); min relative to first (0 for
# counters without reset); the sum relative to count * the middle of min and max; corr as is
# (0 unless a counter reset). All modulo 2**64: decoding redoes the same wrapping arithmetic.
ROLLUP_COLUMNS = ("start", "count", "sum", "min", "max", "first_v", "last_ts", "last_v", "corr")
_K = 9
_BYTES = np.array([1 << (8 * i) for i in range(1, 8)], dtype=_U64)


def _byte_widths(top: np.ndarray) -> np.ndarray:
    """Bytes needed for each uint64 in ``top`` (0 for 0)."""
    w = np.searchsorted(_BYTES, top, side="right") + 1
    return np.where(top == 0, 0, w)


def _mid(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) // 2


def _starts_mask(starts: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[starts] = True
    return m


def _seg_diff(x: np.ndarray, first: np.ndarray, initial: np.ndarray | int) -> np.ndarray:
    """x[i] - x[i-1] inside a segment, x[i] - initial at a segment's first row."""
    d = np.empty_like(x)
    d[0] = 0
    np.subtract(x[1:], x[:-1], out=d[1:])
    d[first] = x[first] - initial
    return d


_ZERO = np.zeros(1, dtype=_I64)
_ZERO.flags.writeable = False


def cumsum_by_segment(d: np.ndarray, starts: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each segment start (``starts[0]`` is 0, ``seg`` = segment
    of each row; wrapping modulo 2**64: call it under ``np.errstate(over="ignore")``)."""
    c = np.cumsum(d)
    # np.concatenate, not np.r_ (the same array; r_ parses its index in Python, per call)
    before = np.concatenate((_ZERO, c[starts[1:] - 1])) if starts.size \
        else np.empty(0, dtype=_I64)
    return c - before[seg]


def encode_rollups(buckets: dict[str, np.ndarray], starts: np.ndarray, windows: np.ndarray,
                   bucket_ms: int, level: int = 3) -> list[bytes]:
    """One blob per segment of ``buckets`` (rows ``starts[i]`` up to the next start): the buckets of
    one series in the rollup window ``windows[i]``; rows sorted by (series, start)."""
    n = int(buckets["start"].size)
    if n == 0:
        return []
    starts = np.asarray(starts, dtype=np.int64)
    first = _starts_mask(starts, n)
    seg = np.cumsum(first) - 1
    with np.errstate(over="ignore"):
        start = buckets["start"].astype(_I64)
        count = buckets["count"].astype(_I64)
        last = buckets["last_v"].astype(_I64)
        lo = buckets["min"].astype(_I64)
        hi = buckets["max"].astype(_I64)
        fv = buckets["first_v"].astype(_I64)
        index = (start - np.asarray(windows, dtype=_I64)[seg]) // bucket_ms
        coded = np.stack([
            _seg_diff(index, first, -1),
            _seg_diff(count, first, 0),
            _seg_diff(last, first, 0),
            last - fv,
            fv - lo,
            hi - last,
            buckets["sum"].astype(_I64) - count * _mid(lo, hi),
            buckets["last_ts"].astype(_I64) - start,
            buckets["corr"].astype(_I64),
        ], axis=1)
    zz = zigzag(coded)
    widths = _byte_widths(np.maximum.reduceat(zz, starts, axis=0))  # (segments, columns)
    sizes = np.diff(np.r_[starts, n])
    head = np.zeros(starts.size, dtype=np.dtype([("version", "u1"), ("n", "<u4"),
                                                 ("window", "<i8")]))
    head["version"], head["n"], head["window"] = _VERSION, sizes, windows
    return _pack_segments(head.view(np.uint8).reshape(starts.size, -1), None, zz, sizes,
                          widths, _cctx(level))


def decode_rollups(blobs: list[bytes], bucket_ms: int
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Columns of many rollup blobs, concatenated, and the number of rows of each blob."""
    dctx = _dctx()
    heads, sizes, windows = [], [], []
    for blob in blobs:
        raw = dctx.decompress(blob)
        version, n, window_ms = _ROLLUP_HEAD.unpack_from(raw, 0)
        if version != _VERSION:
            raise ValueError(f"unknown rollup version {version}")
        heads.append((raw, np.frombuffer(raw, dtype=np.uint8, count=_K,
                                         offset=_ROLLUP_HEAD.size)))
        sizes.append(n)
        windows.append(window_ms)
    sizes_a = np.array(sizes, dtype=np.int64)
    if not heads:
        return {c: np.empty(0, dtype=_I64) for c in ROLLUP_COLUMNS}, sizes_a
    n_all = int(sizes_a.sum())
    widths = np.stack([w for _, w in heads]).astype(np.int64)
    top = widths.max(axis=0)
    planes = [np.zeros((int(top[c]), n_all), dtype=np.uint8) for c in range(_K)]
    pos = 0
    for (raw, w), n in zip(heads, sizes, strict=True):
        at = _ROLLUP_HEAD.size + _K
        for c in range(_K):
            if w[c]:
                size = int(w[c]) * n
                planes[c][:w[c], pos:pos + n] = np.frombuffer(
                    raw, dtype=np.uint8, count=size, offset=at).reshape(int(w[c]), n)
                at += size
        pos += n
    coded = np.zeros((_K, n_all), dtype=_U64)
    for c in range(_K):
        for j in range(int(top[c])):
            coded[c] |= planes[c][j].astype(_U64) << _U64(8 * j)
    coded = unzigzag(coded)
    starts = np.r_[0, np.cumsum(sizes_a)[:-1]].astype(np.int64)
    seg = np.repeat(np.arange(sizes_a.size), sizes_a)
    with np.errstate(over="ignore"):
        index = cumsum_by_segment(coded[0], starts, seg) - 1
        start = index * bucket_ms + np.array(windows, dtype=_I64)[seg]
        count = cumsum_by_segment(coded[1], starts, seg)
        last = cumsum_by_segment(coded[2], starts, seg)
        fv = last - coded[3]
        lo = fv - coded[4]
        hi = coded[5] + last
        return {
            "start": start,
            "count": count,
            "sum": coded[6] + count * _mid(lo, hi),
            "min": lo,
            "max": hi,
            "first_v": fv,
            "last_ts": coded[7] + start,
            "last_v": last,
            "corr": coded[8],
        }, sizes_a
