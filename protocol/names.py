"""The grammar of names and ids inside a v1 batch, defined once (host ids: ``topics.py``).

Metric names, label keys and unknown top-level keys are ``[a-zA-Z_][a-zA-Z0-9_]*`` (Prometheus
style) of at most ``MAX_NAME_LENGTH`` characters; agent instance ids are 1-64 characters of
``[A-Za-z0-9._-]``.
"""

from __future__ import annotations

import re
from typing import Final

from edgemon.protocol.errors import MalformedPayload
from edgemon.protocol.limits import MAX_INSTANCE_LENGTH, MAX_NAME_LENGTH

__all__ = ["NAME_PATTERN", "is_name", "validate_instance_id"]

NAME_PATTERN: Final = r"[a-zA-Z_][a-zA-Z0-9_]*"
_NAME_RE: Final = re.compile(NAME_PATTERN)
_INSTANCE_RE: Final = re.compile(r"[A-Za-z0-9._-]+")


def is_name(value: object) -> bool:
    """Whether ``value`` is a valid metric name, label key or top-level key."""
    return (type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH
            and _NAME_RE.fullmatch(value) is not None)


def validate_instance_id(value: object) -> str:
    """Return ``value`` if it is a valid agent instance id, else raise ``MalformedPayload``."""
    if (type(value) is not str or not 0 < len(value) <= MAX_INSTANCE_LENGTH
            or _INSTANCE_RE.fullmatch(value) is None):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise MalformedPayload(f"instance id {shown!r}: use 1-{MAX_INSTANCE_LENGTH} letters, "
                               "digits, '.', '-', '_'", reason="schema")
    return value
