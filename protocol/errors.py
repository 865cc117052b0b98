"""The one error hierarchy of the wire protocol."""

from __future__ import annotations

__all__ = ["LimitExceeded", "MalformedPayload", "ProtocolError", "UnsupportedVersion"]


class ProtocolError(ValueError):
    """A payload or topic that is not valid edgemon v1. ``reason`` is a short counter label."""

    reason = "invalid"
    # (instance, seq) of the batch, when the decoder had read both before it found the problem:
    # the collector then tells that agent the batch is refused for good (SPEC.md §5).
    batch_key: tuple[str, int] | None = None

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class LimitExceeded(ProtocolError):
    """A hard limit of ``limits.py`` was hit before anything large was allocated."""

    reason = "limit"


class MalformedPayload(ProtocolError):
    """Bytes that do not decompress, unpack or match the schema."""

    reason = "malformed"


class UnsupportedVersion(ProtocolError):
    """A well-formed payload of a protocol version this code does not speak."""

    reason = "version"
