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

import msgpack

from edgemon.protocol.errors import LimitExceeded, MalformedPayload, ProtocolError
from edgemon.protocol.limits import (
    MAX_BATCH_KEYS,
    MAX_LABEL_VALUES,
    MAX_LABELS,
    MAX_METRICS,
    MAX_SAMPLES,
    MAX_SERIES,
    MAX_TIMESTAMPS,
)
from edgemon.protocol.reader import BatchReader, batch_key

__all__ = ["read_catalogue_map", "read_referencing_map"]

_SCALARS = frozenset({"v", "host", "instance", "seq", "sent", "id", "catalogue"})


def read_catalogue_map(packed: bytes) -> dict[str, Any]:
    """The catalogue map in ``packed``: scalars, and ``metrics`` of
    ``[name, kind, unit, scale, [label keys], [[label values], ...]]``."""
    return _read(_CatalogueReader(packed))


def read_referencing_map(packed: bytes) -> dict[str, Any]:
    """The referencing batch map in ``packed``: the scalars and ``t`` of a batch, ``catalogue``,
    ``values`` (flat integers) and ``sparse`` (``[[index, [[offset, [values]], ...]], ...]``)."""
    reader = _ReferencingReader(packed)
    try:
        return _read(reader)
    except ProtocolError as exc:
        exc.batch_key = batch_key(reader.out)
        raise


def _read(reader: BatchReader) -> dict[str, Any]:
    try:
        return reader.read()
    except ProtocolError:
        raise
    except msgpack.OutOfData:
        raise MalformedPayload("not msgpack: the data ends inside a value",
                               reason="not_msgpack") from None
    except Exception as exc:  # msgpack's other errors (bad UTF-8, too deep, ...)
        raise MalformedPayload(f"not msgpack: {exc}", reason="not_msgpack") from None


class _MapReader(BatchReader):
    """A top-level map whose known keys ``_known`` reads; others are extensions."""

    def read(self) -> dict[str, Any]:
        first = self._peek()
        if not (0x80 <= first <= 0x8F or first in (0xDE, 0xDF)):
            raise MalformedPayload("must be a msgpack map", reason="schema")
        keys = self.unpacker.read_map_header()
        if keys > MAX_BATCH_KEYS:
            raise LimitExceeded(f"map has {keys} keys > {MAX_BATCH_KEYS}",
                                reason="too_many_keys")
        out = self.out
        for _ in range(keys):
            key = self._key("top-level")
            if key in out:
                raise MalformedPayload(f"key {key[:40]!r} appears twice", reason="schema")
            if key in _SCALARS:
                out[key] = self._scalar(key)
            else:
                out[key] = self._known(key)
        self._end()
        return out

    def _known(self, key: str) -> Any:
        return self._extension(key, 1)


class _CatalogueReader(_MapReader):
    def _known(self, key: str) -> Any:
        if key != "metrics":
            return self._extension(key, 1)
        count = self._array("metrics", MAX_METRICS, "metrics")
        metrics: list[list[Any]] = []
        for i in range(count):
            where = f"metrics[{i}]"
            if self._array(where, 6, "") != 6:
                raise MalformedPayload(f"{where}: a catalogue metric is [name, kind, unit, "
                                       "scale, label_keys, series]", reason="schema")
            head = [self._scalar(f"{where}.{part}") for part in ("name", "kind", "unit", "scale")]
            keys = self._flat(where, ".label_keys", MAX_LABELS, "label keys", strings=True)
            n_series = self._array(f"{where}.series", MAX_SERIES, "series")
            self._spend("series", n_series, MAX_SERIES, f"{where}.series")
            labels = [self._flat(where, j, MAX_LABELS, "label values", strings=True,
                                 total=("label values", MAX_LABEL_VALUES))
                      for j in range(n_series)]
            metrics.append([*head, keys, labels])
        return metrics


class _ReferencingReader(_MapReader):
    def _known(self, key: str) -> Any:
        if key == "t":
            return self._flat("", "t", MAX_TIMESTAMPS, "timestamps", strings=False)
        if key == "values":
            return self._flat("", "values", MAX_SAMPLES, "values", strings=False,
                              total=("samples", MAX_SAMPLES))
        if key != "sparse":
            return self._extension(key, 1)
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
