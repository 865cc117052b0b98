"""``edgemon-collector backup`` and ``restore``: an online, consistent snapshot of the store with
a checksum manifest, and a restore that checks every checksum before it replaces anything.

A backup is a directory:

* the store: ``edgemon.db`` (SQLite's online backup API: one read transaction, so one
  consistent state while the collector goes on writing) or ``edgemon.dump`` (``pg_dump
  --format=custom`` on a snapshot exported by a repeatable-read transaction of our own, which
  also reads the store's accounting, so the counts and the dump are the same state);
* ``alerts.db`` (the same API) and ``tokens.json``, when the collector has them (on PostgreSQL
  the alert state is in the database, schema ``alerting``, so in the dump; an ``alerts.db``
  left from the collector's SQLite days is copied as any file);
* ``manifest.json``, written last (write, fsync, rename): every file's size and SHA-256, and
  the store's accounting at the snapshot (batches and samples ever stored). A directory without
  a manifest is an unfinished backup and is never restored.

``restore`` reads the manifest and checks every file's size and SHA-256 first; any mismatch
refuses the restore with nothing changed. Then: SQLite is copied beside its target, fsynced and
renamed over it (the target's WAL and shared-memory files removed first: stop the collector);
PostgreSQL: the dump's SQL script runs in ONE ``psql`` transaction after the store's
tables, sequences and functions in schema ``public`` and the alert state (schema ``alerting``)
are dropped (all or nothing; the database
must be the store's alone, as ``migrate-schema`` expects). Last, the restored store's
accounting is compared with the manifest's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BackupError", "Manifest", "backup", "restore", "verify"]

FORMAT = "edgemon-backup 1"
MANIFEST = "manifest.json"
_STORE_SQLITE, _STORE_DUMP = "edgemon.db", "edgemon.dump"
_ACCOUNTS = ("SELECT coalesce(sum(counted_batches), 0), coalesce(sum(samples), 0) "
             "FROM instance_accounts")


class BackupError(RuntimeError):
    """A backup that cannot be taken, checked or restored (the message says why)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    store: str  # "sqlite" or "postgresql"
    created_ms: int
    files: dict[str, dict[str, Any]]  # name -> {"bytes", "sha256"}
    batches: int  # the store's accounting at the snapshot
    samples: int

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "store": self.store, "created_ms": self.created_ms,
                           "files": self.files, "batches": self.batches,
                           "samples": self.samples}, indent=1, sort_keys=True) + "\n"


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (one step of the backup API: one read
    transaction; writers in WAL mode go on meanwhile)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        dst.close()
        src.close()


def _accounts_sqlite(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        batches, samples = db.execute(_ACCOUNTS).fetchone()
    finally:
        db.close()
    return int(batches), int(samples)


def _tool(name: str) -> str:
    """``pg_dump``/``pg_restore``/``psql``: the newest installed server's, else PATH's."""
    import glob

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    tool = found[-1] if found else shutil.which(name)
    if tool is None:
        raise BackupError(f"{name} not found (install the PostgreSQL client tools)")
    return tool


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {proc.stderr.strip()[-1000:]}")


def _dump_postgres(url: str, target: Path) -> tuple[int, int]:
    """``pg_dump`` of a snapshot our own transaction exported, with its accounting."""
    import psycopg

    try:
        # autocommit: our BEGIN is the transaction (psycopg would open a read-committed one
        # first, whose every statement sees a newer state than the snapshot it exported)
        with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
            batches, samples = conn.execute(_ACCOUNTS).fetchone()  # type: ignore[misc]
            _run([_tool("pg_dump"), "--format=custom", "--no-owner", f"--snapshot={snapshot}",
                  f"--file={target}", f"--dbname={url}"])
            conn.execute("ROLLBACK")
    except psycopg.Error as exc:
        raise BackupError(f"PostgreSQL: {str(exc).strip()}") from exc
    return int(batches), int(samples)


def backup(location: str, destination: Path, *, extra: dict[str, Path] | None = None,
           progress: Callable[[str], None] = lambda _: None) -> Manifest:
    """Back up the store at ``location`` (a SQLite path or a PostgreSQL URL) and the files
    ``extra`` (name in the backup -> path; missing ones are left out) into ``destination``, a
    new or empty directory."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty")
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = int(time.time() * 1000)
    if is_postgres(location):
        store, name = "postgresql", _STORE_DUMP
        batches, samples = _dump_postgres(location, destination / name)
    else:
        store, name = "sqlite", _STORE_SQLITE
        if not Path(location).exists():
            raise BackupError(f"{location}: no such store")
        _sqlite_copy(Path(location), destination / name)
        batches, samples = _accounts_sqlite(destination / name)
    progress(f"store ({store}) copied: {batches} batches, {samples} samples")
    names = [name]
    for extra_name, path in (extra or {}).items():
        if not path.exists():
            continue
        if extra_name.endswith(".db"):
            _sqlite_copy(path, destination / extra_name)
        else:
            shutil.copyfile(path, destination / extra_name)
        names.append(extra_name)
        progress(f"{extra_name} copied")
    files = {}
    for n in names:
        _fsync(destination / n)
        files[n] = {"bytes": (destination / n).stat().st_size, "sha256": _sha256(destination / n)}
    manifest = Manifest(store, created, files, batches, samples)
    partial = destination / (MANIFEST + ".tmp")
    partial.write_text(manifest.to_json())
    _fsync(partial)
    partial.rename(destination / MANIFEST)
    _fsync(destination)
    return manifest


def verify(source: Path) -> Manifest:
    """The backup's manifest once every file it lists has its size and SHA-256."""
    source = Path(source)
    try:
        doc = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source}: no {MANIFEST} (not a backup, or an unfinished one)") \
            from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source / MANIFEST}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{source / MANIFEST}: not an {FORMAT} manifest")
    manifest = Manifest(doc["store"], int(doc["created_ms"]), dict(doc["files"]),
                        int(doc["batches"]), int(doc["samples"]))
    for name, want in manifest.files.items():
        path = source / name
        if Path(name).name != name or not path.is_file():
            raise BackupError(f"{path}: missing")
        if path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            raise BackupError(f"{path}: checksum mismatch (the backup is damaged)")
    return manifest


@contextlib.contextmanager
def _beside(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` (same file system: renamed over it atomically)."""
    tmp = target.with_name(f".{target.name}.restoring")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _replace_file(copy: Path, target: Path, *, sqlite: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _beside(target) as tmp:
        shutil.copyfile(copy, tmp)
        _fsync(tmp)
        if sqlite:
            for suffix in ("-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
        tmp.replace(target)
    _fsync(target.parent)


def restore(source: Path, location: str, *, extra: dict[str, Path] | None = None,
            progress: Callable[[str], None] = lambda _: None) -> Manifest:
    """Check the backup in ``source``, then put it in place: the store at ``location`` (of the
    backup's kind) and the files ``extra`` names (name in the backup -> path)."""
    manifest = verify(Path(source))
    kind = "postgresql" if is_postgres(location) else "sqlite"
    if kind != manifest.store:
        raise BackupError(f"the backup holds a {manifest.store} store; the target is {kind}")
    progress(f"checksums verified: {len(manifest.files)} files")
    if kind == "postgresql":
        _restore_postgres(Path(source) / _STORE_DUMP, location)
        batches, samples = _accounts_postgres(location)
    else:
        _replace_file(Path(source) / _STORE_SQLITE, Path(location), sqlite=True)
        batches, samples = _accounts_sqlite(Path(location))
    for name, path in (extra or {}).items():
        if name in manifest.files:
            _replace_file(Path(source) / name, path, sqlite=name.endswith(".db"))
    if (batches, samples) != (manifest.batches, manifest.samples):
        raise BackupError(f"restored store holds {batches} batches, {samples} samples; the "
                          f"backup recorded {manifest.batches}, {manifest.samples}")
    progress(f"restored and verified: {batches} batches, {samples} samples")
    return manifest


# Everything of the schema ``public`` (the store's tables with their partitions, sequences,
# functions) and the schema ``alerting`` (the alert state) dropped, in the restore's
# transaction. ``pg_restore --clean`` cannot do it: it
# drops the inherited constraints of the partitions one by one, which PostgreSQL refuses.
_DROP_STORE = """DO $$
DECLARE r record;
BEGIN
    DROP SCHEMA IF EXISTS alerting CASCADE;
    FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON
             n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
             AND NOT c.relispartition LOOP
        EXECUTE 'DROP TABLE IF EXISTS ' || r.t || ' CASCADE';
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON
             n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'S' LOOP
        EXECUTE 'DROP SEQUENCE IF EXISTS ' || r.t || ' CASCADE';
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p JOIN pg_namespace n ON
             n.oid = p.pronamespace WHERE n.nspname = 'public' LOOP
        EXECUTE 'DROP ROUTINE IF EXISTS ' || r.f || ' CASCADE';
    END LOOP;
END $$;"""


def _restore_postgres(dump: Path, url: str) -> None:
    """The dump as an SQL script (written whole first: a script cut short is never run), run
    by ``psql`` in ONE transaction after ``_DROP_STORE``: the old store or the new, never a
    mix."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgemon-restore-") as tmp:
        script = Path(tmp) / "restore.sql"
        _run([_tool("pg_restore"), "--no-owner", "--no-privileges", f"--file={script}",
              str(dump)])
        _run([_tool("psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
              f"--dbname={url}", "-c", _DROP_STORE, "-f", str(script)])


def _accounts_postgres(url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        batches, samples = conn.execute(_ACCOUNTS).fetchone()  # type: ignore[misc]
    return int(batches), int(samples)
