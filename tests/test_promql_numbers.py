"""Numbers as Prometheus writes them in JSON (Go's ``FormatFloat(v, 'f', -1, 64)``).

``format_values`` (the vectorised writer every query answer goes through) must agree with
``format_value`` (one float at a time, spelled out after Go's rules) on every kind of value:
whole numbers, short and long fractions, negative zero, values that ``repr`` writes with an
exponent, NaN and infinities, and any mix of them in one array.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgemon.collector.promql.numbers import (
    format_timestamp,
    format_timestamps,
    format_value,
    format_values,
)

SPECIAL = [0.0, -0.0, 1.0, -5.0, 0.1, 1 / 3, 1e15, 1e16, 1e-7, 5e-324, 999999999999999.9,
           123456789012345678.0, 2.0**53, 2.0**53 + 2, 1.7976931348623157e308]


def test_format_value_follows_go() -> None:
    assert [format_value(v) for v in (0.0, -0.0, 1.0, 0.5, 1e16, 1e-7, 2.5e-5)] == [
        "0", "-0", "1", "0.5", "10000000000000000", "0.0000001", "0.000025"]
    assert [format_value(float(x)) for x in ("nan", "inf", "-inf")] == ["NaN", "+Inf", "-Inf"]


@pytest.mark.parametrize("kind", ["gauges", "percent", "counters", "special", "nonfinite",
                                  "any magnitude", "mixed"])
def test_format_values_equals_one_at_a_time(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    values = {
        "gauges": rng.uniform(-1e6, 1e6, 3000),
        "percent": np.round(rng.uniform(0, 100, 3000), 2),
        "counters": np.floor(rng.uniform(0, 1e14, 3000)),
        "special": np.array(SPECIAL),
        "nonfinite": np.array([float("nan"), 1.0, float("inf"), -float("inf"), 2.5]),
        "any magnitude": rng.standard_normal(3000) * 10.0 ** rng.integers(-25, 25, 3000),
        "mixed": np.concatenate([np.round(rng.uniform(0, 100, 50), 1), [1e20, 7.0]]),
    }[kind]
    assert format_values(values) == [format_value(v) for v in values.tolist()]


def test_format_values_of_nothing() -> None:
    assert format_values(np.empty(0)) == []


def test_format_timestamps_equals_one_at_a_time() -> None:
    ms = np.array([0, 1, 999, 1000, 1_700_000_000_000, 1_700_000_000_500, 1_700_000_000_007,
                   -1, -1500, 2**62], dtype=np.int64)
    for values in (ms, ms[ms >= 0], np.arange(0, 10**7, 60_000, dtype=np.int64) + 1234):
        assert format_timestamps(values) == [format_timestamp(t) for t in values.tolist()]
    assert format_timestamps(np.empty(0, dtype=np.int64)) == []
    assert format_timestamp(1_700_000_000_500) == "1700000000.500"
    assert format_timestamp(-1500) == "-1.500"
