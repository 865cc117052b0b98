"""Structured logs for both programs: one JSON object per line on stdout (ts, level, logger,
msg, extra fields), and a throttle for messages that could repeat many times a second."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["JsonFormatter", "Throttle", "setup_logging"]

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged too.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message",
                                                                             "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (ours, paho's, aiohttp's) to one JSON handler on ``stream`` (stdout)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log (collector) is one line per request: keep it only when debugging.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.WARNING)


class Throttle:
    """Lets one message through per ``period`` seconds; counts the ones it held back.

    ``throttle()`` returns None to stay quiet, else how many were suppressed since the last one.
    """

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0

    def __call__(self) -> int | None:
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.period
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
