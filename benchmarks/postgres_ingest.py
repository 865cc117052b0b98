"""Ingest into the PostgreSQL store against the SQLite store, measured in the same run.

    python benchmarks/postgres_ingest.py [--quick] [--url postgresql://...]

The same batches (synthetic hosts shaped like the agent's families, ``storage_ingest.py``:
~90 series per host, 6 cycles a batch) are stored, ``--per-txn`` batches per transaction as
ingest does, into:

* SQLite (the baseline: ``synchronous=FULL`` as shipped);
* PostgreSQL with binary ``COPY`` (the default) and with ``INSERT`` (``executemany``), both
  through ``PostgresStorage.store_batches``; ``synchronous_commit=on``, ``fsync=on``;

then each store compacts everything (the samples/s of a full pass) and reports its bytes per
sample on disk. PostgreSQL is a private cluster (``tests/support/postgres.py``, made durable) in
a temp directory unless ``--url`` names a server. Prints a table and writes
``benchmarks/results/postgres_ingest.json``. Figures depend on the machine: read the ratios to
SQLite measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import psycopg  # noqa: E402
from _common import table, write_result  # noqa: E402
from storage_ingest import DAY, T0, host_batches, interleave, to_items  # noqa: E402

from edgemon.collector.storage.base import IngestItem  # noqa: E402
from edgemon.collector.storage.postgres import PostgresStorage  # noqa: E402
from edgemon.collector.storage.sql import SQLStorage  # noqa: E402
from edgemon.collector.storage.sqlite import SQLiteStorage  # noqa: E402


def _items(hosts: int, cycles: int) -> list[IngestItem]:
    per_host = [to_items(host_batches(f"host-{h:04d}", h, T0 + h * 37, cycles, 6), wire=False)
                for h in range(hosts)]
    return interleave(per_host)


def _ingest(st: SQLStorage, items: list[IngestItem], per_txn: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(items), per_txn):
        st.store_batches(items[i:i + per_txn])
    return time.perf_counter() - started


def _compact(st: SQLStorage, now: int) -> float:
    started = time.perf_counter()
    st.compact_all(now)
    return time.perf_counter() - started


def _pg_bytes(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM FULL")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def _pg_empty_bytes(url: str) -> int:
    """Size of a database holding the schema only (subtracted: catalogs are not samples)."""
    return _pg_bytes(url)


def _sqlite_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    return os.path.getsize(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--url", help="an admin URL of a PostgreSQL server to use")
    parser.add_argument("--per-txn", type=int, default=200, help="batches per transaction")
    args = parser.parse_args()
    hosts, cycles = (20, 60) if args.quick else (200, 60)  # 60 cycles: 10 min at 10 s
    items = _items(hosts, cycles)
    samples = sum(it.batch.sample_count for it in items)
    now = T0 + cycles * 10_000 + DAY
    server = None
    workdir = tempfile.TemporaryDirectory(prefix="edgemon-bench-pg-")
    if args.url:
        admin = args.url
    else:
        from tests.support.postgres import Postgres

        server = Postgres(Path(workdir.name), durable=True).start()
        admin = server.admin_url
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edgemon-bench-") as tmp:
            path = Path(tmp) / "edgemon.db"
            st: SQLStorage = SQLiteStorage(path, compact_delay_ms=0)
            took = _ingest(st, items, args.per_txn)
            compact = _compact(st, now)
            st.close()
            rows.append({"store": "sqlite", "ingest_s": took, "compact_s": compact,
                         "bytes": _sqlite_bytes(path)})
        for name, copy in (("postgres COPY", True), ("postgres INSERT", False)):
            url = _new_database(admin)
            st = PostgresStorage(url, compact_delay_ms=0, ingest_copy=copy)
            empty = _pg_empty_bytes(url)
            took = _ingest(st, items, args.per_txn)
            compact = _compact(st, now)
            st.close()
            rows.append({"store": name, "ingest_s": took, "compact_s": compact,
                         "bytes": _pg_bytes(url) - empty})
    finally:
        if server is not None:
            server.remove()
        workdir.cleanup()
    base = rows[0]
    for r in rows:
        r["ingest_samples_per_s"] = round(samples / r["ingest_s"])
        r["compact_samples_per_s"] = round(samples / r["compact_s"])
        r["ingest_vs_sqlite"] = round(base["ingest_s"] / r["ingest_s"], 2)
        r["compact_vs_sqlite"] = round(base["compact_s"] / r["compact_s"], 2)
        r["bytes_per_sample"] = round(r["bytes"] / samples, 2)
        r["ingest_s"], r["compact_s"] = round(r["ingest_s"], 2), round(r["compact_s"], 2)
    print(f"{hosts} hosts x {cycles} cycles: {len(items)} batches, {samples} samples, "
          f"{args.per_txn} batches per transaction (a loaded 2-core machine: read the ratios)")
    print(table(rows, ["store", "ingest_samples_per_s", "ingest_vs_sqlite",
                       "compact_samples_per_s", "compact_vs_sqlite", "bytes_per_sample"]))
    out = write_result("postgres_ingest", {  # run.py reads this name in every mode
        "hosts": hosts, "cycles": cycles, "batches": len(items), "samples": samples,
        "per_txn": args.per_txn, "rows": rows,
        "note": "SQLite synchronous=FULL; PostgreSQL fsync=on, synchronous_commit=on, same "
                "machine as the benchmark (2 cores shared with other work)"})
    print(f"written to {out}")
    return 0


def _new_database(admin: str) -> str:
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    name = f"edgemon_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    parts = urlsplit(admin)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))



if __name__ == "__main__":
    sys.exit(main())
