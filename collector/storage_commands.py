"""``edgemon-collector migrate-schema`` and ``migrate``: the PostgreSQL store's schema, and a
SQLite store copied into PostgreSQL (``storage/migrate.py``); ``backup`` and ``restore`` of
either store with a checksum manifest (``storage/backup.py``).

Exit codes: 0 done (or nothing to do), 1 the database cannot be reached or the copy failed
(nothing changed), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_storage_commands"]


def _target(args: argparse.Namespace, load: Callable[[Path | None], Any]) -> str:
    url: str = args.url or (load(args.config).storage.url if args.config else "")
    if not url.startswith(("postgresql://", "postgres://")):
        print("edgemon-collector: give --url postgresql://... (or -c with [storage] url)",
              file=sys.stderr)
        raise SystemExit(2)
    return url


def cmd_migrate_schema(args: argparse.Namespace, load: Callable[[Path | None], Any]) -> int:
    import psycopg

    from edgemon.collector.storage.postgres import migrations

    url = _target(args, load)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            done = migrations.apply(conn)
            version = migrations.current_version(conn)
    except psycopg.OperationalError as exc:
        print(f"edgemon-collector: cannot reach PostgreSQL: {str(exc).strip()}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"edgemon-collector: {exc}", file=sys.stderr)
        return 1
    for m in done:
        print(f"applied schema version {m.version}: {m.name}")
    print(f"schema version {version}" + ("" if done else " (nothing to do)"))
    return 0


def cmd_migrate(args: argparse.Namespace, load: Callable[[Path | None], Any]) -> int:
    import psycopg

    from edgemon.collector.storage import sqlite_path
    from edgemon.collector.storage.migrate import MigrationError, migrate_sqlite_to_postgres

    source = sqlite_path(args.source)
    url = _target(args, load) if not args.to else args.to
    if not url.startswith(("postgresql://", "postgres://")):
        print("edgemon-collector: --to must be a postgresql:// URL", file=sys.stderr)
        return 2
    try:
        copied, checks = migrate_sqlite_to_postgres(
            source, url, progress=lambda line: print(line, flush=True))
    except (MigrationError, RuntimeError, psycopg.Error, OSError) as exc:
        print(f"edgemon-collector: migration failed, nothing changed: {str(exc).strip()}",
              file=sys.stderr)
        return 1
    total = sum(c.rows for c in checks)
    print(("copied and verified" if copied else "already migrated; verified again") +
          f": {len(checks)} tables, {total} rows")
    return 0


def _store_and_files(args: argparse.Namespace, load: Callable[[Path | None], Any]
                     ) -> tuple[str, dict[str, Path]]:
    """The store's location and the collector's own files (alert state, tokens) of a config."""
    from edgemon.collector.http.tokens import default_tokens_path

    cfg = load(args.config)
    location = cfg.storage.url or str(cfg.storage.path)
    alerts = cfg.alerting.state_path or Path(cfg.storage.path).parent / "alerts.db"
    tokens = default_tokens_path(cfg.http.tokens_path, cfg.storage.path)
    return location, {"alerts.db": Path(alerts), "tokens.json": Path(tokens)}


def cmd_backup(args: argparse.Namespace, load: Callable[[Path | None], Any]) -> int:
    from edgemon.collector.storage.backup import BackupError, backup

    location, files = _store_and_files(args, load)
    try:
        manifest = backup(location, args.destination, extra=files,
                          progress=lambda line: print(line, flush=True))
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"edgemon-collector: backup failed: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(f"backup written to {args.destination}: {len(manifest.files)} files, "
          f"{manifest.samples} samples")
    return 0


def cmd_restore(args: argparse.Namespace, load: Callable[[Path | None], Any]) -> int:
    from edgemon.collector.storage.backup import BackupError, restore

    location, files = _store_and_files(args, load)
    try:
        restore(args.source, location, extra=files,
                progress=lambda line: print(line, flush=True))
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"edgemon-collector: restore failed: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


def add_storage_commands(sub: Any, load: Callable[[Path | None], Any]) -> None:
    schema = sub.add_parser("migrate-schema",
                            help="create or upgrade the PostgreSQL store's schema")
    schema.add_argument("--url", help="postgresql://user@host:port/database")
    schema.add_argument("-c", "--config", type=Path, help="take [storage] url from here")
    schema.set_defaults(func=lambda args: cmd_migrate_schema(args, load))

    migrate = sub.add_parser("migrate", help="copy a SQLite store into PostgreSQL, verified; "
                                             "safe to run again")
    migrate.add_argument("--from", dest="source", required=True,
                         help="the SQLite store: a path or sqlite:///path (stop the collector "
                              "using it first, or what arrives meanwhile is not copied)")
    migrate.add_argument("--to", help="postgresql://user@host:port/database (an empty one)")
    migrate.add_argument("-c", "--config", type=Path, help="take --to from [storage] url here")
    migrate.add_argument("--url", help=argparse.SUPPRESS)
    migrate.set_defaults(func=lambda args: cmd_migrate(args, load))

    back = sub.add_parser("backup", help="an online, consistent copy of the store (and alert "
                                         "state, tokens) with a checksum manifest")
    back.add_argument("destination", type=Path, help="a new or empty directory")
    back.add_argument("-c", "--config", type=Path, help="the collector's configuration")
    back.set_defaults(func=lambda args: cmd_backup(args, load))

    rest = sub.add_parser("restore", help="check a backup's checksums, then replace the store "
                                          "(and alert state, tokens) with it; stop the "
                                          "collectors first")
    rest.add_argument("source", type=Path, help="a directory written by backup")
    rest.add_argument("-c", "--config", type=Path, help="the collector's configuration")
    rest.set_defaults(func=lambda args: cmd_restore(args, load))
