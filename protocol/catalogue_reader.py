"""Bounded reading of catalogue messages and referencing batches (``catalogue.py``, SPEC.md §9).

The same discipline as ``reader.BatchReader``, whose helpers these readers use: every array's
length (and the running totals of series, samples and label values) is checked from its msgpack
header before anything is built, flat lists of scalars are built in one call after their byte
span was checked, strings are strict UTF-8 of at most 256 bytes, binary and extension types are
refused, unknown top-level keys are read within the extension budget. So a catalogue or a
referencing batch costs at most what an inline batch may cost (``limits.MAX_DECODE_BYTES``).
"""

from __future__ import annotations

from typing import Any

from edgemon.protocol.errors import MalformedPayload
from edgemon.protocol.limits import (
    MAX_LABEL_VALUES,
    MAX_LABELS,
    MAX_SAMPLES,
    MAX_SERIES,
    MAX_TIMESTAMPS,
)
from edgemon.protocol.reader import BatchReader, read_batch_map

__all__ = ["read_catalogue_map", "read_referencing_map"]


def read_catalogue_map(packed: bytes) -> dict[str, Any]:
    """The catalogue map in ``packed``: scalars, and ``metrics`` of
    ``[name, kind, unit, scale, [label keys], [[label values], ...]]``."""
    return read_batch_map(packed, _CatalogueReader)


def read_referencing_map(packed: bytes) -> dict[str, Any]:
    """The referencing batch map in ``packed``: the scalars and ``t`` of a batch, ``catalogue``,
    ``values`` or ``bvalues`` (flat integers), ``sparse`` (``[[index, [[offset, [values]],
    ...]], ...]``) and ``factors`` (``[[index, factor], ...]``); ``base`` is read as an
    unknown key (two integers)."""
    return read_batch_map(packed, _ReferencingReader)


class _CatalogueReader(BatchReader):
    """``BatchReader`` whose metrics list label values where a batch has series entries
    (``id`` is read as a top-level scalar)."""

    def _item(self, metric: str, index: int) -> Any:
        return self._flat(metric, index, MAX_LABELS, "label values", strings=True,
                          total=("label values", MAX_LABEL_VALUES))


class _ReferencingReader(BatchReader):
    """``BatchReader`` that reads the top-level ``values`` and ``sparse`` of a referencing batch
    (``catalogue`` is a scalar), where an inline batch would have unknown keys."""

    def _extension(self, where: str, depth: int) -> Any:
        if depth == 1 and where in ("values", "bvalues"):
            return self._flat("", "values", MAX_SAMPLES, "values", strings=False,
                              total=("samples", MAX_SAMPLES))
        if depth == 1 and where == "sparse":
            return self._sparse()
        if depth == 1 and where == "factors":
            return self._factors()
        return super()._extension(where, depth)

    def _factors(self) -> list[list[Any]]:
        """``factors`` of a based batch (SPEC.md §9.1): ``[[index, factor], ...]``."""
        count = self._array("factors", MAX_SERIES, "series")
        factors: list[list[Any]] = []
        for i in range(count):
            where = f"factors[{i}]"
            if self._array(where, 2, "") != 2:
                raise MalformedPayload(f"{where}: a factor is [index, factor]", reason="schema")
            factors.append([self._scalar(f"{where}.index"), self._scalar(f"{where}.factor")])
        return factors

    def _sparse(self) -> list[list[Any]]:
        count = self._array("sparse", MAX_SERIES, "series")
        sparse: list[list[Any]] = []
        for i in range(count):
            where = f"sparse[{i}]"
            if self._array(where, 2, "") != 2:
                raise MalformedPayload(f"{where}: a sparse series is [index, runs]",
                                       reason="schema")
            index = self._scalar(f"{where}.index")
            n_runs = self._array(f"{where}.runs", MAX_TIMESTAMPS, "runs")
            self._spend("series", n_runs, MAX_SERIES, f"{where}.runs")
            runs = []
            for j in range(n_runs):
                if self._array(f"{where}.runs[{j}]", 2, "") != 2:
                    raise MalformedPayload(f"{where}.runs[{j}]: a run is [offset, values]",
                                           reason="schema")
                offset = self._scalar(f"{where}.runs[{j}].offset")
                if type(offset) is not int:
                    raise MalformedPayload(f"{where}.runs[{j}].offset must be an integer",
                                           reason="schema")
                values = self._flat(where, f".runs[{j}].values", MAX_TIMESTAMPS, "values",
                                    strings=False, total=("samples", MAX_SAMPLES))
                runs.append([offset, values])
            sparse.append([index, runs])
        return sparse
