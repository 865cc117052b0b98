"""Functions of instant vectors and scalars (``abs``, ``clamp_max``, ``label_replace``, ...).

Range-vector functions are in ``windows.py``; ``absent``/``absent_over_time``, ``scalar``,
``vector``, ``time`` and ``timestamp`` need the evaluator and live there.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from edgemon.collector.promql.errors import ExecutionError
from edgemon.collector.promql.labels import (
    LABEL_NAME_RE,
    compile_regex,
    drop_name,
    labels_from,
)
from edgemon.collector.promql.model import InstantVector, merge_same_labels

__all__ = ["DATE_FUNCTIONS", "MATH_FUNCTIONS", "apply_math", "clamp", "date_function",
           "label_join", "label_replace", "round_to", "sort_vector"]


def _sgn(v: np.ndarray) -> np.ndarray:
    return np.sign(v)


MATH_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "ln": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sgn": _sgn,
    "acos": np.arccos,
    "acosh": np.arccosh,
    "asin": np.arcsin,
    "asinh": np.arcsinh,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "cos": np.cos,
    "cosh": np.cosh,
    "sin": np.sin,
    "sinh": np.sinh,
    "tan": np.tan,
    "tanh": np.tanh,
    "deg": np.degrees,
    "rad": np.radians,
}


def apply_math(name: str, vec: InstantVector) -> InstantVector:
    with np.errstate(all="ignore"):
        values = MATH_FUNCTIONS[name](vec.values)
    return _renamed(vec, values)


def _renamed(vec: InstantVector, values: np.ndarray,
             present: np.ndarray | None = None) -> InstantVector:
    """The vector with new values and without metric names."""
    return merge_same_labels(InstantVector([drop_name(x) for x in vec.labels], values,
                                           vec.present if present is None else present))


def round_to(vec: InstantVector, to_nearest: np.ndarray) -> InstantVector:
    with np.errstate(all="ignore"):
        inverse = 1.0 / to_nearest
        values = np.floor(vec.values * inverse + 0.5) / inverse
    return _renamed(vec, values)


def clamp(vec: InstantVector, low: np.ndarray | None, high: np.ndarray | None) -> InstantVector:
    values = vec.values
    present = vec.present
    if high is not None:
        values = np.where(np.isnan(values) | np.isnan(high), np.nan, np.minimum(high, values))
    if low is not None:
        values = np.where(np.isnan(values) | np.isnan(low), np.nan, np.maximum(low, values))
    if low is not None and high is not None:
        present = present & ~(high < low)  # clamp(v, min > max) is empty
    return _renamed(vec, values, present)


def sort_vector(vec: InstantVector, descending: bool) -> InstantVector:
    """Only an instant query has an order to show; NaN goes last either way."""
    if vec.values.shape[1] != 1 or len(vec) < 2:
        return vec
    v = vec.values[:, 0]
    key = np.where(np.isnan(v), np.inf, -v if descending else v)
    return vec.take(np.argsort(key, kind="stable"))


def _go_expand(template: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``; ``$1x`` is
    the group named ``1x`` (empty), like Go."""
    out = []
    i = 0
    while i < len(template):
        c = template[i]
        if c != "$" or i + 1 == len(template):
            out.append(c)
            i += 1
            continue
        nxt = template[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            end = template.find("}", i + 2)
            name = template[i + 2:end] if end > 0 else ""
            if end < 0 or not re.fullmatch(r"\w+", name):
                out.append(c)
                i += 1
                continue
            i = end + 1
        else:
            m = re.match(r"\w+", template[i + 1:])
            if not m:
                out.append(c)
                i += 1
                continue
            name = m.group(0)
            i += 1 + len(name)
        out.append(_group(match, name))
    return "".join(out)


def _group(match: re.Match[str], name: str) -> str:
    try:
        value = match.group(int(name)) if name.isdigit() else match.group(name)
    except IndexError:  # no such group: Go expands it to nothing
        return ""
    return value or ""


def label_replace(vec: InstantVector, dst: str, replacement: str, src: str,
                  regex: str) -> InstantVector:
    try:
        pattern = compile_regex(regex)
    except re.error as exc:
        raise ExecutionError(f"invalid regular expression in label_replace(): {regex}: "
                             f"{exc}") from None
    if not LABEL_NAME_RE.fullmatch(dst):
        raise ExecutionError(f"invalid destination label name in label_replace(): {dst}")
    labels = []
    for current in vec.labels:
        d = dict(current)
        m = pattern.fullmatch(d.get(src, ""))
        if m is not None:
            d[dst] = _go_expand(replacement, m)
        labels.append(labels_from(d))
    return merge_same_labels(InstantVector(labels, vec.values, vec.present))


def label_join(vec: InstantVector, dst: str, separator: str, sources: list[str]
               ) -> InstantVector:
    if not LABEL_NAME_RE.fullmatch(dst):
        raise ExecutionError(f"invalid destination label name in label_join(): {dst}")
    labels = []
    for current in vec.labels:
        d = dict(current)
        d[dst] = separator.join(d.get(s, "") for s in sources)
        labels.append(labels_from(d))
    return merge_same_labels(InstantVector(labels, vec.values, vec.present))


DATE_FUNCTIONS = frozenset({"year", "month", "day_of_month", "day_of_week", "day_of_year",
                            "hour", "minute", "days_in_month"})


def date_function(name: str, vec: InstantVector) -> InstantVector:
    """Calendar fields (UTC) of values that are Unix seconds."""
    seconds = vec.values
    ok = np.isfinite(seconds)
    ms = np.where(ok, np.floor(np.where(ok, seconds, 0) * 1000), 0).astype("datetime64[ms]")
    days = ms.astype("datetime64[D]")
    months = ms.astype("datetime64[M]")
    years = ms.astype("datetime64[Y]")
    if name == "year":
        out = years.astype(np.int64) + 1970
    elif name == "month":
        out = months.astype(np.int64) % 12 + 1
    elif name == "day_of_month":
        out = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_year":
        out = (days - years.astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_week":
        out = (days.astype(np.int64) + 4) % 7  # 1970-01-01 was a Thursday
    elif name == "hour":
        out = (ms - days).astype("timedelta64[h]").astype(np.int64)
    elif name == "minute":
        out = (ms - ms.astype("datetime64[h]")).astype("timedelta64[m]").astype(np.int64)
    else:  # days_in_month
        out = ((months + 1).astype("datetime64[D]") - months.astype("datetime64[D]")
               ).astype(np.int64)
    return _renamed(vec, np.where(ok, out.astype(np.float64), np.nan))

