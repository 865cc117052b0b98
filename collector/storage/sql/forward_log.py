"""The forwarding log and its cursors (``[[forward]]``, ``collector/forward/README.md``).

``batches.id`` cannot be a cursor: once compaction has emptied ``batches`` SQLite hands out
id 1 again, and compaction deletes a batch's row whatever a receiver has seen. So forwarding
keeps its own log:

* ``forward_log``: one row per stored batch (host, receive time, samples, the payload as
  stored), numbered by ``seq``, never reused (SQLite: ``AUTOINCREMENT``; PostgreSQL: an
  identity column). A trigger on ``batches`` writes it in the very transaction that stores the
  batch, only while a forward cursor exists; a duplicate, which is not stored, logs nothing.
  Compaction and retention never look at it, so they are unchanged. Writers are serialised
  (one write transaction at a time, across collectors too on PostgreSQL), so ``seq`` grows in
  commit order: a reader past ``seq`` n never misses a row committed later with a lower one.
* ``forward_cursors``: per receiver name, the last ``seq`` it confirmed (2xx) or that was
  given up (4xx, or dropped by the bound), totals of samples sent / rejected / skipped /
  re-sent, and ``inflight``: the last ``seq`` of the request being sent. After a crash the
  samples in (seq, inflight] are the ones sent again: counted as re-sent on the next start.
* Rows every cursor has passed are deleted (``forward_trim``). A receiver more than its
  ``max_pending_samples`` behind has its oldest rows skipped (counted in ``skipped``), so a
  dead receiver costs at most that much disk.

The SQL is the same on both engines; each backend makes the tables and trigger
(``sqlite/forward_log.py`` on first use, ``postgres/migrations.py`` version 2) and tells the
newest ``seq`` given (``_forward_head``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgemon.collector.storage.base import ForwardBatch, ForwardPosition
from edgemon.collector.storage.sql.store import SQLStore

__all__ = ["ForwardLog"]

class ForwardLog(SQLStore):
    # -- what a backend provides --------------------------------------------------------------

    def _forward_install(self) -> None:
        """Make sure the log, the cursors and the logging trigger exist (nothing: a backend
        whose schema has them)."""

    def _forward_head(self, db: Any) -> int:
        """The newest ``seq`` ever given (0: none), even if the log is empty now."""
        raise NotImplementedError

    def _forward_sync(self) -> None:
        """Before a cursor write: relax its durability if the backend can (a cursor lost to a
        power cut only means sending again, at least once)."""

    # -- the log and cursors, the same SQL on every backend -----------------------------------

    def forward_open(self, starts: Mapping[str, str], now_ms: int) -> dict[str, int]:
        with self._write_lock:
            self._forward_install()
            resent: dict[str, int] = {}
            with self._write() as db:
                known = {name: (seq, inflight) for name, seq, inflight in db.execute(
                    "SELECT name, seq, inflight FROM forward_cursors")}
                for name in known.keys() - starts.keys():
                    db.execute("DELETE FROM forward_cursors WHERE name = ?", (name,))
                head = self._forward_head(db)
                for name, start in starts.items():
                    if name not in known:
                        seq = head if start == "now" else 0
                        db.execute("INSERT INTO forward_cursors (name, seq, inflight, "
                                   "updated_ms) VALUES (?, ?, ?, ?)", (name, seq, seq, now_ms))
                        continue
                    seq, inflight = known[name]
                    if inflight > seq:  # a request was being sent when the process stopped
                        n = db.execute("SELECT coalesce(sum(samples), 0) FROM forward_log "
                                       "WHERE seq > ? AND seq <= ?", (seq, inflight)
                                       ).fetchone()[0]
                        resent[name] = n
                        db.execute("UPDATE forward_cursors SET resent = resent + ?, inflight = "
                                   "seq WHERE name = ?", (n, name))
            return resent

    def forward_read(self, name: str, after: int, max_samples: int,
                     max_batches: int = 1000) -> list[ForwardBatch]:
        self._forward_install()
        out: list[ForwardBatch] = []
        total = 0
        with self._read() as db:
            for seq, host, received, samples, payload in db.execute(
                    "SELECT f.seq, h.name, f.received_ms, f.samples, f.payload FROM "
                    "forward_log f JOIN hosts h ON h.id = f.host_id WHERE f.seq > max(?, "
                    "coalesce((SELECT seq FROM forward_cursors WHERE name = ?), 0)) "
                    "ORDER BY f.seq LIMIT ?",
                    (after, name, max_batches)):
                if out and total + samples > max_samples:
                    break
                out.append(ForwardBatch(seq, host, received, samples, payload))
                total += samples
        return out

    def forward_mark(self, name: str, inflight: int) -> None:
        self._forward_sync()
        with self._write() as db:
            db.execute("UPDATE forward_cursors SET inflight = max(seq, ?) WHERE name = ?",
                       (inflight, name))

    def forward_advance(self, name: str, seq: int, *, sent: int = 0, rejected: int = 0,
                        inflight: int = 0, now_ms: int = 0) -> None:
        self._forward_sync()
        with self._write() as db:
            db.execute("UPDATE forward_cursors SET seq = max(seq, ?), inflight = max(?, ?), "
                       "sent = sent + ?, rejected = rejected + ?, updated_ms = ? WHERE name = ?",
                       (seq, seq, inflight, sent, rejected, now_ms, name))

    def forward_trim(self, max_pending: Mapping[str, int], now_ms: int) -> dict[str, int]:
        self._forward_install()
        skipped: dict[str, int] = {}
        self._forward_sync()
        with self._write() as db:
            for name, seq in db.execute("SELECT name, seq FROM forward_cursors").fetchall():
                limit = max_pending.get(name)
                if limit is None:
                    continue
                total = db.execute("SELECT coalesce(sum(samples), 0) FROM forward_log "
                                   "WHERE seq > ?", (seq,)).fetchone()[0]
                if total <= limit:
                    continue
                # the newest rows that fit in the limit stay; older ones are skipped
                pending = db.execute(
                    "SELECT seq, samples FROM forward_log WHERE seq > ? ORDER BY seq DESC",
                    (seq,))
                kept, cut = 0, None
                for row_seq, samples in pending:
                    if kept + samples > limit:
                        cut = row_seq
                        break
                    kept += samples
                if cut is None:
                    continue
                n = db.execute("SELECT coalesce(sum(samples), 0) FROM forward_log WHERE "
                               "seq > ? AND seq <= ?", (seq, cut)).fetchone()[0]
                db.execute("UPDATE forward_cursors SET seq = ?, inflight = max(inflight, ?), "
                           "skipped = skipped + ?, updated_ms = ? WHERE name = ?",
                           (cut, cut, n, now_ms, name))
                skipped[name] = n
            low = db.execute("SELECT min(seq) FROM forward_cursors").fetchone()[0]
            if low is None:
                db.execute("DELETE FROM forward_log")
            else:
                db.execute("DELETE FROM forward_log WHERE seq <= ?", (low,))
        return skipped

    def forward_positions(self) -> list[ForwardPosition]:
        self._forward_install()
        out = []
        with self._read() as db:
            head = self._forward_head(db)
            for name, seq, updated, sent, rejected, skipped, resent in db.execute(
                    "SELECT name, seq, updated_ms, sent, rejected, skipped, resent FROM "
                    "forward_cursors ORDER BY name").fetchall():
                batches, samples, oldest = db.execute(
                    "SELECT count(*), coalesce(sum(samples), 0), min(received_ms) FROM "
                    "forward_log WHERE seq > ?", (seq,)).fetchone()
                out.append(ForwardPosition(name=name, seq=seq, head=head,
                                           pending_batches=batches, pending_samples=samples,
                                           oldest_pending_ms=oldest, sent=sent,
                                           rejected=rejected, skipped=skipped, resent=resent,
                                           updated_ms=updated))
        return out
