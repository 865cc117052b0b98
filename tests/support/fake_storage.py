"""A fake ``Storage`` for HTTP and ingest tests: exactly-once by (host, instance, seq),
statuses, canned query results, failures on command. (Alerting tests feed
``edgemon.collector.alerting.memstore.InMemoryGridStorage`` instead, which answers queries.)"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgemon.collector.storage.base import (
    Gap,
    HostInfo,
    IngestItem,
    RangeQuery,
    SeriesInfo,
    SeriesResult,
    Storage,
    StoreResult,
)


class MemoryStorage(Storage):
    """A fake Storage: exactly-once by (host, instance, seq), statuses, canned query results."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[tuple[str, str, int], IngestItem] = {}
        self.status: dict[str, tuple[str, bool, int]] = {}
        self.store_calls: list[list[IngestItem]] = []
        self.query_results: list[SeriesResult] = []
        self.queries: list[RangeQuery] = []
        self.query_error: Exception | None = None
        self.series_list: list[SeriesInfo] = []
        self.gap_list: list[Gap] = []
        self.maintained = 0
        self.closed = False
        self.fail_next_stores = 0
        self.before_store: Callable[[list[IngestItem]], None] | None = None

    def store_batches(self, items: list[IngestItem]) -> list[StoreResult]:
        if self.before_store is not None:
            self.before_store(items)
        with self.lock:
            self.store_calls.append(list(items))
            if self.fail_next_stores:
                self.fail_next_stores -= 1
                raise OSError("disk on fire")
            out = []
            for item in items:
                b = item.batch
                key = (b.host, b.instance, b.seq)
                new = key not in self.items
                if new:
                    self.items[key] = item
                out.append(StoreResult(b.host, b.instance, b.seq, new, b.sample_count))
            return out

    def record_status(self, host: str, instance: str, online: bool, timestamp_ms: int,
                      received_ms: int) -> None:
        with self.lock:
            old = self.status.get(host)
            if old is None or old[2] <= timestamp_ms:
                self.status[host] = (instance, online, timestamp_ms)

    def hosts(self) -> list[HostInfo]:
        with self.lock:
            names = {k[0] for k in self.items} | set(self.status)
            out = []
            for h in sorted(names):
                instance, online, ts = self.status.get(h, (None, False, None))
                seen = [i.received_ms for k, i in self.items.items() if k[0] == h]
                out.append(HostInfo(h, online, instance, max(seen) if seen else None, ts,
                                    len({k[1] for k in self.items if k[0] == h}), 5))
            return out

    def series(self, host: str | None = None, name: str | None = None) -> list[SeriesInfo]:
        return [s for s in self.series_list if host in (None, s.host) and name in (None, s.name)]

    def query(self, query: RangeQuery) -> list[SeriesResult]:
        self.queries.append(query)
        if self.query_error is not None:
            raise self.query_error
        return self.query_results

    def gaps(self, host: str | None = None) -> list[Gap]:
        return [g for g in self.gap_list if host in (None, g.host)]

    def maintain(self, now_ms: int) -> None:
        self.maintained += 1

    def close(self) -> None:
        self.closed = True
