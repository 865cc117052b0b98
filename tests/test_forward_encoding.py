"""The forwarder's remote-write encoding (``remote_write.encode_columns``, ``convert``): the
samples laid out with numpy are the bytes the ``protobuf`` library writes, for every value and
timestamp (zero, -0.0, NaN, infinities, negative, the int64 extremes); stored batches become one
time-ordered series each per request, a timestamp sent twice by overlapping batches taken from
the later batch, a batch storage cannot read counted, not sent."""

from __future__ import annotations

import math
import random
import struct

import cramjam
import numpy as np

from edgemon.collector.forward.convert import LabelCache, encode_batches
from edgemon.collector.forward.remote_write import (
    decode,
    encode,
    encode_columns,
    label_fields,
    series_labels,
)
from edgemon.collector.storage.base import ForwardBatch
from edgemon.protocol import GAUGE, BatchBuilder, MetricDef
from edgemon.protocol import encode as encode_batch

CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 3, ("cpu",))

AWKWARD_VALUES = [0.0, -0.0, 1.0, -1.0, 0.1 + 0.2, 1e-300, -1e300, 5e-324, float("nan"),
                  float("inf"), float("-inf"), 2.0 ** 53, 99.999]
AWKWARD_TIMES = [0, 1, 127, 128, 16_383, 16_384, 1_780_000_000_000, 2 ** 62, 2 ** 63 - 1, -1,
                 -1_000, -(2 ** 63)]


def raw(body: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(body))


def by_columns(series: list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]) -> bytes:
    labels = [label_fields(lb) for lb, _ in series]
    starts = [0]
    for _, samples in series:
        starts.append(starts[-1] + len(samples))
    ts = np.array([t for _, samples in series for t, _ in samples], np.int64)
    values = np.array([v for _, samples in series for _, v in samples], np.float64)
    return encode_columns(labels, starts, ts, values)


def test_columns_are_the_bytes_the_protobuf_library_writes() -> None:
    rng = random.Random(16)
    series = []
    for n in range(40):
        labels = series_labels(f"m{n % 3}", f"host-{n}", {"cpu": str(n), "empty": ""},
                               {"fleet": "test"})
        samples = [(rng.choice(AWKWARD_TIMES) if rng.random() < 0.3 else
                    rng.randrange(-(2 ** 63), 2 ** 63),
                    rng.choice(AWKWARD_VALUES) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6))
                   for _ in range(rng.randrange(1, 30))]
        series.append((labels, samples))
    series.append((series_labels("every", "h", {}), [(t, v) for t in AWKWARD_TIMES
                                                    for v in AWKWARD_VALUES]))
    assert raw(by_columns(series)) == raw(encode(series))
    got = decode(by_columns(series))
    assert [lb for lb, _ in got] == [lb for lb, _ in series]
    bits = [[(t, struct.pack("<d", v)) for t, v in s] for _, s in got]
    assert bits == [[(t, struct.pack("<d", v)) for t, v in s] for _, s in series]  # NaN, -0.0


def test_no_series_is_an_empty_request() -> None:
    assert raw(encode_columns([], [0], np.zeros(0, np.int64), np.zeros(0))) == b""


def batch(seq: int, host: str, points: dict[str, list[tuple[int, int]]]) -> ForwardBatch:
    builder = BatchBuilder()
    for cpu, samples in points.items():
        for ts, value in samples:
            builder.add(ts, CPU, (cpu,), value)
    payload = encode_batch(builder.build(host=host, instance="i1", seq=seq, sent_ms=10_000_000))
    return ForwardBatch(seq, host, 10_000_000, sum(map(len, points.values())), payload)


def test_overlapping_batches_merge_in_time_order_the_later_batch_winning() -> None:
    t = 1_780_000_000_000
    first = batch(1, "h1", {"0": [(t, 1_000), (t + 10, 2_000), (t + 20, 3_000)],
                            "1": [(t, 5)]})
    other_host = batch(2, "h2", {"0": [(t, 7_000)]})
    # the same host again, overlapping: t + 10 sent twice (the later value wins), t + 5 and
    # t - 10 fall between and before the first batch's samples
    second = batch(3, "h1", {"0": [(t - 10, 9), (t + 5, 4_000), (t + 10, 2_500)]})
    unreadable = ForwardBatch(4, "h1", 10_000_000, 12, b"not a batch")
    request = encode_batches([first, other_host, second, unreadable],
                             LabelCache({"fleet": "x"}))

    def key(host: str, cpu: str) -> list[tuple[str, str]]:
        return series_labels(CPU.name, host, {"cpu": cpu}, {"fleet": "x"})
    assert decode(request.body) == [
        (key("h1", "0"), [(t - 10, 0.009), (t, 1.0), (t + 5, 4.0), (t + 10, 2.5),
                          (t + 20, 3.0)]),
        (key("h1", "1"), [(t, 0.005)]),
        (key("h2", "0"), [(t, 7.0)]),
    ]
    assert (request.samples, request.unreadable, request.series, request.last_seq) == \
        (7, 12, 3, 4)


def test_values_are_the_stored_numbers_scaled_back() -> None:
    t = 1_780_000_000_000
    values = [0, 1, -1, 99_999, 2 ** 53, -(2 ** 53)]
    request = encode_batches([batch(1, "h", {"0": [(t + i, v) for i, v in enumerate(values)]})],
                             LabelCache({}))
    [(_labels, samples)] = decode(request.body)
    assert samples == [(t + i, v / 1000) for i, v in enumerate(values)]
    assert not any(math.isnan(v) for _, v in samples)
