"""Forwarding for tests: a ``ForwardService`` over a real store, run in a thread with its own
event loop (``Running``), or as a separate process that a test can kill -9 (``python -m
tests.support.forwarding DB URL MAX_SAMPLES``); and stored batches whose samples are known."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from edgemon.collector.config import ForwardConfig
from edgemon.collector.forward.service import ForwardService
from edgemon.collector.storage.base import IngestItem, Storage
from edgemon.protocol import COUNTER, GAUGE, BatchBuilder, MetricDef, decode, encode
from edgemon.protocol.schema import validate_batch

CPU = MetricDef("cpu_usage_percent", GAUGE, "percent", 3, ("cpu",))
BYTES = MetricDef("net_rx_bytes_total", COUNTER, "bytes", 0, ("iface",))

Key = tuple[tuple[str, str], ...]


@dataclass
class Fleet:
    """Batches of ``hosts`` hosts, and every sample they hold as a receiver should have it
    (labels as sent, value as float)."""

    hosts: int = 3
    cpus: int = 2
    per_batch: int = 5  # cycles per batch
    step_ms: int = 1000
    external: dict[str, str] = field(default_factory=lambda: {"fleet": "test"})
    expected: dict[Key, list[tuple[int, float]]] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)

    def batches(self, start_ms: int, count: int, historical: bool = False) -> list[IngestItem]:
        """``count`` batches per host from ``start_ms``."""
        out = []
        for n in range(count):
            for h in range(self.hosts):
                host = f"host-{h}"
                seq = self.seqs.get(host, 0)
                self.seqs[host] = seq + 1
                builder = BatchBuilder()
                t0 = start_ms + n * self.per_batch * self.step_ms + h
                for c in range(self.per_batch):
                    ts = t0 + c * self.step_ms
                    for cpu in range(self.cpus):
                        raw = (ts // 7 + cpu * 13 + h) % 100_000  # 0..99.999 %
                        builder.add(ts, CPU, (str(cpu),), raw)
                        self._expect(CPU.name, host, {"cpu": str(cpu)}, ts, raw / 1000)
                    raw = ts * 3 + h
                    builder.add(ts, BYTES, ("eth0",), raw)
                    self._expect(BYTES.name, host, {"iface": "eth0"}, ts, float(raw))
                payload = encode(builder.build(host=host, instance="i1", seq=seq,
                                               sent_ms=t0 + self.per_batch * self.step_ms))
                out.append(IngestItem(validate_batch(decode(payload)), payload,
                                      t0 + self.per_batch * self.step_ms + 100, historical))
        return out

    def _expect(self, name: str, host: str, labels: dict[str, str], ts: int,
                value: float) -> None:
        key = tuple(sorted({**self.external, **labels, "host": host, "__name__": name}.items()))
        self.expected.setdefault(key, []).append((ts, value))

    def want(self) -> dict[Key, list[tuple[int, float]]]:
        return {k: sorted(v) for k, v in self.expected.items()}

    def total(self) -> int:
        return sum(len(v) for v in self.expected.values())


def config(url: str, name: str = "rx", **kw: Any) -> ForwardConfig:
    return ForwardConfig(url=url, name=name, external_labels={"fleet": "test"},
                         retry_initial_seconds=0.05, retry_max_seconds=0.5, **kw)


class Running:
    """``ForwardService`` started in a thread with its own event loop; ``close()`` stops it."""

    def __init__(self, storage: Storage, *receivers: ForwardConfig,
                 encode_in_process: bool = True,
                 leading: Callable[[], bool] = lambda: True) -> None:
        self.loop = asyncio.new_event_loop()
        self.service = ForwardService(tuple(receivers), storage, refresh_seconds=0.2,
                                      poll_seconds=0.05, encode_in_process=encode_in_process,
                                      leading=leading)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self.service.start())

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=60)

    def pause(self) -> None:
        self._call(self.service.pause())

    def resume(self) -> None:
        self._call(self.service.resume())

    def close(self) -> None:
        self._call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _main(argv: list[str]) -> None:  # a forwarding process, killed by the test
    from edgemon.collector.storage.sqlite import SQLiteStorage

    db, url, max_samples = argv
    storage = SQLiteStorage(db)
    Running(storage, config(url, max_samples_per_request=int(max_samples)))
    print("forwarding", flush=True)
    threading.Event().wait()


def chunks(items: list[IngestItem], size: int) -> Iterator[list[IngestItem]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


if __name__ == "__main__":
    _main(sys.argv[1:])
