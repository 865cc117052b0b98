"""Numbers written the way Prometheus writes them (Go's ``strconv.FormatFloat``)."""

from __future__ import annotations

import math

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
    """``format_value`` of every element, vectorised: whole numbers through int64, the rest
    through numpy's shortest round-trip text (what ``repr`` gives), exponents fixed up."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(values.size, dtype=object)
    whole = (values == np.trunc(values)) & (np.abs(values) < 1e15) & ~(
        (values == 0) & np.signbit(values))
    if whole.any():
        out[whole] = values[whole].astype(np.int64).astype(str).astype(object)
    rest = np.flatnonzero(~whole)
    if rest.size:
        texts = values[rest].astype(str).tolist()
        for i, text in zip(rest.tolist(), texts, strict=True):
            if "e" in text or "n" in text or text.endswith(".0"):
                text = format_value(float(values[i]))
            out[i] = text
    return out.tolist()  # type: ignore[no-any-return]


def format_timestamps(ms: np.ndarray) -> list[str]:
    """``format_timestamp`` of every element, vectorised."""
    ms = np.asarray(ms, dtype=np.int64)
    if ms.size and (ms >= 0).all():
        seconds = (ms // 1000).astype(str)
        fraction = ms % 1000
        if not fraction.any():
            return seconds.tolist()  # type: ignore[no-any-return]
        tail = np.char.add(".", np.char.zfill((fraction).astype(str), 3))
        return np.where(fraction != 0, np.char.add(seconds, tail), seconds).tolist()  # type: ignore[no-any-return]
    return [format_timestamp(t) for t in ms.tolist()]
