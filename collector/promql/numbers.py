"""Numbers written the way Prometheus writes them (Go's ``strconv.FormatFloat``)."""

from __future__ import annotations

import math

import msgspec
import numpy as np

__all__ = ["format_exponent", "format_sample", "format_timestamp", "format_timestamps",
           "format_value", "format_values"]


def format_value(v: float) -> str:
    """``FormatFloat(v, 'f', -1, 64)``: the shortest digits that read back as ``v``, never an
    exponent; ``NaN``, ``+Inf``, ``-Inf``."""
    v = float(v)  # a numpy scalar's repr would name its type
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = repr(v)
    if "e" in text:
        return np.format_float_positional(v, unique=True, trim="-")
    return text[:-2] if text.endswith(".0") else text


def format_exponent(v: float) -> str:
    """``FormatFloat(v, 'e', -1, 64)``, e.g. ``1e+00``, ``2.5e+01`` (alert values)."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return np.format_float_scientific(v, unique=True, trim="-", exp_digits=2)


def format_sample(v: float) -> str:
    """``FormatFloat(v, 'g', -1, 64)``, the text exposition format's numbers: positional for
    exponents -4..5, else ``1.5e+06``."""
    if v != v or math.isinf(v) or v == 0:
        return format_value(v)
    text = format_exponent(v)
    exponent = int(text.rsplit("e", 1)[1])  # the rounded one decides, like Go's
    return format_value(v) if -4 <= exponent < 6 else text


def format_timestamp(ms: int) -> str:
    """Seconds with milliseconds like Prometheus's JSON: ``1700000000``, ``1700000000.5``
    is written ``1700000000.500``."""
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    seconds, fraction = divmod(ms, 1000)
    return f"{sign}{seconds}.{fraction:03d}" if fraction else f"{sign}{seconds}"


def format_values(values: np.ndarray) -> list[str]:
    """``format_value`` of every element, vectorised. msgspec's JSON encoder writes each float
    with its shortest round-trip digits, positional where Go's ``'f'`` format is (``0.000025``),
    at C speed (Python's ``repr`` costs ~20x more per value); ``.0`` is dropped, and the rare
    elements it writes with an exponent or as ``null`` (NaN, infinities) are redone one by one."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return []
    text = msgspec.json.encode(values.tolist()).decode()
    out = text[1:-1].replace(".0,", ",").removesuffix(".0").split(",")
    if "e" in text or "n" in text:
        for i, item in enumerate(out):
            if "e" in item or "n" in item:
                out[i] = format_value(float(values[i]))
    return out


def format_timestamps(ms: np.ndarray) -> list[str]:
    """``format_timestamp`` of every element, vectorised: the whole seconds through msgspec's
    integer writer, milliseconds appended where there are any."""
    ms = np.asarray(ms, dtype=np.int64)
    if not ms.size:
        return []
    if (ms < 0).any():
        return [format_timestamp(t) for t in ms.tolist()]
    seconds, fraction = np.divmod(ms, 1000)
    out: list[str] = msgspec.json.encode(seconds.tolist()).decode()[1:-1].split(",")
    for i in np.flatnonzero(fraction).tolist():
        out[i] = f"{out[i]}.{int(fraction[i]):03d}"
    return out
