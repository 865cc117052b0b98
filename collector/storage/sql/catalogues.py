"""Series catalogues (protocol SPEC.md §9): each host's newest declared catalogues, as received.

A table of their own, beside the batches: a stored batch never needs one (the collector stores a
batch that referred to a catalogue resolved, as the inline batch), so catalogues can be
forgotten at any time; a batch naming a forgotten one is answered ``unknown_catalogue`` and its
agent sends it again inline. Ids are per host: the key is (host, id). The table is made by the
backend (``_catalogue_table``: SQLite on first use, ``sqlite/catalogues.py``; PostgreSQL in
schema migration 2, ``postgres/migrations.py``).
"""

from __future__ import annotations

from edgemon.collector.storage.sql.store import SQLStore
from edgemon.protocol.limits import MAX_CATALOGUES_PER_HOST

__all__ = ["Catalogues"]


class Catalogues(SQLStore):
    def _catalogue_table(self) -> None:
        """Make sure the ``catalogues`` table exists (a backend whose schema has it: nothing)."""

    def store_catalogue(self, host: str, ident: str, payload: bytes, received_ms: int) -> None:
        self._catalogue_table()
        with self._write() as db:
            db.execute("INSERT INTO catalogues (host, id, received_ms, payload) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (host, id) DO UPDATE SET "
                       "received_ms = max(catalogues.received_ms, excluded.received_ms)",
                       (host, ident, received_ms, payload))
            db.execute("DELETE FROM catalogues WHERE host = ? AND id NOT IN (SELECT id FROM "
                       "catalogues WHERE host = ? ORDER BY received_ms DESC, id LIMIT ?)",
                       (host, host, MAX_CATALOGUES_PER_HOST))

    def catalogue(self, host: str, ident: str) -> bytes | None:
        self._catalogue_table()
        with self._read() as db:
            row = db.execute("SELECT payload FROM catalogues WHERE host = ? AND id = ?",
                             (host, ident)).fetchone()
        return None if row is None else bytes(row[0])

    def stored_batch(self, host: str, instance: str, seq: int) -> bytes | None:
        with self._read() as db:
            row = db.execute("SELECT b.payload FROM batches b JOIN hosts h ON h.id = b.host_id "
                             "WHERE h.name = ? AND b.instance = ? AND b.seq = ?",
                             (host, instance, seq)).fetchone()
        return None if row is None else bytes(row[0])
