"""CPU per stored sample of the collector's writer: the decoder as it was against the msgspec path.

    python benchmarks/ingest_cpu.py [--hosts N] [--rounds R] [--runs K]

The writer thread's whole job per group of messages (``IngestPipeline._store_group``: decompress,
read, check the rules, screen the series, the cardinality bound, one SQLite transaction), run
in-process on pre-encoded agent batches (``fleet.SimHost``: one-minute batches of 6 cycles,
generated before the timed window) into a fresh SQLite storage per run, in groups of 200 (the
collector's ``max_batch_per_txn``). Variants, interleaved in every run:

* ``pure`` — the decoder as it was: the pure-Python reader, the schema and the series screen
  entry by entry, CPython's default garbage-collector settings;
* ``msgspec`` — ``protocol.fast_reader`` and the batch-at-once checks of schema and screen;
* ``msgspec+gc`` — the same with the collector's GC policy (``collector/gc_policy.py``);
* ``floor`` — zstd + one C ``msgpack.unpackb`` per payload and nothing else: what no decoder in
  Python can beat.

Reports stored samples per CPU second (``time.process_time``: the figure that says how many
samples one core can take, whatever else the loaded machine runs) and wall seconds, min / median
/ max over the runs, and the ratio of each variant to ``pure`` measured in the same run. Every
variant must store exactly the same samples. Writes ``benchmarks/results/ingest_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
from _common import table, write_result
from fleet import SimHost

from edgemon.collector.config import IngestConfig
from edgemon.collector.gc_policy import tune_gc
from edgemon.collector.ingest import screen
from edgemon.collector.ingest.inbox import Inbox, RawMessage
from edgemon.collector.ingest.pipeline import IngestPipeline
from edgemon.collector.storage.sqlite import SQLiteStorage
from edgemon.protocol import encode, fast_reader, schema
from edgemon.protocol.codec import FAST_LEVEL, decompress

GROUP = 200


@contextmanager
def pure_decoder() -> Iterator[None]:
    """The decoder as it was before the msgspec path: pure reader, rules entry by entry."""
    saved = fast_reader.read_fast, schema._metrics_at_once, screen._all_plausible
    fast_reader.read_fast = None  # type: ignore[assignment]
    schema._metrics_at_once = lambda *_: None  # type: ignore[assignment]
    screen._all_plausible = lambda *_: False  # type: ignore[assignment]
    try:
        yield
    finally:
        fast_reader.read_fast, schema._metrics_at_once, screen._all_plausible = saved


@contextmanager
def gc_policy(tuned: bool) -> Iterator[None]:
    saved = gc.get_threshold()
    if tuned:
        tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def make_messages(hosts: int, rounds: int) -> list[list[RawMessage]]:
    """Round 0 (each host's first batch: new series) and the timed rounds, pre-encoded."""
    start = int(time.time() * 1000) - (rounds + 2) * 60_000
    sims = [SimHost(f"bench-{i:05d}", i, start) for i in range(hosts)]
    out = []
    mid = 0
    for _ in range(rounds + 1):
        msgs = []
        for sim in sims:
            payload = encode(sim.next_batch(), level=FAST_LEVEL)
            mid += 1
            msgs.append(RawMessage(f"edgemon/v1/{sim.host}/metrics", payload, mid, 1, False,
                                   int(time.time() * 1000), 0, len(payload)))
        out.append(msgs)
    return out


def run_pipeline(rounds: list[list[RawMessage]], directory: Path) -> tuple[int, float, float]:
    """(samples stored, CPU seconds, wall seconds) of the timed rounds through a fresh storage."""
    storage = SQLiteStorage(directory / "edgemon.db")
    loop = asyncio.new_event_loop()
    writer = ThreadPoolExecutor(1)
    try:
        inbox = Inbox(loop, max_messages=1_000_000, max_bytes=1 << 32)
        pipeline = IngestPipeline(storage=storage, inbox=inbox, mqtt=None, config=IngestConfig(),
                                  writer=writer)
        first = rounds[0]
        for k in range(0, len(first), GROUP):
            pipeline._store_group(first[k:k + GROUP])
        msgs = [m for r in rounds[1:] for m in r]
        samples = 0
        cpu, wall = time.process_time(), time.perf_counter()
        for k in range(0, len(msgs), GROUP):
            for o in pipeline._store_group(msgs[k:k + GROUP]):
                assert o.kind == "metrics" and o.result is not None and o.result.stored, o
                samples += o.result.samples
        return samples, time.process_time() - cpu, time.perf_counter() - wall
    finally:
        writer.shutdown()
        storage.close()
        loop.close()


def run_floor(rounds: list[list[RawMessage]]) -> tuple[int, float, float]:
    msgs = [m for r in rounds[1:] for m in r]
    cpu, wall = time.process_time(), time.perf_counter()
    for m in msgs:
        msgpack.unpackb(decompress(m.payload))
    return 0, time.process_time() - cpu, time.perf_counter() - wall


def variants() -> dict[str, Callable[[list[list[RawMessage]], Path], tuple[int, float, float]]]:
    def pure(rounds: list[list[RawMessage]], d: Path) -> tuple[int, float, float]:
        with pure_decoder(), gc_policy(False):
            return run_pipeline(rounds, d)

    def fast(rounds: list[list[RawMessage]], d: Path) -> tuple[int, float, float]:
        with gc_policy(False):
            return run_pipeline(rounds, d)

    def fast_gc(rounds: list[list[RawMessage]], d: Path) -> tuple[int, float, float]:
        with gc_policy(True):
            return run_pipeline(rounds, d)

    def floor(rounds: list[list[RawMessage]], d: Path) -> tuple[int, float, float]:
        return run_floor(rounds)

    return {"pure": pure, "msgspec": fast, "msgspec+gc": fast_gc, "floor": floor}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    rounds = make_messages(args.hosts, args.rounds)
    batches = args.hosts * args.rounds
    results: dict[str, dict[str, list[float]]] = {}
    stored: dict[str, int] = {}
    for _ in range(args.runs):
        for name, fn in variants().items():
            with tempfile.TemporaryDirectory(prefix="edgemon-ingest-cpu-") as d:
                samples, cpu, wall = fn(rounds, Path(d))
            if name != "floor":
                assert stored.setdefault(name, samples) == samples
                stored["samples"] = samples
            r = results.setdefault(name, {"cpu_s": [], "wall_s": []})
            r["cpu_s"].append(cpu)
            r["wall_s"].append(wall)
    samples = stored["samples"]
    assert all(stored[n] == samples for n in ("pure", "msgspec", "msgspec+gc"))
    pure_cpu = results["pure"]["cpu_s"]
    rows, out = [], {}
    for name, r in results.items():
        rates = [samples / c for c in r["cpu_s"]]
        ratios = [p / c for p, c in zip(pure_cpu, r["cpu_s"], strict=True)]
        out[name] = {"samples_per_cpu_s": spread(rates), "wall_s": spread(r["wall_s"]),
                     "us_per_batch": spread([c / batches * 1e6 for c in r["cpu_s"]]),
                     "ratio_to_pure": spread(ratios)}
        s = out[name]
        rows.append({
            "variant": name,
            "samples/CPU-s min/med/max": "/".join(f"{v / 1000:.0f}k" for v in
                                                 s["samples_per_cpu_s"].values()),
            "us/batch (median)": f"{s['us_per_batch']['median']:.0f}",
            "x pure (min/med/max)": "/".join(f"{v:.2f}" for v in s["ratio_to_pure"].values()),
            "wall s (median)": f"{s['wall_s']['median']:.2f}"})
    print(f"{batches} batches, {samples} samples per run ({samples // batches} per batch), "
          f"{args.runs} runs; groups of {GROUP}; loaded machine: CPU seconds, not wall")
    print(table(rows, ["variant", "samples/CPU-s min/med/max", "us/batch (median)",
                       "x pure (min/med/max)", "wall s (median)"]))
    path = write_result("ingest_cpu", {"hosts": args.hosts, "rounds": args.rounds,
                                       "runs": args.runs, "samples_per_run": samples,
                                       "batches_per_run": batches, "variants": out})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
