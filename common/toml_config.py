"""TOML configuration files: read them with ``FILE:LINE`` errors, find where a key was written,
and take overrides from ``PREFIX_<SECTION>_<KEY>`` environment variables.

``tomllib`` gives values but no positions, so ``TomlLines`` finds the line of a table or key in
the text; the agent's and the collector's configuration and the alert rules file all point at
the bad line with it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["ConfigError", "EnvSetting", "TomlLines", "at_line", "env_overrides", "parse_toml",
           "read_text", "read_toml"]


class ConfigError(Exception):
    """Invalid configuration. ``str()`` is one line per problem: ``where: key: what``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def at_line(line: int | None) -> str:
    """``":7"`` for line 7, ``""`` when the line is unknown: ``f"{path}{at_line(n)}: ..."``."""
    return f":{line}" if line else ""


def read_text(path: str | Path) -> str:
    """The file's text; ``ConfigError`` when it cannot be read or is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """``tomllib.loads``; a syntax error is a ``ConfigError`` naming ``source`` and the line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise ConfigError([f"{source}{at_line(line)}: invalid TOML: {exc}"]) from None


def read_toml(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(text, data) of a TOML file; ``ConfigError`` with ``FILE[:LINE]: ...`` otherwise."""
    text = read_text(path)
    return text, parse_toml(text, str(path))


# --- positions --------------------------------------------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?")


def _table_name(raw: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in raw.split("."))


class TomlLines:
    """Where tables and keys were written in TOML text (1-based lines).

    ``section`` "" is the top level (the lines before the first table header); ``index``
    selects one table of an array of tables (``[[rule]]``).
    """

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self._headers: list[tuple[int, str, bool]] = []  # (line, table name, [[array]])
        for number, line in enumerate(self._lines, start=1):
            match = _HEADER.fullmatch(line)
            if match:
                self._headers.append((number, _table_name(match.group(2)),
                                      match.group(1) == "[["))

    def header(self, section: str, index: int | None = None) -> int | None:
        """The line of ``[section]`` (or ``[[section]]``), or of the ``index``-th
        ``[[section]]``; None when the text has no such header."""
        if index is None:
            return next((n for n, name, _ in self._headers if name == section), None)
        starts = [n for n, name, array in self._headers if name == section and array]
        return starts[index] if index < len(starts) else None

    def find(self, section: str, keys: Iterable[Any] = (), index: int | None = None,
             ) -> int | None:
        """The line of the deepest of ``keys`` (a path such as pydantic's ``loc``; non-string
        parts are skipped) inside the table, else of the table's header, else None.

        A key is found as ``key = ``, ``"key" = ``, ``key.sub = ``, inside an inline table
        (``{ key = ``) or as a sub-table header (``[section.key]``); a key of a table that
        has no header is also found written at the top level as ``section.key = `` or
        ``section = { key = ... }``.
        """
        start = self.header(section, index) if section else None
        if section:
            block = self._block(start) if start is not None else range(0)
        else:
            block = self._top_level()
        for key in reversed([k for k in keys if isinstance(k, str)]):
            line = self._key_in(block, section, key)
            if line is None and section and start is None:
                line = self._dotted_at_top_level(section, key)
            if line is not None:
                return line
        return start

    def _top_level(self) -> range:
        first = self._headers[0][0] if self._headers else len(self._lines) + 1
        return range(1, first)

    def _block(self, start: int) -> range:
        """The lines of the table whose header is at ``start``, with its sub-tables."""
        name = next(name for n, name, _ in self._headers if n == start)
        end = next((n for n, other, _ in self._headers
                    if n > start and not other.startswith(f"{name}.")), len(self._lines) + 1)
        return range(start, end)

    def _key_in(self, block: range, section: str, key: str) -> int | None:
        k = re.escape(key)
        pattern = re.compile(rf"""^\s*["']?{k}["']?\s*[=.]|[{{,]\s*["']?{k}["']?\s*=""")
        subtable = f"{section}.{key}" if section else key
        headers = {n: name for n, name, _ in self._headers}
        for number in block:
            if number in headers:
                if headers[number] == subtable:
                    return number
                continue
            if pattern.search(self._lines[number - 1]):
                return number
        return None

    def _dotted_at_top_level(self, section: str, key: str) -> int | None:
        s, k = re.escape(section), re.escape(key)
        dotted = re.compile(rf"""^\s*{s}\s*\.\s*["']?{k}["']?\s*=""")
        inline = re.compile(rf"""^\s*{s}\s*=.*[{{,]\s*["']?{k}["']?\s*=""")
        for number in self._top_level():
            line = self._lines[number - 1]
            if dotted.match(line) or inline.match(line):
                return number
        return None


# --- the environment --------------------------------------------------------------------------

class EnvSetting(NamedTuple):
    value: str  # the raw text; each program checks it like a value from the file
    variable: str  # where it came from, for messages: "EDGEMON_AGENT_BROKER_PORT"


def env_overrides(environ: Mapping[str, str], prefix: str,
                  schema: Mapping[str, Collection[str]], example: str,
                  ) -> tuple[dict[tuple[str, str], EnvSetting], list[str]]:
    """The ``<prefix><SECTION>_<KEY>`` variables of ``environ`` by (section, key), and a
    problem for each variable with that prefix that names no key of ``schema``.

    ``schema`` maps each section to its keys; a section "" holds top-level keys, set by
    ``<prefix><KEY>``. ``example`` names the file that lists every key, for the message.
    """
    found: dict[tuple[str, str], EnvSetting] = {}
    problems: list[str] = []
    expected = f"{prefix}<SECTION>_<KEY>"
    if "" in schema:
        expected = f"{prefix}<KEY> or {expected}"
    for variable in sorted(environ):
        if not variable.startswith(prefix):
            continue
        rest = variable[len(prefix):].lower()
        section, _, key = rest.partition("_")
        if key not in schema.get(section, ()):
            section, key = "", rest
        if not section and key not in schema.get("", ()):
            problems.append(f"{variable} (environment): unknown setting; expected {expected} "
                            f"for a key of {example}")
            continue
        found[(section, key)] = EnvSetting(environ[variable], variable)
    return found, problems
