"""Storage backends behind one interface (``base.Storage``).

``open_storage(url_or_path, **options)`` picks the backend: a file path (or ``sqlite:///path``)
opens the embedded SQLite store; a ``postgresql://`` (or ``postgres://``) URL the PostgreSQL
store (``postgres/``).
"""

from __future__ import annotations

import os
from typing import Any

from edgemon.collector.storage.base import Storage

__all__ = ["Storage", "open_storage", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite://`` URL (``sqlite:///relative/path``,
    ``sqlite:////absolute/path``); anything else is a path already."""
    if not url.startswith("sqlite://"):
        return url
    target = url.removeprefix("sqlite://")
    if target.startswith("/") and not target.startswith("//"):
        return target[1:]
    if target.startswith("//"):
        return target[1:]
    return target


def open_storage(url_or_path: str | os.PathLike[str], **options: Any) -> Storage:
    """A ``Storage`` for ``url_or_path``; ``options`` go to the backend's constructor."""
    target = os.fspath(url_or_path)
    if target.startswith(("postgresql://", "postgres://")):
        from edgemon.collector.storage.postgres import PostgresStorage

        return PostgresStorage(target, **options)
    if target.startswith("sqlite://"):
        target = sqlite_path(target)
    elif "://" in target:
        scheme = target.split("://", 1)[0]
        raise ValueError(f"unknown storage scheme {scheme!r}: use a file path, sqlite:/// or "
                         "postgresql://")
    if not target:
        raise ValueError("storage path is empty")
    from edgemon.collector.storage.sqlite import (
        SQLiteStorage,  # numpy is only imported when a store is opened
    )

    return SQLiteStorage(target, **options)
