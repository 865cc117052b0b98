"""Errors of the PromQL engine, each with the ``errorType`` and HTTP status Prometheus uses."""

from __future__ import annotations

__all__ = [
    "BadData",
    "ExecutionError",
    "PromQLError",
    "QueryTimeout",
    "Unsupported",
]


class PromQLError(Exception):
    """Base: ``error_type`` and ``status`` are what the HTTP API answers with."""

    error_type = "internal"
    status = 500


class BadData(PromQLError):
    """The request or expression is wrong (Prometheus: ``bad_data``, 400)."""

    error_type = "bad_data"
    status = 400


class Unsupported(BadData):
    """Valid PromQL that edgemon does not evaluate; the message names the construct."""

    def __init__(self, construct: str) -> None:
        super().__init__(f"unsupported by edgemon's PromQL engine: {construct}")
        self.construct = construct


class ExecutionError(PromQLError):
    """Evaluation failed (Prometheus: ``execution``, 422), e.g. many-to-many matching, limits."""

    error_type = "execution"
    status = 422


class QueryTimeout(PromQLError):
    """The query ran longer than its timeout (Prometheus: ``timeout``, 503)."""

    error_type = "timeout"
    status = 503

    def __init__(self, where: str = "expression evaluation") -> None:
        super().__init__(f"query timed out in {where}")
