"""Bounded reading of a v1 batch map from msgpack bytes: no payload allocates past the limits.

The reader walks the batch map level by level with msgpack's streaming ``Unpacker`` and checks
every array's length (and the batch's running totals of samples, series and label values) from
its msgpack header before anything is built. Flat lists of scalars (timestamps, label keys and
values, series values) are built in one call, after their byte span was checked against what
that many scalars can take. Values of unknown top-level keys are built element by element within
``MAX_EXTENSION_ELEMENTS`` and ``MAX_EXTENSION_DEPTH``. Every string is strict UTF-8 of at most
``MAX_LABEL_VALUE_LENGTH`` bytes, every map key a string that appears once; binary and extension
types (msgpack timestamps included) are refused wherever they appear.

What the reader returns has the v1 *shape* (a map; ``metrics`` of 6-element arrays; series
entries of 3-element arrays; flat lists where the layout has them). Types and every other rule
are ``schema.check_decoded``'s: the two always run together (``codec.decode``,
``schema.validate_batch``).
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from edgemon.protocol.errors import LimitExceeded, MalformedPayload, ProtocolError
from edgemon.protocol.limits import (
    MAX_BATCH_KEYS,
    MAX_EXTENSION_DEPTH,
    MAX_EXTENSION_ELEMENTS,
    MAX_INT,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABEL_VALUES,
    MAX_LABELS,
    MAX_METRICS,
    MAX_SAMPLES,
    MAX_SERIES,
    MAX_TIMESTAMPS,
)
from edgemon.protocol.names import validate_instance_id

__all__ = ["BatchReader", "batch_key", "read_batch_map"]

_SCALAR_KEYS: Final = frozenset({"v", "host", "instance", "seq", "sent"})
_MAX_INT_BYTES: Final = 9  # the longest msgpack integer (0xcf/0xd3 + 8 bytes)
_MAX_STR_BYTES: Final = 5 + MAX_LABEL_VALUE_LENGTH  # str32 header + the longest string
# The longest valid series entry: fixarray, label values, offset, values (with their headers).
_ENTRY_MAX_BYTES: Final = (1 + 5 + MAX_LABELS * _MAX_STR_BYTES + _MAX_INT_BYTES
                           + 5 + MAX_TIMESTAMPS * _MAX_INT_BYTES)
_STR: Final = frozenset({str})
_INT: Final = frozenset({int})


def read_batch_map(packed: bytes, kind: type[BatchReader] | None = None) -> dict[str, Any]:
    """The batch map in ``packed`` (one msgpack map, nothing after it), read within the limits
    (by ``kind``, a ``BatchReader`` subclass for the maps of ``catalogue_reader.py``).

    Raises ``ProtocolError`` (with ``batch_key`` when instance and seq were read first)."""
    reader = (kind or BatchReader)(packed)
    try:
        try:
            return reader.read()
        except ProtocolError:
            raise
        except msgpack.OutOfData:
            raise MalformedPayload("not a msgpack batch: the data ends inside a value",
                                   reason="not_msgpack") from None
        except msgpack.StackError:
            raise MalformedPayload("not a msgpack batch: arrays or maps nested too deeply",
                                   reason="not_msgpack") from None
        except Exception as exc:  # msgpack's other ValueErrors (FormatError, bad UTF-8, ...)
            raise MalformedPayload(f"not a msgpack batch: {exc}",
                                   reason="not_msgpack") from None
    except ProtocolError as exc:
        exc.batch_key = batch_key(reader.out)
        raise


def batch_key(raw: dict[str, Any]) -> tuple[str, int] | None:
    """(instance, seq) of a batch map, if both are valid (even when the rest is not)."""
    instance, seq = raw.get("instance"), raw.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_INT:
        return None
    try:
        return validate_instance_id(instance), seq
    except ProtocolError:
        return None


def type_name(first: int) -> str:
    """What the msgpack value starting with byte ``first`` is."""
    if first <= 0x7F or first >= 0xE0 or 0xCC <= first <= 0xD3:
        return "an integer"
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        return "an array"
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "a map"
    if 0xA0 <= first <= 0xBF or first in (0xD9, 0xDA, 0xDB):
        return "a string"
    return {0xC0: "nil", 0xC2: "a boolean", 0xC3: "a boolean", 0xCA: "a float",
            0xCB: "a float"}.get(first, "binary or extension data")


def _array_length(buf: bytes, pos: int) -> tuple[int, int]:
    """(element count, header size) of the msgpack array header at ``pos``."""
    first = buf[pos]
    if first == 0xDC:
        return int.from_bytes(buf[pos + 1:pos + 3], "big"), 3
    if first == 0xDD:
        return int.from_bytes(buf[pos + 1:pos + 5], "big"), 5
    return first & 0x0F, 1


class _Nested(Exception):
    """A flat list held an array or a map."""


def _schema(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="schema")


def _too_many(where: str, count: int, limit: int, what: str) -> LimitExceeded:
    return LimitExceeded(f"{where}: {count} {what} > {limit}",
                         reason="too_many_" + what.replace(" ", "_"))


class BatchReader:
    """Reads one v1 batch map; ``out`` holds what was read so far (also after an error)."""

    def __init__(self, packed: bytes) -> None:
        self.buf = packed
        self.view = memoryview(packed)
        # Limits of 0 for containers: a scalar position holding an array or map is caught by
        # ``_scalar`` before this unpacker would ever build one; bin and ext are refused by their
        # type byte before it is asked to (a length of 0 would pass its limits).
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=True, max_buffer_size=max(len(packed), 1),
            max_str_len=MAX_LABEL_VALUE_LENGTH, max_bin_len=0, max_array_len=0, max_map_len=0,
            max_ext_len=0)
        self.unpacker.feed(packed)
        self.totals = {"samples": 0, "series": 0, "label values": 0}
        self.extension_left = MAX_EXTENSION_ELEMENTS
        self.out: dict[str, Any] = {}
        self._lists = 0

    def read(self) -> dict[str, Any]:
        first = self._peek()
        if type_name(first) != "a map":
            self.unpacker.skip()  # is it msgpack at all? (raises if not; builds nothing)
            self._end()
            raise _schema(f"batch must be a map, not {type_name(first)}")
        keys = self.unpacker.read_map_header()
        if keys > MAX_BATCH_KEYS:
            raise LimitExceeded(f"batch map has {keys} keys > {MAX_BATCH_KEYS}",
                                reason="too_many_keys")
        out = self.out
        for _ in range(keys):
            key = self._key("batch")
            if key in out:
                raise _schema(f"batch key {key[:40]!r} appears twice")
            if key == "t":
                out[key] = self._flat("", "t", MAX_TIMESTAMPS, "timestamps", strings=False)
            elif key == "metrics":
                out[key] = self._metrics()
            elif key in _SCALAR_KEYS:
                out[key] = self._scalar(key)
            else:
                out[key] = self._extension(key, 1)
        self._end()
        return out

    def _key(self, where: str) -> str:
        kind = type_name(self._peek())
        if kind != "a string":
            raise _schema(f"{where} keys must be strings, not {kind}")
        try:
            return self.unpacker.unpack()  # type: ignore[no-any-return]
        except ValueError as exc:  # not UTF-8, or longer than any string may be
            raise _schema(f"{where} keys: {exc}") from None

    def _metrics(self) -> list[list[Any]]:
        count = self._array("metrics", MAX_METRICS, "metrics")
        metrics: list[list[Any]] = []
        for i in range(count):
            where = f"metrics[{i}]"
            if self._array(where, 6, "") != 6:
                raise _schema(f"{where}: a metric is [name, kind, unit, scale, label_keys, "
                              "series]")
            head = [self._scalar(f"{where}.{part}") for part in ("name", "kind", "unit", "scale")]
            keys = self._flat(where, ".label_keys", MAX_LABELS, "label keys", strings=True)
            n_entries = self._array(f"{where}.series", MAX_SERIES, "series")
            self._spend("series", n_entries, MAX_SERIES, f"{where}.series")
            metrics.append([*head, keys, [self._item(where, j) for j in range(n_entries)]])
        return metrics

    def _item(self, metric: str, index: int) -> Any:
        """One element of a metric's series list: a series entry (a catalogue's reader reads
        label values instead, ``catalogue_reader.py``)."""
        return self._entry(metric, index)

    def _entry(self, metric: str, index: int) -> list[Any]:
        """One series entry ``[label_values, offset, values]``: label values strings, offset and
        values integers (the hot loop: one ``unpackb`` for the entry, no f-strings).

        The entry's byte span is found first (``skip`` builds nothing) and must fit the largest
        valid entry; only then is it built, and its types checked before the next entry, so no
        entry holds more than a valid one could. Anything unexpected is diagnosed element by
        element (``_entry_parts``) for a precise reason."""
        unpacker = self.unpacker
        start = unpacker.tell()
        fixarray_3 = self._peek() == 0x93
        unpacker.skip()
        end = unpacker.tell()
        if fixarray_3 and end - start <= _ENTRY_MAX_BYTES:
            try:
                entry = msgpack.unpackb(
                    self.view[start:end], raw=False, max_array_len=MAX_TIMESTAMPS,
                    max_map_len=0, max_str_len=MAX_LABEL_VALUE_LENGTH, max_bin_len=0,
                    max_ext_len=0)
                labels, offset, values = entry
            except ValueError:  # not msgpack we take, or not 3 elements
                labels = None
            if (type(labels) is list and type(offset) is int and type(values) is list
                    and len(labels) <= MAX_LABELS and not set(map(type, labels)) - _STR
                    and not set(map(type, values)) - _INT):
                totals = self.totals
                totals["label values"] += len(labels)
                totals["samples"] += len(values)
                if totals["label values"] > MAX_LABEL_VALUES or totals["samples"] > MAX_SAMPLES:
                    self._spend("label values", 0, MAX_LABEL_VALUES, metric)
                    self._spend("samples", 0, MAX_SAMPLES, metric)
                return entry  # type: ignore[no-any-return]
        parts = BatchReader(self.buf[start:end])
        parts.totals = self.totals
        entry = parts._entry_parts(metric, index)
        if not _well_typed(entry):
            raise _schema(f"{metric}.series[{index}]: label values must be strings, the offset "
                          "and the values integers")
        return entry

    def _entry_parts(self, metric: str, index: int) -> list[Any]:
        """``_entry`` read part by part, each checked before it is built (the slow path, for
        precise reasons: which limit, which part)."""
        if self._peek() != 0x93:  # not a 3-element fixarray
            at = f"{metric}.series[{index}]"
            if self._array(at, 3, "") != 3:
                raise _schema(f"{at}: a series entry is [label_values, offset, values]")
        else:
            self.unpacker.read_array_header()
        labels = self._flat(metric, index, MAX_LABELS, "label values", strings=True,
                            total=("label values", MAX_LABEL_VALUES))
        offset = self._scalar(f"{metric}.series[{index}].offset")
        values = self._flat(metric, index, MAX_TIMESTAMPS, "values", strings=False,
                            total=("samples", MAX_SAMPLES))
        self._end()
        return [labels, offset, values]

    def _extension(self, where: str, depth: int) -> Any:
        """The value of an unknown key, built within the extension budget (SPEC.md §7)."""
        if self.extension_left <= 0:
            raise LimitExceeded(f"{where}: unknown keys hold more than {MAX_EXTENSION_ELEMENTS} "
                                "elements", reason="too_many_extension_elements")
        self.extension_left -= 1
        kind = type_name(self._peek())
        if kind in ("an array", "a map"):
            if depth > MAX_EXTENSION_DEPTH:
                raise LimitExceeded(f"{where}: unknown keys nest more than "
                                    f"{MAX_EXTENSION_DEPTH} levels deep",
                                    reason="too_many_extension_elements")
            if kind == "an array":
                count = self.unpacker.read_array_header()
                if count > self.extension_left:
                    raise LimitExceeded(f"{where}: unknown keys hold more than "
                                        f"{MAX_EXTENSION_ELEMENTS} elements",
                                        reason="too_many_extension_elements")
                return [self._extension(where, depth + 1) for _ in range(count)]
            count = self.unpacker.read_map_header()
            if 2 * count > self.extension_left:
                raise LimitExceeded(f"{where}: unknown keys hold more than "
                                    f"{MAX_EXTENSION_ELEMENTS} elements",
                                    reason="too_many_extension_elements")
            doc: dict[str, Any] = {}
            for _ in range(count):
                key = self._key(where)
                self.extension_left -= 1
                if key in doc:
                    raise _schema(f"{where}: map key {key[:40]!r} appears twice")
                doc[key] = self._extension(where, depth + 1)
            return doc
        return self._scalar(where)

    def _peek(self) -> int:
        pos = self.unpacker.tell()
        if pos >= len(self.buf):
            raise msgpack.OutOfData
        return self.buf[pos]

    def _end(self) -> None:
        if self.unpacker.tell() != len(self.buf):
            raise MalformedPayload("not a msgpack batch: extra bytes after the batch map",
                                   reason="not_msgpack")

    def _scalar(self, where: str) -> Any:
        kind = type_name(self._peek())
        if kind in ("an array", "a map", "binary or extension data"):
            raise _schema(f"{where}: expected a single value, not {kind}")
        try:
            return self.unpacker.unpack()
        except ValueError as exc:
            raise _schema(f"{where}: {exc}") from None

    def _array(self, where: str, limit: int, what: str) -> int:
        """Read an array header at ``where``; raise if it is not an array or exceeds ``limit``."""
        kind = type_name(self._peek())
        if kind != "an array":
            raise _schema(f"{where}: expected an array, not {kind}")
        count = self.unpacker.read_array_header()
        if what and count > limit:
            raise _too_many(where, count, limit, what)
        return count

    def _spend(self, total: str, count: int, limit: int, where: str) -> None:
        self.totals[total] += count
        if self.totals[total] > limit:
            raise LimitExceeded(f"{where}: the batch holds more than {limit} {total}",
                                reason="too_many_" + total.replace(" ", "_"))

    def _flat_only(self, items: list[Any]) -> list[Any]:
        """msgpack ``list_hook`` of ``_flat``: inner lists complete before the outer one."""
        self._lists += 1
        if self._lists > 1:
            raise _Nested
        return items

    def _flat(self, metric: str, part: int | str, limit: int, what: str, *, strings: bool,
              total: tuple[str, int] | None = None) -> list[Any]:
        """A flat list of scalars (strings or integers), checked before it is built.

        ``part`` is the series entry's index, or the key path after ``metric`` (the place named
        in errors, formatted only on error). ``total`` limits the batch's running total of
        ``what``."""
        start = self.unpacker.tell()
        first = self._peek()
        if not (0x90 <= first <= 0x9F or first == 0xDC or first == 0xDD):
            raise _schema(f"{_where(metric, part, what)}: expected an array of {what}, not "
                          f"{type_name(first)}")
        count, header = _array_length(self.buf, start)
        if count > limit:
            raise _too_many(_where(metric, part, what), count, limit, what)
        if total is not None:
            name, most = total
            spent = self.totals[name] = self.totals[name] + count
            if spent > most:
                raise LimitExceeded(f"{_where(metric, part, what)}: the batch holds more than "
                                    f"{most} {name}", reason="too_many_" + name.replace(" ", "_"))
        self.unpacker.skip()  # builds nothing; raises on malformed or too deep data
        end = self.unpacker.tell()
        if end - start > header + count * (_MAX_STR_BYTES if strings else _MAX_INT_BYTES):
            raise _schema(f"{_where(metric, part, what)}: must hold only {what}, found nested "
                          "arrays or maps")
        self._lists = 0
        try:
            return msgpack.unpackb(  # type: ignore[no-any-return]
                self.view[start:end], raw=False, max_array_len=count, max_map_len=0,
                max_str_len=MAX_LABEL_VALUE_LENGTH if strings else 0, max_bin_len=0,
                max_ext_len=0, list_hook=self._flat_only, object_hook=_no_maps)
        except _Nested:
            raise _schema(f"{_where(metric, part, what)}: must hold only {what}, found nested "
                          "arrays or maps") from None
        except ValueError as exc:
            if strings:
                raise _schema(f"{_where(metric, part, what)}: {what} must be UTF-8 strings of "
                              f"at most {MAX_LABEL_VALUE_LENGTH} bytes ({exc})") from None
            raise _schema(f"{_where(metric, part, what)}: must hold only integers "
                          f"({exc})") from None


def _well_typed(entry: Any) -> bool:
    """Whether a built entry is [[str, ...], int, [int, ...]]."""
    if type(entry) is not list or len(entry) != 3:
        return False
    labels, offset, values = entry
    return (type(labels) is list and type(offset) is int and type(values) is list
            and not set(map(type, labels)) - _STR and not set(map(type, values)) - _INT)


def _no_maps(_pairs: Any) -> Any:
    """msgpack ``object_hook`` of ``_flat``: a flat list holds no map."""
    raise _Nested


def _where(metric: str, part: int | str, what: str) -> str:
    """The place of a flat list in error messages, e.g. ``metrics[2].series[7].values``."""
    if isinstance(part, str):
        return metric + part
    return f"{metric}.series[{part}].{'labels' if what == 'label values' else what}"
