"""Prometheus remote-write 1.0: the ``WriteRequest`` protobuf (built from its descriptor with the
``protobuf`` library, no generated code to keep in sync), snappy block compression (``cramjam``),
and one POST with the protocol's headers.

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
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["HEADERS", "WriteRequest", "decode", "encode", "series_labels"]

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
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest = _build()


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


def decode(body: bytes) -> list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]:
    """The inverse of ``encode`` (tests, diagnostics)."""
    request = WriteRequest()
    request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    return [([(lb.name, lb.value) for lb in ts.labels],
             [(s.timestamp, s.value) for s in ts.samples]) for ts in request.timeseries]
