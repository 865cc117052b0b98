"""Prometheus remote-write 1.0: the ``WriteRequest`` protobuf (built from its descriptor with the
``protobuf`` library, no generated code to keep in sync), snappy block compression (``cramjam``),
and one POST with the protocol's headers.

Two ways to build a request, the same bytes on the wire: ``encode`` fills the library's message
one sample at a time (the reference; tests and small requests), ``encode_columns`` (the
forwarder's) takes each series' labels as the library serialized them (``label_fields``, cached
per series by the caller) and lays out the samples with numpy, all at once. A ``Sample`` is
a fixed shape, ``12 <len> 09 <8-byte double> 10 <varint timestamp>``; the library would write
the same bytes (with a zero value or timestamp left out, as proto3 does), which
``tests/test_forward_encoding.py`` checks byte for byte against ``encode``.

Schema (prometheus/prompb/{remote,types}.proto, the parts 1.0 senders fill)::

    message WriteRequest { repeated TimeSeries timeseries = 1; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }   // ms since the epoch

Labels of a series are sorted by name and carry ``__name__``; samples of a series in time order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cramjam
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["HEADERS", "WriteRequest", "decode", "encode", "encode_columns", "label_fields",
           "series_labels"]

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0",
           "User-Agent": "edgemon-collector-forward"}


def _build() -> Any:
    f = descriptor_pb2.FileDescriptorProto(name="edgemon_prompb.proto", package="prometheus",
                                           syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    message("Sample", ("value", 1, T.TYPE_DOUBLE, opt, ""),
            ("timestamp", 2, T.TYPE_INT64, opt, ""))
    message("Label", ("name", 1, T.TYPE_STRING, opt, ""), ("value", 2, T.TYPE_STRING, opt, ""))
    message("TimeSeries", ("labels", 1, T.TYPE_MESSAGE, rep, ".prometheus.Label"),
            ("samples", 2, T.TYPE_MESSAGE, rep, ".prometheus.Sample"))
    message("WriteRequest", ("timeseries", 1, T.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return pool


_POOL = _build()
WriteRequest = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(
    "prometheus.WriteRequest"))
_TimeSeries = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(
    "prometheus.TimeSeries"))


def series_labels(name: str, host: str, labels: Mapping[str, str],
                  external: Mapping[str, str] = ()) -> list[tuple[str, str]]:  # type: ignore[assignment]
    """A series' remote-write labels, sorted: ``__name__``, ``host``, its own labels, and the
    external labels it does not already have."""
    out = {**dict(external), **labels, "host": host, "__name__": name}
    return sorted(out.items())


def encode(series: Iterable[tuple[Sequence[tuple[str, str]],
                                  Sequence[tuple[int, float]]]]) -> bytes:
    """Snappy-compressed ``WriteRequest`` of (sorted labels, [(ts_ms, value), ...]) pairs."""
    request = WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for when, value in samples:
            ts.samples.add(value=value, timestamp=when)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def label_fields(labels: Sequence[tuple[str, str]]) -> bytes:
    """The ``labels`` fields of a ``TimeSeries`` (sorted labels), serialized by the library."""
    series = _TimeSeries()
    for name, value in labels:
        series.labels.add(name=name, value=value)
    return series.SerializeToString()


_SAMPLE_MAX = 22  # tag, length, double (tag + 8), int64 varint (tag + at most 10)
_U64 = np.uint64


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _sample_fields(ts: np.ndarray, values: np.ndarray) -> tuple[bytes, list[int]]:
    """The ``samples`` fields (TimeSeries field 2) of every sample, in order, and the offset
    after each: one row of ``_SAMPLE_MAX`` bytes per sample, the bytes a sample does not use
    masked away (the varint's unused tail; a zero value or timestamp, left out as proto3 does)."""
    n = len(ts)
    u = np.ascontiguousarray(ts, dtype=np.int64).view(_U64)  # int64 varint: two's complement
    v = np.ascontiguousarray(values, dtype="<f8")
    width = np.ones(n, np.int64)  # varint bytes
    for k in range(1, 10):
        width += u >= _U64(1 << (7 * k))
    has_value = v.view(_U64) != 0  # +0.0 only: -0.0 has a bit set, and is written
    has_time = u != 0
    rows = np.zeros((n, _SAMPLE_MAX), np.uint8)
    rows[:, 0] = 0x12  # field 2, length-delimited
    length = np.where(has_value, 9, 0) + np.where(has_time, 1 + width, 0)  # < 128: one byte
    rows[:, 1] = length
    rows[:, 2] = 0x09  # field 1, 64-bit
    rows[:, 3:11] = v.view(np.uint8).reshape(n, 8)
    rows[:, 11] = 0x10  # field 2, varint
    for k in range(int(width.max()) if n else 0):
        byte = ((u >> _U64(7 * k)) & _U64(0x7F)).astype(np.uint8)
        rows[:, 12 + k] = byte | np.where(k < width - 1, 0x80, 0).astype(np.uint8)
    column = np.arange(_SAMPLE_MAX)
    used = ((column < 2)
            | ((column >= 2) & (column < 11) & has_value[:, None])
            | ((column >= 11) & (column < 12 + width[:, None]) & has_time[:, None]))
    return rows[used].tobytes(), np.cumsum(2 + length).tolist()


def encode_columns(labels: Sequence[bytes], starts: Sequence[int], ts: np.ndarray,
                   values: np.ndarray) -> bytes:
    """Snappy-compressed ``WriteRequest``: series ``i`` has the label fields ``labels[i]``
    (``label_fields``) and the samples ``starts[i]:starts[i + 1]`` of ``ts`` (int64 ms) and
    ``values`` (float64), in time order."""
    fields, ends = _sample_fields(ts, values)
    view = memoryview(fields)
    offsets = [0, *ends]
    out = bytearray()
    for i, label_bytes in enumerate(labels):
        lo, hi = offsets[starts[i]], offsets[starts[i + 1]]
        out += b"\x0a"  # WriteRequest field 1, length-delimited
        out += _varint(len(label_bytes) + hi - lo)
        out += label_bytes
        out += view[lo:hi]
    return bytes(cramjam.snappy.compress_raw(bytes(out)))


def decode(body: bytes) -> list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]:
    """The inverse of ``encode`` (tests, diagnostics)."""
    request = WriteRequest()
    request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    return [([(lb.name, lb.value) for lb in ts.labels],
             [(s.timestamp, s.value) for s in ts.samples]) for ts in request.timeseries]
